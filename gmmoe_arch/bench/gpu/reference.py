"""The ``reference`` part (the reference vectors on the device) and the ``basicsr`` part (``basicsr train``
under torchrun, then ``--auto_resume``)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from ...archs.gmmoe_arch import GMMoE
from .run import guarded

REPO = Path(__file__).resolve().parents[3]


def part_reference(rec, plan, budget, state):
    folder = REPO / 'tests' / 'reference'
    if not (folder / 'gmmoe_w8_io.pt').is_file():
        rec.put('reference', 'vectors', {'skipped': f'{folder} has no gmmoe_w8_io.pt'})
        return
    io = torch.load(folder / 'gmmoe_w8_io.pt', weights_only=True)
    state_dict = torch.load(folder / 'gmmoe_w8_net_g.pth', weights_only=True)['params']
    for dtype in (torch.float64, torch.float32):

        def run(dtype=dtype):
            tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False  # the reference is float64; TF32 would blur float32
            try:
                net = GMMoE(**io['config'])
                net.load_state_dict(state_dict, strict=True)
                net = net.to(plan.device, dtype).eval()
                with torch.inference_mode():
                    out = net(io['input'].to(plan.device, dtype)).double().cpu()
            finally:
                torch.backends.cudnn.allow_tf32 = tf32
            return {'max_abs_diff': (out - io['output']).abs().max().item()}

        guarded(rec, budget, 'reference', str(dtype).replace('torch.', ''), 0, run)


def part_basicsr(rec, plan, budget, state, out):
    """``basicsr train`` under torchrun (NCCL on a GPU), then ``--auto_resume`` to a longer schedule."""
    guarded(rec, budget, 'basicsr', 'torchrun train + resume', 0, lambda: basicsr_run(out / 'basicsr_run'))


def basicsr_run(work):
    import cv2
    import numpy as np
    import yaml

    rng = np.random.default_rng(0)
    for sub in ('gt', 'lq'):
        (work / 'data' / sub).mkdir(parents=True, exist_ok=True)
    for i in range(8):
        gt = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (7, 7), 0)
        cv2.imwrite(str(work / 'data' / 'gt' / f'{i}.png'), gt)
        cv2.imwrite(str(work / 'data' / 'lq' / f'{i}.png'), (gt * 0.25).astype(np.uint8))
    pairs = {
        'type': 'LLIEPairedDataset',
        'dataroot_gt': str(work / 'data' / 'gt'),
        'dataroot_lq': str(work / 'data' / 'lq'),
        'io_backend': {'type': 'disk'},
    }
    train = {
        'ema_decay': 0.999,
        'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.9]},
        'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [40], 'eta_min': 1e-7},
        'total_iter': 20,
        'warmup_iter': -1,
        'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
        'use_amp': True,
        'amp_dtype': 'bf16',
    }
    opt = {
        'name': 'gpu_nccl',
        'model_type': 'GMMoEModel',
        'scale': 1,
        'num_gpu': 'auto',
        'manual_seed': 0,
        'datasets': {
            'train': dict(
                pairs,
                name='t',
                gt_size=64,
                use_hflip=True,
                use_rot=False,
                num_worker_per_gpu=2,
                batch_size_per_gpu=4,
                dataset_enlarge_ratio=10,
            ),
            'val': dict(pairs, name='v'),
        },
        'network_g': {
            'type': 'GMMoE',
            'width': 16,
            'enc_blk_nums': [1, 1, 1, 1],
            'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1, 1],
        },
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': train,
        'val': {
            'val_freq': 10,
            'save_img': False,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}},
        },
        'logger': {'print_freq': 5, 'save_checkpoint_freq': 10, 'use_tb_logger': True},
    }
    (work / 'train.yml').write_text(yaml.safe_dump(opt))
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    base = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--standalone',
        '--nproc_per_node=1',
        '-m',
        'gmmoe_arch.cli',
        'train',
        '-opt',
        str(work / 'train.yml'),
        '--launcher',
        'pytorch',
    ]
    entry = {}
    for label, extra in (('train', []), ('resume', ['--auto_resume', '--force_yml', 'train:total_iter=30'])):
        done = subprocess.run(base + extra, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        (work / f'{label}.log').write_text(done.stdout + done.stderr)
        entry[f'{label} rc'] = done.returncode
    log = '\n'.join(p.read_text() for p in sorted((work / 'experiments' / 'gpu_nccl').glob('train_*.log')))
    entry.update(
        {
            'dist on': 'dist: True' in log,
            'resumed at iter 20': 'iter: 20' in log,
            'net_g_30 saved': (work / 'experiments' / 'gpu_nccl' / 'models' / 'net_g_30.pth').is_file(),
        }
    )
    return entry
