"""PSNRLoss against its formula, computed by hand per image."""

import math

import pytest
import torch
from basicsr.losses import build_loss

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)


def hand_psnr_loss(pred, target, weight=1.0):
    """Minus the mean PSNR (images in [0, 1]) with the 1e-8 guard, one image at a time."""
    values = []
    for p, t in zip(pred.double(), target.double()):
        mse = sum(((a - b) ** 2).sum().item() for a, b in zip(p, t)) / p.numel()
        values.append(10.0 / math.log(10.0) * math.log(mse + 1e-8))
    return weight * sum(values) / len(values)


def test_matches_formula_per_image_mean():
    torch.manual_seed(0)
    target = torch.rand(3, 3, 8, 9)
    noise = torch.stack([s * torch.randn(3, 8, 9) for s in (0.01, 0.1, 0.3)])
    pred = target + noise
    loss = build_loss({'type': 'PSNRLoss', 'loss_weight': 0.5})
    assert loss(pred, target).item() == pytest.approx(hand_psnr_loss(pred, target, 0.5), rel=1e-5)
    # averaging PSNRs differs from the PSNR of the batch MSE when images differ in error
    batch_mse = ((pred - target) ** 2).mean().item()
    assert abs(loss(pred, target).item() - 0.5 * 10 / math.log(10) * math.log(batch_mse)) > 0.1


def test_is_minus_psnr():
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.full_like(target, 0.1)  # mse 0.01 -> PSNR 20 dB
    assert build_loss({'type': 'PSNRLoss'})(pred, target).item() == pytest.approx(-20.0, abs=1e-4)


def test_to_y_option_uses_luma_only():
    target = torch.rand(2, 3, 6, 6)
    # a shift that cancels in BT.601 luma: 65.481 r + 128.553 g + 24.966 b = 0
    shift = torch.tensor([128.553, -65.481, 0.0]).view(1, 3, 1, 1) * 1e-3
    pred = target + shift
    rgb = build_loss({'type': 'PSNRLoss'})(pred, target).item()
    y = build_loss({'type': 'PSNRLoss', 'toY': True})(pred, target).item()
    assert y == pytest.approx(10 / math.log(10) * math.log(1e-8), abs=1e-2)
    assert rgb > -60


def test_gradient_flows_and_bad_options_are_named():
    pred = torch.rand(2, 3, 5, 5, requires_grad=True)
    build_loss({'type': 'PSNRLoss'})(pred, torch.rand(2, 3, 5, 5)).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match='reduction'):
        build_loss({'type': 'PSNRLoss', 'reduction': 'sum'})
    with pytest.raises(ValueError, match='toY'):
        build_loss({'type': 'PSNRLoss', 'toY': True})(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))
