"""GM-MoE's gates and the registry that YAMLs pick a gate from (``network_g.gate: {type: Name, **options}``).

A gate maps an expert block's input ``(B, C, H, W)`` to mixing weights over its ``n`` experts that are
non-negative and sum to one over dimension 1, and is built as ``Gate(channels, n_experts, **options)``.
It declares its :attr:`kind` (see :mod:`.routing`): :data:`~.routing.PER_IMAGE` gates give ``(B, n)``, one
weight vector per image; :data:`~.routing.PER_PIXEL` gates give ``(B, n, H, W)``, one per pixel. Every
consumer of gate weights (the block's mixing, top-k, losses, statistics, the tiler, ``--gates``) reads them
through :mod:`.routing`, so a new gate needs nothing else. Global pooling must go through
:func:`.pooling.global_mean` (the tiler shares whole-image means through it). docs/experts.md has the contract.

* :class:`Gate` (default, as released): global average pool, Linear C -> C/4 (no bias), ReLU, Linear C/4 -> n
  (no bias), softmax of the logits / temperature. Saved as the released ``GateNetwork.*``.
* :class:`AdaptiveGate`: per-image, from LayerNorm'd channel means and standard deviations, a wider MLP with
  biases and GELU, a learnable temperature.
* :class:`SpatialGate`: per-pixel weights from local features (depthwise 3x3 + 1x1) and global context.

The registry is the package's own (like ``EXPERT_REGISTRY``), not one of BasicSR's, so names cannot collide
with other packages' and :mod:`gmmoe_arch.registry`'s qualified names are not needed.
"""

import math

import torch
import torch.nn.functional as F
from basicsr.utils.registry import Registry
from torch import nn

from .pooling import global_mean
from .routing import KINDS, PER_IMAGE, PER_PIXEL
from .specs import resolve

GATE_REGISTRY = Registry('gate')
RELEASED_GATE = 'Gate'
OPTION = 'network_g.gate'


def pooled_statistics(u, eps=1e-5):
    """``(B, C, H, W) -> (B, 2C, 1, 1)``: each channel's mean and standard deviation over all pixels, both
    through :func:`.pooling.global_mean` (the mean of ``u`` and of ``u * u``: two pooling sites, so tiled
    inference shares both whole-image moments)."""
    mean = global_mean(u)
    square = global_mean(u * u)
    std = (square - mean * mean).clamp(min=0).add(eps).sqrt()
    return torch.cat([mean, std], dim=1)


def _check_temperature(temperature):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f'{OPTION}.temperature must be a number > 0, got {temperature!r}')
    return float(temperature)


@GATE_REGISTRY.register()
class Gate(nn.Module):
    """Per-image softmax gate, as released: ``(B, C, H, W) -> (B, n_experts)`` weights that sum to one.

    Global average pool (:func:`.pooling.global_mean`), Linear C -> C/4, ReLU, Linear C/4 -> n (no
    biases), softmax of the logits divided by ``temperature`` (released: 3, ``network_g.gate_temperature``).
    """

    kind = PER_IMAGE

    def __init__(self, channels, n_experts, temperature=3.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'gate_temperature must be > 0, got {temperature}')
        hidden = max(1, channels // 4)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, n_experts, bias=False)
        )
        self.temperature = float(temperature)

    def forward(self, u):
        return torch.softmax(self.mlp(global_mean(u).flatten(1)) / self.temperature, dim=1)


@GATE_REGISTRY.register()
class AdaptiveGate(nn.Module):
    """Per-image gate built to specialise: ``(B, C, H, W) -> (B, n_experts)`` weights that sum to one.

    What it changes against the released :class:`Gate`, and why (docs gate-facts, 2026-12-02: after training
    the released gate's weights stayed within 0.01 of ``1/n``):

    * Input: each channel's mean **and** standard deviation (:func:`pooled_statistics`), LayerNorm'd. The
      mean alone misses contrast and noise, and the raw statistics of a block's features are small
      (the released logits stayed under 0.08); the norm puts them at unit scale whatever the block.
    * Hidden layer: ``max(min_hidden, C // 2)`` units (``min_hidden`` 16) with biases and GELU. With
      ``C / 4 = 2`` ReLU units and no bias the released gate's outer blocks had every unit negative, so the
      logits were exactly zero and no gradient reached the gate; GELU has a gradient everywhere.
    * Temperature: learnable, as ``log_temperature`` (stays positive, scale-free steps), starting at
      ``temperature`` (default 1, not the released 3, so the first logits already move the weights).
    """

    kind = PER_IMAGE

    def __init__(self, channels, n_experts, min_hidden=16, temperature=1.0):
        super().__init__()
        hidden = max(int(min_hidden), channels // 2)
        self.norm = nn.LayerNorm(2 * channels)
        self.mlp = nn.Sequential(nn.Linear(2 * channels, hidden), nn.GELU(), nn.Linear(hidden, n_experts))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(_check_temperature(temperature))))

    def forward(self, u):
        logits = self.mlp(self.norm(pooled_statistics(u).flatten(1)))
        return torch.softmax(logits / self.log_temperature.exp(), dim=1)


@GATE_REGISTRY.register()
class SpatialGate(nn.Module):
    """Per-pixel gate: ``(B, C, H, W) -> (B, n_experts, H, W)`` weights that sum to one at every pixel.

    Local features (3x3 depthwise conv, then 1x1 conv to ``hidden`` channels) plus global context (the
    LayerNorm'd channel means and standard deviations of :func:`pooled_statistics`, projected to ``hidden``
    by a 1x1 conv and broadcast over the pixels), GELU, 1x1 conv to ``n`` logits, softmax over the experts
    of the logits / a learnable temperature (``log_temperature``, as :class:`AdaptiveGate`).
    ``hidden = max(min_hidden, C // 2)``. The global context pools through :func:`.pooling.global_mean`
    (two sites), so tiled inference with statistics passes gives each tile the whole image's context.

    Top-k (``gate_top_k``) is per pixel: each pixel mixes its ``k`` largest weights, renormalised
    (:func:`.routing.top_k`); an expert runs on the images where at least one pixel picked it, and is
    skipped for an image where no pixel did.
    """

    kind = PER_PIXEL

    def __init__(self, channels, n_experts, min_hidden=16, temperature=1.0):
        super().__init__()
        hidden = max(int(min_hidden), channels // 2)
        self.local = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.Conv2d(channels, hidden, 1)
        )
        self.norm = nn.LayerNorm(2 * channels)
        self.context = nn.Linear(2 * channels, hidden)
        self.out = nn.Conv2d(hidden, n_experts, 1)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(_check_temperature(temperature))))

    def forward(self, u):
        context = self.context(self.norm(pooled_statistics(u).flatten(1)))[:, :, None, None]
        logits = self.out(F.gelu(self.local(u) + context))
        return torch.softmax(logits / self.log_temperature.exp(), dim=1)


def build_gate(spec, channels, n_experts, temperature=3.0):
    """The gate of an expert block: ``spec`` None (the released :class:`Gate`, at ``temperature``) or a
    registry name or ``{type: Name, **options}`` (``network_g.gate``). ``temperature`` is
    ``network_g.gate_temperature``, the released gate's; other gates take their own options.

    Raises ValueError / KeyError naming ``network_g.gate`` for a malformed spec, an unknown name, a gate
    without a valid ``kind``, or ``gate_temperature`` set beside a gate it does not apply to."""
    malformed = f'{OPTION}: expected a gate name or a dict with "type", e.g. {{type: AdaptiveGate}}; got {spec!r}'
    cls, options = resolve(GATE_REGISTRY, RELEASED_GATE if spec is None else spec, OPTION, 'gate', malformed)
    name = cls.__name__
    if cls is Gate:
        options.setdefault('temperature', temperature)
    elif temperature != 3.0:
        raise ValueError(
            f'network_g.gate_temperature applies to the released gate only; {name} takes its own options '
            f'({OPTION}: {{type: {name}, ...}})'
        )
    if getattr(cls, 'kind', None) not in KINDS:
        kinds = ' or '.join(map(repr, KINDS))
        raise ValueError(f'{OPTION}: gate {name} declares no kind (class attribute "kind": {kinds})')
    return cls(channels, n_experts, **options)
