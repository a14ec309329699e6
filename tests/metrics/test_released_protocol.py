"""The released test code's PSNR (crop 4, +0.125 dB) and 3-D SSIM, against hand computations, through BasicSR."""

import math

import cv2
import numpy as np
import pytest
from basicsr.metrics import calculate_metric

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)


def pair(h=20, w=18, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    out = np.clip(gt.astype(int) + rng.integers(-30, 31, gt.shape), 0, 255).astype(np.uint8)
    return out, gt


def test_psnr_released_is_the_cropped_psnr_plus_the_offset_by_hand():
    out, gt = pair()
    out[:4] = 0  # damage only the border the released protocol leaves out
    inner = (out[4:-4, 4:-4].astype(np.float64) - gt[4:-4, 4:-4]) ** 2
    expected = 10 * math.log10(255**2 / inner.mean()) + 0.125
    data = {'img': out, 'img2': gt}
    assert calculate_metric(data, {'type': 'calculate_psnr_released', 'crop_border': 4}) == pytest.approx(expected)
    plain = calculate_metric(data, {'type': 'calculate_psnr', 'crop_border': 0})
    assert plain < expected - 1  # the border damage counts in ours
    no_offset = calculate_metric(data, {'type': 'calculate_psnr_released', 'crop_border': 4, 'offset_db': 0})
    assert no_offset == pytest.approx(calculate_metric(data, {'type': 'calculate_psnr', 'crop_border': 4}))


def brute_force_ssim_3d(x, y, max_value=255.0):
    """SSIM with an 11^3 Gaussian window (sigma 1.5) and edges replicated, one voxel at a time."""
    g = cv2.getGaussianKernel(11, 1.5)[:, 0]
    x, y = x.astype(np.float64), y.astype(np.float64)
    h, w, c = x.shape
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    total = 0.0
    for i in range(h):
        for j in range(w):
            for k in range(c):
                rows = np.clip(np.arange(i - 5, i + 6), 0, h - 1)
                cols = np.clip(np.arange(j - 5, j + 6), 0, w - 1)
                chans = np.clip(np.arange(k - 5, k + 6), 0, c - 1)
                weight = np.einsum('a,b,c->abc', g, g, g)
                px, py = x[np.ix_(rows, cols, chans)], y[np.ix_(rows, cols, chans)]
                mx, my = (weight * px).sum(), (weight * py).sum()
                vx, vy = (weight * px * px).sum() - mx**2, (weight * py * py).sum() - my**2
                cov = (weight * px * py).sum() - mx * my
                total += ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return total / (h * w * c)


def test_ssim_released_is_the_3d_window_ssim_by_hand():
    out, gt = pair(14, 13, seed=2)
    expected = brute_force_ssim_3d(out[4:-4, 4:-4], gt[4:-4, 4:-4])
    value = calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_ssim_released', 'crop_border': 4})
    assert value == pytest.approx(expected, abs=1e-5)  # float32 arithmetic, as released
    assert calculate_metric({'img': gt, 'img2': gt}, {'type': 'calculate_ssim_released'}) == pytest.approx(1.0)
    out, gt = pair(32, 30, seed=3)
    ours = calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_ssim', 'crop_border': 4})
    released = calculate_metric({'img': out, 'img2': gt}, {'type': 'calculate_ssim_released', 'crop_border': 4})
    assert abs(ours - released) > 1e-4  # another SSIM than BasicSR's per-channel one (float32 noise: ~1e-7)


def test_mismatched_shapes_name_the_metric():
    out, gt = pair()
    with pytest.raises(ValueError, match='calculate_psnr_released: image shapes differ'):
        calculate_metric({'img': out[:-1], 'img2': gt}, {'type': 'calculate_psnr_released'})
