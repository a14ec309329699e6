"""The expert contract (docs/experts.md), checked for every expert in ``EXPERT_REGISTRY``: a newly registered
expert is checked without editing a list. Built as ``Expert(channels)`` at the widths a network builds it at, any
``H, W >= 1`` in and the same shape out, the input left as it was, a gradient for every parameter, images of a
batch independent of each other (top-k routing runs an expert on the images that picked it), no global pool
beside ``global_mean``, and in a network: both paths agree and its state dict loads back strictly."""

import pytest
import torch
from torch import nn

import gmmoe_arch  # noqa: F401  (registers the built-in experts)
from gmmoe_arch import EXPERT_REGISTRY, GMMoE
from gmmoe_arch.archs.experts import RELEASED_EXPERTS

from helpers import activate_branches

EXPERTS = sorted(name for name, _ in EXPERT_REGISTRY)
SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


def build(name, channels, seed=0):
    torch.manual_seed(seed)
    return activate_branches(EXPERT_REGISTRY.get(name)(channels))


def test_the_registry_holds_the_built_in_experts():
    assert set(RELEASED_EXPERTS) | {'RainExpert', 'HazeExpert'} <= set(EXPERTS)


@pytest.mark.parametrize('name', EXPERTS)
@pytest.mark.parametrize('channels', [8, 16])
@pytest.mark.parametrize('size', [(1, 1), (1, 9), (5, 3), (37, 53)])
def test_any_size_same_shape_input_untouched_every_parameter_learns(name, channels, size):
    expert = build(name, channels)
    u = torch.randn(2, channels, *size)
    before = u.clone()
    out = expert(u)
    assert out.shape == u.shape and torch.isfinite(out).all()
    assert torch.equal(u, before)
    out.square().mean().backward()
    assert [n for n, p in expert.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize('name', EXPERTS)
def test_images_of_a_batch_are_independent(name):
    expert = build(name, 8).eval()
    u = torch.randn(3, 8, 20, 17)
    with torch.no_grad():
        whole = expert(u)
        for i in range(3):
            assert (expert(u[i : i + 1]) - whole[i : i + 1]).abs().max().item() <= 1e-5


@pytest.mark.parametrize('name', EXPERTS)
def test_global_pools_go_through_global_mean(name):
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d)
    assert [type(m).__name__ for m in build(name, 8).modules() if isinstance(m, pools)] == []


@pytest.mark.parametrize('name', EXPERTS)
def test_in_a_network_both_paths_agree_and_the_state_dict_loads_back(name):
    torch.manual_seed(0)
    net = activate_branches(GMMoE(**SMALL, experts=['ColourExpert', name])).eval()
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        fast, plain = net.set_fast(True)(x), net.set_fast(False)(x)
    assert (fast - plain).abs().max().item() <= 1e-4
    again = GMMoE(**SMALL, experts=['ColourExpert', name]).eval()
    again.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(again.set_fast(False)(x), plain)
