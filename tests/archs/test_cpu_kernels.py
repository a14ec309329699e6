"""gmmoe_arch.archs.cpu_kernels: the one predicate for "the CPU inference kernels apply", and its readers."""

import pytest
import torch
from torch import nn

from gmmoe_arch.archs import fast_ops, pooling
from gmmoe_arch.archs.cpu_kernels import cpu_kernels_apply


def channels_last(dtype=torch.float32, device='cpu'):
    return torch.rand(1, 16, 6, 5, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    'make, grad, layout_free, expected',
    [
        (channels_last, False, False, True),
        (lambda: channels_last(torch.bfloat16), False, False, True),
        (channels_last, True, False, False),  # the kernels have no backward
        (lambda: torch.rand(1, 16, 6, 5), False, False, False),  # NCHW
        (lambda: torch.rand(1, 16, 6, 5), False, True, True),  # ... for a kernel that reads either layout
        (lambda: channels_last(device='meta'), False, False, False),  # not the CPU
    ],
    ids=['cpu-channels-last', 'bf16', 'grad', 'nchw', 'nchw-layout-free', 'other-device'],
)
def test_the_predicate(make, grad, layout_free, expected):
    x = make()
    with torch.set_grad_enabled(grad):
        assert cpu_kernels_apply(x, channels_last=not layout_free) is expected


def test_the_predicate_is_false_while_compiling():
    def pick(x):
        return x + 1 if cpu_kernels_apply(x) else x - 1

    x = channels_last()
    with torch.no_grad():
        assert torch.equal(pick(x), x + 1)
        assert torch.equal(torch.compile(pick, backend='eager', fullgraph=True)(x), x - 1)


def test_pooling_and_fast_ops_ask_the_predicate(monkeypatch):
    asked = []

    def spy(x, channels_last=True):
        asked.append(channels_last)
        return cpu_kernels_apply(x, channels_last)

    monkeypatch.setattr(pooling, 'cpu_kernels_apply', spy)
    monkeypatch.setattr(fast_ops, 'cpu_kernels_apply', spy)
    x, norm = channels_last(torch.bfloat16), nn.LayerNorm(16)
    weight, bias = torch.rand(8, 16, 1, 1), torch.rand(8)
    calls = {
        'global mean': (lambda: pooling.global_mean(x), [True]),
        'channel max': (lambda: fast_ops.channel_max(x), [True]),
        'layer norm': (lambda: fast_ops.layer_norm_nchw(x, norm), [False]),
        'conv': (lambda: fast_ops.conv(x.float(), weight, bias), [True]),
    }
    with torch.no_grad():
        for name, (call, expected) in calls.items():
            asked.clear()
            call()
            assert asked == expected, name


def test_where_the_predicate_says_no_the_plain_ops_run(monkeypatch):
    x = channels_last(torch.bfloat16)
    weight = torch.rand(8, 16, 1, 1)
    with torch.no_grad():
        assert fast_ops._onednn_dtype(x.float(), weight) is torch.float32
        monkeypatch.setattr(pooling, 'cpu_kernels_apply', lambda x, channels_last=True: False)
        monkeypatch.setattr(fast_ops, 'cpu_kernels_apply', lambda x, channels_last=True: False)
        assert fast_ops._onednn_dtype(x.float(), weight) is None
        assert torch.equal(pooling.global_mean(x), x.mean((2, 3), keepdim=True))
