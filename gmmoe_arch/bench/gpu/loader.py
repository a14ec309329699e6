"""The ``loader`` part: the fastest training step fed by BasicSR's loader from PNG folders and a raw LMDB."""

import contextlib
import math
import os
import shutil
import tempfile
import threading
import time

import torch

from ..pairs import write_pairs
from ..timing import sync
from .run import guarded


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
