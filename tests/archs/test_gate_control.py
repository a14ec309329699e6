"""gmmoe_arch.archs.gate_control: every block's gate frozen to a constant vector, and the mean vectors to
freeze to (the ablation of a gate's routing against a frozen mean gate)."""

import pytest
import torch

from gmmoe_arch import GMMoE, record_gates
from gmmoe_arch.archs.gate_control import expert_blocks, frozen_gates, mean_gate_weights

from helpers import activate_branches

SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


def small_net(gate=None, seed=0):
    torch.manual_seed(seed)
    return activate_branches(GMMoE(**SMALL, gate=gate)).eval()


def batches(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, 12, 9, generator=g), torch.rand(1, 3, 12, 9, generator=g) * 0.2]


@pytest.mark.parametrize('gate', [None, 'AdaptiveGate', 'SpatialGate'])
def test_mean_gate_weights_average_every_image_once(gate):
    net = small_net(gate)
    means = mean_gate_weights(net, batches())
    assert list(means) == list(expert_blocks(net))
    per_image = []
    with torch.no_grad(), record_gates(net) as gates:
        for x in batches():
            for b in range(x.shape[0]):
                net(x[b : b + 1])
                per_image.append({p: (w if w.dim() == 2 else w.mean((2, 3))).double() for p, w in gates.items()})
    for path, mean in means.items():
        assert mean.shape == (3,) and mean.dtype == torch.float64
        torch.testing.assert_close(mean, torch.cat([d[path] for d in per_image]).mean(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='mean_gate_weights: no images were given'):
        mean_gate_weights(net, [])


@pytest.mark.parametrize('gate', [None, 'SpatialGate'])
def test_frozen_gates_mix_with_the_constants_and_are_removed_on_exit(gate):
    net = small_net(gate)
    x = batches()[0]
    one_hot = {path: [0.0, 0.0, 1.0] for path in expert_blocks(net)}
    with torch.no_grad():
        live = net(x)
        with frozen_gates(net, one_hot), record_gates(net) as gates:
            frozen = net(x)
        after = net(x)
    assert torch.equal(after, live) and (frozen - live).abs().max() > 1e-3
    for w in gates.values():
        assert torch.equal(w.transpose(0, 1).reshape(3, -1)[:, 0], torch.tensor([0.0, 0.0, 1.0]))
        assert (w == w.reshape(w.shape[0], 3, -1)[:, :, :1].reshape(w.shape[0], 3, *[1] * (w.dim() - 2))).all()


def test_freezing_to_an_images_own_per_image_weights_changes_nothing():
    net = small_net()
    x = batches()[1]
    with torch.no_grad():
        live = net(x)
        own = mean_gate_weights(net, [x])
        with frozen_gates(net, own):
            frozen = net(x)
    torch.testing.assert_close(frozen, live, rtol=0, atol=1e-6)


def test_freezing_some_blocks_leaves_the_others_live():
    net = small_net()
    x = batches()[0]
    with torch.no_grad(), record_gates(net) as live:
        net(x)
        live = dict(live)
    with torch.no_grad(), frozen_gates(net, {'middle_blks.0': [1, 0, 0]}), record_gates(net) as gates:
        net(x)
    assert torch.equal(gates['middle_blks.0'], torch.tensor([[1.0, 0, 0]] * 2))
    assert torch.equal(gates['encoders.0.0'], live['encoders.0.0'])  # before the frozen block: unchanged


@pytest.mark.parametrize(
    'weights, message',
    [
        ({'middle_blks.9': [1, 0, 0]}, 'frozen_gates: middle_blks.9: no expert block of the network has that path'),
        ({'middle_blks.0': [0.5, 0.5]}, 'frozen_gates: middle_blks.0: expected 3 non-negative finite weights'),
        ({'middle_blks.0': [float('nan'), 0, 1]}, 'expected 3 non-negative finite weights'),
    ],
)
def test_bad_frozen_weights_are_refused_before_anything_is_frozen(weights, message):
    net = small_net()
    with pytest.raises(ValueError, match=message):
        with frozen_gates(net, weights):
            pass
    assert not any(block.gate._forward_hooks for block in expert_blocks(net).values())
