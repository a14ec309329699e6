"""The haze models of gmmoe_arch.data.degradations: ``haze``'s depth is drawn from its parameters, not read off the
image (ground plane, smooth field, occluders); ``haze_bright`` keeps the first model, whose depth follows brightness."""

import numpy as np
import pytest

from gmmoe_arch.data import degradations as D

SHAPE = (60, 80)


def transmission(hazy, clean, airlight):
    """``t`` recovered from ``I - A = t (J - A)``, per pixel and channel where ``|J - A|`` is large."""
    j, i = clean / 255.0, hazy / 255.0
    usable = np.abs(j - airlight) > 0.3
    return np.where(usable, (i - airlight) / np.where(usable, j - airlight, 1), np.nan)


def test_haze_params_stay_in_resides_ranges():
    for seed in range(40):
        params = D.haze_params(np.random.default_rng(seed))
        assert 0.6 <= params['beta'] <= 1.8
        assert all(0.67 <= a <= 1.0 for a in params['airlight_rgb'])
        assert max(params['airlight_rgb']) - min(params['airlight_rgb']) <= 2 * D.HAZE_TINT + 1e-9
        assert D.HAZE_OCCLUDERS[0] <= len(params['occluders']) <= D.HAZE_OCCLUDERS[1]


@pytest.mark.parametrize('seed', range(3))
def test_haze_depth_does_not_follow_the_image_but_haze_bright_does(seed):
    rng = np.random.default_rng(seed)
    dark = np.zeros((*SHAPE, 3), np.uint8)
    bright = np.full((*SHAPE, 3), 255, np.uint8)
    split = dark.copy()
    split[:, SHAPE[1] // 2 :] = 255  # one half bright: haze_bright puts it farther
    params = D.haze_params(rng)
    airlight = np.asarray(params['airlight_rgb'])
    for img in (dark, bright, split):
        assert np.array_equal(D.add_haze(img, params), D.scatter(img, D.scene_depth(SHAPE, params), params))
    t_dark = transmission(D.add_haze(dark, params), dark, airlight)
    t_split = transmission(D.add_haze(split, params), split, airlight)
    t_bright = transmission(D.add_haze(bright, params), bright, airlight)
    both = ~np.isnan(t_dark) & ~np.isnan(t_split)
    assert np.nanmax(np.abs(t_dark - t_split)[both]) < 0.02  # same depth whatever the content (8-bit rounding)
    assert np.all(np.isnan(t_bright) | (t_bright <= 1.0))
    old = D.depth_proxy(split, D.haze_bright_params(rng)['depth_mix'])
    assert old[:, SHAPE[1] // 2 + 8 :].mean() > old[:, : SHAPE[1] // 2 - 8].mean() + 0.1  # haze_bright: bright is far


def test_ground_plane_recedes_to_the_horizon_and_occluders_are_steps():
    params = D.haze_params(np.random.default_rng(0))
    flat = dict(params, field=0.0, occluders=[], tilt=0.0, horizon=0.25)
    depth = D.scene_depth(SHAPE, flat)
    assert depth.min() == pytest.approx(D.HAZE_NEAREST) and depth.max() == pytest.approx(1.0)
    assert np.all(np.diff(depth, axis=0) <= 1e-12)  # nearer towards the bottom of the frame
    assert np.allclose(depth[: int(0.25 * SHAPE[0])], 1.0)  # above the horizon: the far limit
    assert np.allclose(depth, depth[:, :1])  # no tilt: rows are level
    box = {'left': 0.3, 'right': 0.6, 'top': 0.2, 'bottom': 0.8}
    blocked = D.scene_depth(SHAPE, dict(flat, occluders=[box]))
    rows, cols = slice(12, 48), slice(24, 48)
    inside = blocked[rows, cols]
    assert np.allclose(inside[:20], inside[0, 0])  # one depth above its foot: an object standing there
    assert blocked[20, 23] - blocked[20, 24] > 0.2  # a sharp step at its edge
    tilted = D.scene_depth(SHAPE, dict(flat, tilt=6.0))
    assert not np.allclose(tilted, tilted[:, :1])


def test_haze_bright_keeps_the_first_models_images():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    params = D.haze_bright_params(np.random.default_rng(1))
    assert set(params) == {'beta', 'airlight_rgb', 'depth_mix'}
    t = np.exp(-params['beta'] * D.depth_proxy(img, params['depth_mix']))[..., None]
    expected = np.round(np.clip(img / 255.0 * t + np.asarray(params['airlight_rgb']) * (1 - t), 0, 1) * 255)
    assert np.array_equal(D.add_haze_bright(img, params), expected.astype(np.uint8))


def test_smooth_field_is_normalised_smooth_and_seeded():
    field = D.smooth_field(SHAPE, 3, 20.0)
    assert field.shape == SHAPE and abs(field.mean()) < 1e-9 and field.std() == pytest.approx(1.0)
    assert np.abs(np.diff(field, axis=1)).mean() < 0.2  # white noise of unit std: about 1.1
    assert np.array_equal(field, D.smooth_field(SHAPE, 3, 20.0)) and not np.allclose(
        field, D.smooth_field(SHAPE, 4, 20.0)
    )
