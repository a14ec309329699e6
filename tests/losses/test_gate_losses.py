"""GateRoutingLoss and GateBalanceLoss: values on hand-computed cases, option errors, gradients into the gate."""

import io
import logging
import math

import pytest
import torch
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from gmmoe_arch.archs.gates import Gate
from gmmoe_arch.losses.gate_losses import GateBalanceLoss, GateRoutingLoss

NAMES = ['ColourExpert', 'DetailExpert', 'FeatureExpert']


def weights(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_routing_loss_value_by_hand_and_unmapped_labels_left_out():
    gates = {
        'encoders.0.0': weights([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]),
        'middle_blks.0': weights([[0.1, 0.6, 0.3], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4]]),
    }
    loss = build_loss(
        {'type': 'GateRoutingLoss', 'loss_weight': 0.5, 'experts': {'lowlight': 'ColourExpert', 'rain': NAMES[1:]}}
    )
    assert isinstance(loss, GateRoutingLoss)
    logger, stream = get_root_logger(), io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        value = loss(gates, NAMES, ['lowlight', 'rain', 'snow'])
        loss(gates, NAMES, ['snow', 'rain', 'snow'])
    finally:
        logger.removeHandler(handler)
    # lowlight -> ColourExpert alone, rain -> Detail + Feature summed; the 'snow' image is left out
    expected = 0.5 * -(math.log(0.5) + math.log(0.8) + math.log(0.1) + math.log(0.4)) / 4
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert stream.getvalue().count('images labelled "snow"') == 1  # logged once, not per batch


def test_routing_loss_zero_without_mapped_labels_and_finite_at_zero_weight():
    loss = GateRoutingLoss(experts={'rain': 'DetailExpert'})
    gates = {'b': weights([[1.0, 0.0, 0.0]]).requires_grad_()}
    assert loss(gates, NAMES, ['lowlight']).item() == 0
    clamped = loss(gates, NAMES, ['rain'])
    assert torch.isfinite(clamped) and clamped.item() == pytest.approx(-math.log(1e-6), rel=1e-6)


@pytest.mark.parametrize(
    'experts, match',
    [
        (None, r'train\.gate_opt\.experts: expected a mapping'),
        ({'rain': []}, r'train\.gate_opt\.experts\.rain: expected an expert name'),
        ({'rain': 3}, r'train\.gate_opt\.experts\.rain: expected an expert name'),
    ],
)
def test_bad_mapping_is_named(experts, match):
    with pytest.raises(ValueError, match=match):
        GateRoutingLoss(experts=experts)


def test_expert_the_network_lacks_is_named_with_the_networks_experts():
    loss = GateRoutingLoss(experts={'lowlight': 'ColourExpert', 'haze': ['HazeExpertX', 'DetailExpert']})
    with pytest.raises(ValueError, match=r'train\.gate_opt\.experts\.haze: .*HazeExpertX.*ColourExpert, DetailExpert'):
        loss.check(NAMES)
    with pytest.raises(ValueError, match='3 label'):
        GateRoutingLoss(experts={'rain': 'DetailExpert'})({'b': weights([[0.2, 0.3, 0.5]])}, NAMES, ['rain'] * 3)


def test_balance_loss_value_by_hand():
    # block a: importance (0.7, 1.0, 0.3), mean 2/3; block b: uniform use, zero
    gates = {
        'a': weights([[0.5, 0.4, 0.1], [0.2, 0.6, 0.2]]),
        'b': weights([[0.5, 0.25, 0.25], [0.1666667, 0.4166667, 0.4166666]]),
    }
    importance = torch.tensor([0.7, 1.0, 0.3])
    cv2_a = ((importance - 2 / 3) ** 2).mean() / (2 / 3) ** 2
    value = build_loss({'type': 'GateBalanceLoss', 'loss_weight': 0.1})(gates)
    assert value.item() == pytest.approx(0.1 * cv2_a.item() / 2, rel=1e-4)
    assert GateBalanceLoss()({'b': gates['b']}).item() == pytest.approx(0, abs=1e-9)


def test_routing_loss_trains_the_gate_mlp():
    torch.manual_seed(0)
    gate = Gate(16, 3, temperature=3.0)
    u = torch.randn(4, 16, 5, 5) * 0.1
    u[[0, 2], :8] += 1  # the two kinds of image differ in which channels are bright
    u[[1, 3], 8:] += 1
    labels = ['lowlight', 'rain', 'lowlight', 'rain']
    loss = GateRoutingLoss(experts={'lowlight': 'ColourExpert', 'rain': 'FeatureExpert'})
    optimiser = torch.optim.SGD(gate.parameters(), lr=0.5)
    values = []
    for _ in range(20):
        optimiser.zero_grad()
        value = loss({'b': gate(u)}, NAMES, labels)
        value.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())
        optimiser.step()
        values.append(value.item())
    assert values[-1] < values[0] - 0.1  # 1.12 -> 0.70 here (-log 1/3 = 1.10 is the uniform gate's)


def test_balance_loss_gradient_evens_out_importance():
    logits = torch.tensor([[2.0, 0.0, -1.0], [1.5, 0.5, -0.5]], requires_grad=True)
    value = GateBalanceLoss(loss_weight=1.0)({'b': torch.softmax(logits, 1)})
    value.backward()
    assert logits.grad[:, 0].sum() > 0 and logits.grad[:, 2].sum() < 0  # descent lowers the favourite


def degradation_index(name):
    from gmmoe_arch.data.degradations import names

    return names().index(name)


MAP_EXPERTS = {'lowlight': 'ColourExpert', 'rain': ['DetailExpert', 'FeatureExpert']}


def test_label_map_with_a_per_pixel_gate_by_hand():
    """Each block's per-pixel weights meet the label map resized to its resolution (nearest); unmapped and -1
    pixels are left out; the blocks' means are averaged."""
    low, rain, haze = (degradation_index(n) for n in ('lowlight', 'rain', 'haze'))
    label_map = torch.tensor(
        [[[low, low, rain, rain], [low, low, rain, rain], [haze, haze, -1, -1], [low, low, -1, -1]]]
    )
    g = torch.Generator().manual_seed(0)
    full = torch.rand(1, 3, 4, 4, generator=g).softmax(1)
    half = torch.rand(1, 3, 2, 2, generator=g).softmax(1)
    loss = GateRoutingLoss(experts=MAP_EXPERTS)
    value = loss({'a': full, 'b': half}, NAMES, label_map)
    terms_full = [full[0, 0, y, x] for y in (0, 1, 3) for x in (0, 1)] + [
        full[0, 1:, y, x].sum() for y in (0, 1) for x in (2, 3)
    ]
    terms_half = [half[0, 0, 0, 0], half[0, 1:, 0, 1].sum()]  # (1, 0) is haze, (1, 1) is -1
    expected = (-torch.log(torch.stack(terms_full)).mean() - torch.log(torch.stack(terms_half)).mean()) / 2
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_map_with_a_per_image_gate_weighs_the_images_weights_by_area():
    low, rain = degradation_index('lowlight'), degradation_index('rain')
    label_map = torch.full((2, 4, 4), low)
    label_map[0, :, :1] = rain  # image 0: a quarter rain
    w = weights([[0.5, 0.3, 0.2], [0.7, 0.1, 0.2]])
    value = GateRoutingLoss(experts=MAP_EXPERTS)({'a': w}, NAMES, label_map)
    expected = -(4 * math.log(0.5) + 12 * math.log(0.5) + 16 * math.log(0.7)) / 32
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_string_labels_with_a_per_pixel_gate_supervise_every_pixel():
    w = torch.rand(2, 3, 3, 3, generator=torch.Generator().manual_seed(1)).softmax(1).requires_grad_()
    value = GateRoutingLoss(experts=MAP_EXPERTS)({'a': w}, NAMES, ['rain', 'snow'])
    expected = -torch.log(w[0, 1:].sum(0)).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert w.grad[0].abs().sum() > 0 and w.grad[1].abs().sum() == 0


@pytest.mark.parametrize(
    'label_map',
    [torch.zeros(2, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long), torch.zeros(2, 1, 4, 4, dtype=torch.long)],
)
def test_a_malformed_label_map_is_named(label_map):
    with pytest.raises(ValueError, match=r'GateRoutingLoss: label_map must be a \(B, H, W\) long tensor'):
        GateRoutingLoss(experts=MAP_EXPERTS)({'a': weights([[0.2, 0.3, 0.5]] * 2)}, NAMES, label_map)


def test_balance_loss_reads_per_pixel_weights_as_their_pixel_means():
    w = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(2)).softmax(1)
    loss = GateBalanceLoss(loss_weight=1.0)
    assert loss({'a': w}).item() == pytest.approx(loss({'a': w.mean((2, 3))}).item(), rel=1e-6)
