"""Enhance users' own photos with a GM-MoE network: the Python API behind ``gmmoe enhance``.

Three layers, each usable alone::

    net = load_network('net_g.pth', preset='paper')          # or option_file=, or inferred
    out = enhance_image(net, img)                             # numpy in, numpy out (same dtype)
    summary = enhance_paths(['photos/'], 'enhanced/', net)    # files, folders, globs

Images: ``H x W`` (gray), ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA), ``uint8``, ``uint16`` or
``float32`` in [0, 1]. Gray is replicated to RGB for the network and converted back (ITU-R 601
luma); alpha is passed through untouched; the output has the input's shape and dtype.

Memory: images above ``max_pixels`` run as overlapping tiles blended with raised-cosine ramps
normalised by the summed weights, so memory is bounded by the tile size, not the image size.
GM-MoE has image-global operations (the gates, the detail expert's channel attention and the
feature expert's SCA average over the whole map): statistics passes over the tiles estimate
those whole-image averages and inject them into every tile (:class:`ImageStatistics`). Tiling
stays a close approximation of whole-image inference, not an exact copy (see
``docs/enhance.md`` for measured differences).
"""
import glob
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .data.image_io import IMAGE_EXTENSIONS

DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_OVERLAP = 96
DEFAULT_STAT_PASSES = 1
MIN_TILE = 256
PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
EXIF_ORIENTATION = 0x0112


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


def _sweep(net, x, plan, inject, out=None, gates=None, record=True):
    """One pass of ``net`` over the tiles of ``x``; returns the :class:`ImageStatistics` it recorded
    (nothing with ``record=False``)."""
    from gmmoe_arch import record_gates

    device = next(net.parameters()).device
    pad = getattr(net, 'padder_size', 1)
    with ImageStatistics(inject, record) as stats, record_gates(net) as tile_gates:
        for y0, y1, x0, x1, share in plan.tiles():
            stats.set_tile(share, pad, device)
            pred = net(x[..., y0:y1, x0:x1].to(device))
            if out is not None:
                out[..., y0:y1, x0:x1] += pred.float().cpu() * torch.from_numpy(share)
            if gates is not None:
                weight = float(share.sum(dtype=np.float64)) / (plan.h * plan.w)
                for path, g in tile_gates.items():
                    gates[path] = gates.get(path, 0) + weight * g[0].double().cpu().numpy()
    return stats


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
    device = next(net.parameters()).device
    out = torch.zeros_like(x)
    inject = None
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(stat_passes if len(plan) > 1 else 0):
            inject = _sweep(net, x, plan, inject).means()
        _sweep(net, x, plan, inject, out, gates, record=False)
    return out


def enhance_image(net, img, tile=None, overlap=DEFAULT_OVERLAP, max_pixels=DEFAULT_MAX_PIXELS,
                  precision='fp32', stat_passes=DEFAULT_STAT_PASSES, gates=None):
    """Enhance one image array; return an array of the same shape and dtype.

    Args:
        img (np.ndarray): ``H x W``, ``H x W x 1``, ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA);
            ``uint8``, ``uint16`` or float in [0, 1].
        tile, overlap, max_pixels: see :func:`plan_tiles`.
        precision (str): ``'fp32'``, ``'bf16'`` or ``'fp16'`` (CUDA only), via autocast.
        stat_passes (int), gates (dict | None): see :func:`enhance_tensor`.
    """
    rgb, alpha, gray, scale = _split(img)
    plan = plan_tiles(rgb.shape[0], rgb.shape[1], tile, overlap, max_pixels, getattr(net, 'padder_size', 1))
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    del rgb
    y = enhance_tensor(net, x, plan, precision, gates, stat_passes)[0].numpy().transpose(1, 2, 0)
    return _merge(y, alpha, gray, scale, img.dtype)


def _split(img):
    """Array -> (RGB float32 in [0, 1], alpha or None, was-gray, integer scale or None)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)) or 0 in img.shape:
        raise EnhanceError(f'image of shape {img.shape}: expected H x W, H x W x 3 or H x W x 4')
    if img.dtype in (np.uint8, np.uint16):
        scale = float(np.iinfo(img.dtype).max)
    elif np.issubdtype(img.dtype, np.floating):
        scale = None
    else:
        raise EnhanceError(f'image dtype {img.dtype}: expected uint8, uint16 or float')
    gray = img.ndim == 2
    alpha = img[..., 3] if not gray and img.shape[2] == 4 else None
    rgb = np.repeat(img[..., None], 3, axis=2) if gray else img[..., :3]
    rgb = rgb.astype(np.float32)
    if scale is not None:
        rgb /= scale
    return rgb, alpha, gray, scale


def _merge(y, alpha, gray, scale, dtype):
    """Inverse of :func:`_split` for the network's ``H x W x 3`` float output."""
    if gray:
        y = y @ LUMA
    np.clip(y, 0, 1, out=y)
    if scale is not None:
        y *= scale
        np.rint(y, out=y)
    y = y.astype(dtype)
    if alpha is not None:
        y = np.concatenate([y, alpha[..., None]], axis=2)
    return y


# ---------------------------------------------------------------- files


def _orientation(path):
    """EXIF orientation (1-8) of an image file, 1 when absent or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # Pillow cannot parse every file cv2 reads; no EXIF then
        return 1
    return value if value in range(1, 9) else 1


def _apply_orientation(img, orientation):
    """Turn a stored ``H x W (x C)`` array upright, as ``PIL.ImageOps.exif_transpose`` does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](img)) if orientation in ops else img


def read_image(path):
    """Read an image file as an upright RGB(A)/gray array of its own dtype (8/16-bit, float TIFF).

    OpenCV decodes the pixels (``IMREAD_UNCHANGED`` keeps 16 bits and alpha but ignores EXIF);
    the EXIF orientation is read with Pillow and applied here.
    """
    from basicsr.utils import imfrombytes

    try:
        with open(path, 'rb') as f:
            content = f.read()
    except OSError as exc:
        raise EnhanceError(f'{path}: cannot be read ({exc.strerror or exc})') from exc
    try:
        img = imfrombytes(content, flag='unchanged') if content else None
    except Exception as exc:  # cv2.error on some truncated files
        raise EnhanceError(f'{path}: not a readable image ({exc})') from exc
    if img is None:
        raise EnhanceError(f'{path}: not a readable image (empty, truncated or unsupported format)')
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = np.stack([img[..., 0]] * 3 + [img[..., 1]], axis=2)
    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3][:img.shape[2]]]
    return _apply_orientation(img, _orientation(path))


def write_image(path, img, jpeg_quality=95):
    """Write an RGB(A)/gray array (uint8, uint16 or float32 for TIFF); parent folders are created."""
    from basicsr.utils import imwrite

    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3][:img.shape[2]]]
    params = [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality] if str(path).lower().endswith(('.jpg', '.jpeg')) else None
    try:
        imwrite(np.ascontiguousarray(img), str(path), params=params)
    except Exception as exc:  # OSError, or cv2.error for a format that cannot hold the dtype
        raise EnhanceError(f'{path}: cannot be written ({exc})') from exc


@dataclass
class Job:
    """One image: where it is read from, where it goes, and its name in reports."""
    src: str
    dst: str
    name: str


def collect_jobs(inputs, out_dir, suffix=''):
    """Expand files, folders (recursively, relative structure kept) and globs into :class:`Job` s.

    Raises :class:`EnhanceError` for an input that matches nothing, two inputs writing the same
    output, or an output that would overwrite an input.
    """
    jobs = []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
            jobs += [(f, os.path.relpath(f, item)) for f in found]
        elif os.path.isfile(item):
            jobs.append((item, os.path.basename(item)))
        elif glob.has_magic(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
            if not found:
                raise EnhanceError(f'input {item}: the pattern matches no files')
            jobs += [(f, os.path.basename(f)) for f in found]
        else:
            raise EnhanceError(f'input {item}: no such file or folder')
    result, targets = [], {}
    sources = {os.path.realpath(src) for src, _ in jobs}
    for src, rel in jobs:
        stem, ext = os.path.splitext(rel)
        dst = os.path.join(str(out_dir), stem + suffix + ext)
        real = os.path.realpath(dst)
        if real in sources:
            raise EnhanceError(f'output {dst} would overwrite the input {src}: choose another -o folder or a --suffix')
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
                 stat_passes=DEFAULT_STAT_PASSES, record=False, progress=False):
    """Enhance each :class:`Job` (from :func:`collect_jobs`); return a :class:`Summary`.

    An image that cannot be read or written is recorded in ``Summary.failed`` and the rest are
    processed. ``record=True`` fills ``Summary.gates[name] = {block: [w_expert...]}``.
    """
    import time

    from tqdm import tqdm

    check_tiling(tile, overlap, max_pixels)
    autocast(next(net.parameters()).device, precision)  # bad precision/device pairs fail before any work
    summary = Summary()
    start = time.perf_counter()
    for job in tqdm(jobs, unit='img', disable=not progress or len(jobs) < 2, dynamic_ncols=True):
        try:
            img = read_image(job.src)
            gates = {} if record else None
            out = enhance_image(net, img, tile, overlap, max_pixels, precision, stat_passes, gates)
            write_image(job.dst, out)
        except EnhanceError as exc:
            summary.failed.append((job.name, str(exc)))
            continue
        summary.written.append(job.dst)
        summary.tiles += len(plan_tiles(img.shape[0], img.shape[1], tile, overlap, max_pixels,
                                        getattr(net, 'padder_size', 1)))
        if record:
            summary.gates[job.name] = {path: g.tolist() for path, g in gates.items()}
    summary.seconds = time.perf_counter() - start
    return summary
