"""Pack a folder pair (lq, gt) into ``lq.lmdb`` and ``gt.lmdb`` with shared keys and ``meta_info.txt``.

Layout of one packed pair, readable by ``LLIEPairedDataset`` (and, in ``png`` form, by BasicSR's
``PairedImageDataset``)::

    <out_dir>/lq.lmdb/{data.mdb, lock.mdb, meta_info.txt, pack_info.json}
    <out_dir>/gt.lmdb/{data.mdb, lock.mdb, meta_info.txt, pack_info.json}

The key of a pair is the lq file's stem. ``meta_info.txt`` lines follow BasicSR:
``KEY.png (h,w,c) 1`` for the ``png`` form (PNG, compression 1, exactly what
``basicsr.utils.lmdb_util`` stores) and ``KEY.raw (h,w,c) uint8|uint16`` for the ``raw`` form (see
:mod:`gmmoe_arch.data.image_io`), each followed by ``label=NAME`` when the pairs are labelled
(``labels``). Images are stored as OpenCV reads them (BGR, 8/16-bit, grayscale kept single-channel).

Safety (see :mod:`datasets_lmdb.output`): one pack at a time per output folder (a lock); both
databases are written into ``<out_dir>/.partial-<pid>-*``, flushed, and moved into place only when every
pair was read and stored, as one unit marked with the run's generation (``pack_info.json``); a failure,
interrupt or full disk removes the partial folder and leaves existing databases as they were; a previous pair
that a killed run left only inside its partial folder is restored by the next pack. Existing
``lq.lmdb``/``gt.lmdb`` are never touched without ``overwrite``. Sources are read by the same decoder
as ``LLIEPairedDataset`` (:func:`gmmoe_arch.data.image_io.decode`): truncated files and decompression
bombs are refused, never packed. Raw entries carry a CRC-32 that ``verify`` checks.

``basicsr.utils.lmdb_util`` is reused where it serves: the ``png`` form uses its encoding settings
(``compress_level=1``) and the benchmark packs with ``make_lmdb_from_imgs`` itself; its
``LmdbMaker`` is not used because it exits the process when a path exists and always writes
``.png`` meta lines, and its ``read_img_worker`` does not report unreadable files.
"""

import errno
import multiprocessing
import os
import shutil
import tempfile
import uuid

import cv2
import lmdb
from tqdm import tqdm

from gmmoe_arch.data.image_io import DataError, encode_raw, read_image_file, shape3
from gmmoe_arch.data.pack_info import write_pack_info
from gmmoe_arch.data.pairing import (
    LABEL_PREFIX,
    LABELMAP_PREFIX,
    SHOWN,
    check_labels,
    check_sizes,
    culprits,
    list_images,
    pair_stems,
)

from .output import PARTIAL, SIDES, PackError, output_locks, replace_pair, settle_leftovers

FORMS = ('raw', 'png')
DEFAULT_FORM = 'raw'
PNG_COMPRESS_LEVEL = 1  # basicsr.utils.lmdb_util's default
COMMIT_EVERY = 64
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def find_pairs(lq_dir, gt_dir, pair_rule='identical', skip_unpaired=False):
    """``[(key, lq_path, gt_path)]`` for the images of two folders (see ``gmmoe_arch.data.pairing``)."""
    lq, gt = list_images(lq_dir, '--lq folder'), list_images(gt_dir, '--gt folder')
    stems = pair_stems(lq, gt, pair_rule, skip_unpaired=skip_unpaired, where=(lq_dir, gt_dir))
    non_ascii = [lq_stem for lq_stem, _ in stems if not lq_stem.isascii() or ' ' in lq_stem]
    if non_ascii:
        raise DataError(f'LMDB keys must be ASCII without spaces; rename: {culprits(non_ascii)} in {lq_dir}')
    return [
        (lq_stem, os.path.join(lq_dir, lq[lq_stem]), os.path.join(gt_dir, gt[gt_stem])) for lq_stem, gt_stem in stems
    ]


def encode(img, form):
    """Bytes, meta_info extension and tag of one OpenCV image in ``form`` (``'raw'`` or ``'png'``)."""
    if form == 'raw':
        return encode_raw(img), 'raw', img.dtype.name
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESS_LEVEL])
    if not ok:
        raise DataError('PNG encoding failed')
    return buf.tobytes(), 'png', str(PNG_COMPRESS_LEVEL)


def _read_pair(job):
    """Worker: read and encode one pair. Returns ``(key, [(bytes, shape, ext, tag)] * 2, None)`` or
    ``(key, None, message)``."""
    key, lq_path, gt_path, form = job
    entries = []
    for path in (lq_path, gt_path):
        try:
            img = read_image_file(path)
        except DataError as err:
            return key, None, str(err)
        buf, ext, tag = encode(img, form)
        entries.append((buf, shape3(img), ext, tag))
    if entries[0][1][:2] != entries[1][1][:2]:
        return key, None, f'{lq_path} {entries[0][1][:2]} vs {gt_path} {entries[1][1][:2]}: sizes differ'
    return key, entries, None


class _Writer:
    """One LMDB being written, with its ``meta_info.txt`` lines; ``written`` counts the bytes put."""

    def __init__(self, path, map_size):
        self.path = path
        self.env = lmdb.open(path, map_size=map_size)
        self.txn = self.env.begin(write=True)
        self.lines = []
        self.written = 0

    def put(self, key, buf, shape, ext, tag, label=None, label_map=None):
        self.txn.put(key.encode('ascii'), buf)
        self.written += len(buf)
        suffix = (f' {LABEL_PREFIX}{label}' if label else '') + (f' {LABELMAP_PREFIX}{label_map}' if label_map else '')
        self.lines.append(f'{key}.{ext} ({shape[0]},{shape[1]},{shape[2]}) {tag}{suffix}\n')
        if len(self.lines) % COMMIT_EVERY == 0:
            self.txn.commit()
            self.txn = self.env.begin(write=True)

    def finish(self, generation, side, form):
        """Commit, flush to disk, and write ``meta_info.txt`` and the pack marker."""
        self.txn.commit()
        self.txn = None
        self.env.sync(True)
        with open(os.path.join(self.path, 'meta_info.txt'), 'w', encoding='ascii') as f:
            f.writelines(self.lines)
            f.flush()
            os.fsync(f.fileno())
        write_pack_info(self.path, generation, side, form, len(self.lines))

    def close(self):
        if self.txn is not None:
            try:
                self.txn.abort()
            except lmdb.Error:  # a transaction whose commit failed is already gone
                pass
        self.env.close()


def write_lmdb(path, images, form=None, side='images'):
    """Write ``images`` (``[(key, OpenCV array)]``) into a new LMDB at ``path`` in ``form``, with its
    ``meta_info.txt`` and a pack marker of ``side``; for a caller that owns the folder above ``path``
    (``datasets_lmdb synth`` writes its label maps so, inside its partial output)."""
    form = _check_form(form)
    writer = _Writer(path, sum(img.nbytes for _, img in images) * 2 + (64 << 20))
    try:
        for key, img in images:
            buf, ext, tag = encode(img, form)
            writer.put(key, buf, shape3(img), ext, tag)
        writer.finish(uuid.uuid4().hex, side, form)
    finally:
        writer.close()


def _results(jobs, workers):
    if workers <= 1:
        yield from map(_read_pair, jobs)
        return
    with multiprocessing.get_context('fork').Pool(workers) as pool:
        yield from pool.imap(_read_pair, jobs, chunksize=2)


def check_targets(out_dir, overwrite):
    """Raise ``FileExistsError`` when ``out_dir`` already holds ``lq.lmdb``/``gt.lmdb`` (unless overwrite)."""
    existing = [p for p in (os.path.join(out_dir, 'lq.lmdb'), os.path.join(out_dir, 'gt.lmdb')) if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(
            f'{culprits(existing)} already exist(s): pass --overwrite (overwrite=True) to '
            f'replace, or check with `datasets_lmdb verify {out_dir}`'
        )


def pack_pairs(
    lq_dir,
    gt_dir,
    out_dir,
    pair_rule='identical',
    form=None,
    workers=None,
    progress=True,
    overwrite=False,
    skip_unpaired=False,
    labels=None,
    label_maps=None,
):
    """Pack paired folders into ``out_dir/lq.lmdb`` and ``out_dir/gt.lmdb``; returns the number of pairs.

    Args:
        lq_dir, gt_dir (str): folders of low-light (input) and normal-light (target) images.
        out_dir (str): created if needed; receives ``lq.lmdb`` and ``gt.lmdb``.
        pair_rule: ``'identical'``, ``'lol_v2_real'``, ``{'lq': REGEX, 'gt': TEMPLATE}`` (or its JSON/YAML
            text) or ``'REGEX->TEMPLATE'`` (see ``gmmoe_arch.data.pairing``).
        form (str | None): ``'raw'`` (default, fastest to read) or ``'png'`` (BasicSR's form).
        workers (int | None): reader processes (default: up to 4, one per CPU); 1 reads in-process.
        progress (bool): show a tqdm bar.
        overwrite (bool): replace existing databases (only after the new ones are complete).
        skip_unpaired (bool): pack the pairs found and ignore files without a partner.
        labels (dict | None): ``{key: label}`` (key: the lq stem) for every pair: each ``meta_info.txt``
            line then ends with ``label=<label>`` (see ``gmmoe_arch.data.pairing``).
        label_maps (dict | None): ``{key: REF}`` for the pairs with a per-pixel label map: their lines then
            end with ``labelmap=<REF>`` (REF relative to the database folder, e.g. ``../labelmap.lmdb``,
            written by the caller with :func:`write_lmdb`).
    """
    form = _check_form(form)
    pairs, sizes = plan_pack(lq_dir, gt_dir, out_dir, pair_rule, overwrite, skip_unpaired)
    if labels is not None:
        check_labels(labels, [key for key, _, _ in pairs], 'labels')
    return write_pairs(pairs, sizes, out_dir, form, workers, progress, overwrite, labels, label_maps)


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


def write_pairs(
    pairs, sizes, out_dir, form=None, workers=None, progress=True, overwrite=False, labels=None, label_maps=None
):
    """Write planned ``pairs`` (from :func:`plan_pack`) into ``out_dir/{lq,gt}.lmdb``, holding its lock."""
    with output_locks([out_dir]):
        return write_pairs_locked(pairs, sizes, out_dir, form, workers, progress, overwrite, labels, label_maps)


def write_pairs_locked(
    pairs, sizes, out_dir, form=None, workers=None, progress=True, overwrite=False, labels=None, label_maps=None
):
    """:func:`write_pairs` for a caller that holds ``out_dir``'s lock (see :func:`~.output.output_locks`)."""
    form = _check_form(form)
    settle_leftovers(out_dir)  # first: it may restore a previous pair that only a leftover holds
    check_targets(out_dir, overwrite)  # again, under the lock: another run may have finished meanwhile
    workers = workers or min(4, os.cpu_count() or 1)
    # upper bound of one database: 4 channels of 16 bits per pixel, plus LMDB page overhead
    map_size = sum(h * w for h, w in sizes) * 8 + (64 << 20)
    tmp = tempfile.mkdtemp(prefix=f'{PARTIAL}{os.getpid()}-', dir=out_dir)
    keep_tmp = False
    try:
        writers = [_Writer(os.path.join(tmp, f'{side}.lmdb'), map_size) for side in SIDES]
        try:
            _store(pairs, writers, out_dir, form, workers, progress, labels or {}, label_maps or {})
        except (lmdb.Error, OSError) as err:
            raise PackError(_write_failure(out_dir, err, writers)) from None
        finally:
            for writer in writers:
                writer.close()
        try:
            replace_pair(tmp, out_dir)
        except PackError:
            keep_tmp = True
            raise
    finally:
        if not keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return len(pairs)


def _store(pairs, writers, out_dir, form, workers, progress, labels, label_maps):
    """Read, encode and store every pair; finish both databases only when all succeeded."""
    jobs = [(key, lq, gt, form) for key, lq, gt in pairs]
    results = _results(jobs, workers)
    errors = []
    try:
        for key, entries, error in tqdm(
            results,
            total=len(jobs),
            unit='pair',
            disable=not progress,
            desc=f'pack {os.path.basename(os.path.dirname(pairs[0][1]))}',
        ):
            if error:
                errors.append(error)
                if len(errors) >= SHOWN:
                    break
                continue
            for writer, entry in zip(writers, entries):
                writer.put(key, *entry, labels.get(key), label_maps.get(key))
    finally:
        results.close()
    if errors:
        raise DataError(f'{out_dir} not written, {len(errors)}+ pair(s) failed: {culprits(errors)}')
    generation = uuid.uuid4().hex
    for writer, side in zip(writers, SIDES):
        writer.finish(generation, side, form)


def _write_failure(out_dir, err, writers):
    """One line for a failed write: a full disk said as such, with what was written so far."""
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError:
        free = None
    what = f'{type(err).__name__}: {err}' if isinstance(err, lmdb.Error) else str(err)
    kept = (
        'existing lq.lmdb/gt.lmdb are untouched'
        if any(os.path.exists(os.path.join(out_dir, f'{s}.lmdb')) for s in SIDES)
        else 'nothing was written'
    )
    if _disk_full(err, free, writers):
        written = sum(w.written for w in writers)
        return (
            f'{out_dir}: not written, the disk is full ({_mb(free)} free after {_mb(written)} of data; {what}); '
            f'{kept}. Free space or choose another --out, then run again'
        )
    return f'{out_dir}: not written ({what}); {kept}'


def _disk_full(err, free, writers):
    if getattr(err, 'errno', None) in _FULL_ERRNOS or 'No space left' in str(err):
        return True
    # LMDB reports a short write as EIO: less room than one commit of average entries means a full disk
    entries = sum(len(w.lines) for w in writers)
    one_commit = COMMIT_EVERY * sum(w.written for w in writers) / max(entries, 1) + (1 << 20)
    return free is not None and free < one_commit


def _mb(n):
    return 'unknown' if n is None else f'{n / 2**20:.1f} MB'
