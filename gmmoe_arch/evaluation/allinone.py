"""The all-in-one demo's pieces (``scripts/allinone.py`` drives them): the data it builds, the held-out sets, the
option files of the bench variants, the timing of top-1 against dense inference, the table and the targets.

One GM-MoE for low light, rain and haze: a mixed training set (each pair one degradation, labelled) and one
held-out test set per degradation, from scikit-image's bundled photographs (``datasets_lmdb.synth``); the bench
variants (a)-(f) are derived from the demo's option file (see :data:`VARIANTS`).
"""

import copy
import json
import os

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
    from datasets_lmdb import demo

    return {
        'version': VERSION,
        'seed': seed,
        'per_image': per_image,
        'test_per_image': test_per_image,
        'train_side': train_side,
        'test_side': test_side,
        'train_photos': list(demo.TRAIN_PHOTOS),
        'test_photos': list(demo.VAL_PHOTOS),
    }


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
    text = ev_report.markdown(results, targets=False)
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


def targets(results, supervised_key, candidates, mapping, dense_key=None):
    """The issue's targets as data (:mod:`gmmoe_arch.evaluation.targets`): every degradation above its input and
    3 dB above its best classical baseline in one of the ``candidates`` networks; routing accuracy >= 90% for
    ``supervised_key``; with ``dense_key``, that network's gate gives ``RainExpert`` more weight on rain images,
    and ``HazeExpert`` on hazy ones, than on the other degradations (``mapping``: label -> expert)."""
    checks = ev_targets.gain_over_input(results, candidates, 0.0, strict=True)
    checks += ev_targets.gain_over_best_baseline(results, candidates, TARGET_OVER_BASELINE_DB)
    checks += ev_targets.routing_at_least(results, supervised_key, TARGET_ROUTING)
    if dense_key is not None:
        for label in ('rain', 'haze'):
            checks += ev_targets.expert_preferred(results, dense_key, label, mapping[label])
    return checks
