"""Enhance users' own photos with a GM-MoE network: the Python API behind ``gmmoe enhance``.

Three layers, each usable alone::

    net = load_network('net_g.pth', preset='paper')          # or option_file=, or inferred
    out = enhance_image(net, img)                             # numpy in, numpy out (same dtype)
    summary = enhance_paths(['photos/'], 'enhanced/', net)    # files, folders, globs

Images: ``H x W`` (gray), ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA), ``uint8``, ``uint16`` or
``float32`` in [0, 1]. Gray is replicated to RGB for the network and converted back (ITU-R 601
luma); alpha is passed through untouched; the output has the input's shape and dtype.

Memory: images above ``max_pixels`` run as overlapping tiles blended with raised-cosine ramps
normalised by the summed weights, so the network's memory is bounded by the tile size, not the
image size; the image itself is held only in its own dtype (input and output) plus one float32
band of rows (:class:`RowBlender`), and files whose header declares more than
``max_image_pixels`` are refused before decoding.
GM-MoE has image-global operations (the gates, the detail expert's channel attention and the
feature expert's SCA average over the whole map): statistics passes over the tiles estimate
those whole-image averages and inject them into every tile (:class:`ImageStatistics`). Tiling
stays a close approximation of whole-image inference, not an exact copy (see
``docs/enhance.md`` for measured differences).

Files: outputs are written atomically (:func:`write_file`: temporary name, fsync, rename); an
output that is an input (same path or same device and inode) is refused; folders and globs
follow symlinked folders but not symlink loops.
"""
import fnmatch
import glob
import math
import os
import secrets
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from threading import Lock

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .data.image_io import IMAGE_EXTENSIONS

# The command's parser shows these defaults without importing this module (and so torch); its copies in
# gmmoe_arch/enhance_cli.py are checked equal to these by tests/test_enhance_cli.py.
DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_MAX_IMAGE_PIXELS = 150_000_000
DEFAULT_OVERLAP = 96
DEFAULT_STAT_PASSES = 1
MIN_TILE = 256
PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
EXIF_ORIENTATION = 0x0112
WRITE_CHUNK = 16 * 2**20
_PILLOW_LIMIT = Lock()


class EnhanceError(Exception):
    """A problem with the user's input (checkpoint, option file, image, option value)."""


# ---------------------------------------------------------------- network


def resolve_device(device='auto'):
    """``'auto'`` -> CUDA when available, else CPU; ``'cpu'``, ``'cuda'``, ``'cuda:N'`` checked."""
    if device in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EnhanceError(f'--device {device}: not a device (use auto, cpu, cuda or cuda:N)') from exc
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise EnhanceError(f'--device {device}: CUDA is not available on this machine (use cpu or auto)')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EnhanceError(f'--device {device}: only {torch.cuda.device_count()} CUDA device(s) here')
    elif dev.type != 'cpu':
        raise EnhanceError(f'--device {device}: unsupported device type (use auto, cpu, cuda or cuda:N)')
    return dev


def load_state_dict(path):
    """Read a checkpoint with ``weights_only=True``: ``{'params_ema': sd}`` (preferred), ``{'params': sd}``
    or a bare state dict; a ``module.`` prefix (DataParallel) is stripped."""
    if not os.path.isfile(path):
        raise EnhanceError(f'checkpoint {path}: no such file')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoints (UnpicklingError, RuntimeError, ...)
        raise EnhanceError(f'checkpoint {path}: not a PyTorch checkpoint of tensors (torch.load with '
                           f'weights_only=True refused it: {type(exc).__name__})') from exc
    if isinstance(ckpt, dict):
        for key in ('params_ema', 'params'):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise EnhanceError(f'checkpoint {path}: expected a state dict of tensors, {{"params": ...}} or '
                           f'{{"params_ema": ...}}; got {type(ckpt).__name__}'
                           + (f' with keys {sorted(map(str, ckpt))[:5]}' if isinstance(ckpt, dict) else ''))
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in ckpt.items()}


def infer_config(state_dict):
    """GMMoE size arguments read off a GM-MoE state dict (``width``, block counts per level)."""

    def count(prefix):
        return len({k[len(prefix):].split('.')[0] for k in state_dict if k.startswith(prefix)})

    if 'intro.weight' not in state_dict:
        return None
    levels = count('downs.')
    return dict(img_channel=state_dict['intro.weight'].shape[1], width=state_dict['intro.weight'].shape[0],
                enc_blk_nums=[count(f'encoders.{i}.') for i in range(levels)],
                middle_blk_num=count('middle_blks.'),
                dec_blk_nums=[count(f'decoders.{i}.') for i in range(levels)])


def _network_options(preset, option_file, state_dict):
    if option_file is not None:
        import yaml

        try:
            with open(option_file, encoding='utf-8') as f:
                opt = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise EnhanceError(f'option file {option_file}: cannot be read: {exc}') from exc
        if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict) or 'type' not in opt['network_g']:
            raise EnhanceError(f'option file {option_file}: needs a "network_g" mapping with a "type"')
        return dict(opt['network_g']), f'network_g of {option_file}'
    if preset is not None:
        return dict(type='GMMoE', preset=preset), f'preset {preset}'
    config = infer_config(state_dict) if state_dict is not None else None
    if config is None:
        return dict(type='GMMoE', preset='paper'), 'preset paper'
    return dict(type='GMMoE', **config), 'configuration read from the checkpoint'


def _mismatch_report(net, state_dict, limit=5):
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if not k.split('.')[-2:-1] == ['conv6']}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f'{k} {given[k]} vs {expected[k]}' for k in expected if k in given and given[k] != expected[k]]
    parts = [f'{len(items)} {what}: {", ".join(items[:limit])}{", ..." if len(items) > limit else ""}'
             for what, items in (('missing', missing), ('unexpected', unexpected),
                                 ('with other shapes (checkpoint vs network)', shapes)) if items]
    return '; '.join(parts)


def describe_size(config):
    """``'width-8 network (enc [1, 1, 1], middle 1, dec [1, 1, 1])'`` for an :func:`infer_config` result."""
    channels = f', {config["img_channel"]} channels' if config['img_channel'] != 3 else ''
    return (f'width-{config["width"]} network (enc {config["enc_blk_nums"]}, middle {config["middle_blk_num"]}, '
            f'dec {config["dec_blk_nums"]}{channels})')


def _size_mismatch(weights, state_dict, net, preset, option_file):
    """The message for a checkpoint of another network size than the one built, else None."""
    held, built = infer_config(state_dict), infer_config(net.state_dict())
    if held is None or built is None or held == built:
        return None
    chosen, flag = (f'--preset {preset}', '--preset') if preset is not None else (f'--opt {option_file}', '--opt')
    return (f'checkpoint {weights} holds a {describe_size(held)}; {chosen} is a {describe_size(built)}; '
            f'drop {flag} to read the size off the checkpoint')


def load_network(weights=None, preset=None, option_file=None, device='auto', random_weights=False):
    """Build a GM-MoE network, load ``weights`` strictly, and return it in eval mode on ``device``.

    Args:
        weights (str | None): checkpoint path (released ``{'params': sd}``, ours, or a bare state dict).
        preset (str | None): ``'paper'`` or ``'released'`` (see ``gmmoe_arch.PRESETS``).
        option_file (str | None): a BasicSR option YAML whose ``network_g`` is built instead.
            With neither, the size is read off the checkpoint (``paper`` for random weights).
        device (str): ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        random_weights (bool): allow ``weights=None`` (smoke tests and benchmarks only).

    Raises:
        EnhanceError: naming the file and the first mismatched keys, before any image work.
    """
    from basicsr.archs import build_network

    if preset is not None and option_file is not None:
        raise EnhanceError('give either --preset or --opt, not both')
    if weights is None and not random_weights:
        raise EnhanceError('no --weights given: a GM-MoE network with random weights does not enhance '
                           'anything (pass --random-weights to run one anyway, e.g. for a benchmark)')
    dev = resolve_device(device)
    state_dict = load_state_dict(weights) if weights is not None else None
    opt, source = _network_options(preset, option_file, state_dict)
    try:
        net = build_network(opt)
    except (KeyError, ValueError, TypeError) as exc:
        raise EnhanceError(f'cannot build the network from {source}: {type(exc).__name__}: {exc}') from exc
    if state_dict is not None:
        try:
            net.load_state_dict(dict(state_dict), strict=True)
        except RuntimeError as exc:
            sizes = _size_mismatch(weights, state_dict, net, preset, option_file)
            if sizes:
                raise EnhanceError(sizes) from exc
            report = _mismatch_report(net, state_dict) or str(exc).splitlines()[0]
            raise EnhanceError(f'checkpoint {weights} does not fit the network ({source}): {report}') from exc
    net.requires_grad_(False)
    return net.eval().to(dev)


# ---------------------------------------------------------------- tiling


def _spans(length, size, overlap, align):
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


def _ramp(n):
    """Raised-cosine ramp of ``n`` samples rising from ~0 to ~1; ``ramp + ramp[::-1] == 1``."""
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _window(spans, index):
    """1-D blending weights of tile ``index``: raised-cosine ramps over its overlaps with its neighbours."""
    start, stop = spans[index]
    w = np.ones(stop - start)
    if index > 0 and spans[index - 1][1] > start:
        r = spans[index - 1][1] - start
        w[:r] *= _ramp(r)
    if index < len(spans) - 1 and stop > spans[index + 1][0]:
        r = stop - spans[index + 1][0]
        w[len(w) - r:] *= _ramp(r)[::-1]
    return w


@dataclass
class TilePlan:
    """Tiles over an ``h x w`` image: row spans ``ys`` and column spans ``xs`` (``(start, stop)``)."""
    h: int
    w: int
    ys: list
    xs: list

    def __len__(self):
        return len(self.ys) * len(self.xs)

    def tiles(self):
        """Yield ``(y0, y1, x0, x1, share)``: ``share`` (``y1-y0 x x1-x0`` float32) is the tile's
        blending weight divided by the summed weights, so the shares of all tiles add up to one."""
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


def check_tiling(tile=None, overlap=DEFAULT_OVERLAP, max_pixels=DEFAULT_MAX_PIXELS):
    """Raise :class:`EnhanceError` for tiling options that no image could use."""
    if tile is not None and tile < 64:
        raise EnhanceError(f'--tile {tile}: must be at least 64 px')
    if max_pixels < 1:
        raise EnhanceError(f'--max-pixels {max_pixels}: must be positive')
    if overlap < 0:
        raise EnhanceError(f'--overlap {overlap}: must be >= 0')
    side = tile if tile is not None else max(MIN_TILE, math.isqrt(max_pixels))
    if side <= 2 * overlap:
        raise EnhanceError(f'--overlap {overlap}: must be under half the tile side ({side} px)')


def plan_tiles(h, w, tile=None, overlap=DEFAULT_OVERLAP, max_pixels=DEFAULT_MAX_PIXELS, align=16):
    """Tiling for an ``h x w`` image.

    ``tile=None``: one tile when ``h * w <= max_pixels``, else tiles of about ``max_pixels``
    (squares of side ``floor(sqrt(max_pixels))``, at least :data:`MIN_TILE`, widened for narrow
    images). ``tile=N`` forces ``N x N`` tiles (clipped to the image). Tile starts are multiples
    of ``align`` (the network's padding multiple) so every tile downsamples on the image's grid.
    """
    check_tiling(tile, overlap, max_pixels)
    if tile is None:
        if h * w <= max_pixels:
            return TilePlan(h, w, [(0, h)], [(0, w)])
        side = max(MIN_TILE, math.isqrt(max_pixels))
        th, tw = min(h, side), min(w, side)
        if th < side:
            tw = min(w, max(side, max_pixels // th))
        elif tw < side:
            th = min(h, max(side, max_pixels // tw))
    else:
        th, tw = min(h, tile), min(w, tile)
    return TilePlan(h, w, _spans(h, th, overlap, align), _spans(w, tw, overlap, align))


def autocast(device, precision):
    """Autocast context for ``precision`` on ``device``; :class:`EnhanceError` for fp16 on the CPU."""
    if precision not in PRECISIONS:
        raise EnhanceError(f'--precision {precision}: choose from {", ".join(PRECISIONS)}')
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    if dtype == torch.float16 and device.type != 'cuda':
        raise EnhanceError('--precision fp16 needs a CUDA device; on the CPU use bf16 or fp32')
    return torch.autocast(device_type=device.type, dtype=dtype)


class ImageStatistics(TorchFunctionMode):
    """Whole-image means of the maps GM-MoE pools globally, estimated over tiles and injected into
    later tiles, so that every tile sees (an estimate of) the whole image's statistics.

    While active (``with ImageStatistics(inject):``), every spatial global mean in the network
    (``x.mean((2, 3))``, ``adaptive_avg_pool2d(x, 1)``: the gates, the detail expert's channel
    attention, the feature expert's SCA, and those of any registered expert) is a site, numbered
    in call order within a forward. Each site adds ``sum(share * x)`` and ``sum(share)`` of the
    current tile (``share``, the tile's blending share, averaged down to ``x``'s size), and,
    where ``inject`` holds a mean for the site, returns it instead of the tile's own mean. Since
    the shares of all tiles add up to one at every pixel, the sums give the whole image's mean
    wherever the tiles compute the image's features. With ``record=False`` the sums are skipped
    (a pass whose statistics nobody reads), the injection stays.
    """

    def __init__(self, inject=None, record=True):
        super().__init__()
        self.inject = inject or {}
        self.record = record
        self.sums = {}
        self.share = None
        self.site = 0

    def set_tile(self, share, pad_multiple, device):
        """Use ``share`` (``h x w``) for the next forward, replicate-padded as the network pads."""
        t = torch.from_numpy(share)[None, None].to(device)
        ph, pw = (-t.shape[2]) % pad_multiple, (-t.shape[3]) % pad_multiple
        self.share = F.pad(t, (0, pw, 0, ph), mode='replicate') if ph or pw else t
        self.site = 0

    def means(self):
        """``{site: (C,) float64 mean}`` over everything recorded so far."""
        return {site: num / den for site, (num, den) in self.sums.items()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fmap = _global_pool_input(func, args, kwargs)
        if fmap is None or self.share is None:
            return out
        site, self.site = self.site, self.site + 1
        if self.record:
            share = F.adaptive_avg_pool2d(self.share, fmap.shape[-2:])
            num = (fmap.float() * share).sum((0, 2, 3)).double().cpu()
            old = self.sums.get(site, (0, 0.0))
            self.sums[site] = (old[0] + num, old[1] + float(share.sum()))
        if site in self.inject:
            out = self.inject[site].to(device=out.device, dtype=out.dtype).reshape(out.shape)
        return out


def _global_pool_input(func, args, kwargs):
    """The ``(1, C, H, W)`` map that ``func(*args, **kwargs)`` averages over all of H and W, else None."""
    x = args[0] if args else kwargs.get('input')
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[0] != 1:
        return None
    if func in (torch.Tensor.mean, torch.mean):
        dims = args[1] if len(args) > 1 else kwargs.get('dim')
        dims = (dims,) if isinstance(dims, int) else dims
        return x if dims is not None and sorted(d % 4 for d in dims) == [2, 3] else None
    if func is F.adaptive_avg_pool2d:
        size = args[1] if len(args) > 1 else kwargs.get('output_size')
        return x if size in (1, (1, 1), [1, 1]) else None
    return None


def _sweep(net, tile_input, plan, inject, add_output=None, gates=None, record=True):
    """One pass of ``net`` over the tiles of ``plan``; returns the :class:`ImageStatistics` it recorded
    (nothing with ``record=False``).

    Args:
        tile_input: ``tile_input(y0, y1, x0, x1)`` -> that tile's ``(1, 3, h, w)`` float32 input.
        add_output: ``add_output(y0, y1, x0, x1, pred)`` receives each tile's ``(1, 3, h, w)`` float32 CPU
            output multiplied by its blending share, in the order :meth:`TilePlan.tiles` yields them.
    """
    from gmmoe_arch import record_gates

    device = next(net.parameters()).device
    pad = getattr(net, 'padder_size', 1)
    with ImageStatistics(inject, record) as stats, record_gates(net) as tile_gates:
        for y0, y1, x0, x1, share in plan.tiles():
            stats.set_tile(share, pad, device)
            pred = net(tile_input(y0, y1, x0, x1).to(device))
            if add_output is not None:
                add_output(y0, y1, x0, x1, pred.float().cpu() * torch.from_numpy(share))
            if gates is not None:
                weight = float(share.sum(dtype=np.float64)) / (plan.h * plan.w)
                for path, g in tile_gates.items():
                    gates[path] = gates.get(path, 0) + weight * g[0].double().cpu().numpy()
    return stats


def _run(net, tile_input, plan, add_output, precision, gates, stat_passes):
    """The statistics passes, then the output pass (see :func:`enhance_tensor`)."""
    device = next(net.parameters()).device
    inject = None
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(stat_passes if len(plan) > 1 else 0):
            inject = _sweep(net, tile_input, plan, inject).means()
        _sweep(net, tile_input, plan, inject, add_output, gates, record=False)


def enhance_tensor(net, x, plan, precision='fp32', gates=None, stat_passes=DEFAULT_STAT_PASSES):
    """Run ``net`` over ``x`` ``(1, 3, H, W)`` float32 (CPU) tile by tile; return ``(1, 3, H, W)`` float32.

    Args:
        plan (TilePlan): the tiles; outputs are blended with their shares.
        stat_passes (int): passes over the tiles that estimate the whole image's pooled statistics
            (see :class:`ImageStatistics`) before the output pass; each pass refines the last one's
            estimate. 0: every tile uses its own statistics. Unused for a single tile.
        gates (dict | None): filled with each expert block's gate weights ``(n_experts,)``, the
            mean over tiles weighted by the output pixels each tile accounts for.
    """
    out = torch.zeros_like(x)

    def add(y0, y1, x0, x1, pred):
        out[..., y0:y1, x0:x1] += pred

    _run(net, lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], plan, add, precision, gates, stat_passes)
    return out


class RowBlender:
    """Sums blended tile outputs over a band of rows and hands each row on as soon as it is final.

    Tiles arrive row of tiles by row of tiles (as :meth:`TilePlan.tiles` yields them), so when a
    tile starting at row ``y0`` arrives, no later tile touches the rows above ``y0``: those are
    passed to ``emit(r0, r1, rows)`` (``rows``: ``(r1 - r0, W, 3)`` float32) and dropped. Only the
    band of rows the current row of tiles covers is held in float32, never the whole image.
    """

    def __init__(self, width, emit):
        self.top = 0
        self.acc = np.zeros((0, width, 3), np.float32)
        self.emit = emit

    def add(self, y0, y1, x0, x1, pred):
        """Add ``pred`` (``(1, 3, y1-y0, x1-x0)`` tensor, already weighted) at its place."""
        if y0 > self.top:
            self.flush(y0)
        if y1 - self.top > len(self.acc):
            grown = np.zeros((y1 - self.top,) + self.acc.shape[1:], np.float32)
            grown[:len(self.acc)] = self.acc
            self.acc = grown
        self.acc[y0 - self.top:y1 - self.top, x0:x1] += pred[0].numpy().transpose(1, 2, 0)

    def flush(self, stop):
        """Hand on rows ``[top, stop)``: every tile covering them has been added."""
        if stop > self.top:
            self.emit(self.top, stop, self.acc[:stop - self.top])
            self.acc = self.acc[stop - self.top:]
            self.top = stop


def enhance_image(net, img, tile=None, overlap=DEFAULT_OVERLAP, max_pixels=DEFAULT_MAX_PIXELS,
                  precision='fp32', stat_passes=DEFAULT_STAT_PASSES, gates=None):
    """Enhance one image array; return an array of the same shape and dtype.

    Memory: besides ``img`` and the returned array, only one tile and one band of rows (a tile's
    height x the image's width) are held in float32; each tile is converted from ``img`` when the
    network needs it and each output row is converted to ``img``'s dtype once it is final.

    Args:
        img (np.ndarray): ``H x W``, ``H x W x 1``, ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA);
            ``uint8``, ``uint16`` or float in [0, 1].
        tile, overlap, max_pixels: see :func:`plan_tiles`.
        precision (str): ``'fp32'``, ``'bf16'`` or ``'fp16'`` (CUDA only), via autocast.
        stat_passes (int), gates (dict | None): see :func:`enhance_tensor`.
    """
    img, scale = _check_image(img)
    plan = plan_tiles(img.shape[0], img.shape[1], tile, overlap, max_pixels, getattr(net, 'padder_size', 1))
    out = np.empty_like(img)
    if img.ndim == 3 and img.shape[2] == 4:
        out[..., 3] = img[..., 3]  # alpha passes through untouched

    def emit(r0, r1, rows):
        rows = _from_network(rows, img.ndim == 2, scale, img.dtype)
        if img.ndim == 2:
            out[r0:r1] = rows
        else:
            out[r0:r1, :, :3] = rows

    blender = RowBlender(img.shape[1], emit)
    _run(net, lambda y0, y1, x0, x1: _to_network(img[y0:y1, x0:x1], scale), plan, blender.add, precision,
         gates, stat_passes)
    blender.flush(img.shape[0])
    return out


def _check_image(img):
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


def _to_network(part, scale):
    """An image region (gray, RGB or RGBA) -> ``(1, 3, h, w)`` float32 RGB in [0, 1] (gray replicated)."""
    rgb = np.repeat(part[..., None], 3, axis=2) if part.ndim == 2 else part[..., :3]
    rgb = rgb.astype(np.float32)
    if scale is not None:
        rgb /= scale
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


def _from_network(y, gray, scale, dtype):
    """The network's ``h x w x 3`` float output -> ``dtype`` pixels (gray via ITU-R 601 luma), clipped."""
    if gray:
        y = y @ LUMA
    y = np.clip(y, 0, 1)
    if scale is not None:
        y *= scale
        np.rint(y, out=y)
    return y.astype(dtype)


# ---------------------------------------------------------------- files


@contextmanager
def _pillow_bomb_check_off():
    """Pillow's decompression-bomb check suspended: :func:`read_header` reads only the header and
    applies the caller's own limit right after. A lock keeps two of these from interleaving."""
    from PIL import Image

    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_header(path):
    """``((width, height), orientation)`` from an image file's header, without decoding any pixel.

    ``(None, 1)`` when Pillow cannot parse the header (OpenCV may still decode the file); the
    orientation is the EXIF tag (1-8), 1 when absent or unreadable. Raises :class:`EnhanceError`
    when the file cannot be opened at all.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with _pillow_bomb_check_off(), Image.open(path) as im:
            size = im.size
            try:
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            except Exception:  # a damaged EXIF block: no orientation, the pixels may still be fine
                orientation = 1
    except OSError as exc:
        if exc.errno is not None and not isinstance(exc, UnidentifiedImageError):  # missing, unreadable, a folder
            raise EnhanceError(f'{path}: cannot be read ({exc.strerror or exc})') from exc
        return None, 1  # Pillow cannot parse this header (e.g. "Truncated File Read"); OpenCV decides
    except Exception:  # Pillow's parsers raise SyntaxError, struct.error, ... on damaged headers; OpenCV decides
        return None, 1
    return size, orientation if orientation in range(1, 9) else 1


def _apply_orientation(img, orientation):
    """Turn a stored ``H x W (x C)`` array upright, as ``PIL.ImageOps.exif_transpose`` does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](img)) if orientation in ops else img


def read_image(path, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Read an image file as an upright RGB(A)/gray array of its own dtype (8/16-bit, float TIFF).

    The size declared in the header is checked against ``max_image_pixels`` (None: no limit)
    before any pixel is decoded. OpenCV decodes the pixels (``IMREAD_UNCHANGED`` keeps 16 bits and
    alpha but ignores EXIF); the EXIF orientation is read with Pillow and applied here.
    """
    size, orientation = read_header(path)
    if size is not None and max_image_pixels is not None and size[0] * size[1] > max_image_pixels:
        raise EnhanceError(f'{path}: its header declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more '
                           f'than --max-image-pixels {max_image_pixels:,} (memory grows with the image: about 9 '
                           'bytes per pixel for 8-bit RGB); raise --max-image-pixels to enhance it anyway')
    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. above OpenCV's own pixel limit, some truncated files
        raise EnhanceError(f'{path}: not a readable image ({str(exc).strip().splitlines()[-1]})') from exc
    if img is None:
        raise EnhanceError(f'{path}: not a readable image (empty, truncated or unsupported format)')
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = np.stack([img[..., 0]] * 3 + [img[..., 1]], axis=2)
    if img.ndim == 3:
        _swap_red_blue(img)
    return _apply_orientation(img, orientation)


def _swap_red_blue(img, rows=256):
    """BGR(A) <-> RGB(A) in place, a band of rows at a time (no second copy of a large image)."""
    for r in range(0, img.shape[0], rows):
        band = img[r:r + rows]
        band[..., [0, 2]] = band[..., [2, 0]]


def write_file(path, data):
    """Write ``data`` (bytes-like) to ``path`` so that ``path`` only ever holds a complete file.

    The bytes go to a hidden temporary file in the same folder (created if missing), which is
    flushed to disk (fsync) and then renamed over ``path``. On any failure (disk full, no
    permission, ...) the temporary file is removed, ``path`` is left as it was, and
    :class:`EnhanceError` names the file and the reason.
    """
    path = str(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}.partial')
    fd = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        view = memoryview(data).cast('B')
        while view:
            view = view[os.write(fd, view[:WRITE_CHUNK]):]
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise EnhanceError(f'{path}: cannot be written ({exc.strerror or exc}); nothing was written under '
                           'that name') from exc
    _sync_folder(folder)


def _sync_folder(folder):
    """fsync a folder so that a rename in it survives a power cut (best effort: not every OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_image(path, img, jpeg_quality=95):
    """Write an RGB(A)/gray array (uint8, uint16 or float32 for TIFF), atomically (:func:`write_file`);
    the format follows the extension, parent folders are created."""
    ext = os.path.splitext(str(path))[1]
    params = [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality] if ext.lower() in ('.jpg', '.jpeg') else []
    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3][:img.shape[2]]]
    try:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(img), params)
    except cv2.error as exc:  # a format that cannot hold the dtype or channels, an unknown extension
        raise EnhanceError(f'{path}: cannot be written ({str(exc).strip().splitlines()[-1]})') from exc
    if not ok:
        raise EnhanceError(f'{path}: cannot be written (OpenCV could not encode {img.dtype} as {ext})')
    del img
    write_file(path, encoded)


def check_writable(folders, what):
    """Raise :class:`EnhanceError` unless files can be created in each of ``folders``.

    A folder that does not exist yet is checked through its nearest existing ancestor (where it
    would be created). The check creates and removes a probe file, so it finds read-only file
    systems and missing permissions alike (root ignores permission bits but not a read-only mount).
    """
    probed = set()
    for folder in folders:
        probe = os.path.abspath(folder or '.')
        while not os.path.lexists(probe):
            probe = os.path.dirname(probe)
        if probe in probed:
            continue
        if not os.path.isdir(probe):
            raise EnhanceError(f'{what} {folder}: {probe} is not a folder')
        try:
            fd, name = tempfile.mkstemp(dir=probe, prefix='.gmmoe-probe-')
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise EnhanceError(f'{what} {folder}: cannot write in {probe} ({exc.strerror or exc})') from exc
        probed.add(probe)


@dataclass
class Job:
    """One image: where it is read from, where it goes, and its name in reports."""
    src: str
    dst: str
    name: str


def _join(folder, name):
    return os.path.join(folder, name) if folder else name


def _subfolders(folder, hidden=True):
    """``folder`` and every folder below it, depth first in name order, following symlinked folders
    except into a folder that is already on the way down (same device and inode), so that symlink
    loops end. ``hidden=False`` skips names starting with a dot, as glob's ``**`` does. Unreadable
    folders are passed over, as ``os.walk`` does."""
    stack = [(folder, frozenset())]
    while stack:
        current, above = stack.pop()
        try:
            st = os.stat(current or '.')
            names = sorted(os.listdir(current or '.'))
        except OSError:
            continue
        here = (st.st_dev, st.st_ino)
        if here in above:
            continue
        yield current
        subs = [_join(current, n) for n in names if hidden or not n.startswith('.')]
        stack += [(d, above | {here}) for d in reversed(subs) if os.path.isdir(d)]


def _glob(pattern):
    """Paths matching a glob ``pattern`` (``*``, ``?``, ``[...]`` within a name, ``**`` any number
    of folders), like ``glob.glob(pattern, recursive=True)`` but safe on symlink loops (see
    :func:`_subfolders`)."""
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else '')
    return sorted(set(_match(root, parts[first:])))


def _match(folder, parts):
    """Paths below ``folder`` matching the pattern components ``parts``."""
    if not parts:
        return [folder]
    head, rest = parts[0], parts[1:]
    if head == '**':
        return [p for sub in _subfolders(folder, hidden=False) for p in _match(sub, rest or ['*'])]
    if not glob.has_magic(head):
        path = _join(folder, head)
        return _match(path, rest) if os.path.lexists(path) else []
    try:
        names = sorted(os.listdir(folder or '.'))
    except OSError:  # not a folder, or unreadable
        return []
    names = [n for n in names if fnmatch.fnmatch(n, head) and (head.startswith('.') or not n.startswith('.'))]
    return [p for n in names for p in _match(_join(folder, n), rest)]


def _image_files(folder):
    """Image files in ``folder`` and below (symlinked folders followed, loops not): ``(path, relative path)``."""
    found = []
    for sub in _subfolders(folder):
        found += [_join(sub, n) for n in sorted(os.listdir(sub))
                  if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(_join(sub, n))]
    return [(f, os.path.relpath(f, folder)) for f in found]


def _file_id(path):
    """``(device, inode)`` of an existing file (symlinks followed), None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def collect_jobs(inputs, out_dir, suffix=''):
    """Expand files, folders (recursively, relative structure kept) and globs into :class:`Job` s.

    Folders and ``**`` follow symlinked folders, but never into a folder they are already inside,
    so symlink loops end.
    Raises :class:`EnhanceError` for an input that matches nothing, two inputs writing the same
    output, or an output that is an input: the same path, or the same file (device and inode)
    reached through a hard link, a symlink or another mount.
    """
    jobs = []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            jobs += _image_files(item)
        elif os.path.isfile(item):
            jobs.append((item, os.path.basename(item)))
        elif glob.has_magic(item):
            found = [f for f in _glob(item) if os.path.isfile(f)]
            if not found:
                raise EnhanceError(f'input {item}: the pattern matches no files')
            jobs += [(f, os.path.basename(f)) for f in found]
        else:
            raise EnhanceError(f'input {item}: no such file or folder')
    result, targets = [], {}
    sources = {os.path.realpath(src) for src, _ in jobs}
    source_ids = {_file_id(src): src for src, _ in jobs}
    for src, rel in jobs:
        stem, ext = os.path.splitext(rel)
        dst = os.path.join(str(out_dir), stem + suffix + ext)
        real = os.path.realpath(dst)
        same = source_ids.get(_file_id(dst)) if os.path.exists(dst) else None
        if real in sources or same is not None:
            raise EnhanceError(f'output {dst} would overwrite the input {same or src} (the same file'
                               f'{"" if real in sources else ", through a hard link or mount"}): choose another '
                               '-o folder or a --suffix')
        if real in targets and targets[real] != os.path.realpath(src):
            raise EnhanceError(f'inputs {targets[real]} and {src} would both be written to {dst}')
        if real not in targets:
            targets[real] = os.path.realpath(src)
            result.append(Job(src, dst, rel))
    return result


@dataclass
class Summary:
    """What :func:`enhance_jobs` did: written outputs, failures ``(name, message)``, per-image gates."""
    written: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    gates: dict = field(default_factory=dict)
    tiles: int = 0
    seconds: float = 0.0


def enhance_paths(inputs, out_dir, net, suffix='', **options):
    """Enhance every image named by ``inputs`` (files, folders, globs) into ``out_dir``: the
    :func:`collect_jobs` of them through :func:`enhance_jobs` with ``options``."""
    return enhance_jobs(collect_jobs(inputs, out_dir, suffix), net, **options)


def enhance_jobs(jobs, net, tile=None, overlap=DEFAULT_OVERLAP, max_pixels=DEFAULT_MAX_PIXELS, precision='fp32',
                 stat_passes=DEFAULT_STAT_PASSES, record=False, progress=False,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Enhance each :class:`Job` (from :func:`collect_jobs`); return a :class:`Summary`.

    The output folders are checked writable first (:func:`check_writable`). An image that cannot
    be read, is larger than ``max_image_pixels``, runs out of memory or cannot be written is
    recorded in ``Summary.failed`` and the rest are processed; each output is written atomically
    (:func:`write_file`). ``record=True`` fills ``Summary.gates[name] = {block: [w_expert...]}``.
    """
    import time

    from tqdm import tqdm

    check_tiling(tile, overlap, max_pixels)
    autocast(next(net.parameters()).device, precision)  # bad precision/device pairs fail before any work
    check_writable({os.path.dirname(job.dst) for job in jobs}, 'output folder')
    summary = Summary()
    start = time.perf_counter()
    for job in tqdm(jobs, unit='img', disable=not progress or len(jobs) < 2, dynamic_ncols=True):
        gates = {} if record else None
        try:
            tiles = _enhance_file(job, net, gates, max_image_pixels, tile=tile, overlap=overlap,
                                  max_pixels=max_pixels, precision=precision, stat_passes=stat_passes)
        except EnhanceError as exc:
            summary.failed.append((job.name, str(exc)))
            continue
        summary.written.append(job.dst)
        summary.tiles += tiles
        if record:
            summary.gates[job.name] = {path: g.tolist() for path, g in gates.items()}
    summary.seconds = time.perf_counter() - start
    return summary


def _enhance_file(job, net, gates, max_image_pixels, **options):
    """Read, enhance and write one image; return its number of tiles. Running out of memory (host or
    GPU) is an :class:`EnhanceError` for this image only."""
    try:
        img = read_image(job.src, max_image_pixels)
        tiles = len(plan_tiles(img.shape[0], img.shape[1], options['tile'], options['overlap'],
                               options['max_pixels'], getattr(net, 'padder_size', 1)))
        out = enhance_image(net, img, gates=gates, **options)
        del img  # the input is not needed while the output is encoded and written
        write_image(job.dst, out)
    except MemoryError as exc:
        raise EnhanceError(f'{job.src}: out of memory ({type(exc).__name__}); {_MEMORY_HINT}') from exc
    except RuntimeError as exc:  # torch reports allocation failures (CPU and CUDA) as RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = f'; {_MEMORY_HINT}' if 'memory' in str(exc).lower() else ''
        raise EnhanceError(f'{job.src}: the network failed on this image ({first}){hint}') from exc
    return tiles


_MEMORY_HINT = 'lower --max-pixels (the tile size) or --max-image-pixels'

