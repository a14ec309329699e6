"""Check packed LMDBs: every entry decodes (raw entries against their CRC-32), matches its ``meta_info.txt``
shape, and sibling lq/gt databases agree in keys, sizes and pack run. Damaged files (bad header, truncated
``data.mdb``) are reported as problems, never a crash; ``.partial-*`` folders are reported separately as
leftovers of interrupted packs (:func:`find_leftovers`)."""

import os

import lmdb
from tqdm import tqdm

from gmmoe_arch.data.image_io import DataError, decode, has_checksum, is_raw, lmdb_env, shape3
from gmmoe_arch.data.pack_info import check_same_pack
from gmmoe_arch.data.pairing import read_lmdb_meta

from .output import PARTIAL, describe_leftover, leftovers


def _walk(path):
    """``(lmdb folders, leftover folders)`` below ``path``; nothing inside ``.partial-*`` counts as an LMDB."""
    found, partial = [], []
    for d, subdirs, _ in os.walk(path):
        partial += [os.path.join(d, name) for name in subdirs if name.startswith(PARTIAL)]
        found += [
            os.path.normpath(os.path.join(d, name))
            for name in subdirs
            if name.endswith('.lmdb') and not name.startswith(PARTIAL)
        ]
        subdirs[:] = [name for name in subdirs if not name.startswith(PARTIAL) and not name.endswith('.lmdb')]
    return sorted(found), sorted(partial)


def find_lmdbs(path):
    """``path`` itself when it is a ``*.lmdb`` folder, else every ``*.lmdb`` folder below it (outside
    ``.partial-*`` leftovers), sorted."""
    if os.path.normpath(path).endswith('.lmdb'):
        return [os.path.normpath(path)]
    found, partial = _walk(path)
    if not found:
        extra = (
            f' (only leftovers of interrupted packs: {"; ".join(map(describe_leftover, partial))})' if partial else ''
        )
        raise FileNotFoundError(f'{path}: no *.lmdb folder found{extra}')
    return found


def find_leftovers(path):
    """One line per ``.partial-*`` folder at or below ``path``: what it is and what to do (see ``output``)."""
    if os.path.normpath(path).endswith('.lmdb'):
        return [describe_leftover(p) for p in leftovers(os.path.dirname(os.path.abspath(path)))]
    return [describe_leftover(p) for p in _walk(path)[1]]


def check_lmdb(path, progress=True):
    """Decode every entry of one LMDB. Returns ``(meta, problems, unchecked)``: ``{key: (h, w, c)}`` (``None``
    when the database cannot be opened), messages, and the number of raw entries without a checksum
    (packed before checksums existed)."""
    try:
        meta = read_lmdb_meta(path, path)
        env = lmdb_env(path)
    except (OSError, ValueError) as err:
        return None, [str(err)], 0
    problems, seen, unchecked = [], set(), 0
    try:
        with env.begin(write=False) as txn:
            for key_bytes, buf in tqdm(
                txn.cursor(), total=txn.stat()['entries'], unit='img', desc=f'verify {path}', disable=not progress
            ):
                key = key_bytes.decode('ascii', 'replace')
                seen.add(key)
                unchecked += is_raw(buf) and not has_checksum(buf)
                problems += _check_entry(path, key, buf, meta)
    except lmdb.Error as err:
        problems.append(
            f'{path}: damaged database ({type(err).__name__}: {err}) after {len(seen)} entries; '
            're-pack with `datasets_lmdb pack --overwrite`'
        )
        return meta, problems, unchecked
    problems += [f'{path}: key {key} is listed in meta_info.txt but not stored' for key in sorted(set(meta) - seen)]
    return meta, problems, unchecked


def _check_entry(path, key, buf, meta):
    if key not in meta:
        return [f'{path}: key {key} is stored but not listed in meta_info.txt']
    try:
        shape = shape3(decode(buf, f'{path}: key {key}', verify_checksum=True))
    except DataError as err:
        return [str(err)]
    if shape != meta[key]:
        return [f'{path}: key {key} decodes to {shape}, meta_info.txt says {meta[key]}']
    return []


def verify(path, progress=True, notes=None):
    """Check every LMDB under ``path``; sibling ``lq.lmdb``/``gt.lmdb`` must share keys, sizes and pack run.

    Returns ``(checked, problems)``: ``{lmdb path: number of entries}`` and a list of messages
    (empty when everything is sound). Remarks that are not problems (raw entries without a checksum)
    are appended to ``notes`` when a list is given.
    """
    problems, metas, broken = [], {}, set()
    for db in find_lmdbs(path):
        meta, found, unchecked = check_lmdb(db, progress)
        metas[db] = meta or {}
        if meta is None:
            broken.add(db)
        problems += found
        if unchecked and notes is not None:
            notes.append(
                f'{db}: {unchecked} raw entries carry no checksum (packed by an older version); re-pack to protect them'
            )
    for db in metas:
        side = os.path.basename(db)
        if side not in ('lq.lmdb', 'gt.lmdb'):
            continue
        other = os.path.join(os.path.dirname(db), 'gt.lmdb' if side == 'lq.lmdb' else 'lq.lmdb')
        if other not in metas:
            if db != os.path.normpath(path):
                hint = (
                    ' (a pack was interrupted while replacing them: see the leftover; pack again with --overwrite)'
                    if leftovers(os.path.dirname(db))
                    else ''
                )
                problems.append(f'{db}: no sibling {os.path.basename(other)}{hint}')
            continue
        if side == 'lq.lmdb' and not {db, other} & broken:
            problems += _check_siblings(db, other, metas[db], metas[other])
    return {db: len(meta) for db, meta in metas.items()}, problems


def _check_siblings(lq, gt, lq_meta, gt_meta):
    problems = []
    try:
        check_same_pack(lq, gt)
    except DataError as err:
        problems.append(str(err))
    problems += [f'key {key} is in only one of {lq} and {gt}' for key in sorted(set(lq_meta) ^ set(gt_meta))]
    problems += [
        f'key {key}: lq {lq_meta[key][:2]} and gt {gt_meta[key][:2]} differ in size'
        for key in sorted(set(lq_meta) & set(gt_meta))
        if lq_meta[key][:2] != gt_meta[key][:2]
    ]
    return problems
