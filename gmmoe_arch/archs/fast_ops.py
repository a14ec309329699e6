"""Exact rewrites behind GM-MoE's fast path.

Every function here computes what the straightforward layers compute, up to float rounding:

* :func:`layer_norm_nchw`: per-pixel LayerNorm as one ``F.layer_norm`` call on the NHWC view of a
  channels-last tensor (no copy), instead of five element-wise passes.
* :func:`merge_parallel_convs`: parallel stride-1 "same" convs of odd sizes that read one input and
  are summed equal one conv whose kernel is their zero-padded kernels summed (1x1 + 3x3 + 5x5 ->
  one 5x5: one pass over the input and 13% fewer multiply-adds).
* :func:`scaled_conv`: a per-channel scale after a conv (``beta``, ``gamma``) folded into the conv.
* :func:`channel_mean`: the per-pixel channel mean as a 1x1 conv; :func:`channel_max`: a
  reduction faster than torch's on CPU (bf16 especially); global means are :mod:`.pooling`'s.
* :func:`dilated_depthwise`: a dilated depthwise conv as an undilated one over the phase sub-grids.
* :func:`conv`, :func:`conv_add`, :func:`conv_mul`: on CPU without grad, a conv and the
  ReLU/sigmoid, residual addition or product after it as one oneDNN call (the post-op fusion
  ``torch.compile`` uses) or as an in-place pass over the conv's own output.

No function here writes into a tensor it was given: without grad, the in-place passes
(:func:`_add_into`, :func:`_mul_into`) write only into tensors allocated in the same function
(a conv's output, a product), so an input that several experts read stays as it was.
"""

import torch
import torch.nn.functional as F

from .cpu_kernels import cpu_kernels_apply
from .routing import expert_factor
from .torch_private import onednn_conv, onednn_conv_add


def layer_norm_nchw(x, norm):
    """LayerNorm over the channels of ``(B, C, H, W)`` ``x`` with the affine/eps of ``norm``.

    Returns ``(B, C, H, W)`` of ``x``'s dtype in channels-last memory (an NCHW input is copied once).
    """
    nhwc = x.permute(0, 2, 3, 1)
    if nhwc.dtype in (torch.bfloat16, torch.float16) and cpu_kernels_apply(x, channels_last=False):
        # CPU's half-precision LayerNorm is slower than a float32 one plus two casts
        y = F.layer_norm(nhwc.float(), (x.shape[1],), norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)
    else:
        y = F.layer_norm(nhwc, (x.shape[1],), norm.weight, norm.bias, norm.eps)
    return y.permute(0, 3, 1, 2)


def merge_parallel_convs(*convs):
    """``(weight, bias)`` of one conv equal to ``sum(conv(x) for conv in convs)``.

    The convs must be stride 1, dilation 1, ungrouped, odd square kernels with ``padding = k // 2``
    and biases; the result has the largest kernel, shape ``(C_out, C_in, k, k)``.
    """
    k = max(conv.kernel_size[0] for conv in convs)
    weight = sum(F.pad(conv.weight, [(k - conv.kernel_size[0]) // 2] * 4) for conv in convs)
    bias = sum(conv.bias for conv in convs)
    return weight, bias


def _onednn_dtype(x, weight):
    """The dtype a fused oneDNN conv of ``x`` would run in, or None where it does not apply.

    It applies where the CPU inference kernels do (:func:`.cpu_kernels.cpu_kernels_apply`: channels-last
    on CPU, no grad, not compiling), to fp32 inputs or to bf16 under autocast, as ``F.conv2d`` would run.
    """
    if not cpu_kernels_apply(x):
        return None
    dtype = compute_dtype(x) or x.dtype
    if dtype not in (torch.float32, torch.bfloat16) or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    return dtype


def conv(x, weight, bias, padding=0, act=None, groups=1, dilation=1):
    """``act(F.conv2d(x, weight, bias, padding=padding, groups=groups, dilation=dilation))``, ``act``
    None, ``'relu'`` or ``'sigmoid'``.

    On CPU without grad, one oneDNN call applies the activation as the conv writes its output.
    """
    dtype = _onednn_dtype(x, weight)
    if dtype is not None:
        return onednn_conv(
            x.to(dtype),
            weight.to(dtype),
            None if bias is None else bias.to(dtype),
            [padding, padding],
            [1, 1],
            [dilation, dilation],
            groups,
            act or 'none',
            [],
            '',
        )
    y = F.conv2d(x, weight, bias, padding=padding, groups=groups, dilation=dilation)
    if act == 'relu':
        return F.relu(y, inplace=True)
    return y.sigmoid_() if act == 'sigmoid' else y


def conv_add(x, weight, bias, other, padding=0, act=None):
    """``act(F.conv2d(x, weight, bias, padding=padding) + other)``, ``other`` shaped like the conv's
    output, ``act`` None or ``'relu'``.

    On CPU without grad, one oneDNN call adds ``other`` (and applies ``act``) as the conv writes its output.
    """
    dtype = _onednn_dtype(x, weight)
    if dtype is not None and other.dtype == dtype and other.is_contiguous(memory_format=torch.channels_last):
        return onednn_conv_add(
            x.to(dtype),
            other,
            weight.to(dtype),
            None if bias is None else bias.to(dtype),
            [padding, padding],
            [1, 1],
            [1, 1],
            1,
            'add',
            None,
            act,
            [],
            None,
        )
    y = _add_into(F.conv2d(x, weight, bias, padding=padding), other)
    return F.relu(y, inplace=not torch.is_grad_enabled()) if act == 'relu' else y


def conv_mul(x, weight, bias, times, plus=None, padding=0, act=None):
    """``act(F.conv2d(x, weight, bias, padding=padding)) * times (+ plus)``, ``times`` and ``plus``
    broadcastable to the conv's output, ``act`` as in :func:`conv`.

    Without grad the product (and sum) is written into the conv's output, one pass.
    """
    return _mul_into(conv(x, weight, bias, padding=padding, act=act), times, plus)


def sum_of_products(a, x, b, y):
    """``a * x + b * y`` (broadcasting); without grad the second product is added into the first."""
    first = a * x
    return first.addcmul_(b, y) if _writable(first, b, y) else first + b * y


def upsample_add(x, weight, skip, upscale=2):
    """``pixel_shuffle(F.conv2d(x, weight), upscale) + skip`` (a bias-free 1x1 conv, as the decoder's
    ``ups``), the kernel's gradient kept contiguous; without grad the sum is written into the shuffled map."""
    return _add_into(F.pixel_shuffle(F.conv2d(x, contiguous_grad(weight)), upscale), skip)


def channel_mean(x):
    """``(B, C, H, W) -> (B, 1, H, W)`` channel mean as a 1x1 conv (oneDNN beats the channel reduction)."""
    c = x.shape[1]
    return F.conv2d(x, x.new_full((1, c, 1, 1), 1 / c))


def channel_max(x):
    """``(B, C, H, W) -> (B, 1, H, W)`` channel max; in bf16/fp16 on CPU without grad, halving ``C``
    with element-wise maxima first (the half-precision channel reduction is 2x slower).

    With grad, ``torch.max`` with indices: its backward scatters each gradient to the arg-max
    channel, where ``amax``'s backward compares, counts ties and divides (4 full passes, ~2x the
    time). The two differ only at exact ties between channels.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.max(x, 1, keepdim=True)[0]
    if x.dtype in (torch.bfloat16, torch.float16) and cpu_kernels_apply(x):
        while x.shape[1] % 2 == 0 and x.shape[1] > 8:
            h = x.shape[1] // 2
            x = torch.maximum(x[:, :h], x[:, h:])
    return x.amax(1, keepdim=True)


def fast_channel_mean_max(x):
    """``(B, C, H, W) -> (B, 2, H, W)``: per-pixel channel mean (as a conv) and max."""
    return torch.cat([channel_mean(x), channel_max(x)], dim=1)


def dilated_depthwise(x, weight, bias, dilation):
    """Depthwise ``F.conv2d(x, weight, bias, padding=dilation * (k // 2), dilation=dilation, groups=C)``.

    Computed as an undilated conv: the ``dilation**2`` phase sub-grids of ``x`` (every ``dilation``-th
    row/column from each offset, ``x`` zero-padded to a multiple of ``dilation``) go through the
    ``k x k`` conv as a batch, and are interleaved back. oneDNN's dilated depthwise kernel is slow
    (in bf16 5x slower than this). ``(B, C, H, W)`` in, ``(B, C, H, W)`` out, channels-last.
    """
    b, c, h, w = x.shape
    d = dilation
    ph, pw = (-h) % d, (-w) % d
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    gh, gw = (h + ph) // d, (w + pw) // d
    nhwc = x.permute(0, 2, 3, 1).reshape(b, gh, d, gw, d, c)
    phases = nhwc.permute(2, 4, 0, 1, 3, 5).reshape(d * d * b, gh, gw, c).permute(0, 3, 1, 2)
    y = conv(phases, weight, bias, padding=weight.shape[-1] // 2, groups=c)
    y = y.permute(0, 2, 3, 1).reshape(d, d, b, gh, gw, c).permute(2, 3, 0, 4, 1, 5).reshape(b, gh * d, gw * d, c)
    return y[:, :h, :w].permute(0, 3, 1, 2)


def scaled_conv(conv, scale):
    """``(weight, bias)`` of ``scale * conv(x)`` for a per-output-channel ``scale`` of ``C_out`` elements."""
    s = scale.reshape(-1)
    return conv.weight * s.view(-1, 1, 1, 1), conv.bias * s


def _writable(own, *others):
    """Whether ``own`` may hold the result of an element-wise op with ``others``: no grad (autograd
    may need ``own``), and the result has ``own``'s dtype and shape."""
    return (
        not torch.is_grad_enabled()
        and all(torch.result_type(own, o) == own.dtype for o in others)
        and own.shape == torch.broadcast_shapes(own.shape, *(o.shape for o in others))
    )


def _add_into(own, other):
    """``own + other``, written into ``own`` where :func:`_writable`. Only for an ``own`` allocated by
    the calling function (a conv's output, a product): nobody else can hold it."""
    return own.add_(other) if _writable(own, other) else own + other


def _mul_into(own, times, plus=None):
    """``own * times (+ plus)``, written into ``own`` where :func:`_writable`; ``own`` as for
    :func:`_add_into`, ``times`` and ``plus`` are only read."""
    if plus is None:
        return own.mul_(times) if _writable(own, times) else own * times
    return torch.addcmul(plus, own, times, out=own) if _writable(own, times, plus) else plus + own * times


def weighted_sum(weights, terms, in_place):
    """``sum_i weights[:, i] * terms_i`` for ``(B, n)`` or ``(B, n, H, W)`` ``weights`` (see
    :func:`.routing.expert_factor`) and ``n`` ``(B, C, H, W)`` terms, drawn from the iterable ``terms`` one at
    a time (so only one is alive at once).

    ``in_place`` (the fast path): without grad each product is accumulated into the first one, a
    buffer allocated here; else ``total + w_i * term_i`` as written.
    """
    total = None
    for i, term in enumerate(terms):
        w = expert_factor(weights, i)
        if total is None:
            total = w * term
        elif in_place and _writable(total, w, term):
            total.addcmul_(w, term)
        else:
            total = total + w * term
    return total


def compute_dtype(x):
    """The dtype convs on ``x`` run in: the autocast dtype of ``x``'s device where autocast is on, else None."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose gradient has contiguous strides, as DDP's gradient buckets require.

    For kernels with a size-1 dimension (1x1, depthwise) both layouts are "contiguous", and the conv
    backward on channels-last activations returns channels-last strides, which DDP warns about.
    """

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone(memory_format=torch.contiguous_format) if grad.stride() != _strides(grad) else grad


def _strides(t):
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def contiguous_grad(t):
    """``t``; with grad, through :class:`_ContiguousGrad` so that its gradient is contiguous."""
    return _ContiguousGrad.apply(t) if t is not None and t.requires_grad and torch.is_grad_enabled() else t
