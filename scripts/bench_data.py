"""Benchmark (not a test): LLIEPairedDataset samples/s from disk PNG, BasicSR's LMDB and our raw LMDB.

Generates ``--pairs`` 600x400 pairs, stores them three ways, and reads random ``--crop`` crops with
flips through a DataLoader with each ``--workers`` count:

* ``disk png``: PNG files (what LOL ships), decoded per sample;
* ``lmdb png (basicsr)``: packed by ``basicsr.utils.lmdb_util.make_lmdb_from_imgs`` (PNG bytes);
* ``lmdb raw (default)``: packed by ``datasets_lmdb.pack_pairs`` (uint8 arrays, no decoding).

Prints samples/s and the ratio to disk PNG at the same worker count. The files sit in the page
cache after the first epoch, so this measures decoding and copying, not the drive.

    PYTHONPATH=. python scripts/bench_data.py [--pairs 100] [--epochs 3] [--workers 0 2]
"""

import argparse
import os
import tempfile
import time

import torch
from basicsr.data import build_dataset
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

import gmmoe_arch  # noqa: F401  (applies the basicsr compat patches, registers the dataset)
from datasets_lmdb import pack_pairs
from gmmoe_arch.bench.pairs import write_pairs


def pack_basicsr(root, out):
    names = sorted(os.listdir(os.path.join(root, 'lq')))
    keys = [os.path.splitext(n)[0] for n in names]
    os.makedirs(out)
    for side in ('lq', 'gt'):
        make_lmdb_from_imgs(os.path.join(root, side), os.path.join(out, f'{side}.lmdb'), names, keys)


def folder_mb(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def samples_per_s(opt, workers, epochs, batch):
    dataset = build_dataset(opt)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=False
    )
    for _ in loader:  # warm-up epoch: page cache, worker start-up
        pass
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for batch_ in loader:
            seen += batch_['lq'].shape[0]
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pairs', type=int, default=100)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--crop', type=int, default=256)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    parser.add_argument('--dir', help='work folder (default: a temporary one)')
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        src = os.path.join(work, 'png')
        write_pairs(src, args.pairs)
        pack_basicsr(src, os.path.join(work, 'basicsr'))
        pack_pairs(os.path.join(src, 'lq'), os.path.join(src, 'gt'), os.path.join(work, 'raw'), progress=False)
        common = {
            'name': 'bench',
            'type': 'LLIEPairedDataset',
            'phase': 'train',
            'gt_size': args.crop,
            'use_hflip': True,
            'use_rot': True,
        }
        lmdb = {'type': 'lmdb'}
        sources = [
            ('disk png', os.path.join(src, 'lq'), os.path.join(src, 'gt'), {'type': 'disk'}, src),
            (
                'lmdb png (basicsr)',
                os.path.join(work, 'basicsr', 'lq.lmdb'),
                os.path.join(work, 'basicsr', 'gt.lmdb'),
                lmdb,
                os.path.join(work, 'basicsr'),
            ),
            (
                'lmdb raw (default)',
                os.path.join(work, 'raw', 'lq.lmdb'),
                os.path.join(work, 'raw', 'gt.lmdb'),
                lmdb,
                os.path.join(work, 'raw'),
            ),
        ]
        print(
            f'{args.pairs} pairs 600x400, {args.crop}x{args.crop} crops, batch {args.batch}, '
            f'{args.epochs} timed epochs, {os.cpu_count()} CPUs'
        )
        print(f'{"source":<20} {"size MB":>8} ' + ' '.join(f'{f"w={w} s/s":>10} {"ratio":>6}' for w in args.workers))
        baseline = {}
        for name, lq, gt, io_backend, folder in sources:
            opt = dict(common, dataroot_lq=lq, dataroot_gt=gt, io_backend=io_backend)
            cells = []
            for workers in args.workers:
                rate = samples_per_s(opt, workers, args.epochs, args.batch)
                baseline.setdefault(workers, rate)
                cells.append(f'{rate:>10.1f} {rate / baseline[workers]:>5.2f}x')
            print(f'{name:<20} {folder_mb(folder):>8.1f} ' + ' '.join(cells))


if __name__ == '__main__':
    main()
