"""gmmoe_arch.data.regions: smooth masks over 2+ degradations, and a label map that says which degraded image
each input pixel comes from."""

import cv2
import numpy as np
import pytest

from gmmoe_arch.data import degradations, regions

SHAPE = (96, 128)


def photo(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (0, 0), 3)
    img[: shape[0] // 3, : shape[1] // 2] = (200, 180, 90)
    return img


def interior(index, region, margin):
    """Pixels of ``region`` at least ``margin`` pixels from any other region."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode((index == region).astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)


@pytest.mark.parametrize('seed', range(6))
def test_masks_are_smooth_cover_two_or_more_labels_and_sum_to_one(seed):
    params = regions.regions_params(np.random.default_rng(seed))
    count = len(params['labels'])
    assert 2 <= count <= len(degradations.names()) and len(set(params['labels'])) == count
    assert set(params['labels']) <= set(degradations.names())  # variants such as haze_bright are not drawn
    index = regions.region_index(SHAPE, params)
    shares = np.bincount(index.ravel(), minlength=count) / index.size
    assert np.allclose(shares, params['shares'], atol=0.01) and shares.min() >= regions.MIN_SHARE - 0.01
    boundary = (np.diff(index, axis=0) != 0).mean() + (np.diff(index, axis=1) != 0).mean()
    assert boundary < 0.15  # blobs, not speckle (independent random labels give about 1.3)
    masks = regions.soft_masks(index, count, params['edge_sigma'])
    assert np.allclose(masks.sum(axis=0), 1.0) and masks.min() >= 0
    steps = max(np.abs(np.diff(masks, axis=1)).max(), np.abs(np.diff(masks, axis=2)).max())
    assert 0.05 < steps < 0.5  # soft edges: no jump from 0 to 1 between two pixels, but a transition


@pytest.mark.parametrize('seed', range(4))
def test_each_input_pixel_is_its_regions_degraded_image_away_from_edges(seed):
    img = photo(seed)
    lq, params, label_map = regions.compose(img, np.random.default_rng(seed), rain='heavy')
    assert lq.shape == img.shape and lq.dtype == np.uint8 and label_map.shape == SHAPE
    # replay the draws: the regions, then each degradation's parameters and its image of the whole frame
    replay = np.random.default_rng(seed)
    drawn = regions.regions_params(replay)
    assert drawn == {key: params[key] for key in drawn}
    whole = {}
    for region in params['regions']:
        entry = degradations.TABLE[region['label']]
        assert entry.params(replay, rain='heavy') == region['params']
        whole[region['label']] = entry.apply(img, region['params'], replay)
    indices = degradations.label_indices()
    index = regions.region_index(SHAPE, params)
    margin = int(np.ceil(3 * params['edge_sigma']))
    for position, label in enumerate(params['labels']):
        inside = interior(index, position, margin)
        assert inside.sum() > 50
        assert np.all(label_map[inside] == indices[label])
        assert np.array_equal(lq[inside], whole[label][inside])
        others = [other for other in params['labels'] if other != label]
        assert all((lq[inside] != whole[other][inside]).any(axis=1).mean() > 0.5 for other in others)
    assert params['dominant'] == params['labels'][int(np.argmax(np.bincount(index.ravel())))]


def test_regions_need_two_degradations():
    with pytest.raises(ValueError, match='regions: need at least 2 degradations'):
        regions.regions_params(np.random.default_rng(0), choices=['rain'])
