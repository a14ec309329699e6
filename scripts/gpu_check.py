"""GPU check (not a test): reference vectors on CUDA, inference images/s, training it/s, BasicSR on NCCL.

Run on a machine with one CUDA GPU from the repository root:

    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check_out

Prints one table per part; each part is independent, so a failure in one still leaves the others.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

import gmmoe_arch
from gmmoe_arch import GMMoE
from gmmoe_arch.archs.gmmoe_arch import activate_branches
from gmmoe_arch.losses.psnr_loss import PSNRLoss

psnr_loss = PSNRLoss()

REPO = Path(__file__).resolve().parents[1]


def cuda_time(fn, warmup=3, runs=10):
    """Median seconds of ``fn()`` over ``runs`` timed calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def random_weights(net):
    """Non-trivial weights: beta/gamma non-zero so every expert branch matters."""
    torch.manual_seed(0)
    return activate_branches(net, std=0.2)


def part_reference(results):
    ref_dir = REPO.parent / 'shared' / 'reference'
    if not ref_dir.is_dir():
        ref_dir = REPO / 'shared' / 'reference'
    io = torch.load(ref_dir / 'gmmoe_w8_io.pt', weights_only=True)
    sd = torch.load(ref_dir / 'gmmoe_w8_net_g.pth', weights_only=True)['params']
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for dtype in (torch.float64, torch.float32):
        net = GMMoE(**io['config'])
        net.load_state_dict(sd, strict=True)
        net = net.to('cuda', dtype).eval()
        with torch.no_grad():
            out = net(io['input'].to('cuda', dtype)).double().cpu()
        results[f'reference max|diff| {dtype}'] = (out - io['output']).abs().max().item()
    torch.backends.cudnn.allow_tf32 = True


def build(preset, fast='auto'):
    """``fast='auto'`` (the default) is the straightforward path on a GPU."""
    return random_weights(GMMoE(preset=preset, fast=fast)).cuda()


def part_inference(results, sizes):
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, device='cuda')
        for label, fast in (('plain', False), ('fast', True)):
            net = build('paper', fast).eval()
            with torch.inference_mode():
                ref = net(x).float()
                for prec, dtype in (('fp32', None), ('bf16', torch.bfloat16), ('fp16', torch.float16)):

                    def fwd():
                        with torch.autocast('cuda', dtype=dtype, enabled=dtype is not None):
                            return net(x)

                    t = cuda_time(fwd)
                    out = fwd().float()
                    mse = (out - ref).pow(2).mean().item()
                    psnr = 10 * math.log10(1.0 / max(mse, 1e-20))
                    results[f'infer {label} {prec} {h}x{w} img/s'] = round(1 / t, 2)
                    results[f'infer {label} {prec} {h}x{w} PSNR vs fp32'] = round(psnr, 1)
            del net
            torch.cuda.empty_cache()


def part_training(results, batch=8, crop=256):
    x = torch.rand(batch, 3, crop, crop, device='cuda') * 0.3
    y = torch.rand(batch, 3, crop, crop, device='cuda')
    for prec, dtype in (('fp32', None), ('bf16', torch.bfloat16), ('fp16', torch.float16)):
        net = build('paper').train()
        opt = torch.optim.AdamW(net.parameters(), 1e-4, betas=(0.9, 0.9))
        scaler = torch.amp.GradScaler('cuda', enabled=dtype is torch.float16)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast('cuda', dtype=dtype, enabled=dtype is not None):
                loss = psnr_loss(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss

        torch.cuda.reset_peak_memory_stats()
        t = cuda_time(step, warmup=2, runs=6)
        results[f'train {prec} batch {batch}x{crop}^2 it/s'] = round(1 / t, 2)
        results[f'train {prec} peak GiB'] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        results[f'train {prec} loss finite'] = bool(torch.isfinite(step()).item())
        del net, opt
        torch.cuda.empty_cache()


def part_basicsr_nccl(results, out):
    """`basicsr train` under torchrun (NCCL, DDP on CUDA), then --auto_resume, then `basicsr test`."""
    import cv2
    import numpy as np
    import yaml

    work = out / 'basicsr_run'
    rng = np.random.default_rng(0)
    for sub in ('gt', 'lq'):
        (work / 'data' / sub).mkdir(parents=True, exist_ok=True)
    for i in range(8):
        gt = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (7, 7), 0)
        cv2.imwrite(str(work / 'data' / 'gt' / f'{i}.png'), gt)
        cv2.imwrite(str(work / 'data' / 'lq' / f'{i}.png'), (gt * 0.25).astype(np.uint8))
    pairs = {'type': 'PairedImageDataset', 'dataroot_gt': str(work / 'data' / 'gt'),
             'dataroot_lq': str(work / 'data' / 'lq'), 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'}}
    model_type = 'GMMoEModel'
    train = {'ema_decay': 0.999, 'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.9]},
             'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [40], 'eta_min': 1e-7},
             'total_iter': 20, 'warmup_iter': -1, 'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
             'use_amp': True, 'amp_dtype': 'bf16'}
    opt = {'name': 'gpu_nccl', 'model_type': model_type, 'scale': 1, 'num_gpu': 'auto', 'manual_seed': 0,
           'datasets': {'train': dict(pairs, name='t', gt_size=64, use_hflip=True, use_rot=False,
                                      num_worker_per_gpu=2, batch_size_per_gpu=4, dataset_enlarge_ratio=10),
                        'val': dict(pairs, name='v')},
           'network_g': {'type': 'GMMoE', 'width': 16, 'enc_blk_nums': [1, 1, 1, 1], 'middle_blk_num': 1,
                         'dec_blk_nums': [1, 1, 1, 1]},
           'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
           'train': train,
           'val': {'val_freq': 10, 'save_img': False,
                   'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
           'logger': {'print_freq': 5, 'save_checkpoint_freq': 10, 'use_tb_logger': True}}
    (work / 'train.yml').write_text(yaml.safe_dump(opt))
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    base = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
            '-m', 'gmmoe_arch.cli', 'train', '-opt', str(work / 'train.yml'), '--launcher', 'pytorch']
    for label, extra in (('train', []), ('resume', ['--auto_resume', '--force_yml', 'train:total_iter=30'])):
        done = subprocess.run(base + extra, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        (out / f'basicsr_{label}.log').write_text(done.stdout + done.stderr)
        results[f'basicsr {label} under torchrun rc'] = done.returncode
    log = '\n'.join(p.read_text() for p in sorted((work / 'experiments' / 'gpu_nccl').glob('train_*.log')))
    results['basicsr model_type'] = model_type
    results['basicsr dist on'] = 'dist: True' in log
    results['basicsr resumed at iter 20'] = 'iter: 20' in log
    results['basicsr net_g_30 saved'] = (work / 'experiments' / 'gpu_nccl' / 'models' / 'net_g_30.pth').is_file()
    psnrs = [line for line in log.splitlines() if '# psnr:' in line]
    results['basicsr val psnr lines'] = psnrs[-2:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='gpu_check_out')
    parser.add_argument('--parts', default='reference,inference,training,basicsr')
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {'torch': torch.__version__, 'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu',
               'compat': gmmoe_arch.compat.APPLIED}
    parts = {'reference': lambda: part_reference(results),
             'inference': lambda: part_inference(results, [(400, 600), (1024, 1024)]),
             'training': lambda: part_training(results),
             'basicsr': lambda: part_basicsr_nccl(results, out)}
    for name in args.parts.split(','):
        start = time.time()
        try:
            parts[name]()
        except Exception:
            results[f'{name} FAILED'] = traceback.format_exc()[-2000:]
        results[f'{name} seconds'] = round(time.time() - start, 1)
        print(json.dumps({k: v for k, v in results.items()}, indent=1), flush=True)
    (out / 'gpu_check.json').write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
