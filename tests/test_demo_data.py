"""The embedded demo: synthetic low-light data from scikit-image's photographs, and the demo's baselines."""

import os

import cv2
import numpy as np
import pytest
from basicsr.data import build_dataset

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from datasets_lmdb import demo
from gmmoe_arch.baselines import clahe, gamma_correction
from gmmoe_arch.evaluation import save_grid


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')
    return out, demo.build(str(out), seed=3, variants=2, train_side=64, val_side=48)


def test_layout_disjoint_photos_and_lmdb(built):
    out, record = built
    assert not set(demo.TRAIN_PHOTOS) & set(demo.VAL_PHOTOS)
    train = sorted(os.listdir(out / 'our485' / 'low'))
    assert train == sorted(os.listdir(out / 'our485' / 'high'))
    assert len(train) == 2 * len(demo.TRAIN_PHOTOS) == len(record['train'])
    assert sorted(os.listdir(out / 'eval15' / 'low')) == [f'{p}.png' for p in sorted(demo.VAL_PHOTOS)]
    for split, n in (('train', len(train)), ('val', len(demo.VAL_PHOTOS))):
        dataset = build_dataset(
            {
                'name': split,
                'type': 'LLIEPairedDataset',
                'phase': 'val',
                'dataroot_lq': str(out / 'lmdb' / split / 'lq.lmdb'),
                'dataroot_gt': str(out / 'lmdb' / split / 'gt.lmdb'),
                'io_backend': {'type': 'lmdb'},
            }
        )
        assert len(dataset) == n
        sample = dataset[0]
        assert max(sample['gt'].shape[1:]) <= (64 if split == 'train' else 48)
        assert sample['lq'].mean() < 0.6 * sample['gt'].mean()  # dark input, normal target


def test_degradations_vary_and_are_seeded(built, tmp_path):
    out, record = built
    exposures = [r['exposure'] for r in record['train']]
    assert len(set(exposures)) == len(exposures) and all(0.04 <= e <= 0.1 for e in exposures)
    again = demo.build(str(tmp_path), seed=3, variants=2, train_side=64, val_side=48)
    assert again == record
    name = record['val'][0]['name']
    assert (tmp_path / 'eval15' / 'low' / name).read_bytes() == (out / 'eval15' / 'low' / name).read_bytes()


def test_second_build_keeps_everything(built):
    out, record = built
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob('*') if p.is_file()}
    assert demo.build(str(out), seed=3, variants=2, train_side=64, val_side=48) == record
    assert {p: p.stat().st_mtime_ns for p in out.rglob('*') if p.is_file()} == stamp


def test_degradation_physics_on_flat_patches():
    rng = np.random.default_rng(0)
    params = {
        'exposure': 0.05,
        'gains_rgb': [1.05, 1.0, 0.95],
        'photons_white': 1000.0,
        'read_noise': 0.001,
        'gamma': 2.2,
    }
    means, spreads = [], []
    for level in (100, 200):
        flat = np.full((200, 200, 3), level, np.uint8)
        low = demo.degrade(flat, params, rng)
        linear = (low.astype(np.float64) / 255) ** params['gamma']  # undo the display gamma
        expected = demo.srgb_to_linear(level / 255) * params['exposure'] * np.asarray(params['gains_rgb'])
        np.testing.assert_allclose(linear.mean(axis=(0, 1)), expected, rtol=0.05)  # exposure and cast
        means.append(linear.mean())
        spreads.append(linear.std(axis=(0, 1)).mean())
    # shot noise: brighter signal, larger absolute noise (Poisson variance grows with the signal)
    assert spreads[1] > spreads[0] > 0


def test_baselines_and_grid(tmp_path):
    rng = np.random.default_rng(1)
    dark = (rng.random((40, 60, 3)) * 60).astype(np.uint8)
    gamma = gamma_correction(dark)
    assert abs(gamma.mean() / 255 - 0.5) < 0.08 and gamma.shape == dark.shape
    enhanced = clahe(dark)
    assert enhanced.shape == dark.shape and enhanced.mean() > dark.mean()
    path = str(tmp_path / 'grid.png')
    square = cv2.resize(gamma, (40, 40))
    save_grid([[dark] * 5, [square] * 5], list('abcde'), path, height=50)
    img = cv2.imread(path)
    # the square row is scaled to the landscape row's width (5 x 75 px + 4 gaps), not padded with white
    assert img.shape[1] == 5 * 75 + 4 * 4 and img.shape[0] == 50 + 4 + 75
    square_row = img[54:]
    assert (square_row[:, -4:] != 255).any() and square_row[:, :75].std() > 0
