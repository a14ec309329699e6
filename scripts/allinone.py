"""The all-in-one demo and benchmark: one GM-MoE for low light, rain and haze, on CPU.

``python scripts/allinone.py [--out allinone_output]`` (``make demo-allinone``):

1. builds the data (``--make-data`` stops after this step) in ``<out>/datasets/allinone`` from
   scikit-image's bundled photographs with ``datasets_lmdb.synth``: a mixed training set (each pair one
   degradation, labelled in ``meta_info.txt``) from the demo's training photographs, and one held-out
   test set per degradation from photographs training never sees; PNGs and LMDBs, deterministic;
2. trains ``basicsr train -opt options/train_gmmoe_allinone_demo.yml`` in ``<out>`` (a subprocess);
3. evaluates on the held-out sets, per degradation: PSNR/SSIM of the input, of the classical baselines
   (``gmmoe_arch.baselines``) and of GM-MoE; the routing accuracy (the degradation read off each image's
   gate vector); writes ``<out>/allinone_table.md``, ``<out>/allinone.json`` and the gate figure
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'scripts'))

import gmmoe_arch  # noqa: E402,F401,I001  (applies the basicsr compat patches before basicsr is used)
import torch  # noqa: E402
import yaml  # noqa: E402
from basicsr.archs import build_network  # noqa: E402
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils.options import ordered_yaml  # noqa: E402

from datasets_lmdb.demo import TRAIN_PHOTOS, VAL_PHOTOS, load_photo, reusable_record  # noqa: E402
from datasets_lmdb.synth import DEGRADATIONS, synthesize_images  # noqa: E402
from demo import run_basicsr  # noqa: E402
from gmmoe_arch.archs.experts import RELEASED_EXPERTS  # noqa: E402
from gmmoe_arch.archs.gmmoe_arch import expert_names, record_gates  # noqa: E402
from gmmoe_arch.baselines import BASELINES  # noqa: E402
from gmmoe_arch.models.gate_stats import GateStats, routing_accuracy, save_gate_figure  # noqa: E402

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


def supervision_mapping(path=DEMO_OPT):
    """``{label: expert}``: the gate supervision mapping of the demo option file (``train.gate_opt.experts``)."""
    with open(path, encoding='utf-8') as f:
        return dict(yaml.safe_load(f)['train']['gate_opt']['experts'])


MAPPING = supervision_mapping()


def read_rgb(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f'cannot read {path}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_test_sets(data_dir):
    """``{label: [(name, lq RGB uint8, gt RGB uint8)]}`` from the PNGs of the held-out sets."""
    sets = {}
    for label in DEGRADATIONS:
        folder = os.path.join(data_dir, f'test_{label}')
        names = sorted(os.listdir(os.path.join(folder, 'lq')))
        sets[label] = [
            (n, read_rgb(os.path.join(folder, 'lq', n)), read_rgb(os.path.join(folder, 'gt', n))) for n in names
        ]
    return sets


def scores(pairs):
    """Mean ``(PSNR, SSIM)`` over ``[(output, gt)]`` RGB uint8 pairs (whole image, no offsets)."""
    values = [(calculate_psnr(out, gt, 0), calculate_ssim(out, gt, 0)) for out, gt in pairs]
    return tuple(float(v) for v in np.mean(values, axis=0))


def reference_scores(test_sets):
    """``({label: input scores}, {label: {baseline name: scores}})`` on the held-out sets."""
    inputs = {label: scores([(lq, gt) for _, lq, gt in items]) for label, items in test_sets.items()}
    baselines = {
        label: {name: scores([(fn(lq), gt) for _, lq, gt in items]) for name, fn in BASELINES[label].items()}
        for label, items in test_sets.items()
    }
    return inputs, baselines


def load_options(path):
    with open(path, encoding='utf-8') as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def load_net(network_opt, checkpoint):
    """The trained network (``params`` of ``checkpoint``, loaded strictly with ``weights_only``), in eval mode."""
    net = build_network(copy.deepcopy(network_opt))
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    net.load_state_dict(state['params'] if 'params' in state else state, strict=True)
    return net.eval()


def to_tensor(img):
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def to_uint8(t):
    return np.round(t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


def evaluate_net(net, test_sets):
    """Run ``net`` on every held-out image: ``({label: scores}, GateStats, {label: [outputs]})``."""
    stats, result, outputs = GateStats(), {}, {}
    with torch.no_grad(), record_gates(net) as gates:
        for label, items in test_sets.items():
            outputs[label] = []
            for _, lq, _ in items:
                outputs[label].append(to_uint8(net(to_tensor(lq))))
                stats.add(gates, [label])
            result[label] = scores([(out, gt) for out, (_, _, gt) in zip(outputs[label], items)])
    return result, stats, outputs


def gate_summary(stats, names):
    """``{label: {expert: mean weight over blocks and images}}`` and the routing accuracy (None when the
    network lacks an expert of the mapping)."""
    weights = {label: dict(zip(names, stats.overall(label).tolist())) for label in stats.labels}
    if not set(MAPPING.values()) <= set(names):
        return weights, None
    vectors, labels = stats.vectors()
    return weights, routing_accuracy(vectors, labels, names, MAPPING)


def timing_inputs(test_sets, size=TIMING_SIZE):
    """``{label: (1, 3, H, W)}``: each degradation's first held-out image resized to ``size``; the top-1 cost
    depends on the experts each block picks, so it is timed on the images the gates were trained for."""
    h, w = size
    return {
        label: to_tensor(cv2.resize(items[0][1], (w, h), interpolation=cv2.INTER_AREA))
        for label, items in test_sets.items()
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


def write_options(opt, folder):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'train_{opt["name"]}.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.dump(json.loads(json.dumps(opt)), f, sort_keys=False)
    return path


def train(opt, out, env, path=None):
    """``basicsr train -opt path`` in ``out``, ``path`` default: ``opt`` written to ``<out>/options``;
    returns (seconds, checkpoint)."""
    shutil.rmtree(os.path.join(out, 'experiments', opt['name']), ignore_errors=True)  # a rerun starts afresh
    path = path or write_options(opt, os.path.join(out, 'options'))
    seconds = run_basicsr('train', path, out, os.path.join(out, 'logs', f'train_{opt["name"]}.log'), env)
    return seconds, os.path.join(out, 'experiments', opt['name'], 'models', 'net_g_latest.pth')


def fmt(pair):
    return f'{pair[0]:.2f} / {pair[1]:.4f}'


def best_baseline(baselines, label):
    """``(name, scores)`` of the classical baseline with the highest PSNR for ``label``."""
    return max(baselines[label].items(), key=lambda item: item[1][0])


def results_table(results):
    """Markdown tables of a results dict (see :func:`main`): scores, gains, routing, gate weights, timing."""
    labels = list(results['input'])
    rows = [('input', results['input'])]
    rows += [(name, {lb: results['baselines'][lb][name]}) for lb in labels for name in results['baselines'][lb]]
    rows += [(v['title'], v['scores']) for v in results['variants'].values()]
    lines = [
        'PSNR (dB) / SSIM on the held-out images (RGB, whole image), per degradation:',
        '',
        '| method | ' + ' | '.join(labels) + ' | routing accuracy |',
        '|---' * (len(labels) + 2) + '|',
    ]
    for name, by_label in rows:
        cells = [fmt(by_label[lb]) if lb in by_label else '' for lb in labels]
        routing = next((v['routing_accuracy'] for v in results['variants'].values() if v['title'] == name), None)
        cells.append('' if routing is None else f'{routing:.0%}')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    best = {lb: best_baseline(results['baselines'], lb) for lb in labels}
    lines += [
        '',
        'PSNR gain in dB over the input / over the best classical baseline ('
        + ', '.join(f'{lb}: {name}' for lb, (name, _) in best.items())
        + '):',
        '',
        '| method | ' + ' | '.join(labels) + ' |',
        '|---' * (len(labels) + 1) + '|',
    ]
    for v in results['variants'].values():
        cells = [
            f'{v["scores"][lb][0] - results["input"][lb][0]:+.2f} / {v["scores"][lb][0] - best[lb][1][0]:+.2f}'
            for lb in labels
        ]
        lines.append(f'| {v["title"]} | ' + ' | '.join(cells) + ' |')
    gated = [v for v in results['variants'].values() if v.get('gates')]
    if gated:
        experts = list(next(iter(gated[-1]['gates'].values())))
        lines += [
            '',
            'Mean gate weight of each expert (over blocks and images), per degradation:',
            '',
            '| method | degradation | ' + ' | '.join(experts) + ' |',
            '|---' * (len(experts) + 2) + '|',
        ]
        for v in gated:
            for lb, weights in v['gates'].items():
                cells = [f'{weights[e]:.3f}' if e in weights else '' for e in experts]
                lines.append(f'| {v["title"]} | {lb} | ' + ' | '.join(cells) + ' |')
    timing = results.get('timing')
    if timing:
        lines += [
            '',
            f'Inference at {timing["size"][1]}x{timing["size"][0]} on one held-out image per degradation '
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
            + ', '.join(f'{lb} {timing["psnr_change"][lb]:+.2f} dB' for lb in labels)
            + '.',
        ]
    return '\n'.join(lines)


def verdict(results, supervised_key, candidates, dense_key=None):
    """``(met, text)`` against the issue's targets: every degradation above its input and 3 dB above its
    best classical baseline in one of the ``candidates`` variants; routing accuracy >= 90% for
    ``supervised_key``; with ``dense_key``, that variant's gate gives ``RainExpert`` more weight on rain
    images, and ``HazeExpert`` on hazy ones, than on the other degradations."""
    problems = []
    for lb in results['input']:
        best = best_baseline(results['baselines'], lb)[1][0]
        top = max(results['variants'][key]['scores'][lb][0] for key in candidates)
        if top <= results['input'][lb][0] or top < best + TARGET_OVER_BASELINE_DB:
            problems.append(f'{lb}: best {top:.2f} dB vs input {results["input"][lb][0]:.2f}, baseline {best:.2f}')
    routing = results['variants'][supervised_key]['routing_accuracy']
    if routing is None or routing < TARGET_ROUTING:
        shown = 'n/a' if routing is None else f'{routing:.0%}'
        problems.append(f'routing accuracy {shown} < {TARGET_ROUTING:.0%}')
    if dense_key is not None:
        gates = results['variants'][dense_key]['gates']
        for lb in ('rain', 'haze'):
            own, others = gates[lb][MAPPING[lb]], [gates[o][MAPPING[lb]] for o in gates if o != lb]
            if not all(own > other for other in others):
                problems.append(f'{results["variants"][dense_key]["title"]}: {MAPPING[lb]} not preferred by {lb}')
    if problems:
        return False, 'TARGETS MISSED: ' + '; '.join(problems)
    return (
        True,
        f'targets met (each degradation >= {TARGET_OVER_BASELINE_DB:.0f} dB over its best baseline, '
        f'routing >= {TARGET_ROUTING:.0%})',
    )


def save_outputs(out, stem, results, text):
    with open(os.path.join(out, f'{stem}.json'), 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, f'{stem}_table.md'), 'w', encoding='utf-8') as f:
        f.write(text + '\n')


def run_demo(args, out, env, test_sets, results):
    """Train the demo's option file (shortened by ``--iters``) and evaluate it into ``results['variants']``."""
    base = load_options(DEMO_OPT)
    opt = run_options(base, args.iters, args.seed)
    print('[2/3] training', flush=True)
    seconds, checkpoint = train(opt, out, env, DEMO_OPT if opt is base else None)
    print(f'  trained in {seconds:.0f} s', flush=True)
    print('[3/3] evaluation', flush=True)
    net = load_net(opt['network_g'], checkpoint)
    names = expert_names(net)
    measured, stats, _ = evaluate_net(net, test_sets)
    gates, routing = gate_summary(stats, names)
    save_gate_figure(stats, os.path.join(out, 'allinone_gates.png'), names)
    results['variants'] = {
        'demo': {
            'title': 'GM-MoE (all-in-one)',
            'scores': measured,
            'routing_accuracy': routing,
            'gates': gates,
            'train_seconds': seconds,
        }
    }


def run_bench(args, out, env, test_sets, results):
    """Train (a), (b), (d), evaluate (a)-(d) into ``results['variants']`` and time (c) against (b)."""
    base = load_options(DEMO_OPT)
    trained, results['variants'] = {}, {}

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
        network_opt = dict(opt['network_g'], **overrides)
        nets[key] = load_net(network_opt, checkpoint)
        names = expert_names(nets[key])
        measured, stats, _ = evaluate_net(nets[key], test_sets)
        gates, routing = gate_summary(stats, names)
        results['variants'][key] = {
            'title': title,
            'scores': measured,
            'routing_accuracy': routing,
            'gates': gates if key in GATE_VARIANTS else None,
            'train_seconds': seconds if source is None else None,
        }
        if key in GATE_VARIANTS:
            save_gate_figure(stats, os.path.join(out, f'allinone_gates_{key}.png'), names)
    timed = {key: nets[key] for key in ('b', 'c', 'f')}
    times = median_times(timed, timing_inputs(test_sets), repeats=args.repeats)
    variants = results['variants']
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
        'psnr_change': {lb: variants['c']['scores'][lb][0] - variants['b']['scores'][lb][0] for lb in test_sets},
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
    inputs, baselines = reference_scores(test_sets)
    results = {'data': record, 'input': inputs, 'baselines': baselines, 'seed': args.seed}
    if args.bench:
        run_bench(args, out, env, test_sets, results)
        stem, (met, summary) = 'allinone_bench', verdict(results, 'd', ('b', 'd'), dense_key='b')
    else:
        run_demo(args, out, env, test_sets, results)
        stem, (met, summary) = 'allinone', verdict(results, 'demo', ('demo',))
    results['verdict'] = summary
    results['total_seconds'] = time.monotonic() - start
    text = results_table(results)
    save_outputs(out, stem, results, f'{text}\n\n{summary}\n\nTotal {results["total_seconds"]:.0f} s.')
    print(f'\n{text}\n\n{summary}\n\ntotal {results["total_seconds"]:.0f} s')
    print(f'table: {os.path.join(out, stem + "_table.md")}\nJSON:  {os.path.join(out, stem + ".json")}')
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
