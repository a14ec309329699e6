"""Issue 22's gate measurements (docs/gates.md): trained checkpoints in, JSON out.

``python scripts/bench_gates.py demo --data D --released CKPT --adaptive CKPT --out docs/bench/gates_demo.json``
scores the low-light demo networks with the released gate and with ``AdaptiveGate`` (trained with
options/train_gmmoe_demo.yml and options/train_gmmoe_demo_adaptive.yml) on the held-out validation images of
the demo set ``D``: PSNR/SSIM, the spread of the gate weights over the images, and the gate ablation (each
block's gate frozen to its mean weights over the held-out images, and over the training images).

``python scripts/bench_gates.py regions --regions R --allinone A --image CKPT --spatial CKPT --out F
[--figure PNG]`` scores the per-image and the spatial gate networks (options/train_gmmoe_regions_demo_image.yml,
options/train_gmmoe_regions_demo.yml) on the held-out regions set ``R/test``: PSNR/SSIM, per-pixel routing
accuracy against the label maps (per block and for the mean over the full-resolution blocks), the gate
ablation; and on the single-degradation held-out sets of the all-in-one demo ``A/test_*``; ``--figure``
writes the spatial network's routing map of one held-out regions image.
"""

import argparse
import json
import os
import platform
import sys
import time

import cv2
import numpy as np

import gmmoe_arch  # noqa: F401,I001  (applies the basicsr compat patches before basicsr is used)
from gmmoe_arch import evaluation as ev
from gmmoe_arch.archs.gmmoe_arch import expert_names
from gmmoe_arch.data.llie_paired_dataset import LLIEPairedDataset
from gmmoe_arch.enhance import load_network
from gmmoe_arch.evaluation.ablation import gate_ablation, run_scored
from gmmoe_arch.evaluation.data import dataset_options, to_uint8
from gmmoe_arch.evaluation.routing_map import (
    MEAN_PANEL,
    full_resolution,
    mean_map,
    pixel_accuracy,
    pixel_weights,
    save_routing_map,
    target_map,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPPING = {'lowlight': 'ColourExpert', 'rain': 'RainExpert', 'haze': 'HazeExpert'}
DEMO_OPTS = {
    'released': 'options/train_gmmoe_demo.yml',
    'adaptive': 'options/train_gmmoe_demo_adaptive.yml',
}
REGIONS_OPTS = {
    'image': 'options/train_gmmoe_regions_demo_image.yml',
    'spatial': 'options/train_gmmoe_regions_demo.yml',
}


def machine():
    """When and where: date, CPU, cores, torch threads."""
    import torch

    return {
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'machine': f'{platform.machine()} {platform.processor() or "CPU"}, {os.cpu_count()} cores (shared)',
        'torch_threads': torch.get_num_threads(),
    }


def load(checkpoint, option):
    net = load_network(checkpoint, option_file=os.path.join(REPO, option), device='cpu')
    return net.eval()


def demo(args):
    pairs = ev.load_pairs(os.path.join(args.data, 'eval15'), label='lowlight')
    train_dir = os.path.join(args.data, 'our485', 'low')
    names = sorted(os.listdir(train_dir))
    train = [cv2.cvtColor(cv2.imread(os.path.join(train_dir, n)), cv2.COLOR_BGR2RGB) for n in names]
    result = {'setup': machine(), 'held_out': [p.name for p in pairs], 'training_images': len(train), 'gates': {}}
    for key, checkpoint in (('released', args.released), ('adaptive', args.adaptive)):
        net = load(checkpoint, DEMO_OPTS[key])
        held_out = gate_ablation(net, pairs, metrics=ev.ALL_METRICS)
        on_train = gate_ablation(net, pairs, metrics=ev.OURS, reference=train)
        result['gates'][key] = {
            'option_file': DEMO_OPTS[key],
            'ablation_held_out_means': held_out,
            'ablation_training_means': {k: on_train[k] for k in ('frozen_mean', 'delta', 'means')},
        }
        print(key, json.dumps(held_out['trained']['all']), 'delta', held_out['delta']['all'], flush=True)
    return result


def label_maps(data):
    dataset = LLIEPairedDataset(dict(dataset_options(data), label_maps=True), where=f'{data}: ')
    return [(to_uint8(s['lq']), s['label_map'].numpy()) for s in (dataset[i] for i in range(len(dataset)))]


def routing(net, maps):
    """Per-pixel routing accuracy, mean over the images: per block and for the full-resolution mean."""
    names = expert_names(net)
    per_block, outer = {}, []
    for img, label_map in maps:
        weights = pixel_weights(net, img)
        for path, w in weights.items():
            per_block.setdefault(path, []).append(pixel_accuracy(w, label_map, names, MAPPING))
        outer.append(pixel_accuracy(mean_map(weights, full_resolution(weights)), label_map, names, MAPPING))
    return {
        'full_resolution_mean': float(np.mean(outer)),
        'full_resolution_blocks': full_resolution(weights),
        'blocks': {p: float(np.mean(a)) for p, a in per_block.items()},
    }


def regions(args):
    test = os.path.join(args.regions, 'test', 'lmdb')
    pairs = ev.load_pairs(test)
    maps = label_maps(test)
    singles = {d: ev.load_pairs(os.path.join(args.allinone, f'test_{d}', 'lmdb')) for d in MAPPING}
    result = {'setup': machine(), 'held_out': [p.name for p in pairs], 'mapping': MAPPING, 'gates': {}}
    for key, checkpoint in (('image', args.image), ('spatial', args.spatial)):
        net = load(checkpoint, REGIONS_OPTS[key])
        entry = {'option_file': REGIONS_OPTS[key], 'regions': gate_ablation(net, pairs, metrics=ev.OURS)}
        entry['routing'] = routing(net, maps)
        entry['single'] = {d: run_scored(net, group)[0]['all'] for d, group in singles.items()}
        result['gates'][key] = entry
        print(key, entry['regions']['trained']['all'], entry['routing']['full_resolution_mean'], flush=True)
        if key == 'spatial' and args.figure:
            img, label_map = maps[args.figure_index]
            truth = target_map(label_map, expert_names(net), MAPPING)
            blocks = [MEAN_PANEL, 'encoders.0.0', 'middle_blks.0', 'decoders.2.0']
            save_routing_map(args.figure, img, pixel_weights(net, img), expert_names(net), blocks, truth=truth)
            result['figure'] = {'path': args.figure, 'image': pairs[args.figure_index].name}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='what', required=True)
    d = sub.add_parser('demo')
    d.add_argument('--data', required=True)
    d.add_argument('--released', required=True)
    d.add_argument('--adaptive', required=True)
    r = sub.add_parser('regions')
    r.add_argument('--regions', required=True)
    r.add_argument('--allinone', required=True)
    r.add_argument('--image', required=True)
    r.add_argument('--spatial', required=True)
    r.add_argument('--figure')
    r.add_argument('--figure-index', type=int, default=0)
    for p in (d, r):
        p.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    result = demo(args) if args.what == 'demo' else regions(args)
    ev.write_json(result, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
