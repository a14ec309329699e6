"""The evaluated pairs: a paired folder or an LMDB pair, read by the package's ``LLIEPairedDataset``.

Layouts :func:`load_pairs` accepts for ``data`` (the first that fits):

* ``lq.lmdb`` and ``gt.lmdb`` inside it: the LMDB pair of ``datasets_lmdb pack`` / ``synth --lmdb``; labels from
  the lq LMDB's ``meta_info.txt`` (``label=NAME``);
* ``lq/`` and ``gt/`` inside it (``datasets_lmdb synth``'s layout), or ``low/`` and ``high/`` (LOL's): images paired
  by name; labels from a ``meta_info.txt`` beside the two folders when it has ``label=NAME`` fields.

The dataset checks everything (missing or unpaired files, sizes, labels) with one-line ``DataError``\\ s.
Images come out as RGB uint8 (16-bit images are rounded to 8 bits, as BasicSR's metrics compare 8-bit images).
"""

import os
from dataclasses import dataclass

import numpy as np

from ..data.llie_paired_dataset import LLIEPairedDataset
from ..data.pairing import stem
from .errors import EvaluationError

#: (lq folder, gt folder) names tried in order
FOLDER_PAIRS = (('lq', 'gt'), ('low', 'high'))
#: the label of the pairs of a data set that carries none (and no ``label`` was given)
UNLABELLED = 'all'


@dataclass(frozen=True)
class Pair:
    """One evaluated pair: ``name`` (the lq stem or LMDB key), its degradation ``label``, RGB uint8 images."""

    name: str
    label: str
    lq: np.ndarray
    gt: np.ndarray


def dataset_options(data, label=None):
    """The ``LLIEPairedDataset`` options (``phase: val``) of the data at ``data`` (see the module docstring)."""
    if not os.path.isdir(data):
        raise EvaluationError(f'--data {data}: no such folder')
    opt = {'name': os.path.basename(os.path.normpath(data)), 'phase': 'val', 'type': 'LLIEPairedDataset'}
    if label is not None:
        opt['label'] = label
    if all(os.path.isdir(os.path.join(data, f'{side}.lmdb')) for side in ('lq', 'gt')):
        return dict(
            opt,
            dataroot_lq=os.path.join(data, 'lq.lmdb'),
            dataroot_gt=os.path.join(data, 'gt.lmdb'),
            io_backend={'type': 'lmdb'},
        )
    for lq, gt in FOLDER_PAIRS:
        if os.path.isdir(os.path.join(data, lq)) and os.path.isdir(os.path.join(data, gt)):
            opt.update(dataroot_lq=os.path.join(data, lq), dataroot_gt=os.path.join(data, gt))
            meta = os.path.join(data, 'meta_info.txt')
            if os.path.isfile(meta):
                with open(meta, encoding='utf-8') as f:
                    labelled = 'label=' in f.read()
                if labelled:
                    opt['meta_info_file'] = meta
            return opt
    raise EvaluationError(
        f'--data {data}: expected lq.lmdb and gt.lmdb, lq/ and gt/, or low/ and high/ inside it (see docs/evaluate.md)'
    )


def to_uint8(tensor):
    """A ``(3, H, W)`` float RGB tensor in [0, 1] -> ``(H, W, 3)`` RGB uint8 (rounded, as BasicSR's ``tensor2img``)."""
    return np.rint(tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


def load_pairs(data, label=None, labels=None):
    """The pairs of ``data`` (a folder, see the module docstring) in the dataset's order.

    Args:
        label: the degradation label of every pair (overrides stored labels), e.g. ``'rain'`` for Rain100L.
        labels: keep only the pairs with these labels (None: all).

    Pairs without a stored label get :data:`UNLABELLED`. Raises ``DataError`` for bad data and
    :class:`EvaluationError` for an unknown layout or when no pair has one of ``labels``.
    """
    dataset = LLIEPairedDataset(dataset_options(data, label), where=f'--data {data}: ')
    found = dataset.labels or [UNLABELLED] * len(dataset)
    wanted = [i for i, lb in enumerate(found) if labels is None or lb in labels]
    if not wanted:
        raise EvaluationError(
            f'--labels {" ".join(labels)}: no pair of {data} has one (its labels: {", ".join(dict.fromkeys(found))})'
        )
    pairs = []
    for index in wanted:
        sample = dataset[index]
        pairs.append(Pair(stem(sample['lq_path']), found[index], to_uint8(sample['lq']), to_uint8(sample['gt'])))
    return pairs


def by_label(pairs):
    """``{label: [pairs]}`` in the order the labels first occur."""
    groups = {}
    for pair in pairs:
        groups.setdefault(pair.label, []).append(pair)
    return groups
