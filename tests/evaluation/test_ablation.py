"""gmmoe_arch.evaluation.ablation: the trained network against its gates frozen to their mean weights, and the
spread of the gate weights over images."""

import numpy as np
import pytest
import torch

from gmmoe_arch import GMMoE
from gmmoe_arch.archs.gate_control import expert_blocks
from gmmoe_arch.evaluation import Pair
from gmmoe_arch.evaluation.ablation import ablation_markdown, gate_ablation, gate_spread, run_scored

from helpers import activate_branches

SMALL = dict(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])


def small_net(gate=None, seed=0):
    torch.manual_seed(seed)
    return activate_branches(GMMoE(**SMALL, gate=gate)).eval()


def pairs(n=3, seed=0):
    """Images of very different brightness, so that a live gate weights them differently."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        level = 20 + 100 * i
        lq = np.clip(rng.normal(level, 10, (16, 12, 3)), 0, 255).astype(np.uint8)
        gt = np.clip(rng.normal(120, 10, (16, 12, 3)), 0, 255).astype(np.uint8)
        out.append(Pair(f'im{i}', 'lowlight' if i < 2 else 'rain', lq, gt))
    return out


def constant_gates(net):
    """Every released gate's last layer zeroed: logits 0, weights exactly 1/n for every image."""
    for block in expert_blocks(net).values():
        torch.nn.init.zeros_(block.gate.mlp[2].weight)
    return net


def decisive_gates(net):
    """Every released gate's layers scaled up, so that its weights depend strongly on the image."""
    with torch.no_grad():
        for block in expert_blocks(net).values():
            for layer in (block.gate.mlp[0], block.gate.mlp[2]):
                layer.weight.mul_(40)
        return net


def test_a_constant_gate_loses_nothing_when_frozen_to_its_mean():
    net = constant_gates(small_net())
    result = gate_ablation(net, pairs())
    assert result['trained'] == result['frozen_mean']
    assert all(d == 0 for scores in result['delta'].values() for d in scores.values())
    assert result['spread']['max_std'] == 0 and result['spread']['max_range'] == 0
    for means in result['means'].values():
        np.testing.assert_allclose(means, [1 / 3] * 3, rtol=0, atol=1e-7)


def test_a_gate_that_routes_differs_from_its_frozen_mean():
    net = decisive_gates(small_net())
    result = gate_ablation(net, pairs())
    assert set(result['trained']) == {'all', 'lowlight', 'rain'}
    assert result['trained']['all']['psnr'] != result['frozen_mean']['all']['psnr']
    delta = result['delta']['all']['psnr']
    assert delta == pytest.approx(result['trained']['all']['psnr'] - result['frozen_mean']['all']['psnr'])
    assert result['spread']['max_range'] > 0.05
    assert 'frozen' in ablation_markdown(result) and f'{delta:+.4f}' in ablation_markdown(result)


def test_frozen_to_reference_means_uses_those_images():
    net = decisive_gates(small_net())
    own = gate_ablation(net, pairs())
    dark = [p.lq // 8 for p in pairs()]
    other = gate_ablation(net, pairs(), reference=dark)
    assert other['reference'] == 3 and own['reference'] == 'pairs'
    assert other['trained'] == own['trained']
    assert other['means'] != own['means']


def test_spread_is_std_and_range_over_images_per_expert():
    w = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    spread = gate_spread({'b': w}, ['A', 'B'])
    assert spread['blocks']['b']['std'] == pytest.approx({'A': w[:, 0].std(), 'B': w[:, 1].std()})
    assert spread['blocks']['b']['range'] == pytest.approx({'A': 0.4, 'B': 0.4})
    assert spread['max_range'] == pytest.approx(0.4)


@pytest.mark.parametrize('gate', [None, 'SpatialGate'])
def test_run_scored_gives_one_weight_vector_per_image_and_block(gate):
    net = small_net(gate)
    scores, weights = run_scored(net, pairs())
    assert set(weights) == set(expert_blocks(net))
    for w in weights.values():
        assert w.shape == (3, 3)
        np.testing.assert_allclose(w.sum(1), 1, atol=1e-5)
    assert set(scores['all']) == {'psnr', 'ssim'}
