"""The output folder of one pack: its lock, leftovers of interrupted runs, and replacing lq/gt as one unit.

* **Lock**: ``<out>/.pack.lock`` holds an ``flock`` and the holder's pid while a pack writes there; a
  second pack into the same folder fails at once naming the folder and the holder. The kernel drops
  the lock when the holder dies, so a killed run never blocks the next one.
* **Leftovers**: a run writes into ``<out>/.partial-<pid>-*``; one that was killed leaves that folder
  behind. The next pack (holding the lock, so no live run owns any) removes them; ``verify`` names them.
* **Replacing**: the previous ``lq.lmdb``/``gt.lmdb`` are moved into the partial folder, the new ones
  moved in, and only then is the partial folder (with the previous pair) removed. Every database carries
  the run's generation (``pack_info.json``), so a pair left mixed by a kill between these renames is
  refused by ``verify`` and ``LLIEPairedDataset`` instead of being read as one.
"""

import contextlib
import fcntl
import os
import shutil

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


def describe_leftover(path):
    """One line saying what a ``.partial-*`` folder is and what to do about it."""
    folder = os.path.dirname(path)
    holder = lock_holder(folder)
    if holder is not None:
        return f'{path}: a pack (pid {holder}) is writing into {folder} right now'
    inside = ', '.join(sorted(os.listdir(path))) or 'nothing'
    return (
        f'{path}: leftover of an interrupted pack (holds {inside}); the next `datasets_lmdb pack` into '
        f'{folder} removes it, or delete it'
    )


def remove_leftovers(folder):
    """Remove every ``.partial-*`` folder in ``folder``; call only while holding its lock."""
    for path in leftovers(folder):
        print(f'datasets_lmdb: removing {path}, leftover of an interrupted pack')
        shutil.rmtree(path, ignore_errors=True)


def replace_pair(partial, folder):
    """Move ``partial/{lq,gt}.lmdb`` to ``folder``; the previous pair goes to ``partial/previous-*``.

    Raises ``PackError`` (and keeps ``partial``, which then holds the previous pair) if a rename fails.
    """
    try:
        for side in SIDES:
            target = os.path.join(folder, f'{side}.lmdb')
            if os.path.lexists(target):
                os.rename(target, os.path.join(partial, f'previous-{side}.lmdb'))
        for side in SIDES:
            os.rename(os.path.join(partial, f'{side}.lmdb'), os.path.join(folder, f'{side}.lmdb'))
        _fsync_dir(folder)
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
