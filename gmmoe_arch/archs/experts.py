"""GM-MoE experts and the registry that YAMLs pick experts from (the gates are in :mod:`.gates`).

An expert maps ``(B, C, H, W) -> (B, C, H, W)`` and is built as ``Expert(channels, **kwargs)``.
Register your own (e.g. for deraining) from any package::

    from gmmoe_arch.archs.experts import EXPERT_REGISTRY

    @EXPERT_REGISTRY.register()
    class RainExpert(nn.Module):
        def __init__(self, channels): ...

and name it in the option YAML: ``network_g: {type: GMMoE, experts: [ColourExpert, RainExpert]}``.

The state-dict names the released network used for the experts at their released positions are in
:mod:`.released_layout`, which :data:`RELEASED_EXPERTS` (the default experts, in order) is read from.
"""

import torch
import torch.nn.functional as F
from basicsr.utils.registry import Registry
from torch import nn

from .fast_ops import (
    compute_dtype,
    conv,
    conv_add,
    conv_mul,
    fast_channel_mean_max,
    layer_norm_nchw,
    merge_parallel_convs,
    scaled_conv,
    sum_of_products,
)
from .fast_path import FastPath
from .pooling import GlobalMean, global_mean
from .released_layout import EXPERTS as RELEASED_LAYOUT
from .specs import resolve

EXPERT_REGISTRY = Registry('expert')

RELEASED_EXPERTS = tuple(e.expert for e in sorted(RELEASED_LAYOUT))  # ColourExpert, DetailExpert, FeatureExpert


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at each pixel of ``(B, C, H, W)`` (biased variance, affine)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + self.eps)
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


def simple_gate(x):
    """``(B, 2C, H, W) -> (B, C, H, W)``: product of the two channel halves."""
    a, b = x.chunk(2, dim=1)
    return a * b


def channel_mean_max(x):
    """``(B, C, H, W) -> (B, 2, H, W)``: per-pixel mean and max over channels."""
    return torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)


def pad_to_min_size(x, size):
    """Replicate-pad ``x`` on the right/bottom so both spatial sides are at least ``size``."""
    h, w = x.shape[-2:]
    if not torch.compiler.is_exporting() and h >= size and w >= size:
        return x
    # Exporting, the pad (possibly by zero) stays in the graph for every size: a branch on h, w would be
    # decided once, at the traced size; sym_max keeps the amounts symbolic (plain max on ints otherwise).
    return F.pad(x, (0, torch.sym_max(0, size - w), 0, torch.sym_max(0, size - h)), mode='replicate')


@EXPERT_REGISTRY.register()
class ColourExpert(FastPath, nn.Module):
    """Colour restoration expert (the paper's Net1, released ``Expert1``).

    A pooled, low-resolution colour map (1x1 reduce to C/4, 3x3 stride-2 unpadded conv, 7x7/3
    max-pool, three 3x3 convs) is resized back and, with a 1x1 skip, gates the input:
    ``u * sigmoid(conv4(up(v) + conv_f(p)))``.

    Small inputs: the released expert needs a map of at least 15 px (3x3/2 conv, then 7x7 pool).
    Below that, the reduced map (under 3 px) and the conv output (under 7 px) are replicate-padded
    to the sizes the layers need, so the pool takes the map's global maximum. Maps of 15 px or more
    are untouched, so this only changes sizes where the released network fails.
    """

    def __init__(self, channels):
        super().__init__()
        f = max(1, channels // 4)
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward_plain(self, u):
        p = self.conv1(u)
        q = self.conv2(pad_to_min_size(p, 3))
        v = F.max_pool2d(pad_to_min_size(q, 7), kernel_size=7, stride=3)
        v = F.relu(self.conv_max(v))
        v = F.relu(self.conv3(v))
        v = self.conv3_(v)
        v = F.interpolate(v, size=u.shape[-2:], mode='bilinear', align_corners=False)
        return u * torch.sigmoid(self.conv4(v + self.conv_f(p)))

    def forward_fast(self, u):
        """As :meth:`forward_plain`, overwriting its own intermediates where autograd allows."""
        w = self.fused(compute_dtype(u))
        p = conv(u, *w[self.conv1])
        q = F.conv2d(pad_to_min_size(p, 3), *w[self.conv2], stride=2)
        v = F.max_pool2d(pad_to_min_size(q, 7), kernel_size=7, stride=3)
        v = conv(v, *w[self.conv_max], padding=1, act='relu')
        v = conv(v, *w[self.conv3], padding=1, act='relu')
        v = F.interpolate(conv(v, *w[self.conv3_], padding=1), size=u.shape[-2:], mode='bilinear', align_corners=False)
        t = conv_add(p, *w[self.conv_f], v)
        return conv_mul(t, *w[self.conv4], u, act='sigmoid')


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: ``z * sigmoid(MLP(avgpool(z)))``, reduction 16 (keys ``conv_du.*``)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, z):
        return z * self.conv_du(global_mean(z))


class SpatialAttention(nn.Module):
    """``z * sigmoid(conv7x7([mean_c(z), max_c(z)]))`` (no bias)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, z):
        return z * torch.sigmoid(self.conv1(channel_mean_max(z)))


@EXPERT_REGISTRY.register()
class DetailExpert(FastPath, nn.Module):
    """Detail enhancement expert (the paper's Net2, released ``Expert2``).

    A small dense conv stack gives ``z`` with 2C channels; channel and spatial attention on ``z``
    are summed, projected back by a 1x1 conv and added to the input.
    """

    def __init__(self, channels):
        super().__init__()
        c, h = channels, channels // 2
        self.c1 = nn.Conv2d(c, c, 1)
        self.c2 = nn.Conv2d(c, h, 3, padding=1)
        self.c3 = nn.Conv2d(c, h, 3, padding=1)
        self.c4 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.c5 = nn.Conv2d(h, h, 3, padding=1)
        self.c6 = nn.Conv2d(2 * c, c, 1)
        self.se = ChannelAttention(2 * c)
        self.sa = SpatialAttention()

    def forward_plain(self, u):
        y1 = F.relu(self.c1(u))
        y2 = F.relu(self.c2(y1))
        y3 = F.relu(self.c3(y1))
        y4 = F.relu(self.c4(torch.cat([y1, y2, y3], dim=1)))
        y5 = self.c5(y3)
        z = torch.cat([y2, y5, y4], dim=1)
        return u + self.c6(self.se(z) + self.sa(z))

    def fused_params(self):
        """``c2`` and ``c3`` read the same ``y1``: one conv with both kernels gives ``[y2, y3]``.

        ``c4`` reads ``[y1, y2, y3]``: split by input channels into ``c4_y1`` and ``c4_y23`` (no bias),
        so that ``[y1, y2, y3]`` is never concatenated. ``c5`` reads ``y3``, the second half of
        ``[y2, y3]``: with grad, ``c5_y23`` (its kernel zero-padded over ``y2``'s channels) reads
        ``[y2, y3]`` whole, so neither ``y3`` nor its gradient is copied out of / into a strided
        slice (without grad the copy is cheaper than the zero half).
        """
        c = self.c1.out_channels
        c5 = self.c5.weight
        return {
            'c23': (torch.cat([self.c2.weight, self.c3.weight]), torch.cat([self.c2.bias, self.c3.bias])),
            'c4_y1': (self.c4.weight[:, :c].contiguous(), None),
            'c4_y23': (self.c4.weight[:, c:].contiguous(), self.c4.bias),
            'c5_y23': (torch.cat([torch.zeros_like(c5), c5], dim=1), self.c5.bias),
        }

    def forward_fast(self, u):
        """As :meth:`forward_plain` with ``c2``/``c3`` as one conv, ``c4`` split, attentions summed in place."""
        w = self.fused(compute_dtype(u))
        y1 = conv(u, *w[self.c1], act='relu')
        y23 = conv(y1, *w.c23, padding=1, act='relu')
        y4 = conv_add(y23, *w.c4_y23, conv(y1, *w.c4_y1, padding=1), padding=1, act='relu')
        h = self.c2.out_channels
        if torch.is_grad_enabled():  # the slice's copy and its gradient's copy cost more than the zeros
            y5 = conv(y23, *w.c5_y23, padding=1)
        else:
            y5 = conv(y23[:, h:], *w[self.c5], padding=1)
        z = torch.cat([y23[:, :h], y5, y4], dim=1)
        squeeze, excite = self.se.conv_du[0], self.se.conv_du[2]
        a_c = conv(conv(global_mean(z), *w[squeeze], act='relu'), *w[excite], act='sigmoid')
        a_s = conv(fast_channel_mean_max(z), *w[self.sa.conv1], padding=3, act='sigmoid')
        weight, bias = w[self.c6]
        if z.shape[0] == 1:  # c6(z * a_c + z * a_s) = (c6's kernel * a_c)(z) + a_s * (c6's kernel)(z)
            return conv_mul(z, weight, None, a_s, plus=conv_add(z, weight * a_c.reshape(1, -1, 1, 1), bias, u))
        return conv_add(sum_of_products(z, a_c, z, a_s), weight, bias, u)


@EXPERT_REGISTRY.register()
class FeatureExpert(FastPath, nn.Module):
    """High-level feature enhancement expert (the paper's Net3; inline in the released block).

    NAFNet-like: LayerNorm, parallel 1x1/3x3/5x5 convs summed, 1x1 expand to 2C, 3x3 depthwise,
    simple gate, simplified channel attention (``sca``), 1x1, residual scaled by ``beta``; then a
    LayerNorm/1x1/simple-gate/1x1 feed-forward with residual scaled by ``gamma``. ``beta`` and
    ``gamma`` start at zero, so a fresh expert is the identity.
    """

    def __init__(self, channels):
        super().__init__()
        c = channels
        self.norm1 = LayerNorm2d(c)
        self.conv11 = nn.Conv2d(c, c, 1)
        self.conv33 = nn.Conv2d(c, c, 3, padding=1)
        self.conv55 = nn.Conv2d(c, c, 5, padding=2)
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.sca = nn.Sequential(GlobalMean(), nn.Conv2d(c, c, 1))
        self.conv3 = nn.Conv2d(c, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward_plain(self, u):
        n = self.norm1(u)
        x = self.conv11(n) + self.conv33(n) + self.conv55(n)
        x = simple_gate(self.conv2(self.conv1(x)))
        x = self.conv3(x * self.sca(x))
        y = u + self.beta * x
        x = self.conv5(simple_gate(self.conv4(self.norm2(y))))
        return y + self.gamma * x

    def fused_params(self):
        """The 1x1/3x3/5x5 convs as one 5x5; ``beta`` folded into ``conv3``, ``gamma`` into ``conv5``."""
        return {
            'conv135': merge_parallel_convs(self.conv11, self.conv33, self.conv55),
            'conv3_beta': scaled_conv(self.conv3, self.beta),
            'conv5_gamma': scaled_conv(self.conv5, self.gamma),
        }

    def forward_fast(self, u):
        """As :meth:`forward_plain` with the merged/folded convs of :meth:`fused_params` and ``F.layer_norm``."""
        w = self.fused(compute_dtype(u))
        x = conv(layer_norm_nchw(u, self.norm1), *w.conv135, padding=2)
        x = conv(conv(x, *w[self.conv1]), *w[self.conv2], padding=1, groups=self.conv2.groups)
        x = simple_gate(x)
        pool, project = self.sca
        s = conv(pool(x), *w[project])
        weight, bias = w.conv3_beta
        if x.shape[0] == 1:  # conv3(x * s) with s folded into conv3's kernel
            y = conv_add(x, weight * s.reshape(1, -1, 1, 1), bias, u)
        else:
            y = conv_add(x * s, weight, bias, u)
        return conv_add(simple_gate(conv(layer_norm_nchw(y, self.norm2), *w[self.conv4])), *w.conv5_gamma, y)


def build_expert(spec, channels):
    """Build an expert from a registry name or a ``{type: Name, **kwargs}`` dict."""
    malformed = f'network_g.experts: each entry must be an expert name or a dict with "type", got {spec!r}'
    cls, kwargs = resolve(EXPERT_REGISTRY, spec, 'network_g.experts', 'expert', malformed)
    return cls(channels, **kwargs)
