"""SpatialGate in the network: per-pixel mixing and top-k, record_gates, training (every parameter used, as
DDP needs; activation checkpointing), bf16 autocast on both paths."""

import pytest
import torch

from gmmoe_arch import GMMoE, record_gates
from gmmoe_arch.archs import routing
from gmmoe_arch.archs.gmmoe_arch import ExpertBlock

from helpers import activate_branches

SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
SPATIAL = {'type': 'SpatialGate'}


def spatial_net(seed=0, **kwargs):
    torch.manual_seed(seed)
    return activate_branches(GMMoE(**SMALL, gate=SPATIAL, **kwargs))


def images(b=2, h=13, w=18, seed=1):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_record_gates_gives_per_pixel_weights_at_each_blocks_resolution():
    net = spatial_net().eval()
    with torch.no_grad(), record_gates(net) as gates:
        net(images())
    # 13x18 padded to 16x20; two levels
    sizes = {'encoders.0.0': (16, 20), 'encoders.1.0': (8, 10), 'middle_blks.0': (4, 5), 'decoders.1.0': (16, 20)}
    for path, size in sizes.items():
        assert tuple(gates[path].shape) == (2, 3, *size), path
        torch.testing.assert_close(gates[path].sum(1), torch.ones(2, *size))


def test_dense_mixing_is_the_per_pixel_weighted_sum_on_both_paths():
    block = spatial_net().eval().encoders[1][0]
    u = torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        w = block.gate(u)
        expected = sum(w[:, i : i + 1] * block.experts[i](u) for i in range(3))
        for fast in (True, False):
            block.fast = fast
            torch.testing.assert_close(block(u), expected, rtol=1e-5, atol=1e-5)


def _calls(block):
    calls = {i: [] for i in range(len(block.experts))}
    for i, expert in enumerate(block.experts):
        expert.register_forward_pre_hook(lambda m, a, i=i: calls[i].append(a[0].shape[0]))
    return calls


def test_top_k_is_per_pixel_and_skips_an_expert_only_for_images_where_no_pixel_picked_it():
    net = spatial_net(gate_top_k=1).eval()
    block = net.encoders[1][0]
    u = torch.randn(2, 16, 4, 4)
    logits = torch.full((2, 3, 4, 4), -5.0)
    logits[0, 0], logits[1, 0] = 5.0, 5.0
    logits[0, 1, :2], logits[0, 0, :2] = 5.0, -5.0  # image 0: expert 1 on its top half, expert 0 below
    weights = logits.softmax(1)
    block.gate.forward = lambda _u: weights
    calls = _calls(block)
    with torch.no_grad():
        out = block(u)
        assert calls == {0: [2], 1: [1], 2: []}  # expert 1 on image 0 only, expert 2 picked nowhere
        sparse = routing.scatter_picks(weights, *routing.top_k(weights, 1, sampling=False))
        expected = sum(sparse[:, i : i + 1] * block.experts[i](u) for i in range(3))
    assert torch.equal(sparse[0, 1, :2], torch.ones(2, 4)) and torch.equal(sparse[0, 0, 2:], torch.ones(2, 4))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_top_k_equal_to_the_number_of_experts_is_the_dense_network():
    net = spatial_net().eval()
    x = images()
    with torch.no_grad():
        dense = net(x)
        full = net.set_gate_top_k(3)(x)
    torch.testing.assert_close(full, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('checkpoint', [False, 'block', 'expert'])
def test_training_uses_every_parameter_and_checkpointing_gives_the_same_gradients(checkpoint):
    x = images(2, 16, 16)

    def grads(level):
        net = spatial_net(checkpoint=level).train()
        net(x).square().mean().backward()
        return {k: p.grad for k, p in net.named_parameters()}

    reference, got = grads(False), grads(checkpoint)
    unused = [k for k, g in got.items() if g is None]
    assert not unused  # DDP without find_unused_parameters
    for key, g in got.items():
        torch.testing.assert_close(g, reference[key], rtol=1e-4, atol=1e-6, msg=key)
    assert any(g.abs().max() > 0 for k, g in got.items() if '.gate.' in k)


@pytest.mark.parametrize('fast', [True, False])
def test_bf16_autocast_stays_close_to_fp32(fast):
    net = spatial_net().eval().set_fast(fast)
    x = images()
    with torch.no_grad():
        exact = net(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(low).all() and (low.float() - exact).abs().max() < 0.1


def test_every_block_has_a_spatial_gate():
    blocks = [m for m in spatial_net().modules() if isinstance(m, ExpertBlock)]
    assert len(blocks) == 5 and all(type(b.gate).__name__ == 'SpatialGate' for b in blocks)
