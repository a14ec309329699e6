"""Recording, the time budget and the helpers every part of the GPU check uses."""

import contextlib
import gc
import signal
import time
import traceback
from pathlib import Path

import torch

from ..nets import random_net
from ..record import write_json
from ..timing import run_for
from .plan import PART_WEIGHTS


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
        write_json(self.path, self.results)


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


def reset_peak(device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    """Peak CUDA memory allocated since the last :func:`reset_peak` (GiB); None on the CPU."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == 'cuda' else None


def measure(fn, plan, warmup):
    """:func:`gmmoe_arch.bench.timing.run_for` with the plan's device, repeat counts and time target."""
    return run_for(fn, plan.device, warmup, plan.min_runs, plan.max_runs, plan.target_s)


def make_net(plan, preset, size=None, seed=None, **kwargs):
    """A GMMoE of ``preset`` (``size`` overriding its sizes) built on the device, with seeded non-trivial
    weights (every expert branch matters)."""
    size = plan.net_size if size is None else size
    return random_net(preset, plan.seed if seed is None else seed, plan.device, **size, **kwargs)


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
