"""Shared fixtures: the reference vectors, a stand-alone BasicSR plug-in, a small disk that fills up.

The reference vectors in ``tests/reference`` are copies of the released network's test vectors (see its README).
Helper functions live in ``helpers.py``.
"""

import os
import subprocess

import pytest

from helpers import REFERENCE, REPO, TINY_PLUGIN, can_mount_tmpfs


@pytest.fixture(scope='session')
def reference_dir():
    assert REFERENCE.is_dir(), f'reference vectors not found at {REFERENCE}'
    return REFERENCE


@pytest.fixture(scope='session')
def ref(reference_dir):
    """The reference vectors (``gmmoe_w8_io.pt``) plus ``checkpoint``: the released-format weights' path."""
    import torch

    io = torch.load(reference_dir / 'gmmoe_w8_io.pt', weights_only=True)
    io['checkpoint'] = reference_dir / 'gmmoe_w8_net_g.pth'
    return io


@pytest.fixture(scope='session')
def tiny_plugin(tmp_path_factory):
    """A folder holding package ``tinyplug`` with a ``basicsr.plugins`` entry point; add it to PYTHONPATH."""
    root = tmp_path_factory.mktemp('plugin')
    (root / 'tinyplug').mkdir()
    (root / 'tinyplug' / '__init__.py').write_text(TINY_PLUGIN)
    info = root / 'tinyplug-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text('[basicsr.plugins]\ntinyplug = tinyplug\n')
    return root


@pytest.fixture
def plugin_env(tiny_plugin):
    """Environment for subprocesses: the repository and the test plug-in importable, one thread."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(tiny_plugin), str(REPO), env.get('PYTHONPATH', '')])
    env['OMP_NUM_THREADS'] = '1'
    return env


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
