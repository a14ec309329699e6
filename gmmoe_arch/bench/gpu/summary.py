"""The GPU check's summary (speed-ups over plain against the issue's targets) and its environment record."""

import dataclasses
import os
import sys

import torch

from ... import compat
from .inference import shape_key


def best_of(section, predicate=lambda name, entry: True):
    rows = [
        (e[next(k for k in ('img_s', 'it_s') if k in e)], n)
        for n, e in (section or {}).items()
        if isinstance(e, dict) and ('img_s' in e or 'it_s' in e) and predicate(n, e)
    ]
    return max(rows) if rows else None


def summarise(results, plan):
    """Speed-ups over plain against the issue's targets, from what was measured."""
    summary = {}
    for h, w, b in plan.infer_shapes:
        key = shape_key(h, w, b)
        plain = results.get('inference', {}).get(f'{key} plain fp32', {}).get('img_s')
        rows = {
            n[len(key) + 1 :]: e
            for s in ('inference', 'inference_compiled')
            for n, e in results.get(s, {}).items()
            if n.startswith(key + ' ')
        }
        best = best_of(rows)
        best_fp32 = best_of(rows, lambda n, e: 'bf16' not in n)
        if plain and best:
            row = {
                'plain_img_s': plain,
                'best': best[1],
                'best_img_s': best[0],
                'speedup': best[0] / plain,
                'best_psnr_db': rows[best[1]]['psnr_db'],
                'best_fp32': best_fp32[1],
                'speedup_fp32': best_fp32[0] / plain,
                'best_fp32_max_abs_diff': rows[best_fp32[1]]['max_abs_diff'],
            }
            if b == 1:
                row['target_3x_met'] = row['speedup'] >= 3
            summary[f'inference {key}'] = row
    train = {**results.get('training', {}), **results.get('training_compiled', {})}
    best = best_of(train, lambda n, e: e.get('loss_finite'))
    plain = train.get('plain fp32', {}).get('it_s')
    if plain and best:
        summary['training'] = {
            'plain_it_s': plain,
            'best': best[1],
            'best_it_s': best[0],
            'speedup': best[0] / plain,
            'target_2x_met': best[0] / plain >= 2,
        }
    for name, e in results.get('loader', {}).items():
        if isinstance(e, dict) and 'gpu_busy' in e:
            summary[f'loader {name}'] = {
                'it_s': e['it_s'],
                'gpu_busy': e['gpu_busy'],
                'busy_90pct_met': e['gpu_busy'] >= 0.9,
            }
    return summary


def environment(plan, args):
    meta = {
        'torch': torch.__version__,
        'python': sys.version.split()[0],
        'gmmoe_compat': compat.APPLIED,
        'cpu_count': os.cpu_count(),
        'dry_run': args.cpu_dry_run,
        'budget_s': args.budget_s,
        'compile_backend': plan.compile_backend,
        'compile_modes': args.compile_modes,
        'compile_dtypes': args.compile_dtypes,
        'plan': {k: str(v) for k, v in dataclasses.asdict(plan).items()},
    }
    if plan.cuda:
        props = torch.cuda.get_device_properties(plan.device)
        meta.update(
            device=props.name,
            capability=f'{props.major}.{props.minor}',
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        meta['device'] = 'cpu'
    return meta
