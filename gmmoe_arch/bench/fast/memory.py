"""Peak memory of one configuration of the fast-path benchmark, each in a fresh process (the peak only grows
within a process): ``python -m gmmoe_arch.bench.fast.memory SPEC`` prints it as one JSON line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ..nets import bench_model, random_batch, random_net, train_step
from ..record import rss_mb
from . import common


def child_peak(args, part, preset, size, name, tuned):
    """Peak RSS (MB) of a fresh process that runs configuration ``name`` of ``part`` (``infer`` or ``train``)
    once, allocator tuned or not."""
    env = dict(os.environ, GMMOE_MALLOC='on' if tuned else 'off')
    root = str(Path(__file__).resolve().parents[3])  # this copy of the package, not another installed one
    env['PYTHONPATH'] = os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p)
    spec = dict(
        part=part,
        preset=preset,
        size=size,
        name=name,
        seed=args.seed,
        train_batch=args.train_batch,
        train_crop=args.train_crop,
        device=args.device,
    )
    cmd = [sys.executable, '-m', 'gmmoe_arch.bench.fast.memory', json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f'memory child {part}/{name} failed:\n{done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(spec):
    """Run the configuration ``spec`` (JSON, see :func:`child_peak`) once; print its peak RSS as JSON."""
    from .inference import inference_modes, input_image, run_inference
    from .training import train_configs

    base = rss_mb('VmRSS')
    spec = json.loads(spec)
    tuned = common.setup_allocator()
    device = torch.device(spec['device'])
    if spec['part'] == 'infer':
        net = random_net(spec['preset'], spec['seed']).to(device).eval()
        fast, dtype, _ = inference_modes(device, True)[spec['name']]
        run_inference(net, input_image(spec['size'], spec['seed'], device), fast, dtype, tuned)
    else:
        network = dict(preset=spec['preset'], **train_configs(device)[spec['name']][0])
        model = bench_model(network, device, spec['seed'])
        train_step(model, *random_batch(spec['train_batch'], spec['train_crop'], spec['seed'] + 2, device))
    peak = rss_mb('VmHWM')
    print(json.dumps({'peak_rss_mb': peak, 'base_rss_mb': base, 'train_mb': peak - base}))


if __name__ == '__main__':
    run_child(sys.argv[1])
