"""Per-pixel degradation label maps of paired sets: checked when a dataset is built, read with each sample.

A pair's label map is an ``(H, W)`` uint8 image of the pair's size whose value at each pixel is the index of
the degradation there (:func:`~gmmoe_arch.data.degradations.label_indices`: the table's order). It is named
by a ``labelmap=REF`` field of the pair's meta_info line (:mod:`.pairing`): ``REF`` a PNG file, or an LMDB
folder that stores it under the pair's key (``datasets_lmdb synth --degradation regions`` writes
``labelmap/<stem>.png`` and, with ``--lmdb``, ``lmdb/labelmap.lmdb``). A pair without one can be given the
map filled with its label's index (:func:`filled`), so that batches mixing both collate.

Problems raise ``DataError`` (``MissingDataError`` for what does not exist) naming the label map's file, or
its LMDB and key.
"""

import os

import numpy as np

from . import degradations
from .image_io import DataError, MissingDataError, read_image_file, read_lmdb_entry, read_size
from .pairing import culprits, read_lmdb_meta


def is_lmdb(ref):
    """True for a reference to an LMDB folder (its entry under the pair's key is the map)."""
    return os.path.normpath(ref).endswith('.lmdb')


def check_refs(refs, keys, sizes):
    """Every label map of ``refs`` (one per pair, ``None`` for none) exists and has its pair's size.

    ``keys``: the pairs' keys (LMDB key or lq stem), ``sizes``: their ``(h, w)``. Reads PNG headers and the
    LMDBs' ``meta_info.txt`` only. One ``DataError`` naming the first few bad maps."""
    problems, metas = [], {}
    for ref, key, size in zip(refs, keys, sizes):
        if ref is None:
            continue
        if is_lmdb(ref):
            if ref not in metas:
                metas[ref] = read_lmdb_meta(ref, f'labelmap={ref} (of {key})')
            shape = metas[ref].get(key)
            if shape is None:
                problems.append(f'{ref}: no label map under key {key} (not in its meta_info.txt)')
                continue
            found = shape[:2] if shape[2] == 1 else shape
        elif not os.path.isfile(ref):
            raise MissingDataError(f'{ref}: label map of {key} not found; synthesize the set again')
        else:
            found = read_size(ref)
        if tuple(found) != tuple(size):
            problems.append(
                f'{ref}{_at_key(ref, key)}: label map of size {_hxw(found)}, its pair {key} is {_hxw(size)}'
            )
    if problems:
        raise DataError(f'{len(problems)} bad label map(s): {culprits(problems)}')


def _at_key(ref, key):
    return f' key {key}' if is_lmdb(ref) else ''


def _hxw(size):
    return 'x'.join(str(n) for n in size)


def load(ref, key, size, verify_checksum=False, **lmdb_options):
    """The label map of pair ``key`` at ``ref``: uint8 ``(H, W)`` of ``size``; ``DataError`` naming it when it
    is not a one-channel 8-bit image of that size with values that index the degradation table."""
    where = f'{ref}{_at_key(ref, key)}'
    img = read_lmdb_entry(ref, key, verify_checksum, **lmdb_options) if is_lmdb(ref) else read_image_file(ref)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype != np.uint8 or img.ndim != 2:
        raise DataError(f'{where}: a label map is a one-channel 8-bit image, got {img.dtype} {img.shape}')
    if img.shape != tuple(size):
        raise DataError(f'{where}: label map of size {_hxw(img.shape)}, its pair {key} is {_hxw(size)}')
    count = len(degradations.TABLE)
    if int(img.max()) >= count:
        raise DataError(
            f'{where}: label map value {int(img.max())} is no degradation (the table has {count}: '
            f'{", ".join(degradations.TABLE)})'
        )
    return img


def fill_value(label, where):
    """The index of ``label`` in the degradation table; ``DataError`` naming ``where`` for one it lacks."""
    index = degradations.label_indices().get(label)
    if index is None:
        raise DataError(
            f'{where}: label {label!r} has no index in the degradation table ({", ".join(degradations.TABLE)}), '
            'so its pairs get no label map; register it (docs/data.md) or set label_maps: false'
        )
    return index


def filled(size, value):
    """A label map of ``size`` (h, w) holding ``value`` everywhere: that of a pair with one degradation."""
    return np.full(size, value, np.uint8)
