"""gmmoe_arch.archs.routing: gate weights of both kinds, per image (B, n) and per pixel (B, n, H, W), read the
same way by the mixing, top-k, statistics and labels."""

import pytest
import torch

from gmmoe_arch.archs import routing


def pixel_weights(b=2, n=3, h=4, w=5, seed=0):
    return torch.randn(b, n, h, w, generator=torch.Generator().manual_seed(seed)).softmax(1)


def test_expert_factor_broadcasts_either_kind_onto_expert_outputs():
    image, pixel = pixel_weights().mean((2, 3)), pixel_weights()
    out = torch.randn(2, 6, 4, 5)
    assert routing.expert_factor(image, 1).shape == (2, 1, 1, 1)
    assert routing.expert_factor(pixel, 1).shape == (2, 1, 4, 5)
    torch.testing.assert_close(routing.expert_factor(image, 2) * out, image[:, 2].reshape(2, 1, 1, 1) * out)
    torch.testing.assert_close(routing.expert_factor(pixel, 0) * out, pixel[:, :1] * out)


def test_per_image_and_per_pixel_views():
    pixel = pixel_weights()
    image = pixel.mean((2, 3))
    torch.testing.assert_close(routing.per_image(pixel), image)
    assert routing.per_image(image) is image
    assert routing.per_pixel(image).shape == (2, 3, 1, 1) and routing.per_pixel(pixel) is pixel


@pytest.mark.parametrize('shape', [(4, 5), (5, 3, 2)])
def test_top_k_keeps_the_k_largest_per_image_or_pixel_renormalised(shape):
    weights = torch.randn(shape[0], 5, *shape[2:]).softmax(1)
    chosen, mix = routing.top_k(weights, 2, sampling=False)
    assert torch.equal(chosen, weights.topk(2, dim=1).indices)
    torch.testing.assert_close(mix.sum(1), torch.ones_like(mix.sum(1)))
    sparse = routing.scatter_picks(weights, chosen, mix)
    assert sparse.shape == weights.shape and ((sparse > 0).sum(1) == 2).all()
    expected = torch.where(sparse > 0, weights, 0)
    torch.testing.assert_close(sparse, expected / expected.sum(1, keepdim=True))


def test_sampled_top_k_follows_the_weights_and_passes_a_gradient():
    weights = torch.tensor([[0.7, 0.2, 0.1]]).repeat(4000, 1).requires_grad_()
    torch.manual_seed(0)
    chosen, mix = routing.top_k(weights, 1, sampling=True)
    freq = torch.bincount(chosen.flatten(), minlength=3).float() / 4000
    assert (freq - torch.tensor([0.7, 0.2, 0.1])).abs().max() < 0.03
    assert torch.equal(mix.detach(), torch.ones_like(mix))
    mix.sum().backward()
    assert weights.grad.abs().sum() > 0


def test_used_experts_marks_an_image_where_any_pixel_picked():
    chosen = torch.zeros(2, 1, 2, 2, dtype=torch.long)
    chosen[0, 0, 1, 1] = 2  # image 0: experts 0 and 2; image 1: expert 0 only
    assert routing.used_experts(chosen, 3) == [[True, False, True], [True, False, False]]
    assert routing.used_experts(torch.tensor([[1], [0]]), 3) == [[False, True, False], [True, False, False]]


def test_label_mask_from_strings_and_from_label_maps():
    indices = {'lowlight': [0], 'rain': [1, 2]}
    names = ['lowlight', 'rain', 'haze']
    strings = routing.label_mask(['rain', 'haze', 'lowlight'], indices, 3)
    assert strings.shape == (3, 3, 1, 1)
    assert strings[:, :, 0, 0].tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    label_map = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, -1], [2, 2, -1, 7]]])
    full = routing.label_mask(label_map, indices, 3, None, names)
    assert full.shape == (1, 3, 4, 4)
    assert full[0, :, 0, 0].tolist() == [1, 0, 0] and full[0, :, 0, 3].tolist() == [0, 1, 1]
    assert full[0, :, 3, 0].sum() == 0 and full[0, :, 3, 3].sum() == 0  # haze unmapped, 7 outside the table
    half = routing.label_mask(label_map, indices, 3, (2, 2), names)
    assert half.shape == (1, 3, 2, 2) and torch.equal(half, full[:, :, ::2, ::2])


def test_pad_label_map_pads_like_the_network_input():
    padded = routing.pad_label_map(torch.zeros(2, 5, 7, dtype=torch.long), 4)
    assert padded.shape == (2, 8, 8)
    assert (padded[:, :5, :7] == 0).all() and (padded[:, 5:] == routing.IGNORE).all()
    assert (padded[:, :, 7:] == routing.IGNORE).all()
