"""The all-in-one demo and benchmark: one GM-MoE for low light, rain and haze, on CPU.

``python scripts/allinone.py [--out allinone_output]`` (``make demo-allinone``):

The pieces are :mod:`gmmoe_arch.evaluation.allinone`'s.

1. builds the data (``--make-data`` stops after this step) in ``<out>/datasets/allinone`` from
   scikit-image's bundled photographs with ``datasets_lmdb.synth``: a mixed training set (each pair one
   degradation, labelled in ``meta_info.txt``) from the demo's training photographs, and one held-out
   test set per degradation from photographs training never sees; PNGs and LMDBs, deterministic;
2. trains ``basicsr train -opt options/train_gmmoe_allinone_demo.yml`` in ``<out>`` (a subprocess);
3. evaluates on the held-out sets with :mod:`gmmoe_arch.evaluation` (``gmmoe evaluate`` on one set gives the
   same numbers), per degradation: PSNR/SSIM of the input, of the classical baselines (``gmmoe_arch.baselines``)
   and of GM-MoE; the routing accuracy (the degradation read off each image's gate vector); writes
   ``<out>/allinone_table.md``, ``<out>/allinone.json`` (the evaluation report) and the gate figure
   ``<out>/allinone_gates.png``.

``--bench`` (``<out>`` default ``allinone_bench``) trains, with the same data, seed and iterations, (a) the
three released experts, dense; (b) those plus ``RainExpert`` and ``HazeExpert``, dense; (d) = (b) with gate
supervision (``train.gate_opt``); and evaluates (c) = (b)'s weights with ``gate_top_k: 1`` and (e) = (d)'s
weights with ``gate_top_k: 1``; (f) = (d) trained and run with ``gate_top_k: 1`` (Gumbel-sampled picks, the
default load balancing). It reports per
degradation the PSNR/SSIM against the input and the best classical baseline, the routing accuracy, the
mean gate weight of each expert per degradation for (b), (d) and (f), and the inference time of (c) and (f)
over (b) at 600x400 (interleaved repeats, medians). Each variant's option file is derived from the demo's and written
to ``<out>/options``.

Exits with 1 when the trained models miss the issue's targets: every degradation above its input and 3 dB
above its best classical baseline (the demo; (b) or (d)), routing accuracy >= 90% with gate supervision,
and, in (b), rain images weighting ``RainExpert`` and hazy images ``HazeExpert`` more than the other
degradations do.
"""

import argparse
import concurrent.futures
import copy
import json
import os
import shutil
import sys
import time

import torch

import gmmoe_arch  # noqa: F401,I001  (applies the basicsr compat patches before basicsr is used)
from gmmoe_arch import evaluation as ev
from gmmoe_arch.cli import run_logged
from gmmoe_arch.evaluation import allinone as ai
from gmmoe_arch.evaluation.command import parse_mapping
from gmmoe_arch.models.gate_stats import save_gate_figure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_OPT = os.path.join(REPO, 'options', 'train_gmmoe_allinone_demo.yml')
DATA = os.path.join('datasets', 'allinone')  # relative to <out>, as the option files expect
#: label -> expert of the demo option file's gate supervision (``train.gate_opt.experts``)
MAPPING = parse_mapping(None, DEMO_OPT)


def train(opt, out, env, path=None):
    """``basicsr train -opt path`` in ``out``, ``path`` default: ``opt`` written to ``<out>/options``;
    returns (seconds, checkpoint)."""
    shutil.rmtree(os.path.join(out, 'experiments', opt['name']), ignore_errors=True)  # a rerun starts afresh
    path = path or ai.write_options(opt, os.path.join(out, 'options'))
    seconds = run_logged('train', path, out, os.path.join(out, 'logs', f'train_{opt["name"]}.log'), env)
    return seconds, os.path.join(out, 'experiments', opt['name'], 'models', 'net_g_latest.pth')


def save_outputs(out, stem, results, text):
    ev.write_json(results, os.path.join(out, f'{stem}.json'))
    ev.write_markdown(text, os.path.join(out, f'{stem}_table.md'))


def run_demo(args, out, env, test_sets, results):
    """Train the demo's option file (shortened by ``--iters``) and evaluate it into ``results['networks']``."""
    base = ai.load_options(DEMO_OPT)
    opt = ai.run_options(base, args.iters, args.seed)
    print('[2/3] training', flush=True)
    seconds, checkpoint = train(opt, out, env, DEMO_OPT if opt is base else None)
    print(f'  trained in {seconds:.0f} s', flush=True)
    print('[3/3] evaluation', flush=True)
    net = ai.load_net(opt, checkpoint, os.path.join(out, 'options'))
    result = ev.add_network(results, 'demo', 'GM-MoE (all-in-one)', net, test_sets, MAPPING)
    results['networks']['demo']['train_seconds'] = seconds
    save_gate_figure(result.stats, os.path.join(out, 'allinone_gates.png'), result.experts)


def run_bench(args, out, env, test_sets, results):
    """Train (a), (b), (d), (f), evaluate (a)-(f) into ``results['networks']`` and time (c) and (f) against (b)."""
    base = ai.load_options(DEMO_OPT)
    trained = {}

    def train_variant(key):
        opt = ai.variant_options(base, key, args.iters, args.seed)
        checkpoint = os.path.join(out, 'experiments', opt['name'], 'models', 'net_g_latest.pth')
        if args.reuse and os.path.exists(checkpoint):
            print(f'reusing {checkpoint} for {ai.VARIANTS[key][0]}', flush=True)
            trained[key] = (opt, checkpoint, None)
            return
        print(f'training {ai.VARIANTS[key][0]}', flush=True)
        seconds, checkpoint = train(opt, out, env)
        trained[key] = (opt, checkpoint, seconds)
        print(f'  {ai.VARIANTS[key][0]}: trained in {seconds:.0f} s', flush=True)

    keys = [k for k in ai.VARIANTS if ai.VARIANTS[k][3] is None]
    print(f'[2-4/5] training {len(keys)} variants, {args.jobs} at a time', flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # each trains in its own subprocess
        for future in [pool.submit(train_variant, key) for key in keys]:
            future.result()
    print('[5/5] evaluation', flush=True)
    nets = {}
    for key, (title, overrides, _, source) in ai.VARIANTS.items():
        opt, checkpoint, seconds = trained[source or key]
        name = opt['name'] if source is None else f'{opt["name"]}_{key}'
        evaluated = dict(copy.deepcopy(opt), name=name, network_g=dict(opt['network_g'], **overrides))
        nets[key] = ai.load_net(evaluated, checkpoint, os.path.join(out, 'options'))
        result = ev.add_network(results, key, title, nets[key], test_sets, MAPPING)
        entry = results['networks'][key]
        entry['train_seconds'] = seconds if source is None else None
        if key in ai.GATE_VARIANTS:
            save_gate_figure(result.stats, os.path.join(out, f'allinone_gates_{key}.png'), result.experts)
        else:
            entry['gates'] = {}  # tabled and drawn for ai.GATE_VARIANTS only
    timed = {key: nets[key] for key in ('b', 'c', 'f')}
    times = ai.median_times(timed, ai.timing_inputs(test_sets), repeats=args.repeats)
    scores = {key: results['networks'][key]['scores'] for key in ('b', 'c')}
    dense, top1 = sum(times['b'].values()), sum(times['c'].values())
    results['timing'] = {
        'size': list(ai.TIMING_SIZE),
        'threads': torch.get_num_threads(),
        'repeats': args.repeats,
        'dense_s': dense / len(times['b']),
        'top1_s': top1 / len(times['c']),
        'ratio': top1 / dense,
        'ratio_per_label': {lb: times['c'][lb] / times['b'][lb] for lb in times['b']},
        'trained_top1_s': sum(times['f'].values()) / len(times['f']),
        'trained_ratio': sum(times['f'].values()) / dense,
        'psnr_change': {lb: scores['c'][lb]['psnr'] - scores['b'][lb]['psnr'] for lb in scores['b']},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--make-data', action='store_true', help='only build the data sets')
    mode.add_argument('--bench', action='store_true', help='train and compare the variants (a)-(f)')
    parser.add_argument('--out', help='output folder (default allinone_output, allinone_bench with --bench)')
    parser.add_argument('--iters', type=int, help="training iterations (default: the option file's)")
    parser.add_argument(
        '--seed',
        type=int,
        help="training seed (default: the option file's manual_seed; docs/allinone.md: seed to seed)",
    )
    parser.add_argument('--repeats', type=int, default=7, help='timing repeats in --bench (default 7)')
    parser.add_argument(
        '--reuse',
        action='store_true',
        help='--bench: evaluate the checkpoints a previous run with the same --out left, training only what is missing',
    )
    parser.add_argument(
        '--jobs',
        type=int,
        default=1,
        help='variants trained at the same time in --bench (default 1; their training times then overlap)',
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='CPU threads for training and evaluation (default 1, as scripts/demo.py); 0 leaves it to torch',
    )
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error('--iters must be >= 1')
    if args.repeats < 1:
        parser.error('--repeats must be >= 1')
    if args.jobs < 1:
        parser.error('--jobs must be >= 1')
    out = os.path.abspath(args.out or ('allinone_bench' if args.bench else 'allinone_output'))
    data_dir = os.path.join(out, DATA)
    os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
        torch.set_num_threads(args.threads)
    start = time.monotonic()

    print(f'[1/{5 if args.bench else 3}] data -> {data_dir}', flush=True)
    record = ai.make_data(data_dir)
    print(f'  {json.dumps(record["counts"])} ({time.monotonic() - start:.0f} s)', flush=True)
    if args.make_data:
        return 0
    test_sets = ai.load_test_sets(data_dir)
    results = ev.reference_report(test_sets)
    results['data'].update(record)
    results['seed'] = args.seed
    if args.bench:
        run_bench(args, out, env, test_sets, results)
        stem, checks = 'allinone_bench', ai.targets(results, 'd', ('b', 'd'), MAPPING, dense_key='b')
    else:
        run_demo(args, out, env, test_sets, results)
        stem, checks = 'allinone', ai.targets(results, 'demo', ('demo',), MAPPING)
    met, summary = ev.verdict(ev.set_targets(results, checks))
    results['verdict'] = summary
    results['total_seconds'] = time.monotonic() - start
    text = ai.results_table(results)
    save_outputs(out, stem, results, f'{text}\n\n{summary}\n\nTotal {results["total_seconds"]:.0f} s.')
    print(f'\n{text}\n\n{summary}\n\ntotal {results["total_seconds"]:.0f} s')
    print(f'table: {os.path.join(out, stem + "_table.md")}\nJSON:  {os.path.join(out, stem + ".json")}')
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
