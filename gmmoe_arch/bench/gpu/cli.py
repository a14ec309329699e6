"""``scripts/gpu_check.py``'s command line: parse the options, run the parts within the budget, summarise."""

import argparse
import os
import time
import traceback
from pathlib import Path

import torch

from ..cli import comma_list
from . import inference, loader, profile, reference, training
from .plan import COMPILE_MODES, DEFAULT_PARTS, DTYPES, KNOWN_MODES, PART_WEIGHTS, dry_plan, gpu_plan
from .run import Budget, Recorder, State, describe, free_memory
from .summary import environment, summarise


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="GPU check (not a test): GM-MoE's speed on one CUDA GPU, part by part.")
    p.add_argument('--out', default='gpu_check_out', help='folder for gpu_check.json (created)')
    p.add_argument(
        '--budget-s',
        type=float,
        default=None,
        help='seconds for all parts together (default 420 on a GPU, 1800 for --cpu-dry-run; imports '
        'and start-up come on top)',
    )
    p.add_argument(
        '--parts',
        default=DEFAULT_PARTS,
        help=f'comma-separated, run in this order (default {DEFAULT_PARTS}; also: basicsr, profile)',
    )
    p.add_argument(
        '--compile-modes', default=','.join(COMPILE_MODES), help='torch.compile modes to try, in priority order'
    )
    p.add_argument('--compile-dtypes', default='fp32,bf16', help='fp32 and/or bf16 (autocast), in priority order')
    p.add_argument('--cpu-dry-run', action='store_true', help='run every code path on the CPU at tiny sizes')
    p.add_argument('--tmp-dir', default=None, help='where the loader part writes its synthetic pairs')
    args = p.parse_args(argv)
    args.parts = comma_list(args.parts)
    unknown = sorted(set(args.parts) - set(PART_WEIGHTS))
    if unknown:
        p.error(f'--parts: unknown {", ".join(unknown)}; choose from {", ".join(PART_WEIGHTS)}')
    args.compile_modes = comma_list(args.compile_modes)
    if set(args.compile_modes) - set(KNOWN_MODES):
        p.error(f'--compile-modes: choose from {", ".join(KNOWN_MODES)}, got {", ".join(args.compile_modes)}')
    args.compile_dtypes = comma_list(args.compile_dtypes)
    if set(args.compile_dtypes) - set(DTYPES):
        p.error(f'--compile-dtypes: choose from {", ".join(DTYPES)}, got {", ".join(args.compile_dtypes)}')
    if args.tmp_dir is not None and not os.path.isdir(args.tmp_dir):
        p.error(f'--tmp-dir {args.tmp_dir}: not a folder')
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.cpu_dry_run else 420.0
    if args.budget_s <= 0:
        p.error('--budget-s must be > 0')
    if not args.cpu_dry_run and not torch.cuda.is_available():
        p.error('no CUDA device here: run it on a GPU machine, or pass --cpu-dry-run to test the script on the CPU')
    return args


def main(argv=None):
    args = parse_args(argv)
    plan = dry_plan() if args.cpu_dry_run else gpu_plan()
    if plan.cuda:
        torch.backends.cudnn.benchmark = True  # as basicsr's train.py sets it
    else:  # times mean nothing in a dry run; one thread keeps a busy machine from stalling OpenMP barriers
        torch.set_num_threads(1)
    cache_limit = 'recompile_limit' if hasattr(torch._dynamo.config, 'recompile_limit') else 'cache_size_limit'
    setattr(torch._dynamo.config, cache_limit, 256)  # many nets and shapes: never fall back to eager silently
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(out / 'gpu_check.json', environment(plan, args))
    print(
        f'gpu_check: {rec.results["meta"]["device"]}, torch {torch.__version__}, budget {args.budget_s:.0f} s, '
        f'parts {", ".join(args.parts)}; results in {rec.path}',
        flush=True,
    )
    # the dry run's debugging backend ignores modes and dtypes: one of each exercises the code
    first = slice(1 if args.cpu_dry_run else None)
    budget = Budget(args.budget_s, args.parts)
    state = State(args.compile_modes[first], args.compile_dtypes[first])
    parts = {
        'reference': reference.part_reference,
        'inference': inference.part_inference,
        'training': training.part_training,
        'released': training.part_released,
        'training_compiled': training.part_training_compiled,
        'inference_compiled': inference.part_inference_compiled,
        'loader': lambda *a: loader.part_loader(*a, args.tmp_dir),
        'basicsr': lambda *a: reference.part_basicsr(*a, out),
        'profile': profile.part_profile,
    }
    started = time.monotonic()
    try:
        for name in args.parts:
            share = budget.start(name)
            print(f'-- {name}: {share:.0f} s of budget', flush=True)
            part_start = time.monotonic()
            try:
                parts[name](rec, plan, budget, state)
            except Exception:
                rec.put(
                    name,
                    'FAILED',
                    {
                        'error': traceback.format_exc().splitlines()[-1][:300],
                        'traceback': traceback.format_exc()[-3000:],
                    },
                )
            rec.results['meta'].setdefault('part_seconds', {})[name] = round(time.monotonic() - part_start, 1)
            free_memory()
    finally:
        rec.results['meta']['total_seconds'] = round(time.monotonic() - started, 1)
        rec.results['summary'] = summarise(rec.results, plan)
        rec.save()
        for key, row in rec.results['summary'].items():
            print(f'[summary] {key}: {describe(row)}', flush=True)


if __name__ == '__main__':
    main()
