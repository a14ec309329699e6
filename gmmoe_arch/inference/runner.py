"""Running the network over an image: precision, statistics passes, the output pass, pixel conversion.

:func:`enhance_image` takes and returns numpy arrays (``H x W`` gray, ``H x W x 3`` RGB or ``H x W x 4``
RGBA; ``uint8``, ``uint16`` or float in [0, 1]). Gray is replicated to RGB for the network and converted
back (ITU-R 601 luma); alpha passes through untouched; the output has the input's shape and dtype.
The image is run tile by tile (:mod:`.tiling`); with statistics passes, every tile uses whole-image
estimates of the network's global means (:mod:`.statistics`). Options are checked once, when
:class:`RunOptions` and :class:`~.tiling.Tiling` are made; :func:`run_image` and :func:`enhance_tensor`
take them (or a plan) and do not check again.
"""

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..archs.gmmoe_arch import record_gates
from ..archs.pooling import pooling_hook
from ..archs.routing import per_image
from .errors import EnhanceError
from .statistics import ImageStatistics
from .tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, RowBlender, TilePlan, Tiling

# gmmoe_arch/enhance_cli.py holds copies of these (its parser imports no torch); a test keeps them equal.
DEFAULT_STAT_PASSES = 1
PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

TileInput = Callable[[int, int, int, int], Tensor]
AddOutput = Callable[[int, int, int, int, Tensor], None]
Gates = dict[str, np.ndarray]


@dataclass(frozen=True)
class RunOptions:
    """How the network runs over an image's tiles, checked when made (:class:`EnhanceError` naming the option).

    Args:
        device: where the network is (tiles are moved there; autocast runs for its type).
        precision: ``'fp32'``, ``'bf16'`` or ``'fp16'`` (CUDA only), via autocast.
        stat_passes: passes over the tiles that estimate the whole image's pooled statistics (see
            :class:`~.statistics.ImageStatistics`) before the output pass; each pass refines the last
            one's estimate. 0: every tile uses its own statistics. Unused for a single tile.
    """

    device: torch.device
    precision: str = 'fp32'
    stat_passes: int = DEFAULT_STAT_PASSES

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise EnhanceError(f'--precision {self.precision}: choose from {", ".join(PRECISIONS)}')
        if PRECISIONS[self.precision] == torch.float16 and self.device.type != 'cuda':
            raise EnhanceError('--precision fp16 needs a CUDA device; on the CPU use bf16 or fp32')
        if self.stat_passes < 0:
            raise EnhanceError(f'--stat-passes {self.stat_passes}: must be >= 0')

    def autocast(self) -> AbstractContextManager:
        """The autocast context of :attr:`precision` on :attr:`device` (none for fp32)."""
        dtype = PRECISIONS[self.precision]
        return nullcontext() if dtype is None else torch.autocast(device_type=self.device.type, dtype=dtype)


def network_device(net: nn.Module) -> torch.device:
    """The device of ``net``'s parameters."""
    return next(net.parameters()).device


def _sweep(
    net: nn.Module,
    tile_input: TileInput,
    plan: TilePlan,
    device: torch.device,
    inject: Optional[dict[int, Tensor]],
    add_output: Optional[AddOutput] = None,
    gates: Optional[Gates] = None,
    record: bool = True,
) -> ImageStatistics:
    """One pass of ``net`` over the tiles of ``plan``; returns the :class:`ImageStatistics` it recorded
    (nothing with ``record=False``).

    Args:
        tile_input: ``tile_input(y0, y1, x0, x1)`` -> that tile's ``(1, 3, h, w)`` float32 input.
        inject: ``{site: mean}`` used instead of each tile's own global means (None: none).
        add_output: ``add_output(y0, y1, x0, x1, pred)`` receives each tile's ``(1, 3, h, w)`` float32 CPU
            output multiplied by its blending share, in the order :meth:`TilePlan.tiles` yields them.
        gates: filled with each expert block's gate weights (per-pixel gates: their mean over the tile,
            :func:`~gmmoe_arch.archs.routing.per_image`), weighted by the output pixels each tile owns.
    """
    pad = getattr(net, 'padder_size', 1)
    stats = ImageStatistics(inject, record)
    # A pass that neither records nor injects (one tile) installs no pooling hook: the hook would be a
    # no-op, and while one is active a top-k block runs every expert (see ExpertBlock.forward).
    hook = pooling_hook(stats) if inject is not None or record else nullcontext()
    with hook, record_gates(net) as tile_gates:
        for y0, y1, x0, x1, share in plan.tiles():
            stats.set_tile(share, pad, device)
            pred = net(tile_input(y0, y1, x0, x1).to(device))
            if add_output is not None:
                add_output(y0, y1, x0, x1, pred.float().cpu() * torch.from_numpy(share))
            if gates is not None:
                weight = float(share.sum(dtype=np.float64)) / (plan.h * plan.w)
                for path, g in tile_gates.items():
                    gates[path] = gates.get(path, 0) + weight * per_image(g)[0].double().cpu().numpy()
    return stats


def _run(
    net: nn.Module,
    tile_input: TileInput,
    plan: TilePlan,
    add_output: AddOutput,
    options: RunOptions,
    gates: Optional[Gates],
) -> None:
    """The statistics passes, then the output pass."""
    inject = None
    with torch.inference_mode(), options.autocast():
        for _ in range(options.stat_passes if len(plan) > 1 else 0):
            inject = _sweep(net, tile_input, plan, options.device, inject).means()
        _sweep(net, tile_input, plan, options.device, inject, add_output, gates, record=False)


def enhance_tensor(
    net: nn.Module, x: Tensor, plan: TilePlan, options: RunOptions, gates: Optional[Gates] = None
) -> Tensor:
    """Run ``net`` over ``x`` ``(1, 3, H, W)`` float32 (CPU) tile by tile; return ``(1, 3, H, W)`` float32,
    the tiles' outputs blended with their shares. ``gates`` (a dict) is filled with each expert block's gate
    weights ``(n_experts,)``, the mean over tiles weighted by the output pixels each tile accounts for."""
    out = torch.zeros_like(x)

    def add(y0, y1, x0, x1, pred):
        out[..., y0:y1, x0:x1] += pred

    _run(net, lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], plan, add, options, gates)
    return out


def run_image(
    net: nn.Module, img: np.ndarray, tiling: Tiling, options: RunOptions, gates: Optional[Gates] = None
) -> tuple[np.ndarray, int]:
    """:func:`enhance_image` with options already checked: ``(output, number of tiles)``.

    Memory: besides ``img`` and the returned array, only one tile and one band of rows (a tile's
    height x the image's width) are held in float32; each tile is converted from ``img`` when the
    network needs it and each output row is converted to ``img``'s dtype once it is final.

    Raises:
        EnhanceError: when the network's output holds a NaN or inf (clipping would turn them into black
            pixels of an output that looks fine), with their number; nothing is returned.
    """
    img, scale = check_image(img)
    plan = tiling.plan(img.shape[0], img.shape[1], getattr(net, 'padder_size', 1))
    out = np.empty_like(img)
    if img.ndim == 3 and img.shape[2] == 4:
        out[..., 3] = img[..., 3]  # alpha passes through untouched
    nonfinite = [0]

    def emit(r0, r1, rows):
        if not np.isfinite(rows).all():
            nonfinite[0] += int(rows.size - np.count_nonzero(np.isfinite(rows)))
        rows = _from_network(rows, img.ndim == 2, scale, img.dtype)
        if img.ndim == 2:
            out[r0:r1] = rows
        else:
            out[r0:r1, :, :3] = rows

    blender = RowBlender(img.shape[1], emit)
    _run(net, lambda y0, y1, x0, x1: _to_network(img[y0:y1, x0:x1], scale), plan, blender.add, options, gates)
    blender.flush(img.shape[0])
    if nonfinite[0]:
        hint = 'try --precision fp32' if options.precision != 'fp32' else 'its weights or this image overflow it'
        raise EnhanceError(
            f'the network output holds {nonfinite[0]:,} non-finite value(s) (NaN or inf) of '
            f'{img.shape[0] * img.shape[1] * 3:,}: {hint}'
        )
    return out, len(plan)


def enhance_image(
    net: nn.Module,
    img: np.ndarray,
    tile: Optional[int] = None,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = 'fp32',
    stat_passes: int = DEFAULT_STAT_PASSES,
    gates: Optional[Gates] = None,
) -> np.ndarray:
    """Enhance one image array; return an array of the same shape and dtype.

    Args:
        img: ``H x W``, ``H x W x 1``, ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA); ``uint8``,
            ``uint16`` or float in [0, 1].
        tile, overlap, max_pixels: see :class:`~.tiling.Tiling`.
        precision, stat_passes: see :class:`RunOptions`.
        gates: filled with each expert block's gate weights (see :func:`enhance_tensor`).

    Raises:
        EnhanceError: for an option no image could use, or an array that is not an image.
    """
    options = RunOptions(network_device(net), precision, stat_passes)
    return run_image(net, img, Tiling(tile, overlap, max_pixels), options, gates)[0]


def check_image(img: np.ndarray) -> tuple[np.ndarray, Optional[float]]:
    """``(img, scale)``: ``img`` as ``H x W`` or ``H x W x 3|4`` (a single channel squeezed), ``scale`` the
    integer dtype's maximum (None for float); :class:`EnhanceError` for anything else."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)) or 0 in img.shape:
        raise EnhanceError(f'image of shape {img.shape}: expected H x W, H x W x 3 or H x W x 4')
    if img.dtype in (np.uint8, np.uint16):
        return img, float(np.iinfo(img.dtype).max)
    if np.issubdtype(img.dtype, np.floating):
        return img, None
    raise EnhanceError(f'image dtype {img.dtype}: expected uint8, uint16 or float')


def _to_network(part: np.ndarray, scale: Optional[float]) -> Tensor:
    """An image region (gray, RGB or RGBA) -> ``(1, 3, h, w)`` float32 RGB in [0, 1] (gray replicated)."""
    rgb = np.repeat(part[..., None], 3, axis=2) if part.ndim == 2 else part[..., :3]
    rgb = rgb.astype(np.float32)
    if scale is not None:
        rgb /= scale
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


def _from_network(y: np.ndarray, gray: bool, scale: Optional[float], dtype: np.dtype) -> np.ndarray:
    """The network's ``h x w x 3`` float output -> ``dtype`` pixels (gray via ITU-R 601 luma), clipped."""
    if gray:
        y = y @ LUMA
    y = np.clip(y, 0, 1)
    if scale is not None:
        y *= scale
        np.rint(y, out=y)
    return y.astype(dtype)
