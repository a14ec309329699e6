"""The embedded demo (``make demo``): GM-MoE learns low-light enhancement on CPU in a few minutes.

``python scripts/demo.py --out demo_output``

1. builds the synthetic low-light set from scikit-image's bundled photographs
   (``datasets_lmdb.demo``; skipped when already built) in ``<out>/datasets/demo``;
2. trains with ``basicsr train -opt options/train_gmmoe_demo.yml`` and tests with
   ``basicsr test -opt options/test_gmmoe_demo.yml``, both run in ``<out>`` as subprocesses;
3. scores the trained checkpoint on the validation images with :mod:`gmmoe_arch.evaluation` (what
   ``gmmoe evaluate --weights <checkpoint> --opt options/test_gmmoe_demo.yml --data <out>/datasets/demo/eval15
   --label lowlight`` prints): PSNR/SSIM, ours and the released protocol, for the input, two classic baselines
   (gamma correction to mid-grey mean brightness, CLAHE on the L channel of Lab) and GM-MoE; writes the table to
   ``<out>/demo_table.md``, the report to ``<out>/demo.json`` and a before/after grid to ``<out>/demo_grid.png``.

Exits with 1 when GM-MoE misses the demo's targets (>= 8 dB over the input, above both baselines).
"""

import argparse
import os
import shutil
import sys
import time

import cv2
import torch

import gmmoe_arch  # noqa: F401,I001  (applies the basicsr compat patches before basicsr is used)
from datasets_lmdb import demo as demo_data
from gmmoe_arch import evaluation as ev
from gmmoe_arch.cli import run_logged
from gmmoe_arch.enhance import load_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_OPT = os.path.join(REPO, 'options', 'train_gmmoe_demo.yml')
TEST_OPT = os.path.join(REPO, 'options', 'test_gmmoe_demo.yml')
TRAIN_NAME, TEST_NAME, VAL_NAME = 'GMMoE_demo', 'test_GMMoE_demo', 'demo_val'
TARGET_GAIN_DB = 8.0
GRID_LABELS = ('input', 'gamma', 'CLAHE', 'GM-MoE', 'ground truth')


def evaluate(data_dir, checkpoint):
    """The validation pairs (low light) scored by :mod:`gmmoe_arch.evaluation` for the input, gamma correction,
    CLAHE and GM-MoE (ours and the released protocol), the targets checked: ``(report, grid rows)``."""
    pairs = ev.load_pairs(os.path.join(data_dir, 'eval15'), label='lowlight')
    net = load_network(checkpoint, option_file=TEST_OPT, device='cpu')
    report, results = ev.evaluate(pairs, {'gmmoe': ('GM-MoE', net)}, metrics=ev.ALL_METRICS)
    ev.set_targets(
        report,
        ev.gain_over_input(report, 'gmmoe', TARGET_GAIN_DB) + ev.gain_over_best_baseline(report, 'gmmoe', strict=True),
    )
    baselines = ev.choose_baselines(['lowlight'])['lowlight']
    rows = [
        [p.lq, *(fn(p.lq) for fn in baselines.values()), out, p.gt]
        for p, out in zip(pairs, results['gmmoe'].outputs['lowlight'])
    ]
    return report, [[cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in row] for row in rows]


def table(report):
    names = ', '.join(report['data']['names']['lowlight'])
    return f'Validation images: {names} (RGB, whole image; released: its protocol)\n\n' + ev.markdown(
        report, gates=False, targets=False
    )


def verdict(report):
    """``(met, line)``: the gains over the input and over the best baseline, against the demo's targets."""
    over_input, over_best = report['targets']
    met = over_input['met'] and over_best['met']
    return met, (
        f'GM-MoE: {over_input["value"]:+.2f} dB over the input (target >= {TARGET_GAIN_DB:.0f}), '
        f'{over_best["value"]:+.2f} dB over the best baseline: ' + ('targets met' if met else 'TARGETS MISSED')
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--out', default='demo_output', help='folder for data, experiments, results (default demo_output)'
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='CPU threads for training and testing (default 1: the demo network is small, see docs/training.md); '
        '0 leaves it to torch',
    )
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    data_dir = os.path.join(out, 'datasets', 'demo')
    os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    start = time.monotonic()

    print(f'[1/4] demo data -> {data_dir}', flush=True)
    record = demo_data.build(data_dir)
    print(
        f'  {len(record["train"])} training pairs, {len(record["val"])} validation pairs '
        f'({time.monotonic() - start:.0f} s)',
        flush=True,
    )

    for stale in (os.path.join(out, 'experiments', TRAIN_NAME), os.path.join(out, 'results', TEST_NAME)):
        shutil.rmtree(stale, ignore_errors=True)  # a rerun starts from scratch instead of archiving
    print('[2/4] training', flush=True)
    t_train = run_logged('train', TRAIN_OPT, out, os.path.join(out, 'logs', 'train.log'), env)
    print(f'  trained in {t_train:.0f} s', flush=True)
    print('[3/4] testing', flush=True)
    t_test = run_logged('test', TEST_OPT, out, os.path.join(out, 'logs', 'test.log'), env)

    print('[4/4] evaluation', flush=True)
    results_dir = os.path.join(out, 'results', TEST_NAME, 'visualization', VAL_NAME)
    checkpoint = os.path.join(out, 'experiments', TRAIN_NAME, 'models', 'net_g_latest.pth')
    if args.threads:
        torch.set_num_threads(args.threads)
    report, rows = evaluate(data_dir, checkpoint)
    text = table(report)
    met, verdict_line = verdict(report)
    grid_path, table_path = os.path.join(out, 'demo_grid.png'), os.path.join(out, 'demo_table.md')
    ev.save_grid(rows, GRID_LABELS, grid_path)
    ev.write_json(report, os.path.join(out, 'demo.json'))
    total = time.monotonic() - start
    with open(table_path, 'w', encoding='utf-8') as f:
        f.write(f'{text}\n\n{verdict_line}\n\nTraining {t_train:.0f} s, testing {t_test:.0f} s, total {total:.0f} s.\n')
    print(f'\n{text}\n\n{verdict_line}\n')
    print(f'total {total:.0f} s (training {t_train:.0f} s, testing {t_test:.0f} s)')
    print(
        f'table:        {table_path}\ngrid:         {grid_path}\n'
        f'data:         {data_dir} (LMDB in {os.path.join(data_dir, "lmdb")})\n'
        f'model:        {checkpoint}\nJSON:         {os.path.join(out, "demo.json")}\n'
        f'enhanced:     {results_dir}\nlogs:         {os.path.join(out, "logs")}, '
        f'{os.path.join(out, "experiments", TRAIN_NAME)}'
    )
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
