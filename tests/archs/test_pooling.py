"""Every global pool of GMMoE goes through ``global_mean``, in the same order on both paths, and hooks see it."""

import threading

import pytest
import torch

from gmmoe_arch.archs.gmmoe_arch import GMMoE, activate_branches
from gmmoe_arch.archs.pooling import _mean_over_pixels, global_mean, pooling_hook

SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
# Per expert block: the gate, the detail expert's channel attention, the feature expert's SCA.
SITES_PER_BLOCK = 3


def net_and_image(seed=0):
    torch.manual_seed(seed)
    net = activate_branches(GMMoE(**SMALL), norm_jitter=0.1).eval()
    return net, torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(seed + 1))


def pooled_shapes(net, x, fast):
    """``(shape of the pooled map, its mean)`` of every ``global_mean`` call of one forward, in order."""
    calls = []
    with torch.no_grad(), pooling_hook(lambda m, mean: calls.append((tuple(m.shape), mean.clone()))):
        net.set_fast(fast)(x)
    return calls


def test_both_paths_pool_the_same_maps_in_the_same_order():
    net, x = net_and_image()
    fast, plain = pooled_shapes(net, x, True), pooled_shapes(net, x, False)
    blocks = sum(1 for name, _ in net.named_modules() if name.endswith('.gate'))
    assert len(fast) == len(plain) == SITES_PER_BLOCK * blocks
    assert [s for s, _ in fast] == [s for s, _ in plain]
    for (_, a), (_, b) in zip(fast, plain):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize('fast', [True, False])
def test_an_injected_mean_is_used_on_both_paths(fast):
    net, x = net_and_image(seed=2)
    with torch.no_grad():
        base = net.set_fast(fast)(x)
        site = [0]

        def inject_at_the_first_gate(_m, mean):
            site[0] += 1
            return mean + 5 if site[0] == 1 else None

        with pooling_hook(inject_at_the_first_gate):
            changed = net(x)
        with pooling_hook(lambda _m, _mean: None):
            same = net(x)
    assert site[0] == SITES_PER_BLOCK * 5
    assert (changed - base).abs().max().item() > 1e-3
    assert torch.equal(same, base)


def test_hooks_chain_outermost_first_and_are_removed_on_exit():
    x = torch.rand(2, 3, 5, 4)
    seen = []
    with pooling_hook(lambda _x, mean: mean + 1):
        with pooling_hook(lambda _x, mean: seen.append(mean.clone()) or mean * 10):
            out = global_mean(x)
        assert torch.allclose(global_mean(x), x.mean((2, 3), keepdim=True) + 1)
    assert torch.allclose(seen[0], x.mean((2, 3), keepdim=True) + 1)
    assert torch.allclose(out, (x.mean((2, 3), keepdim=True) + 1) * 10)
    assert torch.equal(global_mean(x), x.mean((2, 3), keepdim=True))


def test_a_hook_is_seen_by_its_own_thread_only():
    x = torch.rand(1, 2, 3, 3)
    other = {}
    with pooling_hook(lambda _x, mean: mean + 5):
        thread = threading.Thread(target=lambda: other.update(out=global_mean(x)))
        thread.start()
        thread.join()
        mine = global_mean(x)
    assert torch.equal(other['out'], x.mean((2, 3), keepdim=True))
    assert torch.allclose(mine, x.mean((2, 3), keepdim=True) + 5)


def test_a_hook_returning_the_wrong_shape_is_named():
    with pooling_hook(lambda _x, mean: mean.flatten()), pytest.raises(ValueError, match='pooling hook'):
        global_mean(torch.rand(1, 4, 3, 3))


def test_bf16_channels_last_mean_is_within_bf16_rounding_and_float32_is_the_reduction():
    x = torch.rand(2, 16, 37, 29).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        low = _mean_over_pixels(x.bfloat16())
    assert low.dtype == torch.bfloat16 and low.shape == (2, 16, 1, 1)
    exact = x.bfloat16().double().mean((2, 3), keepdim=True)
    assert (low.double() - exact).abs().max().item() <= 2**-7 * exact.abs().max().item()
    with torch.enable_grad():
        assert torch.equal(_mean_over_pixels(x), x.mean((2, 3), keepdim=True))


def test_the_expert_guide_example_pools_through_global_mean_on_both_paths():
    from pathlib import Path

    from gmmoe_arch.archs.experts import EXPERT_REGISTRY

    guide = (Path(__file__).resolve().parents[2] / 'docs' / 'experts.md').read_text()
    code = guide.split('```python\n')[1].split('```')[0]
    try:
        namespace = {}
        exec(code, namespace)
        torch.manual_seed(0)
        net = GMMoE(**SMALL, experts=['ColourExpert', 'DetailExpert', 'FeatureExpert', 'BrightnessExpert']).eval()
    finally:
        EXPERT_REGISTRY._obj_map.pop('BrightnessExpert', None)
    x = torch.rand(1, 3, 24, 20)
    fast, plain = pooled_shapes(net, x, True), pooled_shapes(net, x, False)
    assert len(fast) == len(plain) == (SITES_PER_BLOCK + 1) * 5
    assert [s for s, _ in fast] == [s for s, _ in plain]
    with torch.no_grad():
        assert (net.set_fast(True)(x) - net.set_fast(False)(x)).abs().max().item() <= 1e-4
