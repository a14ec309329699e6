"""Pack a folder pair (lq, gt) into ``lq.lmdb`` and ``gt.lmdb`` with shared keys and ``meta_info.txt``.

Layout of one packed pair, readable by ``LLIEPairedDataset`` (and, in ``png`` form, by BasicSR's
``PairedImageDataset``)::

    <out_dir>/lq.lmdb/{data.mdb, lock.mdb, meta_info.txt}
    <out_dir>/gt.lmdb/{data.mdb, lock.mdb, meta_info.txt}

The key of a pair is the lq file's stem. ``meta_info.txt`` lines follow BasicSR:
``KEY.png (h,w,c) 1`` for the ``png`` form (PNG, compression 1, exactly what
``basicsr.utils.lmdb_util`` stores) and ``KEY.raw (h,w,c) uint8|uint16`` for the ``raw`` form (see
:mod:`gmmoe_arch.data.image_io`). Images are stored as OpenCV reads them (BGR, 8/16-bit,
grayscale kept single-channel).

Atomicity: both databases are written into ``<out_dir>/.partial-<pid>-*`` and renamed into place only
when every pair was read and stored; a failure or interrupt removes the partial folder, and leftovers
of killed runs are removed by the next run. Existing ``lq.lmdb``/``gt.lmdb`` are never touched
without ``overwrite``.

``basicsr.utils.lmdb_util`` is reused where it serves: the ``png`` form uses its encoding settings
(``compress_level=1``) and the benchmark packs with ``make_lmdb_from_imgs`` itself; its
``LmdbMaker`` is not used because it exits the process when a path exists and always writes
``.png`` meta lines, and its ``read_img_worker`` does not report unreadable files.
"""
import multiprocessing
import os
import shutil
import tempfile

import cv2
import lmdb
from tqdm import tqdm

from gmmoe_arch.data.image_io import encode_raw, shape3
from gmmoe_arch.data.pairing import SHOWN, check_sizes, culprits, list_images, pair_stems

FORMS = ('raw', 'png')
DEFAULT_FORM = 'raw'
PNG_COMPRESS_LEVEL = 1  # basicsr.utils.lmdb_util's default
COMMIT_EVERY = 64
_PARTIAL = '.partial-'


def find_pairs(lq_dir, gt_dir, pair_rule='identical', skip_unpaired=False):
    """``[(key, lq_path, gt_path)]`` for the images of two folders (see ``gmmoe_arch.data.pairing``)."""
    lq, gt = list_images(lq_dir, 'lq folder'), list_images(gt_dir, 'gt folder')
    stems = pair_stems(lq, gt, pair_rule, skip_unpaired=skip_unpaired, where=(lq_dir, gt_dir))
    non_ascii = [lq_stem for lq_stem, _ in stems if not lq_stem.isascii() or ' ' in lq_stem]
    if non_ascii:
        raise ValueError(f'LMDB keys must be ASCII without spaces; rename: {culprits(non_ascii)} in {lq_dir}')
    return [(lq_stem, os.path.join(lq_dir, lq[lq_stem]), os.path.join(gt_dir, gt[gt_stem]))
            for lq_stem, gt_stem in stems]


def encode(img, form):
    """Bytes, meta_info extension and tag of one OpenCV image in ``form`` (``'raw'`` or ``'png'``)."""
    if form == 'raw':
        return encode_raw(img), 'raw', img.dtype.name
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESS_LEVEL])
    if not ok:
        raise ValueError('PNG encoding failed')
    return buf.tobytes(), 'png', str(PNG_COMPRESS_LEVEL)


def _read_pair(job):
    """Worker: read and encode one pair. Returns ``(key, [(bytes, shape, ext, tag)] * 2, None)`` or
    ``(key, None, message)``."""
    key, lq_path, gt_path, form = job
    entries = []
    for path in (lq_path, gt_path):
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            return key, None, f'{path}: not a readable image'
        if img.dtype.name not in ('uint8', 'uint16'):
            return key, None, f'{path}: unsupported pixel type {img.dtype} (use 8- or 16-bit images)'
        buf, ext, tag = encode(img, form)
        entries.append((buf, shape3(img), ext, tag))
    if entries[0][1][:2] != entries[1][1][:2]:
        return key, None, f'{lq_path} {entries[0][1][:2]} vs {gt_path} {entries[1][1][:2]}: sizes differ'
    return key, entries, None


class _Writer:
    """One LMDB being written, with its ``meta_info.txt`` lines."""

    def __init__(self, path, map_size):
        self.path = path
        self.env = lmdb.open(path, map_size=map_size)
        self.txn = self.env.begin(write=True)
        self.lines = []

    def put(self, key, buf, shape, ext, tag):
        self.txn.put(key.encode('ascii'), buf)
        self.lines.append(f'{key}.{ext} ({shape[0]},{shape[1]},{shape[2]}) {tag}\n')
        if len(self.lines) % COMMIT_EVERY == 0:
            self.txn.commit()
            self.txn = self.env.begin(write=True)

    def close(self, keep):
        if keep:
            self.txn.commit()
            with open(os.path.join(self.path, 'meta_info.txt'), 'w', encoding='ascii') as f:
                f.writelines(self.lines)
        else:
            self.txn.abort()
        self.env.close()


def _results(jobs, workers):
    if workers <= 1:
        yield from map(_read_pair, jobs)
        return
    with multiprocessing.get_context('fork').Pool(workers) as pool:
        yield from pool.imap(_read_pair, jobs, chunksize=2)


def _remove_leftovers(out_dir):
    """Remove ``.partial-<pid>-*`` folders of pack runs that are no longer alive."""
    for name in os.listdir(out_dir):
        if not name.startswith(_PARTIAL):
            continue
        pid = name[len(_PARTIAL):].split('-', 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        print(f'datasets_lmdb: removing {os.path.join(out_dir, name)} left by an interrupted run')
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def check_targets(out_dir, overwrite):
    """Raise ``FileExistsError`` when ``out_dir`` already holds ``lq.lmdb``/``gt.lmdb`` (unless overwrite)."""
    existing = [p for p in (os.path.join(out_dir, 'lq.lmdb'), os.path.join(out_dir, 'gt.lmdb'))
                if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f'{culprits(existing)} already exist(s): pass --overwrite (overwrite=True) to '
                              f'replace, or check with `datasets_lmdb verify {out_dir}`')


def pack_pairs(lq_dir, gt_dir, out_dir, pair_rule='identical', form=None, workers=None, progress=True,
               overwrite=False, skip_unpaired=False):
    """Pack paired folders into ``out_dir/lq.lmdb`` and ``out_dir/gt.lmdb``; returns the number of pairs.

    Args:
        lq_dir, gt_dir (str): folders of low-light (input) and normal-light (target) images.
        out_dir (str): created if needed; receives ``lq.lmdb`` and ``gt.lmdb``.
        pair_rule: ``'identical'``, ``'lol_v2_real'``, ``{'lq': REGEX, 'gt': TEMPLATE}`` or
            ``'REGEX->TEMPLATE'`` (see ``gmmoe_arch.data.pairing``).
        form (str | None): ``'raw'`` (default, fastest to read) or ``'png'`` (BasicSR's form).
        workers (int | None): reader processes (default: up to 4, one per CPU); 1 reads in-process.
        progress (bool): show a tqdm bar.
        overwrite (bool): replace existing databases (only after the new ones are complete).
        skip_unpaired (bool): pack the pairs found and ignore files without a partner.
    """
    form = _check_form(form)
    pairs, sizes = plan_pack(lq_dir, gt_dir, out_dir, pair_rule, overwrite, skip_unpaired)
    return write_pairs(pairs, sizes, out_dir, form, workers, progress)


def _check_form(form):
    form = form or DEFAULT_FORM
    if form not in FORMS:
        raise ValueError(f'form: expected one of {FORMS}, got {form!r}')
    return form


def plan_pack(lq_dir, gt_dir, out_dir, pair_rule='identical', overwrite=False, skip_unpaired=False):
    """Check targets, pairs and image headers before anything is written -> ``(pairs, sizes)``."""
    check_targets(out_dir, overwrite)
    pairs = find_pairs(lq_dir, gt_dir, pair_rule, skip_unpaired)
    return pairs, check_sizes([(lq, gt) for _, lq, gt in pairs])


def write_pairs(pairs, sizes, out_dir, form=None, workers=None, progress=True):
    """Write planned ``pairs`` (from :func:`plan_pack`) atomically into ``out_dir/{lq,gt}.lmdb``."""
    form = _check_form(form)
    workers = workers or min(4, os.cpu_count() or 1)
    # upper bound of one database: 4 channels of 16 bits per pixel, plus LMDB page overhead
    map_size = sum(h * w for h, w in sizes) * 8 + (64 << 20)
    os.makedirs(out_dir, exist_ok=True)
    _remove_leftovers(out_dir)
    tmp = tempfile.mkdtemp(prefix=f'{_PARTIAL}{os.getpid()}-', dir=out_dir)
    try:
        writers = [_Writer(os.path.join(tmp, f'{side}.lmdb'), map_size) for side in ('lq', 'gt')]
        jobs = [(key, lq, gt, form) for key, lq, gt in pairs]
        results = _results(jobs, workers)
        errors, complete = [], False
        try:
            for key, entries, error in tqdm(results, total=len(jobs), unit='pair', disable=not progress,
                                            desc=f'pack {os.path.basename(os.path.dirname(pairs[0][1]))}'):
                if error:
                    errors.append(error)
                    if len(errors) >= SHOWN:
                        break
                    continue
                for writer, entry in zip(writers, entries):
                    writer.put(key, *entry)
            complete = not errors
        finally:
            results.close()
            for writer in writers:
                writer.close(keep=complete)
        if errors:
            raise ValueError(f'{out_dir} not written, {len(errors)}+ pair(s) failed: {culprits(errors)}')
        for side in ('lq', 'gt'):
            target = os.path.join(out_dir, f'{side}.lmdb')
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(os.path.join(tmp, f'{side}.lmdb'), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(pairs)
