"""Helpers shared by the tests (fixtures are in conftest.py): the reference network, tiny training runs,
paired images and option files, and fault injection. Test modules import them with ``from helpers import ...``.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import torch

import gmmoe_arch  # noqa: F401  (first: applies the basicsr compat patches before any basicsr import)
from gmmoe_arch.archs.gmmoe_arch import ExpertBlock, activate_branches  # noqa: F401,E402  (the tests import it from here)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / 'reference'


@contextlib.contextmanager
def registered(registry, cls):
    """``cls`` in BasicSR ``registry`` within the block only (basicsr's Registry has no public removal)."""
    registry.register(cls)
    try:
        yield cls
    finally:
        registry._obj_map.pop(cls.__name__, None)


def reference_net(ref, dtype=None):
    """The reference network in ``dtype`` (default float64), loaded strictly by BasicSR's ``load_network``."""
    import torch
    from basicsr.models.base_model import BaseModel

    from gmmoe_arch import GMMoE

    net = GMMoE(**ref['config'])
    BaseModel({'num_gpu': 0, 'is_train': False}).load_network(net, str(ref['checkpoint']), strict=True)
    return net.to(dtype or torch.float64).eval()


def nafnet_state_dict(**size):
    """A NAFNet's state dict of ``size`` (``width``, block counts): intro, encoders, downs, middle_blks, ups,
    decoders, ending, blocks of norm1, conv1-5, sca, beta, gamma. It is a GM-MoE's without the SFEB, the gates,
    the colour and detail experts and the feature expert's parallel convs (tests/test_spandrel_arch.py checks
    it against spandrel's NAFNet)."""
    from gmmoe_arch import GMMoE

    dropped = ('.GateNetwork.', '.Expert1.', '.Expert2.', '.conv11.', '.conv33.', '.conv55.')
    return {
        k: v
        for k, v in GMMoE(**size).state_dict().items()
        if not k.startswith('MSFEblock.') and not any(part in k for part in dropped)
    }


TINY_PLUGIN = '''
"""A stand-alone BasicSR plug-in used by the tests: one tiny registered network."""
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn


@ARCH_REGISTRY.register()
class TinyPlugNet(nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)
'''


def run_basicsr(args, cwd, env, timeout=300):
    """The ``basicsr`` command (``python -m gmmoe_arch.cli``) with ``args``, output captured."""
    return subprocess.run(
        [sys.executable, '-m', 'gmmoe_arch.cli'] + args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_two_ranks(opt, cwd, env):
    """``basicsr train -opt opt`` under torchrun with 2 ranks (gloo on CPU); returns the completed run and
    each rank's final ``net_g`` state dict (BasicSR itself saves rank 0's only; see ddp_rank_dump.py)."""
    import torch

    dump = cwd / 'rank_dump'
    dump.mkdir()
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--standalone',
        '--nproc_per_node=2',
        str(Path(__file__).parent / 'ddp_rank_dump.py'),
        str(dump),
        'train',
        '-opt',
        str(opt),
        '--launcher',
        'pytorch',
    ]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, [torch.load(dump / f'rank{r}.pth', weights_only=True) for r in (0, 1)]


def assert_ranks_match_saved(ranks, saved_path):
    """Both ranks hold identical weights, and BasicSR's saved ``params`` are exactly those."""
    import torch

    rank0, rank1 = ranks
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = torch.load(saved_path, weights_only=True)['params']
    assert saved.keys() == rank0.keys() and all(torch.equal(saved[k], rank0[k]) for k in rank0)


def write_pairs(root, n=4, size=(48, 40), seed=0):
    """Write ``n`` paired PNGs: ``root/gt`` clean images and ``root/lq`` darker noisy versions."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / 'gt').mkdir(parents=True, exist_ok=True)
    (root / 'lq').mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gt = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        gt = cv2.GaussianBlur(gt, (5, 5), 0)
        lq = np.clip(gt * 0.3 + rng.normal(0, 3, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'gt' / f'{i:03d}.png'), gt)
        cv2.imwrite(str(root / 'lq' / f'{i:03d}.png'), lq)
    return root


def tiny_train_options(data, name='tiny', total_iter=4, checkpoint_freq=2, model_type='SRModel'):
    """BasicSR train options for TinyPlugNet with BasicSR's own PairedImageDataset on ``data``."""
    pairs = {
        'type': 'PairedImageDataset',
        'dataroot_gt': str(data / 'gt'),
        'dataroot_lq': str(data / 'lq'),
        'filename_tmpl': '{}',
        'io_backend': {'type': 'disk'},
    }
    return {
        'name': name,
        'model_type': model_type,
        'scale': 1,
        'num_gpu': 0,
        'manual_seed': 10,
        'datasets': {
            'train': dict(
                pairs,
                name='gen_train',
                gt_size=32,
                use_hflip=False,
                use_rot=False,
                num_worker_per_gpu=0,
                batch_size_per_gpu=2,
                dataset_enlarge_ratio=1,
            ),
            'val': dict(pairs, name='gen_val'),
        },
        'network_g': {'type': 'TinyPlugNet'},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': 1e-3},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
            'total_iter': total_iter,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {
            'val_freq': 1000,
            'save_img': False,
            'metrics': {
                'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
                'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False},
            },
        },
        'logger': {'print_freq': 1, 'save_checkpoint_freq': checkpoint_freq, 'use_tb_logger': False},
    }


def tiny_gmmoe_options(data, name, total_iter, checkpoint_freq, val_freq=1000):
    """Train options: GMMoEModel, a width-4 GM-MoE, LLIEPairedDataset, PSNR loss, AdamW, clipping."""
    pairs = {
        'type': 'LLIEPairedDataset',
        'dataroot_lq': str(data / 'lq'),
        'dataroot_gt': str(data / 'gt'),
        'io_backend': {'type': 'disk'},
    }
    return {
        'name': name,
        'model_type': 'GMMoEModel',
        'num_gpu': 0,
        'manual_seed': 10,
        'datasets': {
            'train': dict(pairs, name='tiny_train', gt_size=32, num_worker_per_gpu=0, batch_size_per_gpu=2),
            'val': dict(pairs, name='tiny_val'),
        },
        'network_g': {'type': 'GMMoE', 'width': 4, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1]},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.9], 'weight_decay': 0},
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'eta_min': 1e-7},
            'total_iter': total_iter,
            'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
            'grad_clip': {'max_norm': 1.0},
        },
        'val': {
            'val_freq': val_freq,
            'save_img': False,
            'metrics': {
                'psnr': {'type': 'calculate_psnr', 'crop_border': 0},
                'psnr_gt_mean': {'type': 'calculate_psnr_gt_mean', 'crop_border': 0},
            },
        },
        'logger': {'print_freq': 1, 'save_checkpoint_freq': checkpoint_freq, 'use_tb_logger': False},
    }


def tiny_test_options(options, name, checkpoint, **val):
    """``basicsr test`` options for the network of ``options`` (:func:`tiny_gmmoe_options`) loaded from
    ``checkpoint``, tested on its val set; ``val`` overrides keys of its ``val`` section."""
    return {
        'name': name,
        'model_type': 'GMMoEModel',
        'num_gpu': 0,
        'datasets': {'test_1': options['datasets']['val']},
        'network_g': options['network_g'],
        'path': {'pretrain_network_g': str(checkpoint), 'strict_load_g': True},
        'val': dict(options['val'], **val),
    }


def lmdb_value(db, key):
    """The bytes stored under ``key`` in the LMDB folder ``db`` (None when absent)."""
    import lmdb

    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        value = txn.get(key.encode())
    env.close()
    return value


def write_yaml(path, opt):
    import yaml

    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


# Fault injection (tests/faults): a small disk that fills up. ``small_disk`` (conftest) mounts a tmpfs
# (root can; CI runs as root); ``enospc_writes`` fails in-process writes with ENOSPC once a byte budget
# under a folder is spent, for where no mount is possible.


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
    real_open, real_os_open, real_write, real_close = builtins.open, os.open, os.write, os.close

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
            return io.TextIOWrapper(buffered, encoding=kwargs.get('encoding') or 'utf-8', newline=kwargs.get('newline'))
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        fd = real_os_open(path, flags, *args, **kwargs)
        if inside(path):
            fds.add(fd)
        return fd

    def fake_close(fd):
        fds.discard(fd)  # a later file may get the same number
        return real_close(fd)

    def fake_write(fd, data):
        if fd in fds:
            charge(len(memoryview(data)))
        return real_write(fd, data)

    builtins.open, os.open, os.write, os.close = fake_open, fake_os_open, fake_write, fake_close
    try:
        yield written
    finally:
        builtins.open, os.open, os.write, os.close = real_open, real_os_open, real_write, real_close


def distinct_images(h=24, w=20):
    """Three images as different as images get (black, white, red-and-blue noise), which trained-looking gates
    (``activate_branches``) route to different experts in some blocks."""
    x = torch.stack(
        [torch.zeros(3, h, w), torch.ones(3, h, w), torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))]
    )
    x[2, 0], x[2, 1] = 1, 0
    return x


def block_inputs_outputs(net, x):
    """``{block: (input, output)}`` of every :class:`ExpertBlock` of ``net`` on ``x`` (no grad)."""
    seen = {}

    def keep(module, inputs, output):
        seen[module] = (inputs[0].clone(), output.clone())

    handles = [m.register_forward_hook(keep) for m in net.modules() if isinstance(m, ExpertBlock)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return seen
