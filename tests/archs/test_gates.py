"""The built-in gates beyond the contract: AdaptiveGate and SpatialGate get past what the released gate showed
after training (docs/experts.md, "Gates": dead ReLU units, logits too small to move the weights)."""

import pytest
import torch

from gmmoe_arch.archs.gates import AdaptiveGate, Gate, SpatialGate, pooled_statistics
from gmmoe_arch.archs.pooling import pooling_hook


def small_features(seed=0, n=16, c=8):
    """Feature maps of the size a trained block's are (|u| ~ 0.05), with per-image channel statistics."""
    g = torch.Generator().manual_seed(seed)
    scale, shift = torch.rand(n, c, 1, 1, generator=g), torch.rand(n, c, 1, 1, generator=g)
    return 0.05 * (torch.randn(n, c, 12, 12, generator=g) * scale + shift)


def image_spread(gate, u):
    """The largest standard deviation over images of one expert's (per-image) weight."""
    with torch.no_grad():
        w = gate(u)
    return (w if w.dim() == 2 else w.mean((2, 3))).std(0).max().item()


@pytest.mark.parametrize('cls', [AdaptiveGate, SpatialGate])
@pytest.mark.parametrize('seed', [0, 1])
def test_new_gates_spread_their_weights_over_images_from_initialisation(cls, seed):
    """Measured (seeds 0-2): the released gate 0.00016-0.0003, AdaptiveGate 0.045-0.057, SpatialGate 0.045-0.078."""
    u = small_features()
    torch.manual_seed(seed)
    released = image_spread(Gate(8, 3), u)
    torch.manual_seed(seed)
    new = image_spread(cls(8, 3), u)
    assert new > 0.02 and new > 50 * released


@pytest.mark.parametrize('cls', [AdaptiveGate, SpatialGate])
def test_a_gradient_reaches_the_gate_even_where_every_hidden_unit_is_negative(cls):
    """The released gate's outer blocks had both ReLU units negative: zero logits, no gradient. GELU and biases
    leave no such dead zone."""
    torch.manual_seed(0)
    gate = cls(8, 3)
    first = gate.mlp[0] if cls is AdaptiveGate else gate.context
    with torch.no_grad():
        first.bias.fill_(-4.0)
    u = small_features()
    with torch.no_grad():
        stats = gate.norm(pooled_statistics(u).flatten(1))
        pre = gate.mlp[0](stats) if cls is AdaptiveGate else gate.local(u) + gate.context(stats)[:, :, None, None]
    assert (pre < 0).all()
    w = gate(u)
    (w * torch.randn_like(w)).sum().backward()
    assert first.weight.grad.abs().max() > 0


def test_widths_and_temperature_follow_the_options():
    gate = AdaptiveGate(8, 3, min_hidden=32, temperature=2.0)
    assert gate.mlp[0].out_features == 32 and AdaptiveGate(128, 3).mlp[0].out_features == 64
    assert gate.log_temperature.exp().item() == pytest.approx(2.0)
    assert SpatialGate(8, 4).out.out_channels == 4 and SpatialGate(64, 3).local[1].out_channels == 32


def test_pooled_statistics_are_mean_and_std_through_two_pooling_sites():
    u = torch.randn(2, 5, 7, 6) * 3 + 1
    seen = []
    with pooling_hook(lambda x, mean: seen.append(x.shape)):
        stats = pooled_statistics(u)
    assert len(seen) == 2 and stats.shape == (2, 10, 1, 1)
    torch.testing.assert_close(stats[:, :5, 0, 0], u.mean((2, 3)))
    torch.testing.assert_close(stats[:, 5:, 0, 0], u.std((2, 3), correction=0), rtol=1e-4, atol=1e-4)
