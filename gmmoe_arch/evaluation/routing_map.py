"""Where each expert wins: per-pixel gate weights at the image's resolution, routing accuracy against a
label map, and the routing-map picture (the winning expert's colour over the input, with a legend).

::

    from gmmoe_arch.evaluation.routing_map import pixel_weights, save_routing_map
    weights = pixel_weights(net, img)                       # {block path: (n, H, W)} at the image's size
    save_routing_map('routing.png', img, weights, expert_names(net))

A per-image gate's weights are the same at every pixel, so its map is one colour; the maps are for
per-pixel gates (``SpatialGate``). Blocks at lower resolutions are upsampled (nearest neighbour) from
their grid, which covers the network's padded input, and cropped to the image.
"""

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..archs.gate_control import expert_blocks
from ..archs.gmmoe_arch import record_gates
from ..archs.routing import PER_PIXEL, parse_expert_mapping, per_pixel, target_indices
from ..data.degradations import names as degradation_names
from ..inference.image_files import write_file
from ..inference.runner import network_device
from .ablation import image_tensor

#: one BGR colour per expert, in the network's expert order (repeated past ten experts)
COLOURS = (
    (40, 40, 230),
    (60, 180, 60),
    (230, 120, 30),
    (30, 200, 230),
    (200, 60, 200),
    (200, 200, 40),
    (120, 120, 120),
    (40, 120, 230),
    (160, 90, 40),
    (230, 230, 230),
)
MEAN_PANEL = 'mean of the full-resolution blocks'


def pixel_weights(net, img):
    """``{block path: (n_experts, H, W) float32 array}``: each expert block's gate weights for the RGB uint8
    image ``img`` (one whole-image pass, no grad) at the image's size."""
    with torch.no_grad(), record_gates(net) as gates:
        net(image_tensor(img, network_device(net)))
    return at_image_size(gates, img.shape[:2], getattr(net, 'padder_size', 1))


def rgb8(img):
    """Any image :func:`gmmoe_arch.enhance.read_image` gives (gray, RGB(A); uint8, uint16, float in [0, 1])
    as RGB uint8, for :func:`pixel_weights` and the picture."""
    img = np.asarray(img)
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    if img.dtype == np.uint16:
        return np.rint(img / 257.0).astype(np.uint8)
    if img.dtype != np.uint8:
        return np.rint(np.clip(img, 0, 1) * 255.0).astype(np.uint8)
    return img


def has_pixel_gates(net):
    """Whether any expert block of ``net`` has a per-pixel gate (routing maps are for those)."""
    return any(getattr(block.gate, 'kind', None) == PER_PIXEL for block in expert_blocks(net).values())


def at_image_size(gates, size, multiple=1, paths=None):
    """``{block path: (n_experts, H, W) float32 array}`` of the first image of :func:`record_gates`'s
    ``gates`` (each block's grid covers the input padded to a multiple of ``multiple``), at the image's
    ``size = (H, W)``; only ``paths`` when given."""
    h, w = size
    padded = (h + (-h) % multiple, w + (-w) % multiple)
    out = {}
    for path, g in gates.items():
        if paths is not None and path not in paths:
            continue
        grid = per_pixel(g[:1].float())
        full = grid.expand(-1, -1, *padded) if grid.shape[-2:] == (1, 1) else F.interpolate(grid, size=padded)
        out[path] = full[0, :, :h, :w].cpu().numpy()
    return out


def full_resolution(weights):
    """The paths among ``weights`` of the blocks that run at the input's resolution: the outermost encoder
    and decoder blocks (``encoders.0.*`` and those of the last ``decoders.*``); all paths when none is."""
    decoders = sorted({p.split('.')[1] for p in weights if p.startswith('decoders.')}, key=int)
    last = f'decoders.{decoders[-1]}.' if decoders else None
    outer = [p for p in weights if p.startswith('encoders.0.') or (last and p.startswith(last))]
    return outer or list(weights)


def mean_map(weights, paths):
    """``(n, H, W)``: the mean of the given blocks' maps."""
    return np.mean([weights[p] for p in paths], axis=0)


def pixel_accuracy(weights, label_map, expert_names, mapping):
    """Per-pixel routing accuracy: the fraction of the labelled pixels (label-map values that index a
    degradation of ``mapping``) whose winning expert (largest weight, ``(n, H, W)`` ``weights``) is one of
    that degradation's target experts (``mapping``: label -> expert name(s), :mod:`..archs.routing`).
    None when no pixel is labelled."""
    targets = target_indices(parse_expert_mapping(mapping, 'mapping'), list(expert_names), 'mapping')
    winner = np.asarray(weights).argmax(0)
    labels = np.asarray(label_map)
    right, counted = 0, 0
    for index, label in enumerate(degradation_names()):
        if label not in targets:
            continue
        here = labels == index
        counted += int(here.sum())
        right += int(np.isin(winner[here], targets[label]).sum())
    return right / counted if counted else None


def target_map(label_map, expert_names, mapping):
    """``(H, W)`` int: each pixel's target expert (the first of its degradation's, ``mapping`` as in
    :func:`pixel_accuracy`), -1 where the label map names no degradation of ``mapping``."""
    targets = target_indices(parse_expert_mapping(mapping, 'mapping'), list(expert_names), 'mapping')
    labels = np.asarray(label_map)
    out = np.full(labels.shape, -1, np.int64)
    for index, label in enumerate(degradation_names()):
        if label in targets:
            out[labels == index] = targets[label][0]
    return out


def _legend(width, expert_names):
    rows = []
    row, x = np.full((26, width, 3), 255, np.uint8), 6
    for i, name in enumerate(expert_names):
        text = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0]
        if x + 22 + text > width and x > 6:
            rows.append(row)
            row, x = np.full((26, width, 3), 255, np.uint8), 6
        cv2.rectangle(row, (x, 6), (x + 14, 20), COLOURS[i % len(COLOURS)], -1)
        cv2.putText(row, name, (x + 18, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += 30 + text
    return np.concatenate([*rows, row], axis=0)


def overlay(img, weights, alpha=0.5):
    """BGR uint8: the RGB input ``img`` with each pixel tinted by its winning expert's colour (``alpha``:
    the colour's share) from ``(n, H, W)`` ``weights``."""
    return tint(img, np.asarray(weights).argmax(0), alpha)


def tint(img, experts, alpha=0.5):
    """BGR uint8: the RGB input ``img`` tinted at each pixel by the colour of expert ``experts[y, x]``
    (an ``(H, W)`` int array; negative: left as it is)."""
    experts = np.asarray(experts)
    palette = np.array([COLOURS[i % len(COLOURS)] for i in range(max(int(experts.max()) + 1, 1))], np.float32)
    bgr = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR).astype(np.float32)
    share = np.where(experts >= 0, alpha, 0.0)[..., None]
    mixed = (1 - share) * bgr + share * palette[np.maximum(experts, 0)]
    return np.clip(mixed, 0, 255).astype(np.uint8)


def render_routing_map(img, weights, expert_names, blocks=None, alpha=0.5, truth=None):
    """BGR uint8 picture: the input, with ``truth`` (:func:`target_map`'s ``(H, W)`` target experts) a
    panel of the experts the label map asks for, then one overlay panel per entry of ``blocks`` (block
    paths or :data:`MEAN_PANEL`; the default: the mean over the full-resolution blocks, then each of them),
    titled, with a colour legend of the experts below."""
    h = img.shape[0]
    if blocks is None:
        blocks = [MEAN_PANEL, *full_resolution(weights)]
    panels = [(cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR), 'input')]
    if truth is not None:
        panels.append((tint(img, truth, alpha), 'label map (targets)'))
    for block in blocks:
        if block == MEAN_PANEL:
            panels.append((overlay(img, mean_map(weights, full_resolution(weights)), alpha), 'mean, full resolution'))
        else:
            panels.append((overlay(img, weights[block], alpha), block))
    tiles = []
    for tile, title in panels:
        tile = tile.copy()
        cv2.putText(tile, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles += [tile, np.full((h, 4, 3), 255, np.uint8)]
    body = np.concatenate(tiles[:-1], axis=1)
    return np.concatenate([body, _legend(body.shape[1], expert_names)], axis=0)


def save_routing_map(path, img, weights, expert_names, blocks=None, alpha=0.5, truth=None):
    """Write :func:`render_routing_map`'s picture as a PNG at ``path`` (complete or not at all;
    ``EnhanceError`` naming it on failure)."""
    ok, png = cv2.imencode('.png', render_routing_map(img, weights, expert_names, blocks, alpha, truth))
    write_file(path, png.tobytes())
