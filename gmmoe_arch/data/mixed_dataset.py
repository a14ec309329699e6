"""``MixedPairedDataset``: several labelled ``LLIEPairedDataset`` sets concatenated, for all-in-one training."""

import bisect
import re

from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from ..options import is_integer
from ..registry import qualified, register
from .llie_paired_dataset import LLIEPairedDataset

#: keys of the parent options that are not handed down to the sets
_OWN_KEYS = ('type', 'name', 'sets')
_KEY_FIRST = re.compile(r'[a-z_][a-z0-9_.]*:')


def _at(here, message):
    """``datasets.train.sets[1].dataroot_lq: ...`` for a message naming a key, ``datasets.train.sets[1]: ...`` else."""
    return f'{here}.{message}' if _KEY_FIRST.match(message) else f'{here}: {message}'


@register(DATASET_REGISTRY)
class MixedPairedDataset(data.Dataset):
    """Concatenation of labelled paired sets: every sample carries ``'label'`` (str).

    Options::

        type: MixedPairedDataset
        name: allinone
        gt_size: 128            # shared keys (gt_size, use_hflip, use_rot, io_backend, mean/std, ...)
        use_hflip: true         # are inherited by every set; a set's own keys override them
        sets:
          - {dataroot_lq: .../LOL/lq.lmdb, dataroot_gt: .../LOL/gt.lmdb, io_backend: {type: lmdb}, label: lowlight}
          - {dataroot_lq: .../Rain100L/rain, dataroot_gt: .../Rain100L/norain,
             pair_rule: 'rain-(.*)->norain-\\1', label: rain, repeat: 4}
          - {dataroot_lq: .../synth/lq, dataroot_gt: .../synth/gt, meta_info_file: .../synth/meta_info.txt}

    Each set is an ``LLIEPairedDataset`` (any of its options) and must be labelled: by its ``label``
    option or by ``label=NAME`` fields in its ``meta_info_file`` / LMDB ``meta_info.txt`` (a synthesized
    ``mixed`` set brings several labels). ``repeat: N`` (integer >= 1, default 1) lists a set N times, to
    balance small sets against large ones. Samples are those of the sets, in order (set 0 first); crops
    and flips are each set's own. When a set brings per-pixel label maps (a ``regions`` synthesis), every set
    returns ``label_map``: the others filled with their label's index (``LLIEPairedDataset``'s ``label_maps``),
    so that BasicSR's default collate stacks any batch. Errors name ``datasets.<phase>.sets[i].<key>``.

    Attributes: ``datasets`` (the built sets), ``repeats``, ``labels`` (one per index, repeats included).
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.name = opt.get('name', type(self).__name__)
        where = f'datasets.{opt.get("phase", "?")}'
        sets = opt.get('sets')
        if not isinstance(sets, list) or not sets:
            raise ValueError(f'{where}.sets: expected a non-empty list of dataset options, got {sets!r}')
        shared = {key: value for key, value in opt.items() if key not in _OWN_KEYS}
        self.datasets, self.repeats = [], []
        for i, entry in enumerate(sets):
            here = f'{where}.sets[{i}]'
            if not isinstance(entry, dict):
                raise ValueError(f'{here}: expected a mapping of dataset options, got {entry!r}')
            entry = dict(entry)
            repeat = entry.pop('repeat', 1)
            if not is_integer(repeat) or repeat < 1:
                raise ValueError(f'{here}.repeat: expected an integer >= 1, got {repeat!r}')
            kind = entry.pop('type', 'LLIEPairedDataset')
            if kind not in ('LLIEPairedDataset', qualified('LLIEPairedDataset')):
                raise ValueError(f'{here}.type: only LLIEPairedDataset sets can be mixed, got {kind!r}')
            set_opt = {**shared, 'name': f'{self.name}[{i}]', **entry}
            try:
                dataset = LLIEPairedDataset(set_opt, where='')
            except (ValueError, FileNotFoundError) as err:
                raise type(err)(_at(here, str(err))) from None
            dataset.where = f'{here}: '  # errors while reading samples
            if dataset.labels is None:
                raise ValueError(
                    f'{here}.label: the set is unlabelled; give it a label (lowlight, rain, haze, ...) or a '
                    'meta_info_file with label= fields'
                )
            self.datasets.append(dataset)
            self.repeats.append(repeat)
        if any(dataset.label_maps is not None for dataset in self.datasets):  # all or none, so batches collate
            for i, dataset in enumerate(self.datasets):
                if dataset.label_maps is None:
                    try:
                        dataset.fill_label_maps()
                    except ValueError as err:
                        raise type(err)(_at(f'{where}.sets[{i}]', str(err))) from None
        self.ends = []
        total = 0
        for dataset, repeat in zip(self.datasets, self.repeats):
            total += len(dataset) * repeat
            self.ends.append(total)
        self.labels = [label for d, r in zip(self.datasets, self.repeats) for label in d.labels * r]

    def locate(self, index):
        """``(set number, index in that set)`` of a sample index."""
        if not 0 <= index < len(self):
            raise IndexError(f'{type(self).__name__} {self.name!r}: index {index} out of range ({len(self)})')
        which = bisect.bisect_right(self.ends, index)
        start = self.ends[which - 1] if which else 0
        return which, (index - start) % len(self.datasets[which])

    def __getitem__(self, index):
        which, inner = self.locate(index)
        return self.datasets[which][inner]

    def __len__(self):
        return self.ends[-1]
