"""The output folder of one pack: its lock, leftovers of interrupted runs, and replacing lq/gt as one unit.

* **Lock**: ``<out>/.pack.lock`` holds an ``flock`` and the holder's pid while a pack writes there; a
  second pack into the same folder fails at once naming the folder and the holder. The kernel drops
  the lock when the holder dies, so a killed run never blocks the next one.
* **Leftovers**: a run writes into ``<out>/.partial-<pid>-*``; one that was killed leaves that folder
  behind. The next pack (holding the lock, so no live run owns any) removes them, but first restores a
  previous pair that a leftover holds the only copy of (a run killed while replacing it), and keeps one
  beside a newer pair; ``verify`` names them all, ``datasets_lmdb restore`` restores without packing.
* **Replacing**: the previous ``lq.lmdb``/``gt.lmdb`` are moved into the partial folder, the new ones
  moved in, and only then is the partial folder (with the previous pair) removed. Every database carries
  the run's generation (``pack_info.json``), so a pair left mixed by a kill between these renames is
  refused by ``verify`` and ``LLIEPairedDataset`` instead of being read as one.
"""

import contextlib
import fcntl
import os
import shutil

from gmmoe_arch.data.image_io import DataError
from gmmoe_arch.data.pack_info import read_pack_info

LOCK_NAME = '.pack.lock'
PARTIAL = '.partial-'
SIDES = ('lq', 'gt')


class PackError(RuntimeError):
    """A pack that could not write its output (folder busy, disk full, ...): a one-line message."""


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode('ascii', 'replace').strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _same_file(fd, path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


def _acquire(folder):
    """Lock ``folder`` for this process -> the lock file's descriptor; ``PackError`` when another holds it."""
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise PackError(
                f'{folder}: another `datasets_lmdb pack` (pid {holder or "unknown"}) is writing into '
                'this folder; wait for it to finish or stop it, then run again'
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    with contextlib.suppress(OSError):  # the pid is only for messages; a full disk must not stop here
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode('ascii'), 0)
    return fd


@contextlib.contextmanager
def output_locks(folders):
    """Hold the pack lock of every folder (created if needed) for the block; see the module docstring."""
    held = []
    try:
        for folder in sorted(set(folders)):
            os.makedirs(folder, exist_ok=True)
            held.append((folder, _acquire(folder)))
        yield
    finally:
        for folder, fd in reversed(held):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, LOCK_NAME))
            os.close(fd)


def lock_holder(folder):
    """Pid of the live pack holding ``folder``'s lock (``-1`` if unknown), ``None`` when nobody holds it."""
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    finally:
        os.close(fd)
    return None


def leftovers(folder):
    """Paths of the ``.partial-*`` folders inside ``folder``, sorted."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if n.startswith(PARTIAL))


def _generation(db):
    """The pack generation of the LMDB folder ``db`` (``None`` without a readable marker)."""
    try:
        info = read_pack_info(db)
    except DataError:
        return None
    return info and info['generation']


def _previous_sides(partial):
    return [s for s in SIDES if os.path.isdir(os.path.join(partial, f'previous-{s}.lmdb'))]


def leftover_kind(partial):
    """What a ``.partial-*`` folder of a pack holds -> ``(kind, sides with a previous database)``.

    ``'partial'``: only an interrupted run's own databases. ``'restorable'``: the previous database(s) of
    the folder, whose places there are empty or hold what the interrupted run moved in (its generation):
    the only copy, put back by :func:`settle_leftovers`. ``'replaced'``: the previous pair, and a complete
    newer pair in place (the run was killed while removing them). ``'conflict'``: the previous pair, and
    other databases in place that the interrupted run did not write.
    """
    folder = os.path.dirname(partial)
    previous = _previous_sides(partial)
    if not previous:
        return 'partial', previous
    new = {_generation(os.path.join(partial, f'{s}.lmdb')) for s in SIDES} - {None}
    in_place = [
        os.path.join(folder, f'{s}.lmdb') for s in previous if os.path.lexists(os.path.join(folder, f'{s}.lmdb'))
    ]
    if all(_generation(db) in new for db in in_place):
        return 'restorable', previous
    current = {_generation(os.path.join(folder, f'{s}.lmdb')) for s in SIDES}
    if not new and len(current) == 1 and None not in current:
        return 'replaced', previous
    return 'conflict', previous


def _pair_names(sides):
    return '/'.join(f'{s}.lmdb' for s in sides)


def describe_leftover(path):
    """One line saying what a ``.partial-*`` folder is and what to do about it."""
    folder = os.path.dirname(path)
    holder = lock_holder(folder)
    if holder is not None:
        return f'{path}: a pack (pid {holder}) is writing into {folder} right now'
    return _describe_contents(path)


def _describe_contents(path):
    """:func:`describe_leftover` for a folder whose lock nobody (or the caller) holds."""
    folder = os.path.dirname(path)
    kind, previous = leftover_kind(path)
    names = _pair_names(previous)
    if kind == 'restorable':
        return (
            f'{path}: holds the previous {names} of {folder}, their only copy (a `datasets_lmdb pack --overwrite` '
            f'was interrupted while replacing them): restore with `datasets_lmdb restore {folder}` (the next '
            'pack into it restores them first)'
        )
    if kind == 'replaced':
        return (
            f'{path}: holds the previous {names} of {folder}, replaced by a pack that was interrupted before '
            'removing them (the new pair is in place); delete it when you no longer need them'
        )
    if kind == 'conflict':
        return (
            f'{path}: holds the previous {names} of {folder}, but the databases there now are not from the '
            f'interrupted pack, so nothing is restored automatically: move {path}/previous-*.lmdb back by hand '
            'or delete it'
        )
    inside = ', '.join(sorted(os.listdir(path))) or 'nothing'
    return (
        f'{path}: leftover of an interrupted pack (holds {inside}); the next `datasets_lmdb pack` into '
        f'{folder} removes it, or delete it'
    )


def _swap_in(partial, folder, sides, aside, incoming):
    """For each of ``sides``: ``folder/<side>.lmdb`` (if any) moves to ``partial/<aside>``, then
    ``partial/<incoming>`` moves to ``folder/<side>.lmdb`` (``aside``/``incoming``: formats of the side)."""
    for side in sides:
        target = os.path.join(folder, f'{side}.lmdb')
        if os.path.lexists(target):
            os.rename(target, os.path.join(partial, aside.format(side)))
    for side in sides:
        os.rename(os.path.join(partial, incoming.format(side)), os.path.join(folder, f'{side}.lmdb'))
    _fsync_dir(folder)


def _restore(partial, previous):
    """Put ``partial``'s previous databases back; what the interrupted run moved in goes back into ``partial``."""
    _swap_in(partial, os.path.dirname(partial), previous, aside='{}.lmdb', incoming='previous-{}.lmdb')


def settle_leftovers(folder):
    """Deal with every ``.partial-*`` folder in ``folder``, saying what was done; call only holding its lock.

    The only copy of a previous pair is restored, a previous pair beside a newer one is kept (and named),
    and what is left of an interrupted run's own output is removed (see :func:`leftover_kind`).
    """
    restored = []
    for path in leftovers(folder):
        kind, previous = leftover_kind(path)
        if kind in ('replaced', 'conflict'):
            print(f'datasets_lmdb: kept {_describe_contents(path)}')
            continue
        if kind == 'restorable':
            _restore(path, previous)
            print(
                f'datasets_lmdb: restored the previous {_pair_names(previous)} of {folder} from {path}, '
                'left there by an interrupted `pack --overwrite`'
            )
            restored.append(path)
        print(f'datasets_lmdb: removing {path}, leftover of an interrupted pack')
        shutil.rmtree(path, ignore_errors=True)
    return restored


def replace_pair(partial, folder):
    """Move ``partial/{lq,gt}.lmdb`` to ``folder``; the previous pair goes to ``partial/previous-*``.

    Raises ``PackError`` (and keeps ``partial``, which then holds the previous pair) if a rename fails.
    """
    try:
        _swap_in(partial, folder, SIDES, aside='previous-{}.lmdb', incoming='{}.lmdb')
    except OSError as err:
        raise PackError(
            f'{folder}: moving the new lq.lmdb/gt.lmdb into place failed ({err}); the previous ones are in {partial}'
        ) from None


def _fsync_dir(folder):
    """Make the renames in ``folder`` durable (a rename is atomic at once, but on disk only after this)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
