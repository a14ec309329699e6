"""The ``inference`` and ``inference_compiled`` parts: images/s of every eager variant and of compiled ones."""

import copy

import torch

from ..nets import agreement
from .plan import DTYPES
from .run import compile_net, compile_stats, dynamo_counts, guarded, make_net, measure, peak_gib, reset_peak

CHANNELS_LAST = torch.channels_last

INFER_VARIANTS = {  # name -> (fast path, autocast dtype, channels-last)
    'plain fp32': (False, None, False),
    'fast fp32': (True, None, False),
    'plain bf16': (False, torch.bfloat16, False),
    'fast bf16': (True, torch.bfloat16, False),
    'channels-last fp32': (False, None, True),
    'channels-last bf16': (False, torch.bfloat16, True),
}


def shape_key(h, w, b):
    return f'{w}x{h} b{b}'


def infer_input(plan, h, w, b):
    g = torch.Generator().manual_seed(plan.seed + 1)
    return (torch.rand(b, 3, h, w, generator=g) * 0.3).to(plan.device)


def infer_call(net, x, dtype, channels_last=False):
    """A no-argument forward of ``net`` on ``x`` under inference mode and ``dtype`` autocast."""
    if channels_last:
        net = net.to(memory_format=CHANNELS_LAST)
        x = x.contiguous(memory_format=CHANNELS_LAST)

    def call():
        with (
            torch.inference_mode(),
            torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            return net(x)

    return call


def infer_entry(call, plan, batch, ref, warmup, plain_img_s=None):
    reset_peak(plan.device)
    stats = measure(call, plan, warmup)
    out = stats['last'].float().clone()
    entry = {
        'img_s': batch / stats['per_call_s'],
        'ms_per_batch': 1000 * stats['per_call_s'],
        'calls': stats['calls'],
        'peak_gib': peak_gib(plan.device),
    }
    if plain_img_s:
        entry['vs_plain'] = entry['img_s'] / plain_img_s
    entry.update(agreement(out, ref) if ref is not None else {'max_abs_diff': None, 'psnr_db': None})
    return entry, stats, out


def part_inference(rec, plan, budget, state):
    for h, w, b in plan.infer_shapes:
        inference_at(rec, plan, budget, state, h, w, b)


def inference_at(rec, plan, budget, state, h, w, b):
    """Every eager variant on one ``(b, 3, h, w)`` input, against plain fp32 (measured first)."""
    key = shape_key(h, w, b)
    x = infer_input(plan, h, w, b)
    base = make_net(plan, 'paper', fast=False).eval()
    plain = {}  # 'out', 'img_s' of plain fp32
    for name, (fast, dtype, cl) in INFER_VARIANTS.items():

        def run(name=name, fast=fast, dtype=dtype, cl=cl):
            net = copy.deepcopy(base).set_fast(fast).eval() if fast or cl else base
            entry, _, out = infer_entry(
                infer_call(net, x, dtype, cl), plan, b, plain.get('out'), plan.warmup, plain.get('img_s')
            )
            if name == 'plain fp32':
                plain.update(out=out, img_s=entry['img_s'])
                entry.update(agreement(out, out))
            return entry

        guarded(rec, budget, 'inference', f'{key} {name}', plan.min_eager_s, run)
    state.infer_refs[key] = (plain.get('out'), plain.get('img_s'))


def compiled_infer_order(plan, modes, dtypes):
    """``[(shape, mode, dtype name)]`` in the order tried: mode by mode, batch-1 shapes (the issue's target)
    before batch 8, the dtypes at each shape."""
    shapes = sorted(plan.infer_shapes, key=lambda s: s[2])
    return [(s, m, d) for m in modes for s in shapes for d in dtypes][: plan.compile_infer_max]


def part_inference_compiled(rec, plan, budget, state):
    inputs = {}
    for (h, w, b), mode, dtype_name in compiled_infer_order(plan, state.compile_modes, state.compile_dtypes):
        key = shape_key(h, w, b)

        def run(h=h, w=w, b=b, key=key, mode=mode, dtype=DTYPES[dtype_name]):
            if key not in inputs:
                x, base = infer_input(plan, h, w, b), make_net(plan, 'paper', fast=False).eval()
                ref, plain = state.infer_refs.get(key, (None, None))
                inputs[key] = (x, base, infer_call(base, x, None)().float().clone() if ref is None else ref, plain)
            x, base, ref, plain = inputs[key]
            before = dynamo_counts()
            call = infer_call(compile_net(copy.deepcopy(base), plan, mode), x, dtype)
            entry, stats, _ = infer_entry(call, plan, b, ref, plan.compile_warmup, plain)
            entry.update(compile_s=stats['first_call_s'], warmup_s=stats['warmup_s'], **compile_stats(before))
            state.compile_s['inference_compiled'] = stats['warmup_s']
            return entry

        guarded(
            rec,
            budget,
            'inference_compiled',
            f'{key} compile {mode} {dtype_name}',
            state.compile_need(plan, 'inference_compiled'),
            run,
        )
