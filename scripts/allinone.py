"""The all-in-one demo and benchmark: one GM-MoE for low light, rain and haze, on CPU.

``python scripts/allinone.py [--out allinone_output]`` (``make demo-allinone``):

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
import statistics
import sys
import time

import cv2
import numpy as np
import torch
import yaml
from basicsr.utils import img2tensor
from basicsr.utils.options import ordered_yaml

import gmmoe_arch  # noqa: F401,I001  (applies the basicsr compat patches before basicsr is used)
from datasets_lmdb.demo import TRAIN_PHOTOS, VAL_PHOTOS, load_photo, reusable_record
from datasets_lmdb.synth import DEGRADATIONS, synthesize_images
from gmmoe_arch import evaluation as ev
from gmmoe_arch.archs.experts import RELEASED_EXPERTS
from gmmoe_arch.cli import run_logged
from gmmoe_arch.enhance import load_network
from gmmoe_arch.evaluation.command import parse_mapping
from gmmoe_arch.models.gate_stats import save_gate_figure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_OPT = os.path.join(REPO, 'options', 'train_gmmoe_allinone_demo.yml')
DATA = os.path.join('datasets', 'allinone')  # relative to <out>, as the option files expect
TARGET_OVER_BASELINE_DB = 3.0
TARGET_ROUTING = 0.9
TIMING_SIZE = (400, 600)  # (H, W)
VERSION = 1

#: bench variant -> (title, network_g overrides, gate supervision, trained or the weights of another variant)
VARIANTS = {
    'a': ('(a) released experts, dense', {'experts': list(RELEASED_EXPERTS)}, False, None),
    'b': ('(b) + RainExpert + HazeExpert, dense', {}, False, None),
    'c': ('(c) = (b), top-1 at inference', {'gate_top_k': 1}, False, 'b'),
    'd': ('(d) = (b) + gate supervision', {}, True, None),
    'e': ('(e) = (d), top-1 at inference', {'gate_top_k': 1}, True, 'd'),
    'f': ('(f) = (d) trained and run with top-1', {'gate_top_k': 1}, True, None),
}
GATE_VARIANTS = ('b', 'd', 'f')  # the variants whose gate weights are tabled and drawn


def data_settings(seed=0, per_image=6, test_per_image=3, train_side=400, test_side=320):
    """What the data are built from; a stored ``allinone.json`` with the same settings is reused."""
    return {
        'version': VERSION,
        'seed': seed,
        'per_image': per_image,
        'test_per_image': test_per_image,
        'train_side': train_side,
        'test_side': test_side,
        'train_photos': list(TRAIN_PHOTOS),
        'test_photos': list(VAL_PHOTOS),
    }


def make_data(data_dir, progress=True, **kwargs):
    """Build ``data_dir/train`` (mixed, labelled) and ``data_dir/test_<degradation>`` (held-out photographs),
    each with ``lmdb/{lq,gt}.lmdb``; returns the record (settings, pair counts). Skipped when built before
    with the same settings."""
    settings = data_settings(**kwargs)
    record_path = os.path.join(data_dir, 'allinone.json')
    record = reusable_record(record_path, settings)
    if record is not None:
        return record
    if os.path.isfile(record_path):
        os.remove(record_path)  # stale: the sets are rebuilt, and a kill mid-way must not leave it claiming them
    train = [(p, load_photo(p, settings['train_side'])) for p in settings['train_photos']]
    test = [(p, load_photo(p, settings['test_side'])) for p in settings['test_photos']]
    common = dict(seed=settings['seed'], lmdb=True, overwrite=True, progress=progress)
    sets = {
        'train': synthesize_images(
            train, os.path.join(data_dir, 'train'), 'mixed', per_image=settings['per_image'], **common
        )
    }
    for label in DEGRADATIONS:
        folder = os.path.join(data_dir, f'test_{label}')
        sets[f'test_{label}'] = synthesize_images(test, folder, label, per_image=settings['test_per_image'], **common)
    record = {'settings': settings, 'counts': {name: s['counts'] for name, s in sets.items()}}
    with open(record_path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
    return record


#: label -> expert of the demo option file's gate supervision (``train.gate_opt.experts``)
MAPPING = parse_mapping(None, DEMO_OPT)


def load_test_sets(data_dir):
    """The held-out pairs (:class:`gmmoe_arch.evaluation.Pair`), each degradation's from its own PNG folders."""
    return [pair for label in DEGRADATIONS for pair in ev.load_pairs(os.path.join(data_dir, f'test_{label}'), label)]


def load_options(path):
    with open(path, encoding='utf-8') as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def load_net(opt, checkpoint, folder):
    """The network ``opt['network_g']`` with ``checkpoint``'s weights (:func:`gmmoe_arch.enhance.load_network`,
    ``params_ema`` preferred), its options written to ``folder`` first."""
    return load_network(checkpoint, option_file=write_options(opt, folder, 'test'), device='cpu')


def timing_inputs(test_sets, size=TIMING_SIZE):
    """``{label: (1, 3, H, W)}``: each degradation's first held-out image resized to ``size``; the top-1 cost
    depends on the experts each block picks, so it is timed on the images the gates were trained for."""
    h, w = size
    firsts = {label: group[0].lq for label, group in ev.by_label(test_sets).items()}
    return {
        label: img2tensor(cv2.resize(lq, (w, h), interpolation=cv2.INTER_AREA) / np.float32(255), bgr2rgb=False)[None]
        for label, lq in firsts.items()
    }


def median_times(nets, inputs, repeats=7):
    """``{net key: {label: median seconds}}`` of one forward pass of each network on each input; the
    networks take turns in every repeat, so a change in the machine's load hits all of them alike."""
    times = {key: {label: [] for label in inputs} for key in nets}
    with torch.no_grad():
        for net in nets.values():
            net(next(iter(inputs.values())))  # warm-up: lazy fused weights, allocator
        for _ in range(repeats):
            for label, x in inputs.items():
                for key, net in nets.items():
                    start = time.perf_counter()
                    net(x)
                    times[key][label].append(time.perf_counter() - start)
    return {key: {label: statistics.median(v) for label, v in by_label.items()} for key, by_label in times.items()}


def variant_options(base, key, iters=None, seed=None):
    """The option dict of trained bench variant ``key`` (``a``, ``b``, ``d``, ``f``) derived from the demo's
    ``base``, for ``iters`` iterations from ``seed`` when given (see :func:`run_options`)."""
    title, overrides, supervised, _ = VARIANTS[key]
    opt = copy.deepcopy(base)
    opt['name'] = f'GMMoE_allinone_{key}'
    opt['network_g'].update(overrides)
    if not supervised:
        opt['train'].pop('gate_opt', None)
    return run_options(opt, iters, seed)


def run_options(opt, iters=None, seed=None):
    """``opt`` for ``--iters`` and ``--seed``: :func:`with_iters` and :func:`with_seed` where given, else
    ``opt`` itself."""
    opt = with_seed(opt, seed) if seed is not None else opt
    return with_iters(opt, iters) if iters else opt


def with_seed(opt, seed):
    """``opt`` trained from ``manual_seed: seed``, under a name of its own (``<name>_seed<seed>``), so that
    ``--reuse`` never takes another seed's checkpoint."""
    opt = copy.deepcopy(opt)
    opt['manual_seed'] = seed
    opt['name'] = f'{opt["name"]}_seed{seed}'
    return opt


def with_iters(opt, iters):
    """``opt`` trained for ``iters`` iterations: the schedule, and a checkpoint at the end (BasicSR validates
    there too)."""
    opt = copy.deepcopy(opt)
    opt['train']['total_iter'] = iters
    opt['train']['scheduler']['periods'] = [iters]
    opt['train']['scheduler']['restart_weights'] = [1]
    opt['logger']['save_checkpoint_freq'] = iters
    opt['logger']['print_freq'] = min(opt['logger']['print_freq'], iters)
    return opt


def write_options(opt, folder, phase='train'):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{phase}_{opt["name"]}.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.dump(json.loads(json.dumps(opt)), f, sort_keys=False)
    return path


def train(opt, out, env, path=None):
    """``basicsr train -opt path`` in ``out``, ``path`` default: ``opt`` written to ``<out>/options``;
    returns (seconds, checkpoint)."""
    shutil.rmtree(os.path.join(out, 'experiments', opt['name']), ignore_errors=True)  # a rerun starts afresh
    path = path or write_options(opt, os.path.join(out, 'options'))
    seconds = run_logged('train', path, out, os.path.join(out, 'logs', f'train_{opt["name"]}.log'), env)
    return seconds, os.path.join(out, 'experiments', opt['name'], 'models', 'net_g_latest.pth')


def results_table(results):
    """The Markdown of the results (:func:`gmmoe_arch.evaluation.markdown`) and, with ``--bench``, the timing."""
    text = ev.markdown(results, targets=False)
    timing = results.get('timing')
    if not timing:
        return text
    return (
        f'{text}\n\nInference at {timing["size"][1]}x{timing["size"][0]} on one held-out image per degradation '
        f'({timing["threads"]} thread(s), median of {timing["repeats"]} interleaved runs, mean over the '
        f'degradations): dense (b) {timing["dense_s"] * 1000:.0f} ms, top-1 (c) {timing["top1_s"] * 1000:.0f} '
        f'ms, ratio (c)/(b) {timing["ratio"]:.2f} ('
        + ', '.join(f'{lb} {r:.2f}' for lb, r in timing.get('ratio_per_label', {}).items())
        + ')'
        + (
            f'; (f), trained with top-1, {timing["trained_top1_s"] * 1000:.0f} ms, ratio (f)/(b) '
            f'{timing["trained_ratio"]:.2f}'
            if 'trained_ratio' in timing
            else ''
        )
        + '. PSNR of (c) minus (b): '
        + ', '.join(f'{lb} {change:+.2f} dB' for lb, change in timing['psnr_change'].items())
        + '.'
    )


def targets(results, supervised_key, candidates, dense_key=None):
    """The issue's targets as data (:mod:`gmmoe_arch.evaluation.targets`): every degradation above its input and
    3 dB above its best classical baseline in one of the ``candidates`` networks; routing accuracy >= 90% for
    ``supervised_key``; with ``dense_key``, that network's gate gives ``RainExpert`` more weight on rain images,
    and ``HazeExpert`` on hazy ones, than on the other degradations."""
    checks = ev.gain_over_input(results, candidates, 0.0, strict=True)
    checks += ev.gain_over_best_baseline(results, candidates, TARGET_OVER_BASELINE_DB)
    checks += ev.routing_at_least(results, supervised_key, TARGET_ROUTING)
    if dense_key is not None:
        for label in ('rain', 'haze'):
            checks += ev.expert_preferred(results, dense_key, label, MAPPING[label])
    return checks


def save_outputs(out, stem, results, text):
    ev.write_json(results, os.path.join(out, f'{stem}.json'))
    ev.write_markdown(text, os.path.join(out, f'{stem}_table.md'))


def run_demo(args, out, env, test_sets, results):
    """Train the demo's option file (shortened by ``--iters``) and evaluate it into ``results['networks']``."""
    base = load_options(DEMO_OPT)
    opt = run_options(base, args.iters, args.seed)
    print('[2/3] training', flush=True)
    seconds, checkpoint = train(opt, out, env, DEMO_OPT if opt is base else None)
    print(f'  trained in {seconds:.0f} s', flush=True)
    print('[3/3] evaluation', flush=True)
    net = load_net(opt, checkpoint, os.path.join(out, 'options'))
    result = ev.add_network(results, 'demo', 'GM-MoE (all-in-one)', net, test_sets, MAPPING)
    results['networks']['demo']['train_seconds'] = seconds
    save_gate_figure(result.stats, os.path.join(out, 'allinone_gates.png'), result.experts)


def run_bench(args, out, env, test_sets, results):
    """Train (a), (b), (d), (f), evaluate (a)-(f) into ``results['networks']`` and time (c) and (f) against (b)."""
    base = load_options(DEMO_OPT)
    trained = {}

    def train_variant(key):
        opt = variant_options(base, key, args.iters, args.seed)
        checkpoint = os.path.join(out, 'experiments', opt['name'], 'models', 'net_g_latest.pth')
        if args.reuse and os.path.exists(checkpoint):
            print(f'reusing {checkpoint} for {VARIANTS[key][0]}', flush=True)
            trained[key] = (opt, checkpoint, None)
            return
        print(f'training {VARIANTS[key][0]}', flush=True)
        seconds, checkpoint = train(opt, out, env)
        trained[key] = (opt, checkpoint, seconds)
        print(f'  {VARIANTS[key][0]}: trained in {seconds:.0f} s', flush=True)

    keys = [k for k in VARIANTS if VARIANTS[k][3] is None]
    print(f'[2-4/5] training {len(keys)} variants, {args.jobs} at a time', flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # each trains in its own subprocess
        for future in [pool.submit(train_variant, key) for key in keys]:
            future.result()
    print('[5/5] evaluation', flush=True)
    nets = {}
    for key, (title, overrides, _, source) in VARIANTS.items():
        opt, checkpoint, seconds = trained[source or key]
        name = opt['name'] if source is None else f'{opt["name"]}_{key}'
        evaluated = dict(copy.deepcopy(opt), name=name, network_g=dict(opt['network_g'], **overrides))
        nets[key] = load_net(evaluated, checkpoint, os.path.join(out, 'options'))
        result = ev.add_network(results, key, title, nets[key], test_sets, MAPPING)
        entry = results['networks'][key]
        entry['train_seconds'] = seconds if source is None else None
        if key in GATE_VARIANTS:
            save_gate_figure(result.stats, os.path.join(out, f'allinone_gates_{key}.png'), result.experts)
        else:
            entry['gates'] = {}  # tabled and drawn for GATE_VARIANTS only
    timed = {key: nets[key] for key in ('b', 'c', 'f')}
    times = median_times(timed, timing_inputs(test_sets), repeats=args.repeats)
    scores = {key: results['networks'][key]['scores'] for key in ('b', 'c')}
    dense, top1 = sum(times['b'].values()), sum(times['c'].values())
    results['timing'] = {
        'size': list(TIMING_SIZE),
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
        help="training seed (default: the option file's manual_seed; at 700 iterations two seeds differed by 1.1 dB)",
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
    record = make_data(data_dir)
    print(f'  {json.dumps(record["counts"])} ({time.monotonic() - start:.0f} s)', flush=True)
    if args.make_data:
        return 0
    test_sets = load_test_sets(data_dir)
    results = ev.reference_report(test_sets)
    results['data'].update(record)
    results['seed'] = args.seed
    if args.bench:
        run_bench(args, out, env, test_sets, results)
        stem, checks = 'allinone_bench', targets(results, 'd', ('b', 'd'), dense_key='b')
    else:
        run_demo(args, out, env, test_sets, results)
        stem, checks = 'allinone', targets(results, 'demo', ('demo',))
    met, summary = ev.verdict(ev.set_targets(results, checks))
    results['verdict'] = summary
    results['total_seconds'] = time.monotonic() - start
    text = results_table(results)
    save_outputs(out, stem, results, f'{text}\n\n{summary}\n\nTotal {results["total_seconds"]:.0f} s.')
    print(f'\n{text}\n\n{summary}\n\ntotal {results["total_seconds"]:.0f} s')
    print(f'table: {os.path.join(out, stem + "_table.md")}\nJSON:  {os.path.join(out, stem + ".json")}')
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
