"""Benchmark GM-MoE's fast path against the straightforward path (a measurement, not a test).

In one process, on the same weights (random, with non-zero ``beta``/``gamma`` so every branch matters), it times
the straightforward path (``fast=False``) in fp32 against the fast path in fp32 and under bf16 autocast, and a
training step of each (a real ``GMMoEModel``: AdamW, the released PSNR loss) with and without activation
checkpointing, including gradient agreement; ``--compile`` adds ``torch.compile`` (inductor) rows. Medians of
``--runs`` interleaved runs after a warm-up, ratios paired run by run (:mod:`gmmoe_arch.bench.timing`); peak
memory of each configuration in a fresh process. The parts are :mod:`gmmoe_arch.bench.fast`; the two CPU
baselines (``plain``, ``plain+malloc``) and the results are in docs/performance.md. Examples::

    python scripts/bench_fast.py                       # everything
    python scripts/bench_fast.py --quick               # a smoke run
    python scripts/bench_fast.py --parts infer --sizes 600x400 --runs 5 --no-memory
    GMMOE_MALLOC=off python scripts/bench_fast.py ...  # without the allocator tuning

Sizes are ``WIDTHxHEIGHT``. ``--device cuda`` measures on a GPU (fp16 autocast added there, cuDNN autotuning on,
peak CUDA memory instead of RSS).
"""

import argparse

import torch

from gmmoe_arch.archs.torch_private import ADAPTERS
from gmmoe_arch.bench.cli import comma_list, parse_size
from gmmoe_arch.bench.fast.common import setup_allocator
from gmmoe_arch.bench.fast.inference import bench_inference
from gmmoe_arch.bench.fast.training import bench_train
from gmmoe_arch.bench.record import machine, rss_mb, write_json

PARTS = ('infer', 'train', 'released')
PARTS_HELP = 'comma-separated: infer, train (paper preset), released (released preset, inference at --released-size)'
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--parts', default=','.join(PARTS), help=PARTS_HELP)
    p.add_argument('--sizes', default='600x400,1024x1024', help='paper-preset inference sizes, WIDTHxHEIGHT,...')
    p.add_argument('--released-size', type=parse_size, default=(256, 256))
    for option, default in (('runs', 5), ('warmup', 1), ('train-runs', 3), ('train-batch', 4), ('train-crop', 256)):
        p.add_argument(f'--{option}', type=int, default=default)
    p.add_argument('--plain-bf16', action='store_true', help='also time the straightforward path under bf16')
    p.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-RSS child processes')
    p.add_argument('--compile', action='store_true', help='add torch.compile (inductor) rows: inference and training')
    p.add_argument(
        '--compile-modes', default='default', help='with --compile: inductor modes, comma-separated (slow: minutes)'
    )
    p.add_argument('--quick', action='store_true', help='tiny sizes and few runs (a smoke run)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', help='also write the results to this file')
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.runs, args.train_runs, args.train_batch, args.train_crop = '192x128', 3, 2, 2, 64
        args.parts = 'infer,train'
    args.parts = comma_list(args.parts)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f'--parts: unknown {", ".join(unknown)}; choose from {", ".join(PARTS)}')
    args.sizes = [parse_size(s) for s in comma_list(args.sizes)]
    args.compile_modes = comma_list(args.compile_modes)
    if set(args.compile_modes) - set(COMPILE_MODES) or not args.compile_modes:
        p.error(f'--compile-modes: choose from {", ".join(COMPILE_MODES)}, got "{",".join(args.compile_modes)}"')
    if min(args.runs, args.train_runs, args.train_batch, args.train_crop) < 1 or args.warmup < 0:
        p.error('--runs, --train-runs, --train-batch and --train-crop must be >= 1, --warmup >= 0')
    return args


def main(argv=None):
    args = parse_args(argv)
    tuned = setup_allocator()
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    meta = dict(machine(device), malloc_tuned=tuned)
    print(', '.join(f'{k}: {v}' for k, v in meta.items()))
    # a private torch API that failed its self-check makes the fast path slower: say which ones are in use
    in_use = ', '.join(f'{a.name} {"in use" if a.uses_private else "FALLBACK"}' for a in ADAPTERS)
    print(f'private torch APIs: {in_use}')
    results = dict(meta=meta, args=dict(vars(args), sizes=[list(s) for s in args.sizes]))
    if 'infer' in args.parts:
        for size in args.sizes:
            results[f'infer paper {size[1]}x{size[0]}'] = bench_inference('paper', size, args, device)
    if 'train' in args.parts:
        results['train paper'] = bench_train('paper', args, device)
    if 'released' in args.parts:
        h, w = args.released_size
        results[f'infer released {w}x{h}'] = bench_inference('released', args.released_size, args, device)
    print(f'\npeak RSS of this process: {rss_mb("VmHWM"):.0f} MB; load average at end: {machine()["load_average"]:.1f}')
    if args.json:
        write_json(args.json, results, device)


if __name__ == '__main__':
    main()
