"""The balance losses of sparse routing: Shazeer's load loss (GateLoadLoss) and the cost-weighted importance
(CostWeightedBalanceLoss), registered in BasicSR's LOSS_REGISTRY."""

import pytest
import torch
from basicsr.losses import build_loss

import gmmoe_arch  # noqa: F401  (registers the losses)
from gmmoe_arch import GMMoE
from gmmoe_arch.losses.gate_losses import CostWeightedBalanceLoss, GateLoadLoss, expert_costs

SMALL = dict(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])
EXPERTS = ['DetailExpert', 'HazeExpert']


def test_both_are_built_from_the_registry():
    assert isinstance(build_loss({'type': 'GateLoadLoss', 'loss_weight': 0.1}), GateLoadLoss)
    assert isinstance(build_loss({'type': 'CostWeightedBalanceLoss', 'cost': 'params'}), CostWeightedBalanceLoss)


def test_load_loss_is_zero_when_balanced_and_grows_with_imbalance():
    loss = GateLoadLoss(loss_weight=1.0)
    gates = {'b': torch.full((4, 2), 0.5)}
    assert loss(gates, {'b': torch.full((4, 2), 0.5)}).item() == pytest.approx(0, abs=1e-9)
    skewed = torch.tensor([[0.9, 0.1]] * 4, requires_grad=True)
    value = loss(gates, {'b': skewed})
    assert value.item() == pytest.approx(0.64, rel=1e-5)  # var 0.16 / mean 0.25
    value.backward()
    assert skewed.grad[0, 0] > 0 > skewed.grad[0, 1]
    assert loss(gates, {}).item() == 0  # dense training: nothing sampled, nothing to balance


def test_costs_are_measured_from_the_modules():
    net = GMMoE(**SMALL, experts=EXPERTS)
    flops, params = expert_costs(net, 'flops'), expert_costs(net, 'params')
    assert set(flops) == {'encoders.0.0', 'middle_blks.0', 'decoders.0.0'}
    detail, haze = net.middle_blks[0].experts
    assert params['middle_blks.0'].tolist() == [sum(p.numel() for p in e.parameters()) for e in (detail, haze)]
    assert flops['middle_blks.0'][0] > 10 * flops['middle_blks.0'][1]  # the detail expert is far costlier
    assert flops['middle_blks.0'][0] > flops['encoders.0.0'][0]  # twice the width: more operations per pixel


def test_cost_weighted_importance_is_zero_when_cheap_experts_carry_more():
    loss = CostWeightedBalanceLoss(loss_weight=1.0).bind(GMMoE(**SMALL, experts=EXPERTS))
    costs = loss.costs['middle_blks.0']
    inverse = (1 / costs) / (1 / costs).sum()
    assert loss({'middle_blks.0': inverse.float().expand(3, 2)}).item() == pytest.approx(0, abs=1e-6)
    uniform = loss({'middle_blks.0': torch.full((3, 2), 0.5)}).item()
    assert uniform > 0.5  # equal weights put far more compute on the costly expert


def test_cost_weighted_needs_binding_and_a_known_cost():
    with pytest.raises(ValueError, match='bind'):
        CostWeightedBalanceLoss()({'b': torch.full((2, 2), 0.5)})
    with pytest.raises(ValueError, match='cost must be flops or params'):
        CostWeightedBalanceLoss(cost='time')
