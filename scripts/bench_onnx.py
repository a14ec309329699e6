"""Benchmark the exported ONNX model in onnxruntime against PyTorch on the CPU (a measurement, not a test).

Exports the network (default: the paper preset, random weights with every branch active) with
:func:`gmmoe_arch.export.export_onnx` (to ``--model`` if given, else a temporary file; an existing
``--model`` of the same preset and seed is reused), and times one fp32 forward of a
``(1, 3, H, W)`` input in three ways: PyTorch's straightforward path (``fast=False``, what the model
was exported from), PyTorch's default CPU path (``fast='auto'``: the fast path) and onnxruntime's CPU
provider (all graph optimisations), both with ``--threads`` intra-op threads (default: torch's). Each run
times the three in a rotated order; it prints the medians over ``--runs`` runs after a warm-up, the ratios paired
run by run (median of the per-run ratios), and max |diff| of each output against the straightforward
path. The allocator tuning the ``gmmoe`` command applies is on (``GMMOE_MALLOC=off`` switches it off).
Examples::

    python scripts/bench_onnx.py                          # paper preset, 600x400, 7 runs
    python scripts/bench_onnx.py --model /tmp/paper.onnx --threads 1 --runs 11
"""

import argparse
import os
import shutil
import statistics
import tempfile

import numpy as np
import onnxruntime as ort
import torch

from gmmoe_arch import GMMoE
from gmmoe_arch.archs.gmmoe_arch import activate_branches
from gmmoe_arch.bench.cli import parse_size
from gmmoe_arch.bench.timing import interleaved, paired_ratio, timed
from gmmoe_arch.export import export_onnx
from gmmoe_arch.runtime import configure_allocator


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', default='paper', choices=['paper', 'released'])
    parser.add_argument('--model', help='where to export the model; reused if it exists (same preset and seed)')
    parser.add_argument('--size', type=parse_size, default=(400, 600), help='WIDTHxHEIGHT (default: 600x400)')
    parser.add_argument('--runs', type=int, default=7)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, help='intra-op threads of torch and onnxruntime')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    configure_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = activate_branches(GMMoE(preset=args.preset)).eval()
    folder = tempfile.mkdtemp(prefix='bench_onnx_')
    try:
        path = args.model or os.path.join(folder, f'{args.preset}.onnx')
        if not os.path.exists(path):
            seconds = timed(lambda: export_onnx(net, path)).wall_s
            print(f'export: {seconds:.0f} s, {os.path.getsize(path) / 2**20:.1f} MiB')
        benchmark(net, path, args)
    finally:
        shutil.rmtree(folder)


def benchmark(net, path, args):
    """Time and compare torch's two paths and onnxruntime on the model at ``path``; print the results."""
    h, w = args.size
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed))
    feed = {session.get_inputs()[0].name: x.numpy()}

    def torch_path(fast):
        def run():
            net.set_fast(fast)
            with torch.no_grad():
                return net(x).numpy()

        return run

    ways = {
        'torch plain': torch_path(False),
        'torch fast': torch_path('auto'),
        'onnxruntime': lambda: session.run(None, feed)[0],
    }
    outputs = {name: fn() for name, fn in ways.items()}  # warm-up (fast-path weights, ORT's first-run setup)
    reference = outputs['torch plain']
    for name, out in outputs.items():
        print(f'{name:12s} max |diff| vs torch plain: {np.abs(out - reference).max():.2e}')
    times = interleaved(ways, args.runs).walls
    print(
        f'{args.preset} preset, 1x3x{h}x{w} fp32, {torch.get_num_threads()} threads, {args.runs} runs '
        f'(torch {torch.__version__}, onnxruntime {ort.__version__}):'
    )
    for name, ts in times.items():
        print(f'  {name:12s} median {statistics.median(ts):.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})')
    for base in ('torch plain', 'torch fast'):
        ratios = [b / o for b, o in zip(times[base], times['onnxruntime'])]
        print(
            f'  onnxruntime speed-up over {base}: {paired_ratio(times[base], times["onnxruntime"]):.2f}x '
            f'(paired, range {min(ratios):.2f}-{max(ratios):.2f}x)'
        )


if __name__ == '__main__':
    main()
