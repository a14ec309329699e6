"""The embedded demo (``make demo``): GM-MoE learns low-light enhancement on CPU in a few minutes.

``python scripts/demo.py --out demo_output``

1. builds the synthetic low-light set from scikit-image's bundled photographs
   (``datasets_lmdb.demo``; skipped when already built) in ``<out>/datasets/demo``;
2. trains with ``basicsr train -opt options/train_gmmoe_demo.yml`` and tests with
   ``basicsr test -opt options/test_gmmoe_demo.yml``, both run in ``<out>`` as subprocesses;
3. prints PSNR/SSIM on the validation images for the input, two classic baselines (gamma correction
   to mid-grey mean brightness, CLAHE on the L channel of Lab) and GM-MoE, writes the table to
   ``<out>/demo_table.md`` and a before/after grid to ``<out>/demo_grid.png``.

Exits with 1 when GM-MoE misses the demo's targets (>= 8 dB over the input, above both baselines).
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import gmmoe_arch  # noqa: E402,F401,I001  (applies the basicsr compat patches before basicsr is used)
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402

from gmmoe_arch.baselines import clahe, gamma_correction  # noqa: E402

from datasets_lmdb import demo as demo_data  # noqa: E402

TRAIN_OPT = os.path.join(REPO, 'options', 'train_gmmoe_demo.yml')
TEST_OPT = os.path.join(REPO, 'options', 'test_gmmoe_demo.yml')
TRAIN_NAME, TEST_NAME, VAL_NAME = 'GMMoE_demo', 'test_GMMoE_demo', 'demo_val'
TARGET_GAIN_DB = 8.0
SHOWN = ('] [eta', 'Validation', '# psnr', '# ssim', 'Gate weights', 'all blocks', 'Error', 'error:')


def on_bgr(baseline, img):
    """Apply an RGB baseline of ``gmmoe_arch.baselines`` to a BGR image as OpenCV reads it."""
    return cv2.cvtColor(baseline(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)), cv2.COLOR_RGB2BGR)


def run_basicsr(phase, opt_file, cwd, log_path, env):
    """Run ``basicsr <phase> -opt <opt_file>`` in ``cwd``; echo its progress lines, keep the full log."""
    cmd = [sys.executable, '-m', 'gmmoe_arch.cli', phase, '-opt', opt_file]
    print(f'$ basicsr {phase} -opt {os.path.relpath(opt_file)}  (in {cwd}; full log {log_path})', flush=True)
    start = time.monotonic()
    with open(log_path, 'w', encoding='utf-8') as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if any(key in line for key in SHOWN):
                print('  ' + line.rstrip()[-150:], flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f'basicsr {phase} failed (exit code {code}); see {log_path}')
    return time.monotonic() - start


def evaluate(data_dir, results_dir):
    """Per-method mean PSNR/SSIM over the validation images, and the images for the grid."""
    names = sorted(os.listdir(os.path.join(data_dir, 'eval15', 'low')))
    methods = ('input', 'gamma correction', 'CLAHE', 'GM-MoE')
    scores = {m: [] for m in methods}
    rows = []
    for name in names:
        low = cv2.imread(os.path.join(data_dir, 'eval15', 'low', name))
        high = cv2.imread(os.path.join(data_dir, 'eval15', 'high', name))
        stem = os.path.splitext(name)[0]
        ours_path = os.path.join(results_dir, f'{stem}_{TEST_NAME}.png')
        ours = cv2.imread(ours_path)
        if ours is None:
            raise SystemExit(f'basicsr test wrote no result for {name} (expected {ours_path})')
        images = dict(zip(methods, (low, on_bgr(gamma_correction, low), on_bgr(clahe, low), ours)))
        for method, img in images.items():
            scores[method].append((calculate_psnr(img, high, 0), calculate_ssim(img, high, 0)))
        rows.append([images[m] for m in methods] + [high])
    means = {m: tuple(np.mean(v, axis=0)) for m, v in scores.items()}
    return names, means, rows


def table(names, means):
    lines = [
        f'Validation images: {", ".join(names)} (RGB, whole image, no offsets)',
        '',
        '| method | PSNR (dB) | SSIM |',
        '|---|---|---|',
    ]
    lines += [f'| {m} | {p:.2f} | {s:.4f} |' for m, (p, s) in means.items()]
    return '\n'.join(lines)


def grid(rows, path, height=220, gap=4):
    """Rows of [input, gamma, CLAHE, GM-MoE, ground truth], labelled, saved as a PNG.

    Every row is as wide as the widest one at ``height``: rows of square photos are made taller instead
    of being padded, which left a blank block beside them.
    """
    labels = ('input', 'gamma', 'CLAHE', 'GM-MoE', 'ground truth')
    aspects = [sum(img.shape[1] / img.shape[0] for img in row) for row in rows]
    width = round(height * max(aspects)) + gap * (len(labels) - 1)
    out_rows = []
    for row, aspect in zip(rows, aspects):
        row_height = (width - gap * (len(labels) - 1)) / aspect
        edges = np.round(np.cumsum([0] + [row_height * img.shape[1] / img.shape[0] for img in row])).astype(int)
        tiles = []
        for img, label, left, right in zip(row, labels, edges[:-1], edges[1:]):
            tile = cv2.resize(img, (int(right - left), round(row_height)), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
            tiles += [tile, np.full((tile.shape[0], gap, 3), 255, np.uint8)]
        out_rows += [np.concatenate(tiles[:-1], axis=1), np.full((gap, width, 3), 255, np.uint8)]
    cv2.imwrite(path, np.concatenate(out_rows[:-1], axis=0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--out', default='demo_output', help='folder for data, experiments, results (default demo_output)'
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='CPU threads for training and testing (default 1: the demo network is small, and '
        'two threads on a busy 2-core machine ran 4-30x slower); 0 leaves it to torch',
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
    t_train = run_basicsr('train', TRAIN_OPT, out, os.path.join(out, 'logs', 'train.log'), env)
    print(f'  trained in {t_train:.0f} s', flush=True)
    print('[3/4] testing', flush=True)
    t_test = run_basicsr('test', TEST_OPT, out, os.path.join(out, 'logs', 'test.log'), env)

    print('[4/4] evaluation', flush=True)
    results_dir = os.path.join(out, 'results', TEST_NAME, 'visualization', VAL_NAME)
    names, means, rows = evaluate(data_dir, results_dir)
    text = table(names, means)
    gain = means['GM-MoE'][0] - means['input'][0]
    best_baseline = max(means['gamma correction'][0], means['CLAHE'][0])
    met = gain >= TARGET_GAIN_DB and means['GM-MoE'][0] > best_baseline
    verdict = (
        f'GM-MoE: +{gain:.2f} dB over the input (target >= {TARGET_GAIN_DB:.0f}), '
        f'{means["GM-MoE"][0] - best_baseline:+.2f} dB over the best baseline: '
        + ('targets met' if met else 'TARGETS MISSED')
    )
    grid_path, table_path = os.path.join(out, 'demo_grid.png'), os.path.join(out, 'demo_table.md')
    grid(rows, grid_path)
    total = time.monotonic() - start
    with open(table_path, 'w', encoding='utf-8') as f:
        f.write(f'{text}\n\n{verdict}\n\nTraining {t_train:.0f} s, testing {t_test:.0f} s, total {total:.0f} s.\n')
    print(f'\n{text}\n\n{verdict}\n')
    print(f'total {total:.0f} s (training {t_train:.0f} s, testing {t_test:.0f} s)')
    print(
        f'table:        {table_path}\ngrid:         {grid_path}\n'
        f'data:         {data_dir} (LMDB in {os.path.join(data_dir, "lmdb")})\n'
        f'model:        {os.path.join(out, "experiments", TRAIN_NAME, "models", "net_g_latest.pth")}\n'
        f'enhanced:     {results_dir}\nlogs:         {os.path.join(out, "logs")}, '
        f'{os.path.join(out, "experiments", TRAIN_NAME)}'
    )
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
