"""What the non-finite weight check costs when a checkpoint is loaded (docs/performance.md).

Builds a GM-MoE of ``--preset`` (default ``released``, 690M parameters) with random initial weights, saves its
state dict as a checkpoint in a temporary folder, and times, ``--runs`` times each: the check
(:func:`gmmoe_arch.inference.loading.check_finite_state_dict`), the ``torch.isfinite(t).all()`` form it
replaced, ``torch.load`` of the checkpoint, and :func:`gmmoe_arch.enhance.load_network` (build, load, check).
Prints min and median of each. Needs about 4x the checkpoint's size in memory (11 GB for ``released``) and
its size on disk. Run: ``.venv/bin/python scripts/bench_finite_check.py [--preset paper] [--runs 5]``.
"""

import argparse
import os
import tempfile

import torch

from gmmoe_arch import GMMoE
from gmmoe_arch.bench.timing import repeated
from gmmoe_arch.inference.loading import check_finite_state_dict, load_network


def isfinite_all(state_dict):
    return all(bool(torch.isfinite(v).all()) for v in state_dict.values() if v.is_floating_point())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', default='released', choices=['paper', 'released'])
    parser.add_argument('--runs', type=int, default=5, help='runs of the checks (the loads run max(1, runs - 2))')
    args = parser.parse_args()
    torch.manual_seed(0)
    state_dict = GMMoE(preset=args.preset).state_dict()
    count = sum(v.numel() for v in state_dict.values())
    print(f'{args.preset}: {count:,} parameters in {len(state_dict)} tensors, {torch.get_num_threads()} threads')
    results = {
        'check (one sum per tensor)': repeated(lambda: check_finite_state_dict(state_dict, 'checkpoint'), args.runs),
        'torch.isfinite(t).all() per tensor': repeated(lambda: isfinite_all(state_dict), args.runs),
    }
    loads = max(1, args.runs - 2)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'net_g.pth')
        torch.save({'params': state_dict}, path)
        print(f'checkpoint: {os.path.getsize(path) / 1e9:.2f} GB')
        results['torch.load'] = repeated(lambda: torch.load(path, map_location='cpu', weights_only=True), loads)
        results['load_network (build, load, check)'] = repeated(lambda: load_network(path, device='cpu'), loads)
    for what, (low, mid) in results.items():
        print(f'{what}: min {low:.2f} s, median {mid:.2f} s')


if __name__ == '__main__':
    main()
