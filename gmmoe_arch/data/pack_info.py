"""The pack marker: ``pack_info.json`` beside ``meta_info.txt`` in each LMDB that ``datasets_lmdb pack`` writes.

Content: ``{"generation": "<32 hex digits>", "side": "lq"|"gt", "form": "raw"|"png", "entries": N}``.
Both databases of one pack run carry the same generation, so a pair mixed from two runs (a run killed
while it replaced them, or a copy from elsewhere) is recognised by ``datasets_lmdb verify`` and by
``LLIEPairedDataset``. Databases without the marker (packed by BasicSR or by older versions) are read
as before; BasicSR ignores the file.
"""

import json
import os

from .image_io import DataError

PACK_INFO = 'pack_info.json'


def write_pack_info(lmdb_dir, generation, side, form, entries):
    """Write ``lmdb_dir/pack_info.json`` (see the module docstring)."""
    info = {'generation': generation, 'side': side, 'form': form, 'entries': entries}
    with open(os.path.join(lmdb_dir, PACK_INFO), 'w', encoding='ascii') as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())


def read_pack_info(lmdb_dir):
    """The marker of one LMDB as a dict, ``None`` when it has none; ``DataError`` when it is unreadable."""
    path = os.path.join(lmdb_dir, PACK_INFO)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='ascii') as f:
            info = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(
            f'{path}: unreadable pack marker ({err}); re-pack with `datasets_lmdb pack --overwrite`'
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get('generation'), str):
        raise DataError(f'{path}: pack marker without a generation; re-pack with `datasets_lmdb pack --overwrite`')
    return info


def check_same_pack(lq_dir, gt_dir):
    """Raise ``DataError`` when sibling ``lq_dir``/``gt_dir`` (one parent folder) come from different pack runs.

    LMDBs in different folders are a deliberate combination and are not compared.
    """
    if os.path.dirname(os.path.realpath(lq_dir)) != os.path.dirname(os.path.realpath(gt_dir)):
        return
    lq, gt = read_pack_info(lq_dir), read_pack_info(gt_dir)
    if lq is None and gt is None:
        return
    if lq is None or gt is None:
        marked, unmarked = (lq_dir, gt_dir) if gt is None else (gt_dir, lq_dir)
        detail = f'{marked} carries a pack marker and {unmarked} does not'
    elif lq['generation'] != gt['generation']:
        detail = f'pack generations differ ({lq["generation"][:8]} vs {gt["generation"][:8]})'
    else:
        return
    raise DataError(
        f'{lq_dir} and {gt_dir} come from different pack runs ({detail}): a pack was interrupted while '
        'it replaced them, or one was copied from elsewhere; pack them again with '
        '`datasets_lmdb pack ... --overwrite`'
    )
