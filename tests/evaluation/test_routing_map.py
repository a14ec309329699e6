"""gmmoe_arch.evaluation.routing_map: per-pixel gate weights at the image's size, per-pixel routing accuracy
against a label map, and the routing-map picture."""

import cv2
import numpy as np
import pytest
import torch

from gmmoe_arch import GMMoE
from gmmoe_arch.archs.gate_control import expert_blocks
from gmmoe_arch.archs.routing import IGNORE
from gmmoe_arch.data.degradations import names as degradation_names
from gmmoe_arch.evaluation.routing_map import (
    COLOURS,
    full_resolution,
    overlay,
    pixel_accuracy,
    pixel_weights,
    render_routing_map,
    save_routing_map,
    target_map,
    tint,
)

from helpers import activate_branches

EXPERTS = ['ColourExpert', 'DetailExpert', 'RainExpert']
MAPPING = {'lowlight': 'ColourExpert', 'rain': 'RainExpert'}


def spatial_net():
    torch.manual_seed(0)
    net = GMMoE(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1], gate='SpatialGate')
    return activate_branches(net).eval()


def image(h=13, w=18, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[:, w // 2 :] += 150  # a bright half: the gate sees two kinds of pixels
    return img


def test_pixel_weights_cover_the_image_at_every_block():
    net = spatial_net()
    img = image()
    weights = pixel_weights(net, img)
    assert set(weights) == set(expert_blocks(net))
    for w in weights.values():
        assert w.shape == (3, 13, 18)
        np.testing.assert_allclose(w.sum(0), 1, atol=1e-5)
    outer = full_resolution(weights)
    assert outer == ['encoders.0.0', 'decoders.1.0']
    assert any(np.ptp(weights[p], axis=(1, 2)).max() > 0 for p in outer)  # per pixel, not constant


def test_a_per_image_gate_gives_one_weight_vector_everywhere():
    torch.manual_seed(0)
    net = activate_branches(GMMoE(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])).eval()
    for w in pixel_weights(net, image()).values():
        assert np.ptp(w, axis=(1, 2)).max() == 0


def label_index(label):
    return degradation_names().index(label)


def test_pixel_accuracy_counts_winning_target_experts_over_labelled_pixels():
    weights = np.zeros((3, 2, 4), np.float32)
    weights[0, :, :2] = 0.9  # left half: ColourExpert wins
    weights[2, :, 2:] = 0.9  # right half: RainExpert wins
    weights[1] = 0.05
    label_map = np.full((2, 4), label_index('lowlight'))
    assert pixel_accuracy(weights, label_map, EXPERTS, MAPPING) == pytest.approx(0.5)
    label_map[:, 2:] = label_index('rain')
    assert pixel_accuracy(weights, label_map, EXPERTS, MAPPING) == 1
    label_map[0, :] = IGNORE  # unlabelled pixels do not count
    label_map[1, 0] = label_index('rain')
    assert pixel_accuracy(weights, label_map, EXPERTS, MAPPING) == pytest.approx(3 / 4)
    weights[1, 1, 1] = 1  # DetailExpert wins a lowlight pixel: wrong, though no label maps to it
    assert pixel_accuracy(weights, label_map, EXPERTS, MAPPING) == pytest.approx(2 / 4)
    assert pixel_accuracy(weights, np.full((2, 4), IGNORE), EXPERTS, MAPPING) is None


def test_overlay_tints_each_pixel_with_its_winner():
    img = np.full((2, 2, 3), 100, np.uint8)
    weights = np.zeros((3, 2, 2))
    weights[0, 0] = 1
    weights[2, 1] = 1
    out = overlay(img, weights, alpha=1.0)
    assert (out[0] == COLOURS[0]).all() and (out[1] == COLOURS[2]).all()
    half = overlay(img, weights, alpha=0.5)
    np.testing.assert_allclose(half[0, 0], (np.array(COLOURS[0]) + 100) / 2, atol=1)


def test_the_picture_has_the_input_a_panel_per_block_and_a_legend(tmp_path):
    net = spatial_net()
    img = image(32, 40)
    weights = pixel_weights(net, img)
    picture = render_routing_map(img, weights, EXPERTS)
    panels = 1 + 1 + len(full_resolution(weights))  # input, the mean, each full-resolution block
    assert picture.shape[1] == panels * 40 + (panels - 1) * 4
    assert picture.shape[0] > 32  # the legend below
    one = render_routing_map(img, weights, EXPERTS, blocks=['middle_blks.0'])
    assert one.shape[1] == 2 * 40 + 4
    path = tmp_path / 'routing.png'
    save_routing_map(str(path), img, weights, EXPERTS)
    assert (cv2.imread(str(path)) == picture).all()


def test_the_truth_panel_shows_each_pixels_target_expert():
    label_map = np.array([[label_index('lowlight'), label_index('rain'), IGNORE]])
    truth = target_map(label_map, EXPERTS, MAPPING)
    assert truth.tolist() == [[0, 2, -1]]
    img = np.full((1, 3, 3), 100, np.uint8)
    panel = tint(img, truth, alpha=1.0)
    assert (panel[0, 0] == COLOURS[0]).all() and (panel[0, 1] == COLOURS[2]).all() and (panel[0, 2] == 100).all()
    weights = np.ones((3, 1, 3)) / 3
    with_truth = render_routing_map(img, {'b': weights}, EXPERTS, blocks=['b'], truth=truth)
    assert with_truth.shape[1] == 3 * 3 + 2 * 4
