"""GT-mean PSNR against a hand computation."""

import math

import numpy as np
import pytest
from basicsr.metrics import calculate_metric

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)


def test_hand_computation():
    gt = np.array([[[100, 120, 140], [60, 80, 100]]], dtype=np.uint8)  # (1, 2, 3), mean 100
    out = np.array([[[50, 60, 70], [40, 40, 40]]], dtype=np.uint8)  # mean 50 -> scaled x2
    scaled = np.array([[[100, 120, 140], [80, 80, 80]]], dtype=np.float64)
    mse = ((scaled - gt) ** 2).mean()  # (20^2 + 0 + 20^2) / 6
    assert mse == pytest.approx(800 / 6)
    expected = 10 * math.log10(255**2 / mse)
    value = calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_psnr_gt_mean', 'crop_border': 0})
    assert value == pytest.approx(expected, abs=1e-9)
    plain = calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_psnr', 'crop_border': 0})
    assert plain < value - 5


def test_clips_and_crops():
    gt = np.full((6, 6, 3), 200, dtype=np.uint8)
    out = np.full((6, 6, 3), 10, dtype=np.uint8)
    out[2:4, 2:4] = 250  # only the centre survives crop_border 2
    # centre mean 250 -> scale 200/250 = 0.8 -> exactly the ground truth
    assert calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_psnr_gt_mean', 'crop_border': 2}) == float(
        'inf'
    )
    bright = np.zeros((1, 2, 3), dtype=np.uint8)
    bright[0, 0] = 200  # mean 100, ground-truth mean 200 -> x2: 400 clipped to 255, 0 stays 0
    ref = np.full((1, 2, 3), 200, dtype=np.uint8)
    mse = ((255 - 200) ** 2 + 200**2) / 2
    assert calculate_metric(
        {'img': bright, 'img2': ref}, {'type': 'calculate_psnr_gt_mean', 'crop_border': 0}
    ) == pytest.approx(10 * math.log10(255**2 / mse))


def test_chw_matches_hwc_and_errors():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    out = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    hwc = calculate_metric(
        {'img': out, 'img2': gt}, {'type': 'calculate_psnr_gt_mean', 'crop_border': 1, 'test_y_channel': True}
    )
    chw = calculate_metric(
        {'img': out.transpose(2, 0, 1), 'img2': gt.transpose(2, 0, 1)},
        {'type': 'calculate_psnr_gt_mean', 'crop_border': 1, 'input_order': 'CHW', 'test_y_channel': True},
    )
    assert hwc == pytest.approx(chw)
    with pytest.raises(ValueError, match='shapes'):
        calculate_metric({'img': out, 'img2': gt[:4]}, {'type': 'calculate_psnr_gt_mean', 'crop_border': 0})
