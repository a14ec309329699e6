"""Timers and repeat schemes shared by every benchmark of the project.

On a CUDA device every timer synchronizes before and after the call (kernels run asynchronously), and
:func:`timed` also reads CUDA events around it (``gpu_s``: the device's own time). Repeats are interleaved:
each run calls every candidate once, the order rotated from run to run, so that a change in the machine's
load hits all candidates alike; ratios are paired run by run (the median of the per-run ratios), beside the
ratio of the medians.
"""

import dataclasses
import statistics
import time
from typing import Any, Optional

import torch


def sync(device):
    """Wait for ``device``'s queued kernels (CUDA); nothing on the CPU or when ``device`` is None."""
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Timing:
    """One timed call: what it returned, wall seconds, process CPU seconds, device seconds (CUDA events)."""

    out: Any
    wall_s: float
    cpu_s: float
    gpu_s: Optional[float] = None


def timed(fn, device=None):
    """Call ``fn()`` once, synchronized on ``device``: a :class:`Timing`."""
    cuda = device is not None and torch.device(device).type == 'cuda'
    sync(device)
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else None
    wall, cpu = time.perf_counter(), time.process_time()
    if cuda:
        events[0].record()
    out = fn()
    if cuda:
        events[1].record()
    sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Timing(out, wall, cpu, events[0].elapsed_time(events[1]) / 1000 if cuda else None)


def rotated(items, r):
    """``items`` rotated left by ``r`` (the order of run ``r``)."""
    items = list(items)
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


@dataclasses.dataclass
class Runs:
    """Interleaved runs: ``walls[name]``/``cpus[name]`` seconds per run, ``last[name]`` the last output."""

    walls: dict
    cpus: dict
    last: dict

    def summary(self, name):
        """``{'median_s', 'min_s'}`` of ``name``'s wall times."""
        return {'median_s': statistics.median(self.walls[name]), 'min_s': min(self.walls[name])}

    def ratios(self, base, name):
        """Speed-up of ``name`` over ``base``: paired (median of per-run ratios), of the medians, and paired
        by process CPU time."""
        return {
            'paired_ratio': paired_ratio(self.walls[base], self.walls[name]),
            'ratio_of_medians': statistics.median(self.walls[base]) / statistics.median(self.walls[name]),
            'cpu_paired_ratio': paired_ratio(self.cpus[base], self.cpus[name]),
        }

    def medians(self):
        """``{name: median wall seconds}``."""
        return {name: statistics.median(walls) for name, walls in self.walls.items()}


def paired_ratio(base, times):
    """Median over runs of ``base[i] / times[i]`` (> 1: ``times`` is faster)."""
    return statistics.median(b / t for b, t in zip(base, times))


def interleaved(calls, runs, warmup=0, device=None, rotate=True):
    """Call each of ``calls`` (``{name: no-argument function}``) ``warmup`` times, then ``runs`` times, every
    run calling each once (in an order rotated per run when ``rotate``): a :class:`Runs`."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    result = Runs({n: [] for n in calls}, {n: [] for n in calls}, {})
    for r in range(runs):
        for name in rotated(calls, r) if rotate else list(calls):
            t = timed(calls[name], device)
            result.walls[name].append(t.wall_s)
            result.cpus[name].append(t.cpu_s)
            result.last[name] = t.out
    return result


def repeated(fn, runs, device=None):
    """``(min, median)`` wall seconds of ``runs`` calls of ``fn``."""
    walls = interleaved({'fn': fn}, runs, device=device).walls['fn']
    return min(walls), statistics.median(walls)


def run_for(fn, device, warmup, min_runs, max_runs, target_s):
    """Call ``fn`` ``warmup`` times (timed apart: compilation, CUDA-graph recording), then back to back for
    about ``target_s`` (between ``min_runs`` and ``max_runs`` calls, sized by one probe call) ->
    ``{per_call_s, calls, warmup_s, first_call_s, last}`` (``last``: what the last call returned; nothing older
    is kept, as a CUDA-graph replay overwrites the outputs of the one before)."""
    first = timed(fn, device).wall_s
    start = time.perf_counter()
    for _ in range(warmup - 1):
        fn()
    sync(device)
    warmup_s = first + time.perf_counter() - start
    calls = min_runs
    if max_runs > min_runs:
        probe = timed(fn, device).wall_s
        calls = int(max(min_runs, min(max_runs, target_s / max(probe, 1e-6))))
    last = None

    def loop():
        nonlocal last
        for _ in range(calls):
            last = fn()

    total = timed(loop, device).wall_s
    return {'per_call_s': total / calls, 'calls': calls, 'warmup_s': warmup_s, 'first_call_s': first, 'last': last}
