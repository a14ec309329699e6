"""The ``profile`` part: ``torch.profiler`` of plain batch-1 inference and one training step."""

import time

from ..timing import sync
from .inference import infer_call, infer_input, shape_key
from .run import guarded, make_net
from .training import TRAIN_VARIANTS, Trainer, train_batch


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
        trainer = Trainer(plan, 'paper', TRAIN_VARIANTS['plain fp32'])
        lq, gt = train_batch(plan, plan.train_batch, plan.train_crop)
        return kernel_profile(lambda: trainer.step(lq, gt), plan)

    guarded(rec, budget, 'profile', f'inference {shape_key(h, w, b)} plain fp32', plan.min_eager_s, inference)
    guarded(rec, budget, 'profile', f'training b{plan.train_batch} plain fp32', plan.min_eager_s, training)
