"""Experts for degradations other than low light: :class:`RainExpert` and :class:`HazeExpert`.

Both are plain modules registered in :data:`~gmmoe_arch.archs.experts.EXPERT_REGISTRY` (importing
:mod:`gmmoe_arch.archs` registers them) and follow the expert contract of ``docs/experts.md``:
``(B, C, H, W) -> (B, C, H, W)`` for any ``H, W >= 1``, the input never changed in place, every
global pool through :func:`~gmmoe_arch.archs.pooling.global_mean`. Each adds a correction to its
input scaled by a learnable per-channel ``residual_scale`` that starts small (0.1): a fresh expert is
close to the identity, as the feature expert is, but already contributes something the gate can
prefer. Pick them in the option YAML::

    experts: [ColourExpert, DetailExpert, FeatureExpert, RainExpert, {type: HazeExpert, window: 9}]
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..options import is_integer, is_number
from .experts import EXPERT_REGISTRY
from .pooling import global_mean


def ridge_kernels(size: int, angles: Sequence[float]) -> Tensor:
    """``(len(angles), size, size)`` zero-mean line detectors, one per angle (degrees from vertical,
    positive leaning right at the top).

    Each kernel is +1 (spread over the pixels) on the one-pixel-wide line through the centre at its
    angle and -1 (spread likewise) on the two lines beside it, within a disc of diameter ``size``:
    a thin line brighter than its sides gives a positive response, a flat or smoothly varying patch
    none.
    """
    r = size // 2
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing='ij')
    inside = dy.square() + dx.square() <= (r + 0.5) ** 2
    kernels = []
    for angle in angles:
        a = math.radians(angle)
        across = (dx * math.cos(a) + dy * math.sin(a)).abs()  # distance from the line (x = -y tan a)
        line = (across < 0.5) & inside
        sides = (across >= 0.5) & (across < 1.5) & inside
        kernels.append(line / line.sum() - sides / sides.sum())
    return torch.stack(kernels)


def local_min(x: Tensor, window: int) -> Tensor:
    """``(B, C, H, W)`` minimum over the ``window x window`` neighbourhood of each pixel (odd ``window``,
    any ``H, W >= 1``: the border pads with +inf), as a column then a row minimum of shifted views (on
    CPUs several times faster than a max-pool of the negated map)."""
    r = window // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r), value=float('inf'))
    column = padded[..., :h, :]
    for i in range(1, window):
        column = torch.minimum(column, padded[..., i : i + h, :])
    out = column[..., :w]
    for i in range(1, window):
        out = torch.minimum(out, column[..., i : i + w])
    return out


def _check(name: str, option: str, ok: bool, value) -> None:
    if not ok:
        raise ValueError(f'network_g.experts: {name} {option} {value!r} is out of range')


@EXPERT_REGISTRY.register()
class RainExpert(nn.Module):
    """Streak-removal expert: ``(B, C, H, W) -> (B, C, H, W)``.

    What it exploits: a rainy image is the background plus a streak layer, ``I = B + R`` with
    ``R >= 0``, and the streaks are thin, bright and elongated along a near-vertical direction, so
    they vary fast across a streak and slowly along it; rain is nearly achromatic, so a few channels
    carry it. A 1x1 conv (``reduce``) projects the features to ``streak_channels`` maps (initialised
    in pairs ``+w, -w``: a streak may have either sign in feature space, and one of each pair sees it
    bright); a depthwise ``kernel_size`` conv with ``len(angles)`` outputs per map, initialised as the
    oriented line detectors of :func:`ridge_kernels` (default -20, 0 and +20 degrees from vertical),
    responds to thin bright lines at those angles and not to smooth content or edges between flat
    regions (it pads by replication, so the map's own border is no edge either). The rectified
    responses (only bright lines count) are mixed by a 1x1 conv (``select``, initialised to their
    mean) into a streak layer ``s`` of C channels, rectified again (``s >= 0``). A 1x1 conv (``fuse``)
    reads the de-streaked features ``u - s`` and ``s`` and gives the correction, initialised to ``-s``
    (remove the streaks, leave the rest); the output is ``u + residual_scale * fuse([u - s, s])``. A
    fresh expert dims thin lines and is the identity on maps without them.

    Args:
        channels (int): C. streak_channels (int | None): maps the lines are detected on (default
            ``max(2, C // 4)``). kernel_size (int): odd side of the oriented kernels (>= 3, default 7).
        angles (list[float]): streak directions in degrees from vertical (default ``[-20, 0, 20]``).
        residual_scale (float): initial value of the per-channel residual scale (default 0.1).
    """

    def __init__(self, channels, streak_channels=None, kernel_size=7, angles=(-20.0, 0.0, 20.0), residual_scale=0.1):
        super().__init__()
        s = max(2, channels // 4) if streak_channels is None else streak_channels
        _check('RainExpert', 'streak_channels', is_integer(s) and s >= 1, streak_channels)
        _check(
            'RainExpert',
            'kernel_size',
            is_integer(kernel_size) and kernel_size >= 3 and kernel_size % 2,
            kernel_size,
        )
        _check('RainExpert', 'angles', isinstance(angles, (list, tuple)) and 0 < len(angles), angles)
        _check('RainExpert', 'angles', all(is_number(a) and abs(a) <= 90 for a in angles), angles)
        _check('RainExpert', 'residual_scale', is_number(residual_scale), residual_scale)
        c, o = channels, len(angles)
        self.reduce = nn.Conv2d(c, s, 1)
        self.oriented = nn.Conv2d(s, s * o, kernel_size, padding=kernel_size // 2, groups=s, padding_mode='replicate')
        self.select = nn.Conv2d(s * o, c, 1)
        self.fuse = nn.Conv2d(2 * c, c, 1)
        self.residual_scale = nn.Parameter(torch.full((1, c, 1, 1), float(residual_scale)))
        with torch.no_grad():
            self.reduce.weight[1::2] = -self.reduce.weight[0 : s - 1 : 2]  # lines of either sign: pairs +-w
            self.reduce.bias[1::2] = -self.reduce.bias[0 : s - 1 : 2]
            self.oriented.weight.copy_(ridge_kernels(kernel_size, angles).repeat(s, 1, 1).unsqueeze(1))
            self.oriented.bias.zero_()
            self.select.weight.fill_(1 / (s * o))
            self.select.bias.zero_()
            self.fuse.weight.copy_(torch.cat([torch.zeros(c, c), -torch.eye(c)], dim=1)[..., None, None])
            self.fuse.bias.zero_()

    def forward(self, u: Tensor) -> Tensor:
        lines = F.relu(self.oriented(self.reduce(u)))  # (B, S * O, H, W): thin bright lines per angle
        streak = F.relu(self.select(lines))  # (B, C, H, W) >= 0
        return u + self.residual_scale * self.fuse(torch.cat([u - streak, streak], dim=1))


@EXPERT_REGISTRY.register()
class HazeExpert(nn.Module):
    """Dehazing expert after the dark channel prior, in feature space: ``(B, C, H, W) -> (B, C, H, W)``.

    What it exploits: a hazy image follows the scattering model ``I = J t + A (1 - t)``, and in haze-free
    patches some channel is nearly dark, so the dark channel (minimum over channels, then over a local
    window) of a hazy image measures the haze. A 1x1 conv with a sigmoid projects the features to
    ``dark_channels`` intensity-like maps ``p`` in (0, 1). Their dark channel locates the haziest,
    brightest regions, where the airlight ``A`` (one value per projected channel) is read as a soft
    arg-max over the whole image: ``A = global_mean(p * e) / global_mean(e)`` with
    ``e = exp(sharpness * (dark - 1))`` (at most 1, so no overflow). Both means go through
    :func:`~gmmoe_arch.archs.pooling.global_mean`, so tiled inference uses the whole image's airlight.
    The transmission is ``t = max(1 - omega * dark(p / A), t0)`` and the scene ``J = (p - A) / t + A``;
    the correction ``J - p`` (zero where the prior sees no haze, ``t = 1``) is projected back by a 1x1
    ``fuse`` conv: the output is ``u + residual_scale * fuse(J - p)``.

    Args:
        channels (int): C. dark_channels (int): projected channels (default 4).
        window (int): odd side of the dark channel's local minimum (default 7).
        omega (float): haze kept for depth perception, in (0, 1] (default 0.95, as in the prior's paper).
        t0 (float): lower bound of the transmission, in (0, 1) (default 0.1).
        sharpness (float): > 0, how strongly the airlight estimate favours the darkest-channel maximum
            (default 10). residual_scale (float): initial per-channel residual scale (default 0.1).
    """

    def __init__(self, channels, dark_channels=4, window=7, omega=0.95, t0=0.1, sharpness=10.0, residual_scale=0.1):
        super().__init__()
        _check('HazeExpert', 'dark_channels', is_integer(dark_channels) and dark_channels >= 1, dark_channels)
        _check('HazeExpert', 'window', is_integer(window) and window >= 1 and window % 2, window)
        _check('HazeExpert', 'omega', is_number(omega) and 0 < omega <= 1, omega)
        _check('HazeExpert', 't0', is_number(t0) and 0 < t0 < 1, t0)
        _check('HazeExpert', 'sharpness', is_number(sharpness) and sharpness > 0, sharpness)
        _check('HazeExpert', 'residual_scale', is_number(residual_scale), residual_scale)
        self.project = nn.Conv2d(channels, dark_channels, 1)
        self.fuse = nn.Conv2d(dark_channels, channels, 1)
        self.residual_scale = nn.Parameter(torch.full((1, channels, 1, 1), float(residual_scale)))
        self.window, self.omega, self.t0, self.sharpness = window, float(omega), float(t0), float(sharpness)

    def dark_channel(self, p: Tensor) -> Tensor:
        """``(B, D, H, W) -> (B, 1, H, W)``: minimum over channels, then over the local window."""
        return local_min(p.amin(1, keepdim=True), self.window)

    def scattering(self, p: Tensor):
        """``p`` ``(B, D, H, W)`` in (0, 1) -> the airlight ``(B, D, 1, 1)`` and the transmission
        ``(B, 1, H, W)`` in ``[t0, 1]`` the dark channel prior reads off it."""
        e = torch.exp(self.sharpness * (self.dark_channel(p) - 1))  # (B, 1, H, W) in (0, 1]
        airlight = (global_mean(p * e) / global_mean(e)).clamp_min(1e-3)
        return airlight, (1 - self.omega * self.dark_channel(p / airlight)).clamp_min(self.t0)

    def forward(self, u: Tensor) -> Tensor:
        p = torch.sigmoid(self.project(u))  # (B, D, H, W) in (0, 1)
        airlight, t = self.scattering(p)
        correction = (p - airlight) * (1 / t - 1)  # J - p, J = (p - A) / t + A
        return u + self.residual_scale * self.fuse(correction)
