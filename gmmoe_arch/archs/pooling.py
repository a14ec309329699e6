"""Global average pooling: the one place GM-MoE averages a feature map over all of its pixels.

Every global pool of the network (each gate, the detail expert's channel attention, the feature
expert's simplified channel attention) calls :func:`global_mean`, on the fast and on the
straightforward path alike and in the same order. That makes it a seam: code that needs to see or
replace these statistics (the tiled enhancer, which shares whole-image means between tiles; a
routing study) installs a hook with :func:`pooling_hook` instead of intercepting torch calls.

A hook is ``fn(x, mean) -> Tensor | None`` with ``x`` the pooled ``(B, C, H, W)`` map and ``mean``
its ``(B, C, 1, 1)`` average; a returned tensor (same shape as ``mean``) is used instead of
``mean``, ``None`` keeps it. Hooks live in a :class:`contextvars.ContextVar`, so they apply to the
thread (or asyncio task) that installed them only. Nested hooks chain: the outermost runs first and
each inner one receives the mean as the hooks outside it left it, so the innermost has the last
word. Without a hook a call costs one ``ContextVar`` read on top of the mean.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .cpu_kernels import cpu_kernels_apply

PoolingHook = Callable[[Tensor, Tensor], Optional[Tensor]]

_HOOKS: ContextVar[tuple[PoolingHook, ...]] = ContextVar('gmmoe_pooling_hooks', default=())


def _mean_over_pixels(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, C, 1, 1)``.

    In bf16/fp16 where the CPU inference kernels apply (:func:`.cpu_kernels.cpu_kernels_apply`:
    channels-last on CPU, no grad, not compiling) a matrix product with ones: the GEMM
    accumulates in fp32 and is 3x faster than the half-precision reduction. Everywhere else
    ``x.mean((2, 3), keepdim=True)``; in float32 a GEMM would gain ~2 ms per full-resolution map but
    round differently from the reduction.
    """
    if x.dtype not in (torch.bfloat16, torch.float16) or not cpu_kernels_apply(x):
        return x.mean((2, 3), keepdim=True)
    b, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return torch.matmul(pixels.new_ones(b, 1, h * w), pixels).div_(h * w).reshape(b, c, 1, 1)


def global_mean(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, C, 1, 1)``: the mean of ``x`` over all pixels, as the active
    :func:`pooling_hook` hooks leave it (none: the mean itself)."""
    mean = _mean_over_pixels(x)
    hooks = _HOOKS.get()
    if not hooks:
        return mean
    for hook in hooks:
        out = hook(x, mean)
        if out is not None:
            if out.shape != mean.shape:
                raise ValueError(
                    f'pooling hook {hook!r} returned shape {tuple(out.shape)} for a global mean of '
                    f'shape {tuple(mean.shape)}'
                )
            mean = out
    return mean


def hooks_active() -> bool:
    """Whether a :func:`pooling_hook` is active in this thread or task (a top-k block then runs every
    expert, so that the hooked sites are the same whichever experts an image picks)."""
    return bool(_HOOKS.get())


@contextmanager
def pooling_hook(fn: PoolingHook) -> Iterator[PoolingHook]:
    """Within the block, every :func:`global_mean` of this thread/task calls ``fn(x, mean)`` and uses
    its result unless it is None (nested hooks chain, outermost first). Yields ``fn``."""
    token = _HOOKS.set(_HOOKS.get() + (fn,))
    try:
        yield fn
    finally:
        _HOOKS.reset(token)


class GlobalMean(nn.Module):
    """:func:`global_mean` as a module (``(B, C, H, W) -> (B, C, 1, 1)``), for ``nn.Sequential`` stacks."""

    def forward(self, x: Tensor) -> Tensor:
        return global_mean(x)
