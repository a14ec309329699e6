"""Check packed LMDBs: every entry decodes, matches its ``meta_info.txt`` shape, and lq/gt agree."""
import os

from tqdm import tqdm

from gmmoe_arch.data.image_io import decode, lmdb_env, shape3
from gmmoe_arch.data.pairing import read_lmdb_meta


def find_lmdbs(path):
    """``path`` itself when it is a ``*.lmdb`` folder, else every ``*.lmdb`` folder below it, sorted."""
    if os.path.normpath(path).endswith('.lmdb'):
        return [os.path.normpath(path)]
    found = sorted(os.path.normpath(os.path.join(d, name)) for d, subdirs, _ in os.walk(path)
                   for name in subdirs if name.endswith('.lmdb'))
    if not found:
        raise FileNotFoundError(f'{path}: no *.lmdb folder found')
    return found


def check_lmdb(path, progress=True):
    """Decode every entry of one LMDB. Returns ``(meta, problems)``: ``{key: (h, w, c)}``, messages."""
    try:
        meta = read_lmdb_meta(path, path)
    except (OSError, ValueError) as err:
        return {}, [str(err)]
    problems, seen = [], set()
    with lmdb_env(path).begin(write=False) as txn:
        for key_bytes, buf in tqdm(txn.cursor(), total=txn.stat()['entries'], unit='img',
                                   desc=f'verify {path}', disable=not progress):
            key = key_bytes.decode('ascii', 'replace')
            seen.add(key)
            if key not in meta:
                problems.append(f'{path}: key {key} is stored but not listed in meta_info.txt')
                continue
            try:
                shape = shape3(decode(buf, f'{path}: key {key}'))
            except ValueError as err:
                problems.append(str(err))
                continue
            if shape != meta[key]:
                problems.append(f'{path}: key {key} decodes to {shape}, meta_info.txt says {meta[key]}')
    problems += [f'{path}: key {key} is listed in meta_info.txt but not stored' for key in sorted(set(meta) - seen)]
    return meta, problems


def verify(path, progress=True):
    """Check every LMDB under ``path``; sibling ``lq.lmdb``/``gt.lmdb`` must share keys and sizes.

    Returns ``(checked, problems)``: ``{lmdb path: number of entries}`` and a list of messages
    (empty when everything is sound).
    """
    problems, metas = [], {}
    for db in find_lmdbs(path):
        metas[db], found = check_lmdb(db, progress)
        problems += found
    for db in metas:
        if os.path.basename(os.path.normpath(db)) != 'lq.lmdb':
            continue
        gt = os.path.join(os.path.dirname(os.path.normpath(db)), 'gt.lmdb')
        if gt not in metas:
            if db != os.path.normpath(path):
                problems.append(f'{db}: no sibling gt.lmdb')
            continue
        lq_meta, gt_meta = metas[db], metas[gt]
        for key in sorted(set(lq_meta) ^ set(gt_meta)):
            problems.append(f'key {key} is in only one of {db} and {gt}')
        for key in sorted(set(lq_meta) & set(gt_meta)):
            if lq_meta[key][:2] != gt_meta[key][:2]:
                problems.append(f'key {key}: lq {lq_meta[key][:2]} and gt {gt_meta[key][:2]} differ in size')
    return {db: len(meta) for db, meta in metas.items()}, problems
