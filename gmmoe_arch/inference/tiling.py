"""Tiles over an image and their blending: where each tile goes, how much of each output pixel it owns.

:class:`Tiling` holds the tiling options and checks them once, when made; :meth:`Tiling.plan` lays out
one image's tiles (:class:`TilePlan`), whose :meth:`TilePlan.tiles` yields each tile with its blending
share (raised-cosine ramps across overlaps, normalised so that the shares add up to one at every pixel).
:class:`RowBlender` sums the weighted tile outputs over one band of rows and hands each row on as soon as
no later tile touches it, so no image-sized float32 array is ever held.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from torch import Tensor

from .errors import EnhanceError

# gmmoe_arch/enhance_cli.py holds copies of these defaults (its parser imports no torch); a test keeps them equal.
DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_OVERLAP = 96
MIN_TILE = 256

Span = tuple[int, int]


def _spans(length: int, size: int, overlap: int, align: int) -> list[Span]:
    """``(start, stop)`` tiles covering ``[0, length)``: starts are multiples of ``align``, tiles are
    ``size`` long (the last one runs to ``length``, up to ``size + align - 1``) and neighbours
    overlap by at least ``overlap``."""
    if length <= size:
        return [(0, length)]
    if size - overlap - align < 0:
        align = 1
    last = (length - size) // align * align
    n = 1 + math.ceil(last / (size - overlap - align + 1)) if last else 1
    starts = [i * last // (n - 1) // align * align for i in range(n)] if n > 1 else [0]
    return [(s, s + size) for s in starts[:-1]] + [(last, length)]


def _ramp(n: int) -> np.ndarray:
    """Raised-cosine ramp of ``n`` samples rising from ~0 to ~1; ``ramp + ramp[::-1] == 1``."""
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _window(spans: list[Span], index: int) -> np.ndarray:
    """1-D blending weights of tile ``index``: raised-cosine ramps over its overlaps with its neighbours."""
    start, stop = spans[index]
    w = np.ones(stop - start)
    if index > 0 and spans[index - 1][1] > start:
        r = spans[index - 1][1] - start
        w[:r] *= _ramp(r)
    if index < len(spans) - 1 and stop > spans[index + 1][0]:
        r = stop - spans[index + 1][0]
        w[len(w) - r :] *= _ramp(r)[::-1]
    return w


@dataclass
class TilePlan:
    """Tiles over an ``h x w`` image: row spans ``ys`` and column spans ``xs`` (``(start, stop)``)."""

    h: int
    w: int
    ys: list[Span]
    xs: list[Span]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def tiles(self) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
        """Yield ``(y0, y1, x0, x1, share)``, a row of tiles after the other: ``share`` (``y1-y0 x x1-x0``
        float32) is the tile's blending weight divided by the summed weights, so the shares of all tiles
        add up to one."""
        wy = [_window(self.ys, i) for i in range(len(self.ys))]
        wx = [_window(self.xs, j) for j in range(len(self.xs))]
        sum_y, sum_x = np.zeros(self.h), np.zeros(self.w)
        for (y0, y1), w in zip(self.ys, wy):
            sum_y[y0:y1] += w
        for (x0, x1), w in zip(self.xs, wx):
            sum_x[x0:x1] += w
        for (y0, y1), a in zip(self.ys, wy):
            for (x0, x1), b in zip(self.xs, wx):
                share = (a / sum_y[y0:y1])[:, None] * (b / sum_x[x0:x1])[None, :]
                yield y0, y1, x0, x1, share.astype(np.float32)


@dataclass(frozen=True)
class Tiling:
    """Tiling options, checked when made (:class:`EnhanceError` naming the option no image could use).

    ``tile=None``: one tile when ``h * w <= max_pixels``, else tiles of about ``max_pixels`` (squares of
    side ``floor(sqrt(max_pixels))``, at least :data:`MIN_TILE`, widened for narrow images). ``tile=N``
    forces ``N x N`` tiles (clipped to the image). Neighbouring tiles overlap by at least ``overlap``.
    """

    tile: Optional[int] = None
    overlap: int = DEFAULT_OVERLAP
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.tile is not None and self.tile < 64:
            raise EnhanceError(f'--tile {self.tile}: must be at least 64 px')
        if self.max_pixels < 1:
            raise EnhanceError(f'--max-pixels {self.max_pixels}: must be positive')
        if self.overlap < 0:
            raise EnhanceError(f'--overlap {self.overlap}: must be >= 0')
        if self.side <= 2 * self.overlap:
            raise EnhanceError(f'--overlap {self.overlap}: must be under half the tile side ({self.side} px)')

    @property
    def side(self) -> int:
        """The side of a square tile before it is fitted to an image."""
        return self.tile if self.tile is not None else max(MIN_TILE, math.isqrt(self.max_pixels))

    def plan(self, h: int, w: int, align: int = 16) -> TilePlan:
        """The tiles of an ``h x w`` image. Tile starts are multiples of ``align`` (the network's padding
        multiple) so that every tile downsamples on the image's grid."""
        side = self.side
        if self.tile is not None:
            th, tw = min(h, side), min(w, side)
        elif h * w <= self.max_pixels:
            return TilePlan(h, w, [(0, h)], [(0, w)])
        else:
            th, tw = min(h, side), min(w, side)
            if th < side:
                tw = min(w, max(side, self.max_pixels // th))
            elif tw < side:
                th = min(h, max(side, self.max_pixels // tw))
        return TilePlan(h, w, _spans(h, th, self.overlap, align), _spans(w, tw, self.overlap, align))


class RowBlender:
    """Sums blended tile outputs over a band of rows and hands each row on as soon as it is final.

    Tiles arrive row of tiles by row of tiles (as :meth:`TilePlan.tiles` yields them), so when a
    tile starting at row ``y0`` arrives, no later tile touches the rows above ``y0``: those are
    passed to ``emit(r0, r1, rows)`` (``rows``: ``(r1 - r0, W, 3)`` float32) and dropped. Only the
    band of rows the current row of tiles covers is held in float32, never the whole image.
    """

    def __init__(self, width: int, emit: Callable[[int, int, np.ndarray], None]):
        self.top = 0
        self.acc = np.zeros((0, width, 3), np.float32)
        self.emit = emit

    def add(self, y0: int, y1: int, x0: int, x1: int, pred: Tensor) -> None:
        """Add ``pred`` (``(1, 3, y1-y0, x1-x0)`` CPU tensor, already weighted) at its place."""
        if y0 > self.top:
            self.flush(y0)
        if y1 - self.top > len(self.acc):
            grown = np.zeros((y1 - self.top,) + self.acc.shape[1:], np.float32)
            grown[: len(self.acc)] = self.acc
            self.acc = grown
        self.acc[y0 - self.top : y1 - self.top, x0:x1] += pred[0].numpy().transpose(1, 2, 0)

    def flush(self, stop: int) -> None:
        """Hand on rows ``[top, stop)``: every tile covering them has been added."""
        if stop > self.top:
            self.emit(self.top, stop, self.acc[: stop - self.top])
            self.acc = self.acc[stop - self.top :]
            self.top = stop
