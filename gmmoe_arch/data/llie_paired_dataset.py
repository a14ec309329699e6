"""``LLIEPairedDataset``: paired lq/gt images from folders or LMDBs, checked when it is built."""

import os

import lmdb
import numpy as np
import torch
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data
from torchvision.transforms.functional import normalize

from ..registry import register
from . import label_maps
from .image_io import DataError, lmdb_env, read_image_file, read_lmdb_entry, to_float_bgr
from .pack_info import check_same_pack
from .pairing import (
    check_label,
    check_labels,
    check_sizes,
    culprits,
    list_images,
    pair_stems,
    read_lmdb_label_maps,
    read_lmdb_labels,
    read_lmdb_meta,
    read_pair_list,
    stem,
)


@register(DATASET_REGISTRY)
class LLIEPairedDataset(data.Dataset):
    """Paired low-light (lq) / normal-light (gt) images for restoration training and testing.

    Options (BasicSR conventions):
        name (str), phase (str): set by BasicSR; crop and flips happen only when phase is 'train'.
        dataroot_lq, dataroot_gt (str): image folders, or ``*.lmdb`` folders with ``io_backend: lmdb``.
        io_backend (dict): ``{type: disk}`` (default) or ``{type: lmdb}``; with lmdb,
            ``verify_checksum: true`` checks each raw entry's CRC-32 when it is read (about 0.5 ms per
            600x400 image), other keys go to lmdb.open.
        meta_info_file (str, optional): lines ``LQ_NAME [GT_NAME] [label=NAME]`` choosing the pairs
            (and labelling them).
        label (str, optional): the degradation label of every pair (e.g. ``rain`` for Rain100L); it
            takes precedence over labels in ``meta_info_file`` or the LMDB's ``meta_info.txt``.
        label_maps (bool, optional): return per-pixel label maps (``label_map``). Default: when any pair
            has one (``labelmap=REF`` in ``meta_info_file`` or the lq LMDB's ``meta_info.txt``); ``true``
            also for a set without any, ``false`` never. Pairs without a map get theirs filled with the
            index of their label, which must be one of the degradation table's.
        pair_rule: 'identical' (default), 'lol_v2_real' (lowN <-> normalN) or
            ``{lq: REGEX, gt: TEMPLATE}`` on file stems / LMDB keys (see ``gmmoe_arch.data.pairing``).
        skip_unpaired (bool): use the pairs found and ignore files without a partner (default false).
        gt_size (int, optional): random paired crop size for training.
        use_hflip, use_rot (bool): random flips / 90-degree rotations for training (default false).
        mean, std (list[float], optional): normalisation after scaling to [0, 1].

    Images may be 8/16-bit PNG, JPEG, BMP or TIFF, and LMDB entries in the ``raw`` or ``png`` form
    of ``datasets_lmdb`` (including LMDBs packed by BasicSR's scripts). Grayscale becomes 3 channels,
    alpha is dropped, 16-bit is scaled by 65535.

    Returns per index ``{'lq': (3, H, W), 'gt': (3, H, W), 'lq_path', 'gt_path'[, 'label'][, 'label_map']}``: float32
    RGB tensors in [0, 1] (before mean/std), file paths (disk) or LMDB keys (lmdb), and the pair's
    degradation label (str) when the dataset is labelled: by the ``label`` option, else by
    ``label=NAME`` fields in ``meta_info_file``, else (lmdb) in the lq LMDB's ``meta_info.txt``. Labels
    come for every pair or for none (a list labelling only some pairs is a ``DataError``). ``label_map``
    (see ``label_maps``): int64 ``(H, W)``, each pixel's degradation index
    (:func:`gmmoe_arch.data.degradations.label_indices`), cropped, flipped and rotated with the pair.

    Every problem with the data (missing or empty folder, unpaired files, unreadable, truncated or
    oversized image, lq/gt size mismatch, missing, damaged, truncated or incomplete LMDB, keys listed
    but not stored, lq/gt LMDBs from different pack runs) raises
    :class:`~gmmoe_arch.data.image_io.DataError` (``MissingDataError``, also a ``FileNotFoundError``, for
    what does not exist) here, naming the option and the first few culprits; option mistakes (including
    a crop larger than an image) raise ``ValueError``. Only image headers (disk) or ``meta_info.txt``
    and the key list (LMDB) are read, so building is fast. A file or entry found bad when a sample is
    read raises ``DataError`` naming it.
    """

    def __init__(self, opt, where=None):
        """``where``: how errors name this dataset (default ``"LLIEPairedDataset '<name>': "``)."""
        super().__init__()
        self.opt = opt
        self.name = opt.get('name', type(self).__name__)
        self.where = where if where is not None else f'{type(self).__name__} {self.name!r}: '
        io_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self.backend = io_opt.pop('type', 'disk')
        self.verify_checksum = bool(io_opt.pop('verify_checksum', False))
        self.io_opt = io_opt
        self.train = opt.get('phase') == 'train'
        self.gt_size = opt.get('gt_size')
        self.use_hflip = bool(opt.get('use_hflip', False))
        self.use_rot = bool(opt.get('use_rot', False))
        self.mean, self.std = opt.get('mean'), opt.get('std')
        try:
            self._check_options()
            self.roots = opt['dataroot_lq'], opt['dataroot_gt']
            self.listed = read_pair_list(opt['meta_info_file']) if opt.get('meta_info_file') else None
            self.pairs, sizes = self._lmdb_pairs() if self.backend == 'lmdb' else self._disk_pairs()
            self._check_crop(sizes)
            self.labels = self._labels()
            self.sizes = sizes
            self.label_maps = self._label_maps()
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f'{self.where}{err}') from None

    def _check_options(self):
        if self.backend not in ('disk', 'lmdb'):
            raise ValueError(f"io_backend.type: expected 'disk' or 'lmdb', got {self.backend!r}")
        missing = [key for key in ('dataroot_lq', 'dataroot_gt') if not self.opt.get(key)]
        if missing:
            raise ValueError(f'missing option(s): {", ".join(missing)}')
        if (self.mean is None) != (self.std is None):
            raise ValueError('mean and std must be given together')
        if self.verify_checksum and self.backend != 'lmdb':
            raise ValueError('io_backend.verify_checksum applies to io_backend type lmdb only')

    def _labels(self):
        """The label of each pair (a list aligned with ``self.pairs``), or ``None`` for an unlabelled dataset."""
        if self.opt.get('label') is not None:
            return [check_label(self.opt['label'], 'label')] * len(self.pairs)
        keys = self._keys()
        if self.listed is not None and any(label for _, _, label, _ in self.listed):
            labels, where = {lq: label for lq, _, label, _ in self.listed if label}, self.opt['meta_info_file']
        elif self.backend == 'lmdb':
            labels, where = read_lmdb_labels(self.roots[0], 'dataroot_lq'), f'{self.roots[0]}/meta_info.txt'
        else:
            return None
        if not labels:
            return None
        check_labels(labels, keys, where)
        return [labels[key] for key in keys]

    def _keys(self):
        """Each pair's key: its LMDB key, or its lq file's stem."""
        return [lq if self.backend == 'lmdb' else stem(lq) for lq, _ in self.pairs]

    def _label_maps(self):
        """Each pair's label map reference (``None``: filled from its label), or ``None`` for no label maps."""
        wanted = self.opt.get('label_maps')
        if wanted not in (None, True, False):
            raise ValueError(f'label_maps: expected true or false, got {wanted!r}')
        if wanted is False:
            return None
        if self.listed is not None:
            refs = {lq: ref for lq, _, _, ref in self.listed if ref}
        else:
            refs = read_lmdb_label_maps(self.roots[0], 'dataroot_lq') if self.backend == 'lmdb' else {}
        if not refs and not wanted:
            return None
        keys = self._keys()
        found = [refs.get(key) for key in keys]
        label_maps.check_refs(found, keys, self.sizes)
        self.fill_label_maps(found)
        return found

    def fill_label_maps(self, refs=None):
        """Return label maps from now on, filled from their labels for the pairs without one (``refs``: the
        pairs' references, default those found); ``DataError`` when such a pair's label has no index."""
        refs = refs or self.label_maps or [None] * len(self.pairs)
        missing = [key for key, ref in zip(self._keys(), refs) if ref is None]
        if missing and self.labels is None:
            raise DataError(
                f'{len(missing)} pair(s) with neither a label map (labelmap=) nor a label to fill one from: '
                f'{culprits(missing)}'
            )
        self.fill_values = {
            label: label_maps.fill_value(label, 'label') for label, ref in zip(self.labels or [], refs) if ref is None
        }
        self.label_maps = refs

    def _load_label_map(self, index, size):
        """``(H, W, 1)`` uint8 label map of pair ``index``, read or filled."""
        ref, lq_ref = self.label_maps[index], self.pairs[index][0]
        if ref is None:
            return label_maps.filled((*size, 1), self.fill_values[self.labels[index]])
        key = lq_ref if self.backend == 'lmdb' else stem(lq_ref)
        return label_maps.load(ref, key, size, self.verify_checksum, **self.io_opt)[:, :, None].copy()

    def _disk_pairs(self):
        lq_dir, gt_dir = self.roots
        try:
            lq, gt = list_images(lq_dir, 'dataroot_lq'), list_images(gt_dir, 'dataroot_gt')
        except ValueError as err:
            hint = ' (an LMDB folder: set io_backend: {type: lmdb})' if 'data.mdb' in str(err) else ''
            raise type(err)(f'{err}{hint}') from None
        stems = pair_stems(
            lq, gt, self.opt.get('pair_rule', 'identical'), self.listed, self.opt.get('skip_unpaired', False)
        )
        pairs = [(os.path.join(lq_dir, lq[a]), os.path.join(gt_dir, gt[b])) for a, b in stems]
        return pairs, check_sizes(pairs)

    def _lmdb_pairs(self):
        metas = [read_lmdb_meta(root, key) for root, key in zip(self.roots, ('dataroot_lq', 'dataroot_gt'))]
        for root, meta, key in zip(self.roots, metas, ('dataroot_lq', 'dataroot_gt')):
            _check_stored(root, meta, key, self.io_opt)
        check_same_pack(*self.roots)
        pairs = pair_stems(
            metas[0],
            metas[1],
            self.opt.get('pair_rule', 'identical'),
            self.listed,
            self.opt.get('skip_unpaired', False),
        )
        mismatched = [
            f'{a} {metas[0][a][:2]} vs {b} {metas[1][b][:2]}' for a, b in pairs if metas[0][a][:2] != metas[1][b][:2]
        ]
        if mismatched:
            raise DataError(
                f'{len(mismatched)} pair(s) with different lq/gt sizes (h, w) in meta_info.txt '
                f'of dataroot_lq / dataroot_gt: {culprits(mismatched)}'
            )
        return pairs, [metas[0][a][:2] for a, _ in pairs]

    def _check_crop(self, sizes):
        if not (self.train and self.gt_size):
            return
        small = [f'{lq} ({h}x{w})' for (lq, _), (h, w) in zip(self.pairs, sizes) if min(h, w) < self.gt_size]
        if small:
            raise ValueError(f'gt_size {self.gt_size} is larger than {len(small)} image(s): {culprits(small)}')

    def _load(self, ref, side):
        """``(h, w[, c])`` uint8/uint16 image: a file (disk) or an entry of the lq/gt LMDB."""
        if self.backend != 'lmdb':
            return read_image_file(ref)
        return read_lmdb_entry(self.roots[side == 'gt'], ref, self.verify_checksum, **self.io_opt)

    def __getitem__(self, index):
        lq_ref, gt_ref = self.pairs[index]
        try:
            lq, gt = self._load(lq_ref, 'lq'), self._load(gt_ref, 'gt')
        except DataError as err:
            raise type(err)(f'{self.where}{err}') from None
        if lq.shape[:2] != gt.shape[:2]:
            raise DataError(f'{self.where}{lq_ref} {lq.shape[:2]} and {gt_ref} {gt.shape[:2]} differ in size')
        extra = []
        if self.label_maps is not None:
            try:
                extra = [self._load_label_map(index, lq.shape[:2])]
            except DataError as err:
                raise type(err)(f'{self.where}{err}') from None
        if self.train and self.gt_size:  # the label map is cropped as a second gt image: at the same place
            gts, lq = paired_random_crop([gt, *extra], lq, self.gt_size, 1, gt_ref)
            gt, *extra = gts if extra else [gts]  # one image comes back bare, not in a list
            extra = [np.ascontiguousarray(m) for m in extra]
        lq, gt = to_float_bgr(lq), to_float_bgr(gt)
        if self.train and (self.use_hflip or self.use_rot):
            lq, gt, *extra = augment([lq, gt, *extra], self.use_hflip, self.use_rot)
        lq, gt = img2tensor([lq, gt], bgr2rgb=True, float32=True)
        if self.mean is not None:
            normalize(lq, self.mean, self.std, inplace=True)
            normalize(gt, self.mean, self.std, inplace=True)
        sample = {'lq': lq, 'gt': gt, 'lq_path': lq_ref, 'gt_path': gt_ref}
        if self.labels is not None:
            sample['label'] = self.labels[index]
        if extra:
            sample['label_map'] = torch.from_numpy(np.ascontiguousarray(extra[0][:, :, 0])).long()
        return sample

    def __len__(self):
        return len(self.pairs)


def _check_stored(root, meta, option, io_opt):
    """Every key of ``meta_info.txt`` must be stored in the LMDB at ``root`` (keys only are read)."""
    try:
        with lmdb_env(root, **io_opt).begin(write=False) as txn:
            stored = {k.decode('ascii', 'replace') for k in txn.cursor().iternext(keys=True, values=False)}
    except DataError as err:
        raise type(err)(f'{option}: {err}') from None
    except lmdb.Error as err:
        raise DataError(
            f'{option}: {root}: damaged database ({type(err).__name__}: {err}); re-pack with '
            '`datasets_lmdb pack --overwrite`'
        ) from None
    missing = sorted(set(meta) - stored)
    if missing:
        raise DataError(
            f'{option}: {len(missing)} key(s) of {root}/meta_info.txt not stored in the LMDB '
            f'(half-written or wrong meta_info.txt?): {culprits(missing)}'
        )
