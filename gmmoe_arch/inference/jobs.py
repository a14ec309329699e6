"""Batches of image files: which files, where their outputs go, and the loop that enhances them.

:func:`collect_jobs` expands files, folders and globs into :class:`Job` s (folders and ``**`` follow symlinked
folders but not symlink loops; a folder yields every format the reader decodes and counts the files it passes
over; an output that is an input, by path or by device and inode, is refused).
:func:`check_writable` probes the output folders before any work. :func:`enhance_jobs` reads, enhances and
writes each image, recording a failure per image (unreadable, truncated, several frames, oversized, out of
memory, a non-finite output, unwritable) and going on with the rest; :func:`enhance_paths` does all of it
for the Python API with each check done once.
"""

import fnmatch
import glob
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from .errors import EnhanceError
from .image_files import DEFAULT_MAX_IMAGE_PIXELS, READABLE_EXTENSIONS, read_image, write_image
from .runner import DEFAULT_STAT_PASSES, RunOptions, network_device, run_image
from .tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, Tiling

_MEMORY_HINT = 'lower --max-pixels (the tile size) or --max-image-pixels'


def check_writable(folders: Iterable[str], what: str) -> None:
    """Raise :class:`EnhanceError` unless files can be created in each of ``folders``.

    A folder that does not exist yet is checked through its nearest existing ancestor (where it
    would be created). The check creates and removes a probe file, so it finds read-only file
    systems and missing permissions alike (root ignores permission bits but not a read-only mount).
    """
    probed = set()
    for folder in folders:
        probe = os.path.abspath(folder or '.')
        while not os.path.lexists(probe):
            probe = os.path.dirname(probe)
        if probe in probed:
            continue
        if not os.path.isdir(probe):
            raise EnhanceError(f'{what} {folder}: {probe} is not a folder')
        try:
            fd, name = tempfile.mkstemp(dir=probe, prefix='.gmmoe-probe-')
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise EnhanceError(f'{what} {folder}: cannot write in {probe} ({exc.strerror or exc})') from exc
        probed.add(probe)


@dataclass
class Job:
    """One image: where it is read from, where it goes, and its name in reports."""

    src: str
    dst: str
    name: str


def _join(folder: str, name: str) -> str:
    return os.path.join(folder, name) if folder else name


def _subfolders(folder: str, hidden: bool = True) -> Iterator[str]:
    """``folder`` and every folder below it, depth first in name order, following symlinked folders
    except into a folder that is already on the way down (same device and inode), so that symlink
    loops end. ``hidden=False`` skips names starting with a dot, as glob's ``**`` does. Unreadable
    folders are passed over, as ``os.walk`` does."""
    stack = [(folder, frozenset())]
    while stack:
        current, above = stack.pop()
        try:
            st = os.stat(current or '.')
            names = sorted(os.listdir(current or '.'))
        except OSError:
            continue
        here = (st.st_dev, st.st_ino)
        if here in above:
            continue
        yield current
        subs = [_join(current, n) for n in names if hidden or not n.startswith('.')]
        stack += [(d, above | {here}) for d in reversed(subs) if os.path.isdir(d)]


def _glob(pattern: str) -> list[str]:
    """Paths matching a glob ``pattern`` (``*``, ``?``, ``[...]`` within a name, ``**`` any number
    of folders), like ``glob.glob(pattern, recursive=True)`` but safe on symlink loops (see
    :func:`_subfolders`)."""
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else '')
    return sorted(set(_match(root, parts[first:])))


def _match(folder: str, parts: list[str]) -> list[str]:
    """Paths below ``folder`` matching the pattern components ``parts``."""
    if not parts:
        return [folder]
    head, rest = parts[0], parts[1:]
    if head == '**':
        return [p for sub in _subfolders(folder, hidden=False) for p in _match(sub, rest or ['*'])]
    if not glob.has_magic(head):
        path = _join(folder, head)
        return _match(path, rest) if os.path.lexists(path) else []
    try:
        names = sorted(os.listdir(folder or '.'))
    except OSError:  # not a folder, or unreadable
        return []
    names = [n for n in names if fnmatch.fnmatch(n, head) and (head.startswith('.') or not n.startswith('.'))]
    return [p for n in names for p in _match(_join(folder, n), rest)]


def _image_files(folder: str, skipped: MutableMapping[str, int]) -> list[tuple[str, str]]:
    """Image files in ``folder`` and below (symlinked folders followed, loops not): ``(path, relative path)``.

    A file is an image file by its extension (:data:`~.image_files.READABLE_EXTENSIONS`); every other file
    is counted in ``skipped`` under its lower-case extension (``''`` for none)."""
    found = []
    for sub in _subfolders(folder):
        for name in sorted(os.listdir(sub)):
            path = _join(sub, name)
            if not os.path.isfile(path):
                continue
            if name.lower().endswith(READABLE_EXTENSIONS):
                found.append(path)
            else:
                ext = os.path.splitext(name)[1].lower()
                skipped[ext] = skipped.get(ext, 0) + 1
    return [(f, os.path.relpath(f, folder)) for f in found]


def describe_skipped(skipped: dict[str, int]) -> str:
    """``'3 other file(s) in the folders passed over (2 .txt, 1 without an extension)'``, ``''`` for none."""
    if not skipped:
        return ''
    kinds = sorted(skipped.items(), key=lambda item: (-item[1], not item[0], item[0]))
    named = ', '.join(f'{n} {ext or "without an extension"}' for ext, n in kinds)
    return f'{sum(skipped.values())} other file(s) in the folders passed over ({named})'


def _file_id(path: str) -> Optional[tuple[int, int]]:
    """``(device, inode)`` of an existing file (symlinks followed), None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def collect_jobs(
    inputs: Iterable[str], out_dir: str, suffix: str = '', skipped: Optional[MutableMapping[str, int]] = None
) -> list[Job]:
    """Expand files, folders (recursively, relative structure kept) and globs into :class:`Job` s.

    Folders and ``**`` follow symlinked folders, but never into a folder they are already inside,
    so symlink loops end. A folder yields its files of every format the reader decodes
    (:data:`~.image_files.READABLE_EXTENSIONS`); the others are counted in ``skipped`` by extension
    (see :func:`describe_skipped`). Files and globs are taken whatever their extension.
    Raises :class:`EnhanceError` for an input that matches nothing, two inputs writing the same
    output, or an output that is an input: the same path, or the same file (device and inode)
    reached through a hard link, a symlink or another mount.
    """
    jobs = []
    skipped = {} if skipped is None else skipped
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            jobs += _image_files(item, skipped)
        elif os.path.isfile(item):
            jobs.append((item, os.path.basename(item)))
        elif glob.has_magic(item):
            found = [f for f in _glob(item) if os.path.isfile(f)]
            if not found:
                raise EnhanceError(f'input {item}: the pattern matches no files')
            jobs += [(f, os.path.basename(f)) for f in found]
        else:
            raise EnhanceError(f'input {item}: no such file or folder')
    result, targets = [], {}
    sources = {os.path.realpath(src) for src, _ in jobs}
    source_ids = {_file_id(src): src for src, _ in jobs}
    for src, rel in jobs:
        stem, ext = os.path.splitext(rel)
        dst = os.path.join(str(out_dir), stem + suffix + ext)
        real = os.path.realpath(dst)
        same = source_ids.get(_file_id(dst)) if os.path.exists(dst) else None
        if real in sources or same is not None:
            raise EnhanceError(
                f'output {dst} would overwrite the input {same or src} (the same file'
                f'{"" if real in sources else ", through a hard link or mount"}): choose another '
                '-o folder or a --suffix'
            )
        if real in targets and targets[real] != os.path.realpath(src):
            raise EnhanceError(f'inputs {targets[real]} and {src} would both be written to {dst}')
        if real not in targets:
            targets[real] = os.path.realpath(src)
            result.append(Job(src, dst, rel))
    return result


@dataclass
class Summary:
    """What :func:`enhance_jobs` did: written outputs, failures ``(name, message)``, per-image gates; and
    (from :func:`enhance_paths`) the files folder scans passed over, by extension."""

    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    gates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    tiles: int = 0
    seconds: float = 0.0


def enhance_paths(
    inputs: Iterable[str],
    out_dir: str,
    net: nn.Module,
    suffix: str = '',
    *,
    tile: Optional[int] = None,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = 'fp32',
    stat_passes: int = DEFAULT_STAT_PASSES,
    record: bool = False,
    progress: bool = False,
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
) -> Summary:
    """Enhance every image named by ``inputs`` (files, folders, globs) into ``out_dir``; return a :class:`Summary`.

    The options are checked, the jobs collected (:func:`collect_jobs`) and their output folders checked
    writable (:func:`check_writable`), each once and before any image is read; then :func:`enhance_jobs`.
    ``tile``, ``overlap``, ``max_pixels``: :class:`~.tiling.Tiling`; ``precision``, ``stat_passes``:
    :class:`~.runner.RunOptions`; ``max_image_pixels``: :func:`~.image_files.read_image` (None: no limit).
    """
    tiling = Tiling(tile, overlap, max_pixels)
    options = RunOptions(network_device(net), precision, stat_passes)
    skipped = {}
    jobs = collect_jobs(inputs, out_dir, suffix, skipped)
    check_writable({os.path.dirname(job.dst) for job in jobs}, 'output folder')
    summary = enhance_jobs(jobs, net, tiling, options, max_image_pixels, record, progress)
    summary.skipped = skipped
    return summary


def enhance_jobs(
    jobs: list[Job],
    net: nn.Module,
    tiling: Tiling,
    options: RunOptions,
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
    record: bool = False,
    progress: bool = False,
) -> Summary:
    """Enhance each :class:`Job` with checked options (``options.device`` is ``net``'s); return a :class:`Summary`.

    The caller has checked the output folders (:func:`check_writable`). An image that cannot be read
    (damaged, truncated, several frames), is larger than ``max_image_pixels``, runs out of memory, gives a
    non-finite output or cannot be written is recorded in ``Summary.failed``, nothing is written under its
    name, and the rest are processed; each output is written atomically. ``record=True``
    fills ``Summary.gates[name] = {block: [w_expert...]}``; ``progress`` shows a bar for several images.
    """
    from tqdm import tqdm

    summary = Summary()
    start = time.perf_counter()
    for job in tqdm(jobs, unit='img', disable=not progress or len(jobs) < 2, dynamic_ncols=True):
        gates = {} if record else None
        try:
            summary.tiles += _enhance_file(job, net, tiling, options, max_image_pixels, gates)
        except EnhanceError as exc:
            summary.failed.append((job.name, str(exc)))
            continue
        summary.written.append(job.dst)
        if record:
            summary.gates[job.name] = {path: g.tolist() for path, g in gates.items()}
    summary.seconds = time.perf_counter() - start
    return summary


def _enhance_file(
    job: Job,
    net: nn.Module,
    tiling: Tiling,
    options: RunOptions,
    max_image_pixels: Optional[int],
    gates: Optional[dict],
) -> int:
    """Read, enhance and write one image; return its number of tiles. Running out of memory (host or
    GPU) and a non-finite output are an :class:`EnhanceError` for this image only."""
    try:
        img = read_image(job.src, max_image_pixels)
        try:
            out, tiles = run_image(net, img, tiling, options, gates)
        except EnhanceError as exc:  # the runner knows the array, not the file
            raise EnhanceError(f'{job.src}: {exc}') from exc
        del img  # the input is not needed while the output is encoded and written
        write_image(job.dst, out)
    except MemoryError as exc:
        raise EnhanceError(f'{job.src}: out of memory ({type(exc).__name__}); {_MEMORY_HINT}') from exc
    except RuntimeError as exc:  # torch reports allocation failures (CPU and CUDA) as RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = f'; {_MEMORY_HINT}' if 'memory' in str(exc).lower() else ''
        raise EnhanceError(f'{job.src}: the network failed on this image ({first}){hint}') from exc
    return tiles
