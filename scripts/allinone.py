"""The all-in-one demo and benchmark: one GM-MoE for low light, rain and haze, on CPU.

``python scripts/allinone.py [--out allinone_output]`` (``make demo-allinone``; the pieces are
:mod:`gmmoe_arch.evaluation.allinone`'s):

1. builds the data (``--make-data`` stops after this step) in ``<out>/datasets/allinone`` from
   scikit-image's bundled photographs with ``datasets_lmdb.synth``: a mixed training set (each pair one
   degradation, labelled in ``meta_info.txt``) from the demo's training photographs, and one held-out
   test set per degradation from photographs training never sees; PNGs and LMDBs, deterministic;
2. trains ``basicsr train -opt options/train_gmmoe_allinone_demo.yml`` in ``<out>`` (a subprocess);
3. evaluates on the held-out sets with :mod:`gmmoe_arch.evaluation` (``gmmoe evaluate`` on one set gives the
   same numbers), per degradation: PSNR/SSIM of the input, of the classical baselines (``gmmoe_arch.baselines``)
   and of GM-MoE, dense and with ``gate_top_k: 1`` (the same weights), the two timed at 600x400; the routing
   accuracy (the degradation read off each image's gate vector), overall and per degradation; writes
   ``<out>/allinone_table.md``, ``<out>/allinone.json`` (the evaluation report) and the gate figure
   ``<out>/allinone_gates.png``.

``--bench`` (``<out>`` default ``allinone_bench``) trains, with the same data, seed and iterations, (a) the
three released experts, dense; (b) those plus ``RainExpert`` and ``HazeExpert``, dense; (d) = (b) with gate
supervision (``train.gate_opt``); and evaluates (c) = (b)'s weights with ``gate_top_k: 1`` and (e) = (d)'s
weights with ``gate_top_k: 1``; (f) = (d) trained and run with ``gate_top_k: 1`` (Gumbel-sampled picks, the
default load balancing). It reports per degradation the PSNR/SSIM against the input and the best classical
baseline, the routing accuracy, the mean gate weight of each expert per degradation for (b), (d) and (f), and the
inference time of (c) and (f) over (b) at 600x400 (interleaved repeats, medians). Each variant's option file is
derived from the demo's and written to ``<out>/options``. ``--seeds 10 11 12`` runs the bench once per training
seed, each into ``<out>/bench/seed<N>.json`` (and ``_table.md``), then combines every ``seed<N>.json`` in that
folder, those of earlier runs included, into ``<out>/bench/combined.{json,md}``: each figure as mean ± spread
over the seeds. ``--combine [FOLDER]`` only combines (default folder ``<out>/bench``).

The table separates the demo's claims, which a correct network meets at the demo's budget with margin (each
degradation above its input, low light above gamma correction, routing above chance, every low-light image
routed to its expert; :data:`gmmoe_arch.evaluation.allinone.DEMO_CLAIMS`), from the issue's targets (each
degradation 3 dB above its best classical baseline, routing >= 90%, top-1 twice as fast as dense and within
0.5 dB of it), which it reports met or missed. Exits with 1 only when a claim is missed (the bench: by (d) of
some seed).
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
from gmmoe_arch.evaluation.targets import split_verdict
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
    os.makedirs(out, exist_ok=True)
    ev.write_json(results, os.path.join(out, f'{stem}.json'))
    ev.write_markdown(text, os.path.join(out, f'{stem}_table.md'))


def evaluate(results, key, title, net, test_sets):
    """``ev.add_network`` plus the routing accuracy per degradation; returns the network's result."""
    result = ev.add_network(results, key, title, net, test_sets, MAPPING)
    results['networks'][key]['routing_by_label'] = ai.routing_by_label(result, MAPPING)
    return result


def run_demo(args, out, env, test_sets, results):
    """Train the demo's option file (shortened by ``--iters``), evaluate it, and the same weights run top-1, into
    ``results['networks']``, and time the two."""
    base = ai.load_options(DEMO_OPT)
    opt = ai.run_options(base, args.iters, args.seeds[0] if args.seeds else None)
    print('[2/3] training', flush=True)
    seconds, checkpoint = train(opt, out, env, DEMO_OPT if opt is base else None)
    print(f'  trained in {seconds:.0f} s', flush=True)
    print('[3/3] evaluation', flush=True)
    folder = os.path.join(out, 'options')
    net = ai.load_net(opt, checkpoint, folder)
    result = evaluate(results, 'demo', 'GM-MoE (all-in-one)', net, test_sets)
    results['networks']['demo']['train_seconds'] = seconds
    save_gate_figure(result.stats, os.path.join(out, 'allinone_gates.png'), result.experts)
    top1_opt = dict(copy.deepcopy(opt), name=f'{opt["name"]}_top1', network_g=dict(opt['network_g'], gate_top_k=1))
    top1 = ai.load_net(top1_opt, checkpoint, folder)
    evaluate(results, 'top1', 'the same, top-1 at inference', top1, test_sets)
    times = ai.median_times({'demo': net, 'top1': top1}, ai.timing_inputs(test_sets), repeats=args.demo_repeats)
    scores = {key: results['networks'][key]['scores'] for key in times}
    results['timing'] = ai.timing_record(times, scores, 'demo', 'top1', args.demo_repeats, None)


def run_bench(args, out, env, test_sets, results, seed):
    """Train (a), (b), (d), (f) from ``seed``, evaluate (a)-(f) into ``results['networks']`` and time (c) and (f)
    against (b)."""
    base = ai.load_options(DEMO_OPT)
    trained = {}

    def train_variant(key):
        opt = ai.variant_options(base, key, args.iters, seed)
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
        result = evaluate(results, key, title, nets[key], test_sets)
        entry = results['networks'][key]
        entry['train_seconds'] = seconds if source is None else None
        if key in ai.GATE_VARIANTS:
            save_gate_figure(result.stats, os.path.join(out, f'allinone_gates_{key}.png'), result.experts)
        else:
            entry['gates'] = {}  # tabled and drawn for ai.GATE_VARIANTS only
    timed = {key: nets[key] for key in ('b', 'c', 'f')}
    times = ai.median_times(timed, ai.timing_inputs(test_sets), repeats=args.repeats)
    scores = {key: results['networks'][key]['scores'] for key in ('b', 'c')}
    timing = ai.timing_record(times, scores, 'b', 'c', args.repeats)
    timing['trained_top1_s'] = sum(times['f'].values()) / len(times['f'])
    timing['trained_ratio'] = sum(times['f'].values()) / sum(times['b'].values())
    results['timing'] = timing


def check(results, claims, targets):
    """Store and judge ``claims`` and ``targets``: ``(claims met, the last line)``."""
    results['claims'] = [t.to_dict() for t in claims]
    ev.set_targets(results, targets)
    met, line = split_verdict(claims, targets, 'docs/allinone.md')
    results['verdict'] = line
    return met, line


def targets_block(results):
    """The Markdown list of the claims (checked) and the targets (reported)."""
    lines = ['Demo claims (what this budget shows; a miss is a regression and exits 1):', '']
    lines += [f'- {"met" if t["met"] else "MISSED"}: {t["text"]}' for t in results['claims']]
    lines += ['', "The issue's targets (reported; the bench in docs/allinone.md measures them over seeds):", '']
    lines += [f'- {"met" if t["met"] else "missed"}: {t["text"]}' for t in results['targets']]
    return '\n'.join(lines)


def report(out, stem, results, start):
    """Write and print the table of one run; returns the table's text."""
    results['total_seconds'] = time.monotonic() - start
    text = f'{ai.results_table(results)}\n\n{targets_block(results)}'
    save_outputs(out, stem, results, f'{text}\n\nTotal {results["total_seconds"]:.0f} s.\n\n{results["verdict"]}')
    print(f'\n{text}\n\ntotal {results["total_seconds"]:.0f} s')
    print(f'table: {os.path.join(out, stem + "_table.md")}\nJSON:  {os.path.join(out, stem + ".json")}')
    return text


def combine(folder):
    """Combine every ``seed<N>.json`` in ``folder`` into ``combined.{json,md}`` there, print it; returns 0."""
    combined = ai.combine(ai.load_seed_reports(folder))
    text = ai.combined_markdown(combined)
    ev.write_json(combined, os.path.join(folder, 'combined.json'))
    ev.write_markdown(text, os.path.join(folder, 'combined.md'))
    print(f'\n{text}\n\ncombined: {os.path.join(folder, "combined.md")}')
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--make-data', action='store_true', help='only build the data sets')
    mode.add_argument('--bench', action='store_true', help='train and compare the variants (a)-(f)')
    mode.add_argument(
        '--combine',
        nargs='?',
        const='',
        metavar='FOLDER',
        help='only combine the seed<N>.json bench reports in FOLDER (default <out>/bench) into mean and spread',
    )
    parser.add_argument('--out', help='output folder (default allinone_output, allinone_bench with --bench)')
    parser.add_argument('--iters', type=int, help="training iterations (default: the option file's)")
    parser.add_argument(
        '--seeds',
        '--seed',
        type=int,
        nargs='+',
        help="training seed(s) (default: the option file's manual_seed); --bench runs once per seed, the demo "
        'takes one',
    )
    parser.add_argument('--repeats', type=int, default=7, help='timing repeats in --bench (default 7)')
    parser.add_argument('--demo-repeats', type=int, default=3, help='timing repeats of the demo (default 3)')
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
    if args.repeats < 1 or args.demo_repeats < 1:
        parser.error('--repeats and --demo-repeats must be >= 1')
    if args.jobs < 1:
        parser.error('--jobs must be >= 1')
    if args.seeds and not args.bench and len(args.seeds) > 1:
        parser.error('--seeds: the demo trains one seed; several need --bench')
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        parser.error('--seeds: a seed is given twice')
    out = os.path.abspath(args.out or ('allinone_bench' if args.bench else 'allinone_output'))
    if args.combine is not None:
        try:
            return combine(os.path.abspath(args.combine or os.path.join(out, 'bench')))
        except ev.EvaluationError as e:
            print(e, file=sys.stderr)
            return 2
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
    reference = ev.reference_report(test_sets)
    reference['data'].update(record)
    if not args.bench:
        results = dict(reference, seed=args.seeds[0] if args.seeds else None)
        run_demo(args, out, env, test_sets, results)
        met, line = check(
            results, ai.demo_claims(results, 'demo'), ai.bench_targets(results, 'demo', ('demo',), MAPPING)
        )
        report(out, 'allinone', results, start)
        print(line)
        return 0 if met else 1
    seeds = args.seeds or [ai.load_options(DEMO_OPT)['manual_seed']]
    lines = []
    for seed in seeds:
        print(f'== training seed {seed}', flush=True)
        results = dict(copy.deepcopy(reference), seed=seed)
        run_bench(args, out, env, test_sets, results, seed)
        claims = ai.demo_claims(results, 'd')
        met, line = check(results, claims, ai.bench_targets(results, 'd', ('b', 'd'), MAPPING, dense_key='b'))
        report(os.path.join(out, 'bench'), f'seed{seed}', results, start)
        lines.append((met, f'seed {seed}: {line}'))
    combine(os.path.join(out, 'bench'))
    print('\n'.join(line for _, line in lines))
    return 0 if all(met for met, _ in lines) else 1


if __name__ == '__main__':
    sys.exit(main())
