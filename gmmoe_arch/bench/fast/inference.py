"""Inference rows of the fast-path benchmark: the straightforward path, the fast path in fp32 and low precision
and, with ``--compile``, inductor variants of the straightforward path, interleaved on one input."""

import copy
import functools

import torch

from ..nets import agreement, random_net
from ..timing import interleaved, timed
from .common import report, set_allocator, two_baselines
from .memory import child_peak


def inference_modes(device, with_plain_low):
    """``name -> (fast, autocast dtype or None, allocator tuned)``; the first is the baseline."""
    modes = {'plain fp32': (False, None, False)}
    if two_baselines(device):
        modes['plain+malloc'] = (False, None, True)
    modes.update({'fast fp32': (True, None, True), 'fast bf16': (True, torch.bfloat16, True)})
    if device.type == 'cuda':
        modes['fast fp16'] = (True, torch.float16, True)
    if with_plain_low:
        modes['plain bf16'] = (False, torch.bfloat16, True)
    return modes


def run_inference(net, x, fast, dtype, tuned):
    """One forward of ``net`` on ``x`` on the given path, autocast dtype and allocator setting."""
    set_allocator(tuned)
    net.set_fast(fast)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return net(x)


def run_compiled(compiled, x, dtype):
    """One call of a compiled straightforward net (the first one compiles), allocator tuned."""
    set_allocator(True)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return compiled(x)


def compile_variants(modes):
    """``name -> (torch.compile kwargs, autocast dtype)`` of the compiled rows, per mode.

    Inductor options go in ``options`` (never a global config patch): dynamo reuses a compiled frame for
    another instance of the same module class when the backends compare equal, and only differing
    options make them differ.
    """
    variants = {}
    for mode in modes:
        tag = '' if mode == 'default' else f' {mode}'
        options = {} if mode == 'default' else dict(torch._inductor.list_mode_options(mode))
        variants[f'inductor{tag} fp32'] = (dict(dynamic=False, options=options), None)
        frozen = dict(options, freezing=True)
        variants[f'inductor{tag}+frz fp32'] = (dict(dynamic=False, options=frozen), None)
        variants[f'inductor{tag}+frz bf16'] = (dict(dynamic=False, options=frozen), torch.bfloat16)
        if mode == 'default':
            variants['inductor dyn fp32'] = (dict(dynamic=True, options=options), None)
    return variants


def compiled_runners(net, x, args, device):
    """``name -> no-argument call`` of each compiled variant on a copy of ``net`` (straightforward path, allocator
    tuned), each compiled by a first call here; returns them and the compilation seconds per name."""
    runners, compile_s = {}, {}
    for name, (kw, dtype) in compile_variants(args.compile_modes).items():
        compiled = torch.compile(copy.deepcopy(net).set_fast(False), **kw)
        runners[name] = functools.partial(run_compiled, compiled, x, dtype)
        compile_s[name] = timed(runners[name], device).wall_s
        print(f'    {name:14s} compiled in {compile_s[name]:.1f} s (first call)', flush=True)
    return runners, compile_s


def input_image(size, seed, device):
    h, w = size
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed + 1)).to(device)


def bench_inference(preset, size, args, device):
    """Time every inference mode of ``preset`` at ``size`` (height, width); print and return the rows."""
    h, w = size
    net = random_net(preset, args.seed).to(device).eval()
    x = input_image(size, args.seed, device)
    modes = inference_modes(device, args.plain_bf16)
    print(f'\n[inference] preset {preset}, {w}x{h}, {args.runs} runs after {args.warmup} warm-up', flush=True)
    runners = {name: functools.partial(run_inference, net, x, *mode) for name, mode in modes.items()}
    compile_s = {}
    if args.compile:
        compiled, compile_s = compiled_runners(net, x, args, device)
        runners.update(compiled)
    runs = interleaved(runners, args.runs, args.warmup, device)
    set_allocator(True)
    bases = [m for m in modes if m.startswith('plain') and 'bf16' not in m] + (['fast fp32'] if args.compile else [])
    rows = report('time per image', runs, bases)
    for name, seconds in compile_s.items():
        rows[name]['compile_s'] = seconds
    ref = runs.last['plain fp32'].float()
    for name in runners:
        rows[name].update(agreement(runs.last[name].float(), ref))
        if rows[name]['psnr_db'] is None:
            rows[name]['psnr_db'] = float('inf')
        if name != 'plain fp32':
            print(
                f'    {name:14s} vs plain fp32: max |diff| {rows[name]["max_abs_diff"]:.2e}  '
                f'PSNR {rows[name]["psnr_db"]:.1f} dB'
            )
    if args.memory and device.type == 'cpu':
        for name in modes:  # the eager paths (a compiled one's peak would be the compiler's)
            rows[name]['peak_rss_mb'] = child_peak(args, 'infer', preset, size, name, modes[name][2])['peak_rss_mb']
            print(f'    {name:14s} peak RSS {rows[name]["peak_rss_mb"]:8.0f} MB (fresh process)')
    return rows
