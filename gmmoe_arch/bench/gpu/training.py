"""The ``training``, ``training_compiled`` and ``released`` parts: it/s of GMMoEModel's training step in each
variant, and peak memory."""

import dataclasses
import math
from typing import Optional

import torch

from ..nets import TRAIN_OPTIONS, bench_model, random_batch, train_step
from .plan import DTYPES, GRAPH_MODES
from .run import compile_stats, dynamo_counts, guarded, measure, peak_gib, reset_peak

CHANNELS_LAST = torch.channels_last


@dataclasses.dataclass(frozen=True)
class TrainVariant:
    """What a training step runs: path, AMP dtype name (``bf16``), checkpointing, layout, optimiser, compile mode."""

    fast: bool = False
    amp: Optional[str] = None
    checkpoint: Optional[str] = None
    channels_last: bool = False
    fused_adamw: bool = False
    compile_mode: Optional[str] = None

    def train_options(self, plan):
        """The ``train`` options of this variant's :func:`~gmmoe_arch.bench.nets.bench_model`."""
        train = {}
        if self.amp:
            train.update(use_amp=True, amp_dtype=self.amp)
        if self.fused_adamw:
            train['optim_g'] = dict(TRAIN_OPTIONS['optim_g'], fused=True)
        if self.compile_mode:  # the dry run's debugging backend takes no mode
            inductor = plan.compile_backend == 'inductor'
            train['compile'] = {'mode': self.compile_mode} if inductor else {'backend': plan.compile_backend}
        return train


TRAIN_VARIANTS = {
    'plain fp32': TrainVariant(),
    'plain fp32 fused AdamW': TrainVariant(fused_adamw=True),
    'fast fp32': TrainVariant(fast=True),
    'plain bf16 AMP': TrainVariant(amp='bf16'),
    'fast bf16 AMP': TrainVariant(fast=True, amp='bf16'),
    'plain fp32 checkpoint block': TrainVariant(checkpoint='block'),
    'channels-last fp32': TrainVariant(channels_last=True),
    'channels-last bf16 AMP': TrainVariant(channels_last=True, amp='bf16'),
}


def compiled_train_variants(modes, dtypes):
    return {
        f'compile {mode} {d}{" AMP" if DTYPES[d] else ""}, fused AdamW': TrainVariant(
            amp=d if DTYPES[d] else None, fused_adamw=True, compile_mode=mode
        )
        for mode in modes
        for d in dtypes
    }


class Trainer:
    """A :class:`~gmmoe_arch.models.gmmoe_model.GMMoEModel` of ``variant`` (AdamW with betas 0.9, 0.9, the
    released PSNR loss) and its training step: ``feed_data`` + ``optimize_parameters``, the model's finite
    checks included."""

    def __init__(self, plan, preset, variant, size=None):
        size = plan.net_size if size is None else size
        network = dict(preset=preset, **size, fast=variant.fast, checkpoint=variant.checkpoint or False)
        self.model = bench_model(network, plan.device, plan.seed, variant.train_options(plan))
        self.net = self.model.get_bare_model(self.model.net_g)
        if variant.channels_last:
            self.net.to(memory_format=CHANNELS_LAST)
        self.variant, self.iter = variant, 0
        self.graphs = variant.compile_mode in GRAPH_MODES
        self.first_loss = None  # the loss of the first step, before any update: compared across variants

    def step(self, lq, gt):
        """One step on ``lq``/``gt`` ``(B, 3, H, W)``; returns the loss (a float)."""
        if self.graphs:  # a new iteration: CUDA-graph outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if self.variant.channels_last:
            lq = lq.contiguous(memory_format=CHANNELS_LAST)
        self.iter += 1
        loss = train_step(self.model, lq, gt, self.iter)
        if self.first_loss is None:
            self.first_loss = loss
        return loss


def train_batch(plan, batch, crop):
    return random_batch(batch, crop, plan.seed + 2, plan.device)


def train_entry(trainer, plan, lq, gt, warmup, plain_it_s=None):
    reset_peak(plan.device)
    stats = measure(lambda: trainer.step(lq, gt), plan, warmup)
    entry = {
        'it_s': 1 / stats['per_call_s'],
        'ms_per_step': 1000 * stats['per_call_s'],
        'steps': stats['calls'],
        'peak_gib': peak_gib(plan.device),
        'first_loss': trainer.first_loss,
        'loss_finite': math.isfinite(stats['last']),
    }
    if plain_it_s:
        entry['vs_plain'] = entry['it_s'] / plain_it_s
    return entry, stats


def run_train_variants(rec, plan, budget, state, section, variants):
    lq, gt = train_batch(plan, plan.train_batch, plan.train_crop)
    for name, variant in variants.items():

        def run(variant=variant, name=name):
            before = dynamo_counts()
            trainer = Trainer(plan, 'paper', variant)
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
        'bf16 AMP checkpoint block': TrainVariant(checkpoint='block', amp='bf16'),
    }
    for name, variant in variants.items():

        def run(variant=variant):
            reset_peak(plan.device)
            trainer = Trainer(plan, 'released', variant, size=plan.released_size)
            weights_gib = peak_gib(plan.device)  # the optimiser's state comes with the first step
            entry, _ = train_entry(trainer, plan, lq, gt, 2)
            return dict(
                entry,
                params=sum(p.numel() for p in trainer.net.parameters()),
                weights_gib=weights_gib,
                batch=1,
                crop=plan.released_crop,
            )

        guarded(rec, budget, 'released', f'batch 1 x {plan.released_crop}^2 {name}', plan.min_eager_s, run)
