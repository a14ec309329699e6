"""GPU check (not a test): GM-MoE's speed on one CUDA GPU today, and what each candidate GPU path buys.

One run on one GPU measures, part by part, printing each number as it comes and rewriting
``<out>/gpu_check.json`` after every measurement (a later failure, time-out or kill loses nothing before it):

* ``reference``: the reference vectors (``tests/reference``) on the device, float64 and float32 max |diff|.
* ``inference``: images/s at 600x400 and 1024x1024, batch 1 and 8: the straightforward path (``plain``, what
  ``fast='auto'`` runs on GPUs today), the fast path, bf16 autocast, channels-last; each against plain fp32
  (fp32: max |diff|; bf16: PSNR, peak 1).
* ``training``: it/s of AdamW steps on the released PSNR loss at batch 8 x 256^2: plain, with GMMoEModel's
  two per-step host syncs, fused AdamW, fast, bf16 AMP, ``checkpoint: block``, channels-last; peak memory.
* ``released``: the 690M preset's training it/s and peak memory at batch 1 x 256^2, with and without
  checkpointing.
* ``training_compiled`` / ``inference_compiled``: ``torch.compile`` of the network, modes
  ``reduce-overhead`` (CUDA graphs) and ``max-autotune-no-cudagraphs``, fp32 and bf16; compile + warm-up
  seconds apart from the steady speed; graphs and graph breaks dynamo reported.
* ``loader``: the fastest training step measured above fed by BasicSR's loader (``LLIEPairedDataset``,
  ``pin_memory``, ``prefetch_mode: cuda``) from PNG folders and from a raw LMDB (``datasets_lmdb.pack_pairs``)
  with 4, 8 and 16 workers: it/s, GPU busy share (CUDA-event time of the steps over wall time), NVML
  utilisation (when ``pynvml`` imports), time waiting for batches, and the loader's own batches/s; on
  200 synthetic 600x400 pairs written to a temporary folder.
* ``summary``: speed-ups over plain against the issue's targets.

Every part gets a share of ``--budget-s`` (time a part leaves unused goes to the later ones); a
measurement that would not fit is recorded as skipped, one that overruns is cut off (SIGALRM) and recorded
as such, and any failure is recorded and the run goes on. From the repository root::

    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check_out                 # ~7 minutes on an H100/H200
    PYTHONPATH=. python scripts/gpu_check.py --cpu-dry-run --out /tmp/gpu_dry    # every code path, tiny, on CPU
    PYTHONPATH=. python scripts/gpu_check.py --parts basicsr                      # BasicSR train under torchrun

``--cpu-dry-run`` runs the same code on the CPU, small: width 16 and two levels (the released preset's block counts at
width 4), 64x64 images, 2 timed steps, 0 and 2 loader workers, one compile mode and dtype, compiled with
dynamo's ``eager`` backend (inductor's C++ build would take minutes there); its times mean nothing.
"""

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gmmoe_arch  # noqa: E402  (applies the basicsr compat patches, registers the dataset)
from gmmoe_arch import GMMoE  # noqa: E402
from gmmoe_arch.archs.gmmoe_arch import activate_branches  # noqa: E402
from gmmoe_arch.losses.psnr_loss import PSNRLoss  # noqa: E402
from gmmoe_arch.models.gmmoe_model import GMMoEModel  # noqa: E402

psnr_loss = PSNRLoss()  # the released loss
CHANNELS_LAST = torch.channels_last
COMPILE_MODES = ('reduce-overhead', 'max-autotune-no-cudagraphs')
KNOWN_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
GRAPH_MODES = ('reduce-overhead', 'max-autotune')  # the modes that capture CUDA graphs
# shares of --budget-s, sized from the H100 run's times (eager parts) and a guess of 40-120 s per compilation
PART_WEIGHTS = {
    'reference': 2,
    'inference': 14,
    'training': 8,
    'released': 6,
    'training_compiled': 34,
    'loader': 16,
    'inference_compiled': 20,
    'basicsr': 20,
    'profile': 4,
}
DEFAULT_PARTS = 'reference,inference,training,released,training_compiled,loader,inference_compiled'


@dataclasses.dataclass
class Plan:
    """Sizes and repeat counts of one run (:func:`gpu_plan` or :func:`dry_plan`)."""

    device: torch.device
    infer_shapes: list  # [(height, width, batch)], in priority order
    train_batch: int
    train_crop: int
    released_crop: int
    net_size: dict  # GMMoE size arguments overriding the paper preset's (dry run: tiny)
    released_size: dict  # the same for the released preset
    warmup: int  # eager calls before timing
    compile_warmup: int  # compiled calls before timing (compile, CUDA-graph recording)
    min_runs: int
    max_runs: int
    target_s: float  # time aimed at per measurement
    compile_backend: str
    compile_infer_max: Optional[int]  # compiled inference variants to try at most (None: all)
    loader_pairs: int
    loader_size: tuple  # (height, width) of the synthetic pairs
    loader_workers: tuple
    min_eager_s: float  # left in a part's budget for an eager measurement to start
    min_compile_s: float
    min_loader_s: float
    seed: int = 0

    @property
    def cuda(self):
        return self.device.type == 'cuda'


def gpu_plan():
    return Plan(
        device=torch.device('cuda'),
        infer_shapes=[(400, 600, 1), (400, 600, 8), (1024, 1024, 1), (1024, 1024, 8)],
        train_batch=8,
        train_crop=256,
        released_crop=256,
        net_size={},
        released_size={},
        warmup=3,
        compile_warmup=3,
        min_runs=3,
        max_runs=200,
        target_s=1.0,
        compile_backend='inductor',
        compile_infer_max=None,
        loader_pairs=200,
        loader_size=(400, 600),
        loader_workers=(4, 8, 16),
        min_eager_s=2.0,
        min_compile_s=25.0,
        min_loader_s=6.0,
    )


def dry_plan():
    # width 16, not 8: torch 2.14's CPU kernel for the SFEB's dilated depthwise conv returns NaN weight gradients
    # (and corrupts memory) with 8 channels-last bf16 channels, which would end the run in a segfault
    tiny = dict(width=16, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    return Plan(
        device=torch.device('cpu'),
        infer_shapes=[(48, 64, 1), (64, 64, 2)],
        train_batch=2,
        train_crop=64,
        released_crop=32,
        net_size=tiny,
        released_size=dict(width=4),
        warmup=1,
        compile_warmup=1,
        min_runs=2,
        max_runs=2,
        target_s=0.0,
        compile_backend='eager',
        compile_infer_max=1,
        loader_pairs=6,
        loader_size=(64, 64),
        loader_workers=(0, 2),
        min_eager_s=0.0,
        min_compile_s=0.0,
        min_loader_s=0.0,
    )


DTYPES = {'fp32': None, 'bf16': torch.bfloat16}


# ---------------------------------------------------------------- recording, budget, timing


class Recorder:
    """The results: printed one line per measurement and rewritten to ``path`` (atomically) after each."""

    def __init__(self, path, meta):
        self.path = Path(path)
        self.results = {'meta': meta}

    def put(self, section, key, entry):
        self.results.setdefault(section, {})[key] = entry
        print(f'[{section}] {key}: {describe(entry)}', flush=True)
        self.save()

    def save(self):
        tmp = self.path.with_suffix('.json.tmp')
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, self.path)


def describe(entry):
    """One line of ``entry``'s numbers, rounded for reading."""
    if not isinstance(entry, dict):
        return str(entry)
    parts = []
    for k, v in entry.items():
        if k == 'traceback':
            continue
        if isinstance(v, float):
            v = f'{v:.3g}' if abs(v) < 1e-2 and v else f'{v:.2f}' if abs(v) < 1e4 else f'{v:.0f}'
        parts.append(f'{k} {v}')
    return ', '.join(parts)


class CutOff(BaseException):
    """A measurement ran past its part's budget (a BaseException, so no library's ``except Exception`` eats it)."""


class Budget:
    """``total_s`` seconds shared by the parts in proportion to their weights; what a part leaves unused goes
    to the parts after it."""

    def __init__(self, total_s, parts):
        self.end = time.monotonic() + total_s
        self.weights = {p: PART_WEIGHTS[p] for p in parts}
        self.deadline = self.end

    def start(self, part):
        weight = self.weights.pop(part)
        total = weight + sum(self.weights.values())
        share = weight / total if total else 1.0
        self.deadline = time.monotonic() + max(0.0, self.end - time.monotonic()) * share
        return self.deadline - time.monotonic()

    def left(self):
        return self.deadline - time.monotonic()


@contextlib.contextmanager
def cut_off_after(seconds):
    """Raise :class:`CutOff` in this (main) thread after ``seconds``."""

    def alarm(*_):
        raise CutOff(f"cut off at its part's time budget ({seconds:.0f} s)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def guarded(rec, budget, section, key, need_s, fn):
    """Record ``fn()``'s dict under ``section/key``; skipped when under ``need_s`` of the part's budget is left,
    cut off when the budget runs out; errors recorded, never raised. Returns the entry."""
    if budget.left() < max(need_s, 0.01):
        entry = {'skipped': f"{budget.left():.0f} s left of the part's budget, {need_s:.0f} s needed"}
    else:
        try:
            with cut_off_after(budget.left()):
                entry = fn()
        except (Exception, CutOff) as exc:
            entry = {
                'error': f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'[:300],
                'traceback': traceback.format_exc()[-3000:],
            }
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                entry['error'] = 'CUDA out of memory'
        free_memory()
    rec.put(section, key, entry)
    return entry


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    """Peak CUDA memory allocated since the last :func:`reset_peak` (GiB); None on the CPU."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == 'cuda' else None


def measure(fn, plan, warmup):
    """Call ``fn`` ``warmup`` times (timed apart: compilation, CUDA-graph recording), then back to back for
    about ``plan.target_s`` -> ``{per_call_s, calls, warmup_s, first_call_s, last}`` (``last``: what the last call
    returned; nothing older is kept, as a CUDA-graph replay overwrites the outputs of the one before)."""
    start = time.perf_counter()
    fn()
    sync(plan.device)
    first_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    sync(plan.device)
    warmup_s = time.perf_counter() - start
    calls = plan.min_runs
    if plan.max_runs > plan.min_runs:
        start = time.perf_counter()
        fn()
        sync(plan.device)
        calls = int(max(plan.min_runs, min(plan.max_runs, plan.target_s / max(time.perf_counter() - start, 1e-6))))
    start = time.perf_counter()
    for _ in range(calls):
        last = fn()
    sync(plan.device)
    return {
        'per_call_s': (time.perf_counter() - start) / calls,
        'calls': calls,
        'warmup_s': warmup_s,
        'first_call_s': first_s,
        'last': last,
    }


def agreement(out, ref):
    """``out`` against the plain fp32 output: max |diff| and PSNR (peak 1; None when identical)."""
    diff = out.double() - ref.double()
    mse = diff.pow(2).mean().item()
    return {'max_abs_diff': diff.abs().max().item(), 'psnr_db': None if mse == 0 else 10 * math.log10(1 / mse)}


def make_net(plan, preset, size=None, seed=None, **kwargs):
    """A GMMoE of ``preset`` (``size`` overriding its sizes) built on the device, with seeded non-trivial
    weights (every expert branch matters)."""
    torch.manual_seed(plan.seed if seed is None else seed)
    with plan.device:
        net = GMMoE(preset=preset, **(plan.net_size if size is None else size), **kwargs)
    return activate_branches(net, norm_jitter=0.1)


def compile_net(net, plan, mode):
    """``torch.compile(net)`` with ``mode`` (inductor) or the plan's debugging backend (dry run: no mode)."""
    if plan.compile_backend == 'inductor':
        return torch.compile(net, mode=mode)
    return torch.compile(net, backend=plan.compile_backend)


def dynamo_counts():
    """Graphs compiled and graph breaks so far (dynamo's counters)."""
    counters = torch._dynamo.utils.counters
    return counters['stats']['unique_graphs'], sum(counters['graph_break'].values())


def compile_stats(before):
    graphs, breaks = dynamo_counts()
    return {'graphs': graphs - before[0], 'graph_breaks': breaks - before[1]}


# ---------------------------------------------------------------- inference


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


# ---------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainVariant:
    """What a training step runs: path, autocast dtype, checkpointing, layout, optimiser, checks, compile mode."""

    fast: bool = False
    amp: Optional[torch.dtype] = None
    checkpoint: Optional[str] = None
    channels_last: bool = False
    fused_adamw: bool = False
    model_checks: bool = False  # GMMoEModel's per-step finite checks (two host syncs)
    compile_mode: Optional[str] = None


TRAIN_VARIANTS = {
    'plain fp32': TrainVariant(),
    'plain fp32 + GMMoEModel checks': TrainVariant(model_checks=True),
    'plain fp32 fused AdamW': TrainVariant(fused_adamw=True),
    'fast fp32': TrainVariant(fast=True),
    'plain bf16 AMP': TrainVariant(amp=torch.bfloat16),
    'fast bf16 AMP': TrainVariant(fast=True, amp=torch.bfloat16),
    'plain fp32 checkpoint block': TrainVariant(checkpoint='block'),
    'channels-last fp32': TrainVariant(channels_last=True),
    'channels-last bf16 AMP': TrainVariant(channels_last=True, amp=torch.bfloat16),
}


def compiled_train_variants(modes, dtypes):
    return {
        f'compile {mode} {d}{" AMP" if DTYPES[d] else ""}, fused AdamW': TrainVariant(
            amp=DTYPES[d], fused_adamw=True, compile_mode=mode
        )
        for mode in modes
        for d in dtypes
    }


class Trainer:
    """One training step as GMMoEModel takes it: AdamW (betas 0.9, 0.9), forward under autocast, the released
    PSNR loss outside it, backward, step."""

    def __init__(self, net, variant, plan):
        self.net, self.variant, self.device = net.train(), variant, plan.device
        if variant.channels_last:
            net.to(memory_format=CHANNELS_LAST)
        self.model = compile_net(net, plan, variant.compile_mode) if variant.compile_mode else net
        self.graphs = variant.compile_mode in GRAPH_MODES
        self.opt = torch.optim.AdamW(
            net.parameters(), lr=1e-4, betas=(0.9, 0.9), **({'fused': True} if variant.fused_adamw else {})
        )
        self.first_loss = None  # the loss of the first step, before any update: compared across variants

    def step(self, lq, gt):
        """One step on ``lq``/``gt`` ``(B, 3, H, W)``; returns the loss (a 0-dim tensor, not synced)."""
        if self.graphs:  # a new iteration: CUDA-graph outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if self.variant.channels_last:
            lq = lq.contiguous(memory_format=CHANNELS_LAST)
        self.opt.zero_grad(set_to_none=True)
        amp = self.variant.amp
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = self.model(lq)
        loss = psnr_loss(out, gt)
        if self.variant.model_checks and not torch.isfinite(loss.detach()).item():
            raise FloatingPointError('training loss is not finite')
        loss.backward()
        self.opt.step()
        if self.variant.model_checks and GMMoEModel._nonfinite_weights(self.net).item():
            raise FloatingPointError('weights are not finite')
        if self.first_loss is None:
            self.first_loss = loss.detach().clone()
        return loss.detach()


def train_batch(plan, batch, crop):
    g = torch.Generator().manual_seed(plan.seed + 2)
    lq = torch.rand(batch, 3, crop, crop, generator=g)
    return lq.to(plan.device), (lq * 2.5).clamp(0, 1).to(plan.device)


def train_entry(trainer, plan, lq, gt, warmup, plain_it_s=None):
    reset_peak(plan.device)
    stats = measure(lambda: trainer.step(lq, gt), plan, warmup)
    entry = {
        'it_s': 1 / stats['per_call_s'],
        'ms_per_step': 1000 * stats['per_call_s'],
        'steps': stats['calls'],
        'peak_gib': peak_gib(plan.device),
        'first_loss': trainer.first_loss.item(),
        'loss_finite': bool(torch.isfinite(stats['last'])),
    }
    if plain_it_s:
        entry['vs_plain'] = entry['it_s'] / plain_it_s
    return entry, stats


def run_train_variants(rec, plan, budget, state, section, variants):
    lq, gt = train_batch(plan, plan.train_batch, plan.train_crop)
    for name, variant in variants.items():

        def run(variant=variant, name=name):
            before = dynamo_counts()
            net = make_net(plan, 'paper', fast=variant.fast, checkpoint=variant.checkpoint or False)
            trainer = Trainer(net, variant, plan)
            warmup = plan.compile_warmup if variant.compile_mode else plan.warmup
            entry, stats = train_entry(trainer, plan, lq, gt, warmup, state.plain_it_s)
            if variant.compile_mode:
                entry.update(compile_s=stats['first_call_s'], warmup_s=stats['warmup_s'], **compile_stats(before))
                state.compile_s[section] = stats['warmup_s']
            if name == 'plain fp32':
                state.plain_it_s, state.plain_loss = entry['it_s'], entry['first_loss']
            elif state.plain_loss is not None:
                entry['first_loss_vs_plain'] = entry['first_loss'] - state.plain_loss
            state.offer(name, entry, trainer)
            return entry

        need_s = state.compile_need(plan, section) if variant.compile_mode else plan.min_eager_s
        guarded(rec, budget, section, name, need_s, run)


def part_training(rec, plan, budget, state):
    run_train_variants(rec, plan, budget, state, 'training', TRAIN_VARIANTS)


def part_training_compiled(rec, plan, budget, state):
    variants = compiled_train_variants(state.compile_modes, state.compile_dtypes)
    run_train_variants(rec, plan, budget, state, 'training_compiled', variants)


def part_released(rec, plan, budget, state):
    lq, gt = train_batch(plan, 1, plan.released_crop)
    variants = {
        'fp32': TrainVariant(),
        'fp32 checkpoint block': TrainVariant(checkpoint='block'),
        'bf16 AMP checkpoint block': TrainVariant(checkpoint='block', amp=torch.bfloat16),
    }
    for name, variant in variants.items():

        def run(variant=variant):
            reset_peak(plan.device)
            net = make_net(
                plan, 'released', size=plan.released_size, fast=False, checkpoint=variant.checkpoint or False
            )
            weights_gib = peak_gib(plan.device)
            entry, _ = train_entry(Trainer(net, variant, plan), plan, lq, gt, 2)
            return dict(
                entry,
                params=sum(p.numel() for p in net.parameters()),
                weights_gib=weights_gib,
                batch=1,
                crop=plan.released_crop,
            )

        guarded(rec, budget, 'released', f'batch 1 x {plan.released_crop}^2 {name}', plan.min_eager_s, run)


# ---------------------------------------------------------------- loader


class NvmlSampler:
    """Mean GPU utilisation (%, NVML's 'a kernel was running' share) sampled every 50 ms in a thread."""

    def __init__(self, device):
        self.samples, self.stop, self.thread, self.why_not = [], threading.Event(), None, None
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(getattr(torch.cuda.get_device_properties(device), 'uuid', ''))
            try:  # by UUID: NVML numbers all GPUs, CUDA only the visible ones
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith('GPU-') else f'GPU-{uuid}')
            except pynvml.NVMLError:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self.read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        except Exception as exc:  # no pynvml, no driver library, no device: say so in the results
            self.why_not = f'NVML unavailable: {type(exc).__name__}: {exc}'[:200]

    def __enter__(self):
        if self.why_not is None:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self):
        try:
            while not self.stop.wait(0.05):
                self.samples.append(self.read())
        except Exception as exc:  # a driver error mid-way: keep the samples taken, say why they stopped
            self.why_not = f'NVML stopped after {len(self.samples)} samples: {type(exc).__name__}: {exc}'[:200]

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()

    def mean(self):
        if self.why_not:
            return self.why_not
        return sum(self.samples) / len(self.samples) if self.samples else 'no NVML sample taken'


def write_synthetic_pairs(plan, root):
    """``plan.loader_pairs`` photo-like pairs as PNG folders ``root/{lq,gt}`` and their raw LMDB
    ``root/lmdb/{lq,gt}.lmdb``; returns seconds spent on each."""
    sys.path.insert(0, str(REPO / 'scripts'))
    from bench_data import write_pairs  # the same generator the CPU data benchmark uses

    from datasets_lmdb import pack_pairs

    start = time.perf_counter()
    write_pairs(root, plan.loader_pairs, size=plan.loader_size, seed=plan.seed)
    written = time.perf_counter() - start
    pack_pairs(
        os.path.join(root, 'lq'),
        os.path.join(root, 'gt'),
        os.path.join(root, 'lmdb'),
        workers=min(8, os.cpu_count() or 1),
        progress=False,
    )
    return {
        'pairs': plan.loader_pairs,
        'size': f'{plan.loader_size[1]}x{plan.loader_size[0]}',
        'write_png_s': written,
        'pack_lmdb_s': time.perf_counter() - start - written,
    }


def loader_opt(plan, root, source, workers, batch):
    lmdb = source == 'lmdb'
    folder = os.path.join(root, 'lmdb') if lmdb else root
    return {
        'name': f'{source} w{workers}',
        'type': 'LLIEPairedDataset',
        'phase': 'train',
        'dataroot_lq': os.path.join(folder, 'lq.lmdb' if lmdb else 'lq'),
        'dataroot_gt': os.path.join(folder, 'gt.lmdb' if lmdb else 'gt'),
        'io_backend': {'type': 'lmdb' if lmdb else 'disk'},
        'gt_size': plan.train_crop,
        'use_hflip': True,
        'use_rot': True,
        'num_worker_per_gpu': workers,
        'batch_size_per_gpu': batch,
        'pin_memory': plan.cuda,
        'persistent_workers': workers > 0,
        'prefetch_mode': 'cuda' if plan.cuda else None,
    }


def build_prefetcher(plan, opt, batches):
    """BasicSR's training loader for ``opt`` (an EnlargedSampler long enough for ``batches``) and its
    prefetcher (CUDAPrefetcher on a GPU as ``prefetch_mode: cuda`` selects, CPUPrefetcher on the CPU)."""
    from basicsr.data import build_dataloader, build_dataset
    from basicsr.data.data_sampler import EnlargedSampler
    from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher

    dataset = build_dataset(opt)
    ratio = math.ceil(batches * opt['batch_size_per_gpu'] / len(dataset)) + 1
    sampler = EnlargedSampler(dataset, 1, 0, ratio)
    loader = build_dataloader(dataset, opt, num_gpu=1 if plan.cuda else 0, dist=False, sampler=sampler, seed=plan.seed)
    return CUDAPrefetcher(loader, {'num_gpu': 1}) if plan.cuda else CPUPrefetcher(loader)


def timed_steps(prefetcher, trainer, plan, steps):
    """``steps`` training steps on the loader's batches -> (wall s, GPU busy s, s waiting for batches)."""
    events, waited = [], 0.0
    sync(plan.device)
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = prefetcher.next()
        waited += time.perf_counter() - t
        if plan.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            trainer.step(batch['lq'], batch['gt'])
            end.record()
            events.append((begin, end))
        else:
            t = time.perf_counter()
            trainer.step(batch['lq'], batch['gt'])
            events.append(time.perf_counter() - t)
    sync(plan.device)
    wall = time.perf_counter() - start
    busy = sum(b.elapsed_time(e) / 1000 for b, e in events) if plan.cuda else sum(events)
    return wall, busy, waited


def loader_entry(plan, root, source, workers, state):
    name, trainer, synthetic_it_s = state.best
    steps = int(max(plan.min_runs, min(plan.max_runs, plan.target_s * 2 * synthetic_it_s)))
    warm = max(plan.warmup, 2)
    start = time.perf_counter()
    prefetcher = build_prefetcher(plan, loader_opt(plan, root, source, workers, plan.train_batch), warm + 2 * steps + 2)
    first_batch_s = time.perf_counter() - start
    timed_steps(prefetcher, trainer, plan, warm)
    with NvmlSampler(plan.device) if plan.cuda else contextlib.nullcontext() as nvml:
        wall, busy, waited = timed_steps(prefetcher, trainer, plan, steps)
    start = time.perf_counter()
    for _ in range(steps):
        prefetcher.next()
    sync(plan.device)
    loader_only = steps / (time.perf_counter() - start)
    del prefetcher
    return {
        'it_s': steps / wall,
        'vs_synthetic_batch': steps / wall / synthetic_it_s,
        'gpu_busy': busy / wall,
        'waiting_for_batches': waited / wall,
        'nvml_util_pct': nvml.mean() if nvml else 'CPU run',
        'loader_only_batches_s': loader_only,
        'loader_only_samples_s': loader_only * plan.train_batch,
        'first_batch_s': first_batch_s,
        'steps': steps,
        'step': name,
        'step_it_s_on_one_batch': synthetic_it_s,
    }


def part_loader(rec, plan, budget, state, tmp_dir):
    if state.best is None:
        rec.put('loader', 'setup', {'skipped': 'no training step was measured'})
        return
    root = tempfile.mkdtemp(prefix='gmmoe_gpu_check_', dir=tmp_dir)
    try:
        setup = guarded(rec, budget, 'loader', 'setup', plan.min_eager_s, lambda: write_synthetic_pairs(plan, root))
        if 'error' in setup or 'skipped' in setup:
            return
        for workers in plan.loader_workers:
            for source in ('png', 'lmdb'):
                guarded(
                    rec,
                    budget,
                    'loader',
                    f'{source} {workers} workers',
                    plan.min_loader_s,
                    lambda source=source, workers=workers: loader_entry(plan, root, source, workers, state),
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- profile


def kernel_profile(fn, plan, top=8):
    """One call of ``fn`` (after two warm-ups) under ``torch.profiler``: wall time, device-kernel count and time,
    host (CPU) time of the operators, and the ``top`` kernels by device time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    sync(plan.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if plan.cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        sync(plan.device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    device_attr = 'self_device_time_total' if hasattr(events[0], 'self_device_time_total') else 'self_cuda_time_total'
    kernels = [e for e in events if getattr(e, device_attr, 0) > 0 and e.device_type.name != 'CPU']
    kernels.sort(key=lambda e: -getattr(e, device_attr))
    device_s = sum(getattr(e, device_attr) for e in kernels) / 1e6
    return {
        'wall_ms': 1000 * wall,
        'kernels': sum(e.count for e in kernels),
        'kernel_ms': 1000 * device_s,
        'device_busy': device_s / wall if wall else None,
        'top': [f'{getattr(e, device_attr) / 1e3:.2f} ms x{e.count} {e.key[:70]}' for e in kernels[:top]],
    }


def part_profile(rec, plan, budget, state):
    """Where the time goes in plain fp32: batch-1 inference at the first shape and one training step."""
    h, w, b = plan.infer_shapes[0]

    def inference():
        net = make_net(plan, 'paper', fast=False).eval()
        return kernel_profile(infer_call(net, infer_input(plan, h, w, b), None), plan)

    def training():
        trainer = Trainer(make_net(plan, 'paper', fast=False), TRAIN_VARIANTS['plain fp32'], plan)
        lq, gt = train_batch(plan, plan.train_batch, plan.train_crop)
        return kernel_profile(lambda: trainer.step(lq, gt), plan)

    guarded(rec, budget, 'profile', f'inference {shape_key(h, w, b)} plain fp32', plan.min_eager_s, inference)
    guarded(rec, budget, 'profile', f'training b{plan.train_batch} plain fp32', plan.min_eager_s, training)


# ---------------------------------------------------------------- reference, BasicSR under torchrun


def part_reference(rec, plan, budget, state):
    folder = REPO / 'tests' / 'reference'
    if not (folder / 'gmmoe_w8_io.pt').is_file():
        rec.put('reference', 'vectors', {'skipped': f'{folder} has no gmmoe_w8_io.pt'})
        return
    io = torch.load(folder / 'gmmoe_w8_io.pt', weights_only=True)
    state_dict = torch.load(folder / 'gmmoe_w8_net_g.pth', weights_only=True)['params']
    for dtype in (torch.float64, torch.float32):

        def run(dtype=dtype):
            tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False  # the reference is float64; TF32 would blur float32
            try:
                net = GMMoE(**io['config'])
                net.load_state_dict(state_dict, strict=True)
                net = net.to(plan.device, dtype).eval()
                with torch.inference_mode():
                    out = net(io['input'].to(plan.device, dtype)).double().cpu()
            finally:
                torch.backends.cudnn.allow_tf32 = tf32
            return {'max_abs_diff': (out - io['output']).abs().max().item()}

        guarded(rec, budget, 'reference', str(dtype).replace('torch.', ''), 0, run)


def part_basicsr(rec, plan, budget, state, out):
    """``basicsr train`` under torchrun (NCCL on a GPU), then ``--auto_resume`` to a longer schedule."""
    guarded(rec, budget, 'basicsr', 'torchrun train + resume', 0, lambda: basicsr_run(out / 'basicsr_run'))


def basicsr_run(work):
    import cv2
    import numpy as np
    import yaml

    rng = np.random.default_rng(0)
    for sub in ('gt', 'lq'):
        (work / 'data' / sub).mkdir(parents=True, exist_ok=True)
    for i in range(8):
        gt = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (7, 7), 0)
        cv2.imwrite(str(work / 'data' / 'gt' / f'{i}.png'), gt)
        cv2.imwrite(str(work / 'data' / 'lq' / f'{i}.png'), (gt * 0.25).astype(np.uint8))
    pairs = {
        'type': 'LLIEPairedDataset',
        'dataroot_gt': str(work / 'data' / 'gt'),
        'dataroot_lq': str(work / 'data' / 'lq'),
        'io_backend': {'type': 'disk'},
    }
    train = {
        'ema_decay': 0.999,
        'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.9]},
        'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [40], 'eta_min': 1e-7},
        'total_iter': 20,
        'warmup_iter': -1,
        'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
        'use_amp': True,
        'amp_dtype': 'bf16',
    }
    opt = {
        'name': 'gpu_nccl',
        'model_type': 'GMMoEModel',
        'scale': 1,
        'num_gpu': 'auto',
        'manual_seed': 0,
        'datasets': {
            'train': dict(
                pairs,
                name='t',
                gt_size=64,
                use_hflip=True,
                use_rot=False,
                num_worker_per_gpu=2,
                batch_size_per_gpu=4,
                dataset_enlarge_ratio=10,
            ),
            'val': dict(pairs, name='v'),
        },
        'network_g': {
            'type': 'GMMoE',
            'width': 16,
            'enc_blk_nums': [1, 1, 1, 1],
            'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1, 1],
        },
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': train,
        'val': {
            'val_freq': 10,
            'save_img': False,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}},
        },
        'logger': {'print_freq': 5, 'save_checkpoint_freq': 10, 'use_tb_logger': True},
    }
    (work / 'train.yml').write_text(yaml.safe_dump(opt))
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    base = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--standalone',
        '--nproc_per_node=1',
        '-m',
        'gmmoe_arch.cli',
        'train',
        '-opt',
        str(work / 'train.yml'),
        '--launcher',
        'pytorch',
    ]
    entry = {}
    for label, extra in (('train', []), ('resume', ['--auto_resume', '--force_yml', 'train:total_iter=30'])):
        done = subprocess.run(base + extra, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        (work / f'{label}.log').write_text(done.stdout + done.stderr)
        entry[f'{label} rc'] = done.returncode
    log = '\n'.join(p.read_text() for p in sorted((work / 'experiments' / 'gpu_nccl').glob('train_*.log')))
    entry.update(
        {
            'dist on': 'dist: True' in log,
            'resumed at iter 20': 'iter: 20' in log,
            'net_g_30 saved': (work / 'experiments' / 'gpu_nccl' / 'models' / 'net_g_30.pth').is_file(),
        }
    )
    return entry


# ---------------------------------------------------------------- summary and main


class State:
    """What later parts reuse: plain references and the fastest training step (kept alive for the loader)."""

    def __init__(self, compile_modes, compile_dtypes):
        self.compile_modes, self.compile_dtypes = compile_modes, compile_dtypes
        self.infer_refs = {}
        self.plain_it_s = self.plain_loss = None
        self.best = None  # (name, Trainer, it/s)
        self.compile_s = {}  # section -> compile + warm-up seconds of its last compiled variant

    def compile_need(self, plan, section):
        """Seconds a compiled variant needs to start: the last one's compile time (most of it), at least the plan's
        minimum, so no compilation starts that the budget would cut off anyway."""
        return max(plan.min_compile_s, 0.8 * self.compile_s.get(section, 0.0))

    def offer(self, name, entry, trainer):
        if entry['loss_finite'] and (self.best is None or entry['it_s'] > self.best[2]):
            self.best = (name, trainer, entry['it_s'])


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
        'gmmoe_compat': gmmoe_arch.compat.APPLIED,
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    args.parts = [s.strip() for s in args.parts.split(',') if s.strip()]
    unknown = sorted(set(args.parts) - set(PART_WEIGHTS))
    if unknown:
        p.error(f'--parts: unknown {", ".join(unknown)}; choose from {", ".join(PART_WEIGHTS)}')
    args.compile_modes = [m.strip() for m in args.compile_modes.split(',') if m.strip()]
    if set(args.compile_modes) - set(KNOWN_MODES):
        p.error(f'--compile-modes: choose from {", ".join(KNOWN_MODES)}, got {", ".join(args.compile_modes)}')
    args.compile_dtypes = [d.strip() for d in args.compile_dtypes.split(',') if d.strip()]
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
        'reference': part_reference,
        'inference': part_inference,
        'training': part_training,
        'released': part_released,
        'training_compiled': part_training_compiled,
        'inference_compiled': part_inference_compiled,
        'loader': lambda *a: part_loader(*a, args.tmp_dir),
        'basicsr': lambda *a: part_basicsr(*a, out),
        'profile': part_profile,
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
