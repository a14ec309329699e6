"""Fixtures for the fault-injection tests: a small disk that fills up, and SIGKILL at a chosen point.

``small_disk(size)`` mounts a tmpfs of ``size`` bytes (root can; CI runs as root). Where mounting is
impossible, the test is not skipped: ``enospc_writes`` patches ``os.write`` and file objects' writes in
the current process to fail with ``ENOSPC`` once ``limit`` bytes were written under a folder, which stands in
for a full disk in-process. Subprocess tests use ``small_disk`` only and say so when it is unavailable.
"""
import contextlib
import os
import shutil
import subprocess
import uuid

import pytest


def can_mount_tmpfs():
    """True when this process may mount a tmpfs (root with CAP_SYS_ADMIN, mount(8) present)."""
    if os.geteuid() != 0 or shutil.which('mount') is None:
        return False
    probe = f'/tmp/gmmoe-tmpfs-probe-{uuid.uuid4().hex}'
    os.makedirs(probe)
    try:
        done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], capture_output=True)
        if done.returncode != 0:
            return False
        subprocess.run(['umount', probe], check=True)
        return True
    finally:
        os.rmdir(probe)


TMPFS = can_mount_tmpfs()


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size_bytes) -> Path``: a fresh tmpfs of that size, unmounted after the test.

    Skips only where tmpfs cannot be mounted; tests with an in-process fallback use ``enospc_writes``.
    """
    mounts = []

    def make(size):
        if not TMPFS:
            pytest.skip('cannot mount a tmpfs here (needs root); the in-process ENOSPC variant covers this case')
        path = tmp_path / f'disk{len(mounts)}'
        path.mkdir()
        subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={int(size)}', 'tmpfs', str(path)], check=True)
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(['umount', '-l', str(path)], check=False)


@contextlib.contextmanager
def enospc_writes(folder, limit=0):
    """Inside the block, writes through ``os.write`` and buffered/raw files under ``folder`` fail with
    ``OSError(ENOSPC)`` once more than ``limit`` bytes were written there (a full disk, in-process)."""
    import builtins
    import errno
    import io

    folder = os.path.realpath(folder)
    written = {'n': 0}
    fds = set()
    real_open, real_os_open, real_write = builtins.open, os.open, os.write

    def charge(n):
        written['n'] += n
        if written['n'] > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def inside(path):
        try:
            return os.path.realpath(os.fspath(path)).startswith(folder + os.sep)
        except TypeError:
            return False

    class FullFile(io.FileIO):
        def write(self, b):
            charge(len(memoryview(b)))
            return super().write(b)

    def fake_open(file, mode='r', *args, **kwargs):
        if inside(file) and any(m in mode for m in 'wax+'):
            raw = FullFile(file, mode.replace('t', '').replace('b', '').replace('+', '') + ('+' if '+' in mode else ''))
            if 'b' in mode and kwargs.get('buffering', args[0] if args else -1) == 0:
                return raw
            buffered = io.BufferedWriter(raw) if '+' not in mode else io.BufferedRandom(raw)
            if 'b' in mode:
                return buffered
            return io.TextIOWrapper(buffered, encoding=kwargs.get('encoding') or 'utf-8',
                                    newline=kwargs.get('newline'))
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        fd = real_os_open(path, flags, *args, **kwargs)
        if inside(path):
            fds.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in fds:
            charge(len(memoryview(data)))
        return real_write(fd, data)

    builtins.open, os.open, os.write = fake_open, fake_os_open, fake_write
    try:
        yield written
    finally:
        builtins.open, os.open, os.write = real_open, real_os_open, real_write
