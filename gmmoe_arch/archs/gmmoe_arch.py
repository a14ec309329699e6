"""GM-MoE: a U-Net of gated mixture-of-experts blocks for low-light enhancement (arXiv 2503.07417).

The network computes what the released GM-MoE computes and loads its checkpoints under
``strict_load_g: true``. Two presets (see :data:`PRESETS`):

* ``paper``: width 24, one block per level: 19,933,185 parameters (the paper's 19.99M counts
  the released checkpoints' unused ``conv6`` weights too: 19,988,835).
* ``released``: width 48, enc [2, 2, 4, 8], middle 12, dec [2, 2, 2, 2], the released option
  files' configuration: 690,110,505 parameters (690,851,505 with ``conv6``).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional, Union

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from ..options import is_integer, is_number
from ..registry import register
from . import released_layout, routing
from .experts import RELEASED_EXPERTS, build_expert, channel_mean_max
from .fast_ops import (
    channel_max,
    channel_mean,
    compute_dtype,
    conv,
    conv_mul,
    dilated_depthwise,
    sum_of_products,
    upsample_add,
    weighted_sum,
)
from .fast_path import FastPath, PathSwitch, uses_fast_path
from .gates import Gate, build_gate
from .pooling import hooks_active

CHECKPOINT_LEVELS = {False: None, True: 'block', 'block': 'block', 'expert': 'expert'}

PRESETS = {
    'paper': dict(width=24, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
    'released': dict(width=48, enc_blk_nums=[2, 2, 4, 8], middle_blk_num=12, dec_blk_nums=[2, 2, 2, 2]),
}


def maybe_checkpoint(module, x, enabled):
    """``module(x)``, recomputed in the backward pass instead of kept if ``enabled`` in training with grad."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint_fn(module, x, use_reentrant=False)
    return module(x)


def take_images(x, index):
    """The images ``index`` (1-D long tensor) of ``x`` ``(B, C, H, W)``, in ``x``'s layout (channels-last
    stays channels-last: the fast path's convs expect it)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return x.index_select(0, index)


def add_expert_output(total, u, weight, out, index, in_place):
    """``total`` plus ``weight * out`` on the images ``index`` (None: all) of the block input ``u``.

    ``weight``: the expert's weights on the images of ``out`` ``(b, C, H, W)``, broadcastable onto it
    (:func:`.routing.expert_factor`: ``(b, 1, 1, 1)`` or ``(b, 1, H, W)``); ``total``: None for the first
    expert run (then a new tensor is returned) or what this function returned before, which ``in_place``
    (the fast path) without grad accumulates into. Under autocast experts may return different dtypes:
    the sum takes the promoted one, as the dense sum does.
    """
    term = weight * out
    if total is None:
        return term if index is None else torch.zeros_like(u, dtype=term.dtype).index_add_(0, index, term)
    dtype = torch.promote_types(total.dtype, term.dtype)
    if in_place and not torch.is_grad_enabled() and total.dtype == dtype:
        return total.add_(term) if index is None else total.index_add_(0, index, term)
    total, term = total.to(dtype), term.to(dtype)
    return total + term if index is None else total.index_add(0, index, term)


class SFEB(FastPath, nn.Module):
    """Shallow feature extraction block (released ``MSFEblock``): ``(B, C, H, W) -> (B, C, H, W)``.

    A 5x5 depthwise conv (``a1``) and a dilated 7x7 depthwise conv on it (``a2``, dilation 3) are
    reduced to C/2 channels each; a 7x7 conv over their per-pixel channel mean and max yields two
    sigmoid maps that weight them; the 1x1-projected sum multiplies the input.
    """

    def __init__(self, channels):
        super().__init__()
        d, h = channels, channels // 2
        self.conv0 = nn.Conv2d(d, d, 5, padding=2, groups=d)
        self.conv_spatial = nn.Conv2d(d, d, 7, padding=9, groups=d, dilation=3)
        self.conv1 = nn.Conv2d(d, h, 1)
        self.conv2 = nn.Conv2d(d, h, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(h, d, 1)

    def forward_plain(self, x):
        a1 = self.conv0(x)
        a2 = self.conv_spatial(a1)
        b1, b2 = self.conv1(a1), self.conv2(a2)
        s = torch.sigmoid(self.conv_squeeze(channel_mean_max(torch.cat([b1, b2], dim=1))))
        return x * self.conv(b1 * s[:, 0:1] + b2 * s[:, 1:2])

    def forward_fast(self, x):
        """As :meth:`forward_plain`: the dilated conv as an undilated one over phase sub-grids, and the
        channel mean/max of ``[b1, b2]`` taken without concatenating."""
        w = self.fused(compute_dtype(x))
        a1 = conv(x, *w[self.conv0], padding=2, groups=self.conv0.groups)
        a2 = dilated_depthwise(a1, *w[self.conv_spatial], self.conv_spatial.dilation[0])
        b1, b2 = conv(a1, *w[self.conv1]), conv(a2, *w[self.conv2])
        mean = (channel_mean(b1) + channel_mean(b2)) / 2
        peak = torch.maximum(channel_max(b1), channel_max(b2))
        s = conv(torch.cat([mean, peak], dim=1), *w[self.conv_squeeze], padding=3, act='sigmoid')
        return conv_mul(sum_of_products(b1, s[:, 0:1], b2, s[:, 1:2]), *w[self.conv], x)


class ExpertBlock(PathSwitch, nn.Module):
    """Gated mixture of experts: ``sum_i gate(u)[:, i] * expert_i(u)``, ``(B, C, H, W)`` in and out.

    The gate (``network_g.gate``, :mod:`.gates`; default the released one) gives per-image ``(B, n)`` or
    per-pixel ``(B, n, H, W)`` weights, read through :mod:`.routing`. With ``top_k`` (GMMoE's ``gate_top_k``)
    each image (per-pixel gate: each pixel) mixes only ``k`` of the experts, picked from the gate's dense
    weights by :meth:`route` (the gate itself, and so :func:`record_gates`, stays dense), and an expert that
    no image (pixel of an image) picked is not computed for it (see :meth:`forward`).

    State-dict names follow the released checkpoints (the table in :mod:`.released_layout`): an expert
    at its released position (colour 0, detail 1, feature 2) is saved as ``Expert1.*`` / ``Expert2.*`` /
    directly under the block, the released gate as ``GateNetwork.*``; other experts keep ``experts.<i>.*``,
    other gates ``gate.*``.
    Loading also accepts (and drops) the released ``conv6`` weights, which the released forward never used.
    """

    def __init__(
        self,
        channels,
        experts=RELEASED_EXPERTS,
        gate_temperature=3.0,
        checkpoint_experts=False,
        top_k=None,
        gate=None,
        shared=(),
        shared_weight=0.5,
        noise=routing.GUMBEL,
        noise_std=1.0,
    ):
        super().__init__()
        if not experts:
            raise ValueError('network_g.experts: at least one expert is needed')
        self.channels = channels
        self.experts = nn.ModuleList(build_expert(spec, channels) for spec in experts)
        self.shared = nn.ModuleList(build_expert(spec, channels) for spec in shared)  # saved as ``shared.<j>.*``
        self.shared_weight = float(shared_weight)
        self.gate = build_gate(gate, channels, len(self.experts), gate_temperature)
        names = [type(e).__name__ for e in self.experts]
        self._released = released_layout.saved_prefixes(names, released_gate=type(self.gate) is Gate)
        self.register_state_dict_post_hook(ExpertBlock._to_released_names)
        self.register_load_state_dict_pre_hook(ExpertBlock._from_released_names)
        self.checkpoint_experts = checkpoint_experts  # GMMoE's ``checkpoint: expert``
        self.top_k = top_k  # GMMoE's ``gate_top_k`` (checked there); None: dense
        self.noise, self.noise_std = noise, float(noise_std)  # GMMoE's ``gate_noise`` (checked there)
        self.load_sink = None  # (dict, key) while :func:`record_loads` records: route() leaves its picks there

    def expert(self, i, u):
        """Expert ``i`` on ``u``, checkpointed on its own under ``checkpoint: expert``."""
        return maybe_checkpoint(self.experts[i], u, self.checkpoint_experts)

    def forward(self, u):
        """``(B, C, H, W) -> (B, C, H, W)``: the gate, then the experts one after another (only the sum
        and one expert's output alive at a time); the two paths differ only in that the fast one
        accumulates the sum in place (into a buffer it allocated itself).

        Top-k: expert ``i`` runs once, on the images that picked it (per-pixel gate: at any pixel; ``u``
        itself when all did, else those images gathered), and its weighted output is added to theirs (zero
        weight at the pixels that did not pick it); an expert no image picked is not called. Exception:
        while a :func:`.pooling.pooling_hook` is active (the tiled enhancer's statistics, which number the
        global means in call order), every expert runs on every image, so that each tile pools the same
        sites whichever experts it picked; only the picked ones enter the output.

        Shared experts (``network_g.shared_experts``) run on every image after the routed ones: the output
        is ``(1 - s) * routed mix + s * mean of the shared experts``, ``s`` = ``shared_weight`` (see
        :meth:`mix_shared`); without shared experts nothing of this runs.
        """
        in_place = self.takes_fast_path(u)
        total = self.routed_mix(u, in_place)
        return self.mix_shared(total, u, in_place) if len(self.shared) else total

    def routed_mix(self, u, in_place):
        """The gate's mix of the routed experts on ``u`` (dense, or top-k as :meth:`forward` describes)."""
        weights = self.gate(u)
        if self.top_k is None:
            return weighted_sum(weights, (self.expert(i, u) for i in range(len(self.experts))), in_place)
        chosen, mix = self.route(weights)
        sparse = routing.scatter_picks(weights, chosen, mix)  # zero for experts not picked
        if hooks_active():
            return weighted_sum(sparse, (self.expert(i, u) for i in range(len(self.experts))), in_place)
        used = routing.used_experts(chosen, len(self.experts))
        total = None
        for i in range(len(self.experts)):
            rows = [b for b, row in enumerate(used) if row[i]]
            if len(rows) == len(used):
                total = add_expert_output(total, u, routing.expert_factor(sparse, i), self.expert(i, u), None, in_place)
            elif rows:
                index = torch.tensor(rows, device=u.device)
                out = self.expert(i, take_images(u, index))
                factor = routing.expert_factor(sparse.index_select(0, index), i)
                total = add_expert_output(total, u, factor, out, index, in_place)
        return total

    def mix_shared(self, routed, u, in_place):
        """``(1 - s) * routed + (s / S) * sum_j shared_j(u)``: a convex mix, whatever ``k``, of the routed
        experts' mix and the ``S`` shared experts, each run on every image."""
        total = add_expert_output(None, u, 1 - self.shared_weight, routed, None, in_place)
        share = self.shared_weight / len(self.shared)
        for expert in self.shared:
            total = add_expert_output(
                total, u, share, maybe_checkpoint(expert, u, self.checkpoint_experts), None, in_place
            )
        return total

    def route(self, weights):
        """The experts each image (per-pixel gate: each pixel) runs and their weights: :func:`.routing.top_k`
        of the dense gate weights, sampled in training (train mode with grad, noise ``gate_noise``), the ``k``
        largest otherwise. While :func:`record_loads` records, a sampled route also leaves the experts' pick
        probabilities (:func:`.routing.pick_probability`) for the load loss."""
        sampling = self.training and torch.is_grad_enabled()
        if not sampling:
            return routing.top_k(weights, self.top_k, False)
        scores = routing.noisy_scores(weights, self.noise, self.noise_std)
        if self.load_sink is not None:
            sink, key = self.load_sink
            sink[key] = (weights, scores, self.top_k, self.noise, self.noise_std)  # computed by record_loads
        return routing.pick(weights, scores, self.top_k, True)

    def _to_released_names(self, state_dict, prefix, local_metadata):
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            for ours, theirs in self._released.items():
                if rest.startswith(ours):
                    state_dict[prefix + theirs + rest[len(ours) :]] = state_dict.pop(key)
                    break

    def _from_released_names(self, state_dict, prefix, *args):
        inline = [ours for ours, theirs in self._released.items() if theirs == '']
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            if rest.startswith(released_layout.UNUSED):
                del state_dict[key]
                continue
            if rest.startswith((released_layout.OWN_EXPERTS, released_layout.OWN_GATE, released_layout.SHARED)):
                continue
            for ours, theirs in self._released.items():
                if theirs and rest.startswith(theirs):
                    state_dict[prefix + ours + rest[len(theirs) :]] = state_dict.pop(key)
                    break
            else:
                if inline:
                    state_dict[prefix + inline[0] + rest] = state_dict.pop(key)


def parse_shared(shared_experts, shared_weight):
    """``network_g.shared_experts`` as a list of expert specs (names or dicts, as ``experts``), checked with
    ``shared_weight``; ValueError naming the option."""
    if shared_experts is None:
        shared_experts = []
    if not isinstance(shared_experts, (list, tuple)):
        raise ValueError(
            f'network_g.shared_experts: expected a list of expert names or {{type: Name, ...}} dicts, '
            f'e.g. [FeatureExpert]; got {shared_experts!r}'
        )
    if not (is_number(shared_weight) and 0 < shared_weight < 1):
        raise ValueError(f'network_g.shared_weight must be a number between 0 and 1 (exclusive), got {shared_weight!r}')
    return list(shared_experts)


def parse_noise(spec):
    """``network_g.gate_noise`` -> ``(noise, std)``: ``gumbel`` (default), ``gaussian``, ``none``, or
    ``{type: gaussian, std: s}``; ValueError naming the option."""
    options = dict(spec) if isinstance(spec, dict) else {'type': spec}
    noise, std = options.pop('type', None), options.pop('std', 1.0)
    if noise not in routing.NOISES or options or not (is_number(std) and std > 0):
        raise ValueError(
            f'network_g.gate_noise: expected {", ".join(routing.NOISES)} or {{type: gaussian, std: 1.0}} '
            f'(std > 0), got {spec!r}'
        )
    return noise, float(std)


@register(ARCH_REGISTRY)
class GMMoE(nn.Module):
    """GM-MoE U-Net: ``(B, img_channel, H, W) -> (B, img_channel, H, W)``, any ``H, W >= 1``.

    ``intro`` 3x3 conv, :class:`SFEB`, ``len(enc_blk_nums)`` encoder levels of expert blocks each
    followed by a 2x2 stride-2 conv doubling channels, ``middle_blk_num`` blocks, decoder levels of
    1x1 conv + PixelShuffle(2) plus the skip and expert blocks, ``ending`` 3x3 conv, plus the input.

    The input is zero-padded right/bottom to a multiple of ``2**levels`` and the output cropped
    back, as released. Sizes the released network cannot take (padded side under ``15 * 2**levels``,
    e.g. 240 px for 4 levels) run as well: only the colour expert's pooled branch differs there,
    taking the global maximum of maps too small for its 7x7 pool (see :class:`ColourExpert`).

    Fast path: the same function, computed on channels-last activations with merged/folded convs
    (see :mod:`gmmoe_arch.archs.fast_ops`); without grad, intermediates it allocated itself are
    overwritten in place (never a block's input, which every expert reads) and the derived weights
    are cached (``eval()`` builds them, ``train()`` drops them). It applies to the built-in SFEB,
    expert blocks and experts; other registered experts run their own ``forward``. Every global
    average pool (gates, channel attentions) goes through :func:`.pooling.global_mean` on both
    paths. ``fast='auto'`` (the default) uses it for CPU inputs, where it is measured faster,
    and the straightforward path on GPUs, where it is not (a batch-1 forward is bound by kernel
    launches; training steps were 0.81-0.89x on an H100); ``True``/``False`` (or :meth:`set_fast`)
    force one path. State dicts are the same either way.

    Args:
        img_channel (int): image channels. width (int): channels at full resolution.
        enc_blk_nums, dec_blk_nums (list[int]): expert blocks per encoder / decoder level.
        middle_blk_num (int): expert blocks at the lowest resolution.
        experts (list): expert names or ``{type: Name, **kwargs}`` dicts from ``EXPERT_REGISTRY``
            (default: the released colour, detail and feature experts, in that order).
        gate_temperature (float): softmax temperature of the released gate (released: 3).
        gate (str | dict | None): every block's gate, a name or ``{type: Name, **options}`` from
            ``GATE_REGISTRY`` (:mod:`.gates`: ``Gate``, ``AdaptiveGate``, ``SpatialGate``, or your own);
            None (default): the released gate, saved as ``GateNetwork.*``.
        preset (str | None): ``'paper'`` or ``'released'`` fills the size arguments left unset.
        fast (bool | str): ``'auto'`` (default): the fast path on CPU, the straightforward one elsewhere;
            ``true`` / ``false``: always the fast / the straightforward path.
        checkpoint (bool | str): activation checkpointing in training with grad (``torch.utils.checkpoint``):
            ``true`` or ``'block'`` recomputes the SFEB and each expert block in the backward pass
            instead of keeping their activations; ``'expert'`` also recomputes each expert on its
            own inside a recomputed block (least memory, most time). ``false``: off.
        gate_top_k (int | None): each image runs only its ``k`` highest-weighted experts in every block,
            their weights renormalised (see :meth:`ExpertBlock.forward` and :meth:`ExpertBlock.route`;
            in training the ``k`` are sampled, and DDP needs ``find_unused_parameters``, which
            ``GMMoEModel`` sets);
            None (default): every expert, as released. Same parameters either way.
        gate_noise (str | dict): the noise of the top-k picks in training (:func:`.routing.top_k`): ``gumbel``
            (default: sampled in proportion to the weights), ``gaussian`` or ``{type: gaussian, std: s}``
            (Shazeer et al.'s noisy top-k, fixed std, default 1), ``none`` (the ``k`` largest, as at inference).
        shared_experts (list): experts (names or dicts, as ``experts``) that every image runs in every block
            beside the routed ones, saved as ``shared.<j>.*``; default none (no extra op).
        shared_weight (float): their share of the block's output, ``(1 - s) * routed mix + s * mean of the
            shared`` (default 0.5; see :meth:`ExpertBlock.mix_shared`).
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: Optional[int] = None,
        middle_blk_num: Optional[int] = None,
        enc_blk_nums: Optional[Sequence[int]] = None,
        dec_blk_nums: Optional[Sequence[int]] = None,
        experts: Sequence[Union[str, dict]] = RELEASED_EXPERTS,
        gate_temperature: float = 3.0,
        preset: Optional[str] = None,
        fast: Union[bool, str] = 'auto',
        checkpoint: Union[bool, str] = False,
        gate_top_k: Optional[int] = None,
        gate: Union[str, dict, None] = None,
        shared_experts: Sequence[Union[str, dict]] = (),
        shared_weight: float = 0.5,
        gate_noise: Union[str, dict] = routing.GUMBEL,
    ) -> None:
        super().__init__()
        if not any(checkpoint is k or (isinstance(k, str) and checkpoint == k) for k in CHECKPOINT_LEVELS):
            raise ValueError(f'network_g.checkpoint must be false, true, block or expert, got {checkpoint!r}')
        size = dict(width=width, middle_blk_num=middle_blk_num, enc_blk_nums=enc_blk_nums, dec_blk_nums=dec_blk_nums)
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f'network_g.preset: unknown preset "{preset}"; choose from {", ".join(PRESETS)}')
            size = {k: PRESETS[preset][k] if v is None else v for k, v in size.items()}
        missing = [k for k, v in size.items() if v is None]
        if missing:
            raise ValueError(f'network_g: set {", ".join(missing)} or a preset ({", ".join(PRESETS)})')
        width, enc_blk_nums, dec_blk_nums = size['width'], list(size['enc_blk_nums']), list(size['dec_blk_nums'])
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(
                f'network_g: enc_blk_nums {enc_blk_nums} and dec_blk_nums {dec_blk_nums} need the same number of levels'
            )

        self.checkpoint = CHECKPOINT_LEVELS[checkpoint]
        shared = parse_shared(shared_experts, shared_weight)
        noise, noise_std = parse_noise(gate_noise)

        def blocks(channels, n):
            return nn.Sequential(
                *[
                    ExpertBlock(
                        channels,
                        experts,
                        gate_temperature,
                        self.checkpoint == 'expert',
                        gate=gate,
                        shared=shared,
                        shared_weight=shared_weight,
                        noise=noise,
                        noise_std=noise_std,
                    )
                    for _ in range(n)
                ]
            )

        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.MSFEblock = SFEB(width)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        c = width
        for n in enc_blk_nums:
            self.encoders.append(blocks(c, n))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle_blks = blocks(c, size['middle_blk_num'])
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(blocks(c, n))
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.padder_size = 2 ** len(enc_blk_nums)
        self.set_fast(fast)
        self.set_gate_top_k(gate_top_k)

    def set_gate_top_k(self, k):
        """Route every expert block to each image's ``k`` highest-weighted experts (None: all, dense);
        returns self. The same weights serve any ``k``: a network trained dense runs top-k as it is."""
        n = len(expert_names(self))
        if k is not None and (not is_integer(k) or not 1 <= k <= n):
            raise ValueError(f'network_g.gate_top_k must be null or an integer from 1 to {n} (the experts), got {k!r}')
        self.gate_top_k = k
        for module in self.modules():
            if isinstance(module, ExpertBlock):
                module.top_k = k
        return self

    def set_gate_temperature(self, temperature):
        """Set the softmax temperature of every block's gate (the released :class:`.gates.Gate`'s
        ``temperature``; ``train.gate_schedule``); returns self. ValueError for gates without a fixed one."""
        for module in self.modules():
            if isinstance(module, ExpertBlock):
                if not isinstance(getattr(module.gate, 'temperature', None), float):
                    raise ValueError(
                        f'train.gate_schedule.temperature: the gate {type(module.gate).__name__} has no fixed '
                        'temperature (only the released Gate has; others learn theirs)'
                    )
                module.gate.temperature = float(temperature)
        return self

    def set_fast(self, enabled=True):
        """Switch every built-in block to the fast path (``True``), the straightforward one (``False``)
        or the fast one for CPU inputs only (``'auto'``); returns self.

        Parameters keep their layout (contiguous, as DDP's gradient buckets expect); the fast path
        reads channels-last copies from its derived weights.
        """
        if enabled is not True and enabled is not False and enabled != 'auto':
            raise ValueError(f'network_g.fast must be true, false or auto, got {enabled!r}')
        self.fast = enabled
        for module in self.modules():
            if isinstance(module, PathSwitch):
                module.fast = enabled
        return self

    def fuse(self):
        """Build the fast path's derived weights now (else built on the first no-grad forward); returns self.

        Under ``fast='auto'`` with the parameters off the CPU nothing is built (that path is not taken).
        """
        device = next(self.parameters()).device
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, FastPath) and uses_fast_path(module.fast, device):
                    module.fused()
        return self

    def train(self, mode=True):
        """As ``nn.Module.train``; drops the fast path's cached weights, and ``eval()`` rebuilds them."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, FastPath):
                module.clear_fused()
        return self if mode else self.fuse()

    def _blocks(self, blocks, x):
        for block in blocks:
            x = maybe_checkpoint(block, x, self.checkpoint is not None)
        return x

    def forward(self, inp: Tensor) -> Tensor:
        """``(B, img_channel, H, W) -> (B, img_channel, H, W)``."""
        h, w = inp.shape[-2:]
        m = self.padder_size
        fast = uses_fast_path(self.fast, inp.device)
        if fast:
            inp = inp.contiguous(memory_format=torch.channels_last)
        inp = F.pad(inp, (0, (m - w % m) % m, 0, (m - h % m) % m))
        x = maybe_checkpoint(self.MSFEblock, self.intro(inp), self.checkpoint is not None)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = self._blocks(encoder, x)
            skips.append(x)
            x = down(x)
        x = self._blocks(self.middle_blks, x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            if fast:  # the 1x1 kernel's gradient kept contiguous (see contiguous_grad)
                x = upsample_add(x, up[0].weight, skip, up[1].upscale_factor)
            else:
                x = up(x) + skip
            x = self._blocks(decoder, x)
        out = (self.ending(x) + inp)[..., :h, :w]
        return out.contiguous() if fast else out


@register(ARCH_REGISTRY)
class OURNet24(GMMoE):
    """The released option files' type name for :class:`GMMoE` (same arguments, same network)."""


def activate_branches(net, std=0.5, norm_jitter=0.0):
    """Draw every ``beta``/``gamma`` (zero at initialisation, which makes a fresh feature expert the
    identity) from N(0, std^2), so every expert branch matters; with ``norm_jitter``, also add
    N(0, norm_jitter^2) noise to the LayerNorm affine parameters. For tests and benchmarks of
    untrained networks; returns ``net``."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(('beta', 'gamma')):
                p.normal_(0, std)
            elif norm_jitter and '.norm' in name:
                p.add_(torch.randn_like(p), alpha=norm_jitter)
    return net


def expert_names(net):
    """Class names of the experts of ``net``'s first expert block (every block has the same experts)."""
    return next(([type(e).__name__ for e in m.experts] for m in net.modules() if isinstance(m, ExpertBlock)), [])


@contextmanager
def record_loads(net: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record every top-k block's smooth load during training forward passes (Shazeer et al.'s load loss).

    ``with record_loads(net) as loads: net(x)`` leaves ``loads[path]`` = the ``(B, n_experts)`` (per-pixel
    gates: ``(B, n_experts, H, W)``) probabilities that each expert is picked under the block's noise
    (:func:`.routing.pick_probability`), attached to the graph, for the blocks that routed top-k with sampling
    (train mode with grad); keyed as :func:`record_gates` keys the gates. The blocks leave their weights and
    noisy scores; the probabilities are computed when the ``with`` block ends (so read ``loads`` after it), outside
    the blocks, which keeps activation checkpointing's recomputation identical to the forward.
    """
    loads, picks = {}, {}
    bare = net.module if isinstance(getattr(net, 'module', None), nn.Module) else net
    blocks = [(path, m) for path, m in bare.named_modules() if isinstance(m, ExpertBlock)]
    for path, module in blocks:
        module.load_sink = (picks, path)
    try:
        yield loads
    finally:
        for _, module in blocks:
            module.load_sink = None
    # after the forward, outside any checkpointed block: a recomputed block then saves what it saved the first time
    loads.update((path, routing.pick_probability(*pick)) for path, pick in picks.items())


@contextmanager
def record_gates(net: nn.Module, keep_grad: bool = False) -> Iterator[dict[str, Tensor]]:
    """Record every expert block's gate weights during forward passes.

    ``with record_gates(net) as gates: net(x)`` leaves ``gates[path]`` = the ``(B, n_experts)`` (per-pixel
    gates: ``(B, n_experts, H, W)``, see :mod:`.routing`) weights of the last forward (dense: before any
    top-k selection), keyed by the block's state-dict prefix (``encoders.0.0``, ``middle_blks.0``,
    ``decoders.3.0``; a DDP/DataParallel wrapper's ``module.`` is left out). ``keep_grad=True`` keeps them
    attached to the graph, for losses on the gate (gate supervision, load balancing); else they are detached.
    """
    gates, handles = {}, []
    bare = net.module if isinstance(getattr(net, 'module', None), nn.Module) else net
    for path, module in bare.named_modules():
        if isinstance(module, ExpertBlock):

            def hook(_module, _inputs, weights, path=path):
                gates[path] = weights if keep_grad else weights.detach()

            handles.append(module.gate.register_forward_hook(hook))
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()
