"""Benchmark ``gmmoe enhance`` on one large photo: wall time and peak RSS (target: <= 3 GB).

    python scripts/bench_enhance.py                      # 4000x3000, paper preset, CPU
    python scripts/bench_enhance.py --size 1200x800 --stat-passes 0
    python scripts/bench_enhance.py --size 8000x8000 --width 8 --stat-passes 0   # memory of a large image

Writes a synthetic dim 8-bit PNG of the given size, then runs the same code path as the command
(:func:`gmmoe_arch.enhance.enhance_paths`, allocator tuning included) with random weights, which
cost the same time and memory as trained ones. Peak RSS is the kernel's high-water mark of the
process (``VmHWM``), so it includes Python, torch and the image arrays.
"""

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

from gmmoe_arch import PRESETS, GMMoE, enhance, runtime
from gmmoe_arch.bench.cli import parse_size
from gmmoe_arch.bench.record import rss_mb

TARGET_GB = 3.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=parse_size, default=(3000, 4000), help='WIDTHxHEIGHT of the test photo')
    parser.add_argument('--preset', default='paper', choices=['paper', 'released'])
    parser.add_argument(
        '--width',
        type=int,
        default=None,
        help="the preset's block counts at this width (e.g. 8: a cheap network for memory tests)",
    )
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', default='fp32')
    parser.add_argument('--max-pixels', type=int, default=None)
    parser.add_argument('--overlap', type=int, default=None)
    parser.add_argument('--stat-passes', type=int, default=None)
    args = parser.parse_args()
    runtime.configure_allocator()
    h, w = args.size
    options = dict(
        max_pixels=args.max_pixels or enhance.DEFAULT_MAX_PIXELS,
        overlap=enhance.DEFAULT_OVERLAP if args.overlap is None else args.overlap,
        stat_passes=enhance.DEFAULT_STAT_PASSES if args.stat_passes is None else args.stat_passes,
    )
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        small = (rng.random((h // 50 + 1, w // 50 + 1, 3)) * 70).astype(np.uint8)
        cv2.imwrite(os.path.join(tmp, 'photo.png'), cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
        del small
        if args.width:
            net = GMMoE(**dict(PRESETS[args.preset], width=args.width)).eval().requires_grad_(False).to(args.device)
        else:
            net = enhance.load_network(preset=args.preset, device=args.device, random_weights=True)
        base = rss_mb('VmRSS') / 1024
        plan = enhance.Tiling(None, options['overlap'], options['max_pixels']).plan(h, w, net.padder_size)
        network = f'preset {args.preset}' + (f' at width {args.width}' if args.width else '')
        print(
            f'{w}x{h} ({w * h / 1e6:.1f} MP), {network}, {args.device}, {args.precision}, '
            f'torch threads {torch.get_num_threads()}; {len(plan)} tiles of about '
            f'{plan.ys[0][1]}x{plan.xs[0][1]}, overlap >= {options["overlap"]}, '
            f'{options["stat_passes"]} statistics pass(es); RSS after loading: {base:.2f} GB',
            flush=True,
        )
        start = time.perf_counter()
        summary = enhance.enhance_paths(
            [os.path.join(tmp, 'photo.png')], os.path.join(tmp, 'out'), net, precision=args.precision, **options
        )
        wall = time.perf_counter() - start
    if summary.failed:
        print(f'failed: {summary.failed}')
        return 1
    peak = rss_mb('VmHWM') / 1024
    sweeps = len(plan) * (1 + options['stat_passes'])
    print(f'wall time: {wall:.1f} s ({wall / sweeps:.2f} s per tile forward, {sweeps} forwards)')
    print(f'peak RSS: {peak:.2f} GB = {peak / TARGET_GB:.2f} x the {TARGET_GB:.0f} GB target')
    return 0


if __name__ == '__main__':
    sys.exit(main())
