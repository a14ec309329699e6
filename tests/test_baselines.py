"""The classical baselines: shapes and types, and each one undoes its degradation on a synthetic image
whose clean version is known."""

import cv2
import numpy as np
import pytest
from basicsr.metrics import calculate_psnr

from gmmoe_arch.baselines import (
    BASELINES,
    box_mean,
    clahe,
    dark_channel_prior,
    dark_channel_prior_coarse,
    gamma_correction,
    guided_filter,
)

ALL = [(label, name, fn) for label, group in BASELINES.items() for name, fn in group.items()]


def smooth_image(rng, h=96, w=128, sigma=8):
    """``(h, w, 3)`` float in [0, 1]: blurred noise stretched to the full range."""
    x = cv2.GaussianBlur(rng.random((h, w, 3)), (0, 0), sigma)
    return (x - x.min()) / (x.max() - x.min())


def to_uint8(x):
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def test_every_degradation_has_a_baseline():
    assert set(BASELINES) == {'lowlight', 'rain', 'haze', 'haze_bright'}
    assert all(BASELINES[label] for label in BASELINES)


@pytest.mark.parametrize('label,name,fn', ALL, ids=[f'{label}-{name}' for label, name, _ in ALL])
def test_shape_dtype_and_determinism(label, name, fn):
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = fn(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out, fn(img.copy()))


@pytest.mark.parametrize('bad', [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8)], ids=['float', 'grey'])
def test_not_an_rgb_uint8_image_is_a_value_error(bad):
    for _, _, fn in ALL:
        with pytest.raises(ValueError, match='RGB uint8'):
            fn(bad)


def test_guided_filter_keeps_the_guides_edges_and_smooths_the_rest():
    rng = np.random.default_rng(2)
    step = np.zeros((40, 40))
    step[:, 20:] = 1.0
    noisy = step + rng.normal(0, 0.05, step.shape)
    out = guided_filter(step, noisy, radius=4, eps=1e-3)
    assert np.abs(out - step).mean() < 0.5 * np.abs(noisy - step).mean()
    assert out[:, 22:].mean() - out[:, :18].mean() > 0.95
    flat = guided_filter(np.full((40, 40), 0.5), noisy, radius=4, eps=1e-3)  # a flat guide: plain box smoothing
    assert np.allclose(flat, box_mean(box_mean(noisy, 4), 4))


def test_gamma_correction_brings_a_dark_image_to_mid_grey():
    dark = to_uint8(smooth_image(np.random.default_rng(3)) * 0.15)
    assert abs(gamma_correction(dark).mean() / 255 - 0.5) < 0.05


def test_clahe_stretches_a_low_contrast_image():
    flat = to_uint8(0.4 + 0.1 * smooth_image(np.random.default_rng(4)))
    lightness = [cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0].std() for img in (flat, clahe(flat))]
    assert lightness[1] > 1.5 * lightness[0]


def streaked(seed):
    """A smooth background and the same with bright vertical streaks 1-2 px wide; the streak mask."""
    rng = np.random.default_rng(seed)
    clean = 0.2 + 0.6 * smooth_image(rng)
    mask = np.zeros(clean.shape[:2], bool)
    for col in range(2, clean.shape[1] - 2, 7):
        top, length = rng.integers(0, 48), rng.integers(32, 96)
        mask[top : top + length, col : col + rng.integers(1, 3)] = True
    return to_uint8(clean), to_uint8(clean + 0.35 * mask[..., None]), mask


@pytest.mark.parametrize('name,factor', [('median 5x5', 0.1), ('guided filter', 0.5)])
def test_rain_baselines_remove_vertical_streaks(name, factor):
    clean, rainy, mask = streaked(5)
    out = BASELINES['rain'][name](rainy)
    before = np.abs(rainy.astype(float) - clean)[mask].mean()
    after = np.abs(out.astype(float) - clean)[mask].mean()
    assert after < factor * before
    assert calculate_psnr(out, clean, 0) > calculate_psnr(rainy, clean, 0) + 5


def test_dark_channel_prior_dehazes_a_known_scattering_model():
    rng = np.random.default_rng(6)
    clean = smooth_image(rng)
    clean = 0.05 + 0.9 * (clean - 0.9 * clean.min(axis=2, keepdims=True))  # a dark channel near zero, as outdoors
    t = np.repeat(np.linspace(0.7, 0.3, clean.shape[0])[:, None], clean.shape[1], axis=1)
    t[:12] = 0.02  # a band of dense haze (sky) shows the airlight
    airlight = np.array([0.85, 0.88, 0.92])
    hazy = to_uint8(clean * t[..., None] + airlight * (1 - t[..., None]))
    out, clean = dark_channel_prior(hazy)[12:], to_uint8(clean)[12:]
    assert calculate_psnr(out, clean, 0) > calculate_psnr(hazy[12:], clean, 0) + 10


def test_guided_refinement_removes_the_coarse_transmissions_halo_at_a_depth_edge():
    rng = np.random.default_rng(7)
    clean = smooth_image(rng)
    clean = 0.05 + 0.9 * (clean - 0.9 * clean.min(axis=2, keepdims=True))
    t = np.full(clean.shape[:2], 0.35)
    t[:, 64:] = 0.8  # a nearer object on the right: a step in depth
    t[:10] = 0.02
    airlight = np.array([0.85, 0.88, 0.92])
    hazy = to_uint8(clean * t[..., None] + airlight * (1 - t[..., None]))
    target = to_uint8(clean)[10:]
    coarse, refined = dark_channel_prior_coarse(hazy)[10:], dark_channel_prior(hazy)[10:]
    assert not np.array_equal(coarse, refined)
    band = slice(64 - 10, 64 + 10)  # the 15x15 minimum filter spreads the edge's haze estimate over 7 pixels
    assert calculate_psnr(refined[:, band], target[:, band], 0) > calculate_psnr(coarse[:, band], target[:, band], 0)
    assert calculate_psnr(coarse, target, 0) > calculate_psnr(hazy[10:], target, 0) + 5
