"""The all-in-one demo's pieces (``scripts/allinone.py`` drives them): the data it builds, the held-out sets, the
option files of the bench variants, the timing of top-1 against dense inference, the table, the demo's claims and
the issue's targets, and the bench's seed files and their combination (mean and spread over seeds).

One GM-MoE for low light, rain and haze: a mixed training set (each pair one degradation, labelled) and one
held-out test set per degradation, from scikit-image's bundled photographs (``datasets_lmdb.synth``); the bench
variants (a)-(f) are derived from the demo's option file (see :data:`VARIANTS`).
"""

import copy
import glob
import json
import os
import re

import cv2
import numpy as np
import torch
import yaml
from basicsr.utils import img2tensor
from basicsr.utils.options import ordered_yaml

from ..archs.experts import RELEASED_EXPERTS
from ..bench.timing import interleaved
from ..data import degradations
from ..enhance import load_network
from . import data as ev_data
from . import report as ev_report
from . import targets as ev_targets
from .errors import EvaluationError

TARGET_OVER_BASELINE_DB = 3.0
TARGET_ROUTING = 0.9
TARGET_SPEEDUP = 2.0  # top-1 at least twice as fast as dense
TARGET_TOP1_COST_DB = -0.5  # and within 0.5 dB of it on every degradation
TIMING_SIZE = (400, 600)  # (H, W)
VERSION = 2  # 2: the ``haze`` label's depth no longer follows brightness (version 1 sets were ``haze_bright``)
#: the synthesis behind the ``haze`` label, by name in :data:`gmmoe_arch.data.degradations.TABLE`
HAZE_MODELS = {
    'haze': 'scene depth drawn independent of the image, RESIDE beta and airlight ranges',
    'haze_bright': "depth half the image's blurred brightness, the dark channel prior's own cue",
}
#: the demo's claims (a miss is a regression), each met with margin by every 700-iteration run of (d) in
#: docs/allinone.md: PSNR over the input per degradation (dB), low light strictly above gamma correction (dB; the
#: 2026-12-04 run on the ``haze`` data: +1.84), supervised routing accuracy (chance: 1/3) and the low-light images'
#: own routing (one-hot from 700 iterations on)
DEMO_CLAIMS = {'over_input': {'lowlight': 6.0, 'rain': 1.5, 'haze': 2.0}, 'over_gamma': 0.0, 'routing': 0.6}
BENCH_FILE = re.compile(r'seed(\d+)\.json')

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
    from datasets_lmdb import demo

    return {**demo.split_settings(VERSION, seed, per_image, test_per_image, train_side, test_side), 'haze': 'haze'}


def haze_model(settings):
    """The haze synthesis a report's data ``settings`` used (version 1 data, which do not say, used
    ``haze_bright``)."""
    return settings.get('haze', 'haze_bright')


def haze_line(report):
    """One sentence naming the haze synthesis of ``report``'s data (``report['data']['settings']``)."""
    name = haze_model(report['data']['settings'])
    return f'Haze synthesis: `{name}` ({HAZE_MODELS.get(name, "see docs/data.md")}).'


def make_data(data_dir, progress=True, **kwargs):
    """Build ``data_dir/train`` (mixed, labelled) and ``data_dir/test_<degradation>`` (held-out photographs),
    each with ``lmdb/{lq,gt}.lmdb``; returns the record (settings, pair counts). Skipped when built before
    with the same settings."""
    from datasets_lmdb.demo import load_photo, reusable_record  # the data package builds on this one
    from datasets_lmdb.synth import synthesize_images

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
    for label in degradations.names():
        folder = os.path.join(data_dir, f'test_{label}')
        sets[f'test_{label}'] = synthesize_images(test, folder, label, per_image=settings['test_per_image'], **common)
    record = {'settings': settings, 'counts': {name: s['counts'] for name, s in sets.items()}}
    with open(record_path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
    return record


def load_test_sets(data_dir):
    """The held-out pairs (:class:`gmmoe_arch.evaluation.Pair`), each degradation's from its own PNG folders."""
    return [
        pair
        for label in degradations.names()
        for pair in ev_data.load_pairs(os.path.join(data_dir, f'test_{label}'), label)
    ]


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
    firsts = {label: group[0].lq for label, group in ev_data.by_label(test_sets).items()}
    return {
        label: img2tensor(cv2.resize(lq, (w, h), interpolation=cv2.INTER_AREA) / np.float32(255), bgr2rgb=False)[None]
        for label, lq in firsts.items()
    }


def median_times(nets, inputs, repeats=7):
    """``{net key: {label: median seconds}}`` of one forward pass of each network on each input (after one
    warm-up pass each); every repeat runs each network on each input once, in an order rotated from repeat to
    repeat (:func:`gmmoe_arch.bench.timing.interleaved`), so a change in the machine's load hits all alike."""
    calls = {(key, label): (lambda net=net, x=x: net(x)) for label, x in inputs.items() for key, net in nets.items()}
    with torch.no_grad():
        medians = interleaved(calls, repeats, warmup=1).medians()
    return {key: {label: medians[key, label] for label in inputs} for key in nets}


def timing_record(times, scores, dense, top1, repeats, names=('(b)', '(c)')):
    """``report['timing']`` of ``median_times``' ``times`` for the networks ``dense`` and ``top1`` (keys of
    ``times`` and of ``scores``, ``{key: {label: scores}}``), shown as ``names`` (None: as "dense" and "top-1")."""
    labels = list(times[dense])
    dense_s, top1_s = sum(times[dense].values()), sum(times[top1].values())
    return {
        'size': list(TIMING_SIZE),
        'threads': torch.get_num_threads(),
        'repeats': repeats,
        'names': None if names is None else list(names),
        'dense_s': dense_s / len(labels),
        'top1_s': top1_s / len(labels),
        'ratio': top1_s / dense_s,
        'ratio_per_label': {lb: times[top1][lb] / times[dense][lb] for lb in labels},
        'psnr_change': {lb: scores[top1][lb]['psnr'] - scores[dense][lb]['psnr'] for lb in scores[dense]},
    }


def routing_by_label(result, mapping):
    """``{label: share of its images routed to its expert}`` of a :class:`~gmmoe_arch.evaluation.NetworkResult`
    (empty when not measurable)."""
    return result.stats.to_dict(result.experts, mapping).get('routing', {}).get('per_label', {})


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


def results_table(results):
    """The Markdown of the results (:func:`gmmoe_arch.evaluation.markdown`) and, with ``--bench``, the timing."""
    text = f'{haze_line(results)}\n\n{ev_report.markdown(results, targets=False)}'
    timing = results.get('timing')
    if not timing:
        return text
    names = timing.get('names', ('(b)', '(c)'))  # reports before the names were stored are the bench's
    dense, top1 = ('dense ' + names[0], 'top-1 ' + names[1]) if names else ('dense', 'top-1')
    ratio = f'{names[1]}/{names[0]}' if names else 'top-1/dense'
    return (
        f'{text}\n\nInference at {timing["size"][1]}x{timing["size"][0]} on one held-out image per degradation '
        f'({timing["threads"]} thread(s), median of {timing["repeats"]} interleaved runs, mean over the '
        f'degradations): {dense} {timing["dense_s"] * 1000:.0f} ms, {top1} {timing["top1_s"] * 1000:.0f} '
        f'ms, ratio {ratio} {timing["ratio"]:.2f} ('
        + ', '.join(f'{lb} {r:.2f}' for lb, r in timing.get('ratio_per_label', {}).items())
        + ')'
        + (
            f'; (f), trained with top-1, {timing["trained_top1_s"] * 1000:.0f} ms, ratio (f)/(b) '
            f'{timing["trained_ratio"]:.2f}'
            if 'trained_ratio' in timing
            else ''
        )
        + f'. PSNR of {top1} minus {dense}: '
        + ', '.join(f'{lb} {change:+.2f} dB' for lb, change in timing['psnr_change'].items())
        + '.'
    )


def bench_targets(results, supervised_key, candidates, mapping, dense_key=None):
    """The issue's targets as data (:mod:`gmmoe_arch.evaluation.targets`): every degradation 3 dB above its best
    classical baseline in one of the ``candidates`` networks; routing accuracy >= 90% for ``supervised_key``;
    top-1 at least twice as fast as dense and within 0.5 dB of it (``results['timing']``; n/a without); with
    ``dense_key``, that network's gate gives ``RainExpert`` more weight on rain images, and ``HazeExpert`` on hazy
    ones, than on the other degradations (``mapping``: label -> expert)."""
    checks = ev_targets.gain_over_best_baseline(results, candidates, TARGET_OVER_BASELINE_DB)
    checks += ev_targets.routing_at_least(results, supervised_key, TARGET_ROUTING)
    checks += ev_targets.speedup_at_least(results, TARGET_SPEEDUP)
    checks += ev_targets.top1_cost_at_least(results, TARGET_TOP1_COST_DB)
    if dense_key is not None:
        for label in ('rain', 'haze'):
            checks += ev_targets.expert_preferred(results, dense_key, label, mapping[label])
    return checks


def demo_claims(results, key, claims=DEMO_CLAIMS):
    """What the demo's short budget shows for network ``key`` (:data:`DEMO_CLAIMS`): each degradation above its
    input by its margin, low light above gamma correction, routing above chance and every low-light image routed
    to its expert."""
    checks = []
    for target in ev_targets.gain_over_input(results, key):
        label = target.name.split(':')[0]
        checks.append(ev_targets.Target(target.name, target.value, claims['over_input'][label]))
    gamma = results['baselines']['lowlight']['gamma correction']['psnr']
    low = results['networks'][key]['scores']['lowlight']['psnr'] - gamma
    checks.append(ev_targets.Target('lowlight: PSNR over gamma correction', low, claims['over_gamma'], strict=True))
    checks += ev_targets.routing_at_least(results, key, claims['routing'])
    checks += ev_targets.routing_of_label_at_least(results, key, 'lowlight', 1.0)
    return checks


def seed_report_path(folder, seed):
    """Where the bench writes the report of training seed ``seed``: ``<folder>/seed<seed>.json``."""
    return os.path.join(folder, f'seed{seed}.json')


def load_seed_reports(folder):
    """``{seed: report}`` of every ``seed<N>.json`` in ``folder``, by seed; :class:`EvaluationError` naming a
    file that is not a bench report, or when there is none."""
    reports = {}
    for path in sorted(glob.glob(os.path.join(folder, 'seed*.json'))):
        match = BENCH_FILE.fullmatch(os.path.basename(path))
        if not match:
            continue
        try:
            with open(path, encoding='utf-8') as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            raise EvaluationError(f'{path}: not a bench report of scripts/allinone.py ({e})') from None
        if not isinstance(report, dict) or 'networks' not in report or 'settings' not in report.get('data', {}):
            raise EvaluationError(f'{path}: not a bench report of scripts/allinone.py (no networks or data settings)')
        reports[int(match.group(1))] = report
    if not reports:
        raise EvaluationError(f'{folder}: no seed<N>.json bench reports to combine')
    return dict(sorted(reports.items()))


def spread(values):
    """``{'mean', 'std', 'n'}`` of the measured ``values`` (None skipped; std: the sample standard deviation,
    None for fewer than two); None when nothing was measured."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {'mean': float(np.mean(values)), 'std': std, 'n': len(values)}


def combine(reports):
    """Mean and spread over the seeds (``{seed: report}``, :func:`load_seed_reports`) of every figure: the input's,
    the baselines' and each network's scores per degradation, routing accuracy (overall and per label), the
    timing ratio, and for each target the seeds that met it. The seeds must share their data settings
    (:class:`EvaluationError` naming the seed that differs)."""
    first_seed, first = next(iter(reports.items()))
    for seed, report in reports.items():
        if report['data']['settings'] != first['data']['settings']:
            raise EvaluationError(
                f'seed {seed}: its data settings differ from those of seed {first_seed}; combine runs on the same data'
            )
    labels = list(first['input'])
    metrics = first['metrics']

    def scores(get):
        return {lb: {m: spread(get(r, lb, m) for r in reports.values()) for m in metrics} for lb in labels}

    networks = {}
    for key in dict.fromkeys(k for r in reports.values() for k in r['networks']):
        entries = [r['networks'].get(key) for r in reports.values()]
        present = [e for e in entries if e is not None]
        networks[key] = {
            'title': present[0]['title'],
            'scores': scores(
                lambda r, lb, m, key=key: r['networks'][key]['scores'][lb][m] if key in r['networks'] else None
            ),
            'routing_accuracy': spread(e.get('routing_accuracy') for e in present),
            'routing_by_label': {
                lb: spread((e.get('routing_by_label') or {}).get(lb) for e in present) for lb in labels
            },
        }
    baselines = {
        lb: {
            name: {m: spread(r['baselines'][lb][name][m] for r in reports.values()) for m in metrics}
            for name in first['baselines'][lb]
        }
        for lb in labels
    }
    targets = {}
    for report in reports.values():
        for t in report.get('targets', []):
            entry = targets.setdefault(
                t['name'], {'values': [], 'met': 0, 'threshold': t['threshold'], 'unit': t['unit']}
            )
            entry['values'].append(t['value'])
            entry['met'] += bool(t['met'])
    return {
        'seeds': list(reports),
        'settings': first['data']['settings'],
        'haze': haze_model(first['data']['settings']),
        'metrics': metrics,
        'input': scores(lambda r, lb, m: r['input'][lb][m]),
        'baselines': baselines,
        'networks': networks,
        'timing_ratio': spread(r.get('timing', {}).get('ratio') for r in reports.values()),
        'targets': {
            name: {'value': spread(e.pop('values')), **e, 'seeds': len(reports)} for name, e in targets.items()
        },
    }


def _cell(s, digits=2, percent=False):
    """``mean ± std (n)`` of a :func:`spread` (empty for None)."""
    if s is None:
        return ''
    fmt = (lambda x: f'{x * 100:.{digits}f}%') if percent else (lambda x: f'{x:.{digits}f}')
    std = '' if s['std'] is None else f' ± {fmt(s["std"])}'
    return f'{fmt(s["mean"])}{std} (n={s["n"]})'


def combined_markdown(combined):
    """The Markdown of :func:`combine`: PSNR and SSIM per method and degradation, routing accuracy, the timing
    ratio and how many seeds met each target, every figure as mean ± sample std (n = seeds measured)."""
    labels = list(combined['input'])
    seeds = ', '.join(map(str, combined['seeds']))
    lines = [
        f'Training seeds {seeds}; every figure mean ± sample standard deviation over the seeds (n: seeds measured). '
        f'Haze synthesis: `{combined["haze"]}` ({HAZE_MODELS.get(combined["haze"], "see docs/data.md")}).',
    ]
    rows = [('input', combined['input'], None, {})]
    for lb, table in combined['baselines'].items():
        rows += [(name, {lb: s}, None, {}) for name, s in table.items()]
    rows += [
        (n['title'], n['scores'], n['routing_accuracy'], n['routing_by_label']) for n in combined['networks'].values()
    ]
    for metric, digits in (('psnr', 2), ('ssim', 4)):
        if metric not in combined['metrics']:
            continue
        lines += ['', f'{ev_report.HEADINGS[metric]} per degradation:', '']
        lines += ['| method | ' + ' | '.join(labels) + ' | routing accuracy |', '|---' * (len(labels) + 2) + '|']
        for name, by_label_, routing, _ in rows:
            cells = [_cell(by_label_[lb][metric], digits) if lb in by_label_ else '' for lb in labels]
            lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {_cell(routing, 0, percent=True)} |')
    routed = [(name, by) for name, _, _, by in rows if any(v is not None for v in by.values())]
    if routed:
        lines += ['', 'Routing accuracy per degradation:', '']
        lines += ['| method | ' + ' | '.join(labels) + ' |', '|---' * (len(labels) + 1) + '|']
        lines += [
            f'| {name} | ' + ' | '.join(_cell(by[lb], 0, percent=True) for lb in labels) + ' |' for name, by in routed
        ]
    if combined['timing_ratio']:
        lines += ['', f'Top-1 time over dense time at 600x400: {_cell(combined["timing_ratio"])}.']
    if combined['targets']:
        lines += ['', 'Targets, per seed:', '']
        for name, t in combined['targets'].items():
            value = _cell(t['value'], 0 if t['unit'] == '%' else 2, percent=t['unit'] == '%')
            lines.append(f'- {name}: met in {t["met"]} of {t["seeds"]} seeds; value {value or "n/a"}')
    return '\n'.join(lines)
