"""Gate weights, wherever they are read: the one module that knows their two shapes.

A gate (:mod:`.gates`) declares its ``kind``: :data:`PER_IMAGE` weights are ``(B, n)``, one vector per
image; :data:`PER_PIXEL` weights are ``(B, n, H, W)``, one vector per pixel of the block's input. Both are
non-negative and sum to one over dimension 1. Everything that reads gate weights goes through here:

* mixing: :func:`expert_factor` (expert ``i``'s weight, broadcastable onto its ``(B, C, H, W)`` output);
* top-k: :func:`top_k` (the picks per image or per pixel; :func:`noisy_scores` and :func:`pick`), :func:`scatter_picks`,
  :func:`used_experts`, :func:`pick_probability` (the smooth load of Shazeer et al.'s load loss);
* statistics: :func:`per_image` (``(B, n)`` for either kind, the pixel mean of per-pixel weights),
  :func:`per_pixel` (``(B, n, H, W)`` or ``(B, n, 1, 1)``);
* labels: :func:`parse_expert_mapping` / :func:`target_indices` (degradation label -> experts),
  :func:`label_mask` (string labels or a per-pixel label map -> the target experts at each pixel),
  :func:`pad_label_map`, :func:`predict_labels` and :func:`routing_accuracy`.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PER_IMAGE = 'image'
PER_PIXEL = 'pixel'
KINDS = (PER_IMAGE, PER_PIXEL)
IGNORE = -1  # a label-map value that no expert is the target of (padding, unlabelled pixels)


def expert_factor(weights: Tensor, i: int) -> Tensor:
    """Expert ``i``'s weights, shaped to multiply its ``(B, C, H, W)`` output: ``(B, 1, 1, 1)`` from
    ``(B, n)`` weights, ``(B, 1, H, W)`` from ``(B, n, H, W)``."""
    return weights[:, i, None, None, None] if weights.dim() == 2 else weights[:, i, None]


def per_image(weights: Tensor) -> Tensor:
    """``(B, n)``: the weights themselves, or per-pixel weights averaged over the pixels."""
    return weights if weights.dim() == 2 else weights.mean((2, 3))


def per_pixel(weights: Tensor) -> Tensor:
    """``(B, n, H, W)``: the weights themselves, or per-image weights as ``(B, n, 1, 1)`` (broadcasting)."""
    return weights[:, :, None, None] if weights.dim() == 2 else weights


GUMBEL = 'gumbel'
GAUSSIAN = 'gaussian'
NO_NOISE = 'none'
NOISES = (GUMBEL, GAUSSIAN, NO_NOISE)


def top_k(weights: Tensor, k: int, sampling: bool, noise: str = GUMBEL, std: float = 1.0) -> tuple[Tensor, Tensor]:
    """The experts each image (per-image weights) or each pixel (per-pixel weights) mixes and their weights:
    ``(B, n[, H, W])`` -> ``(B, k[, H, W])`` expert indices and ``(B, k[, H, W])`` weights that sum to one
    over dimension 1.

    ``sampling=False`` (inference): the ``k`` largest weights, renormalised over the ``k``. ``sampling=True``
    (training): the ``k`` largest of :func:`noisy_scores` (``noise``: :data:`GUMBEL`, the default, samples
    ``k`` experts without replacement in proportion to their weights; :data:`GAUSSIAN` is Shazeer et al.'s
    noisy top-k with a fixed ``std``; :data:`NO_NOISE` picks as at inference), so that every expert keeps
    being picked, and learning. The renormalised weights are then multiplied by
    ``m / m.detach()``, ``m`` the picked weights' sum: the value is unchanged, but the gate also gets a
    gradient for how useful the picked experts' output was (with ``k = 1`` the renormalised weight is
    exactly 1, and without this factor no gradient would reach the gate through the output). The noise is
    drawn from torch's generator of ``weights``' device, so a checkpointed block (which restores the
    generator) recomputes the same picks.
    """
    scores = noisy_scores(weights, noise if sampling else NO_NOISE, std)
    return pick(weights, scores, k, sampling)


def noisy_scores(weights: Tensor, noise: str, std: float = 1.0) -> Tensor:
    """The detached log-weights (the gate's logits / temperature, up to a constant per image or pixel) plus
    ``noise``: :data:`GUMBEL` (0, 1) noise, :data:`GAUSSIAN` N(0, ``std``^2) noise, or none."""
    scores = weights.detach().log()
    if noise == GUMBEL:
        return scores - torch.empty_like(scores).exponential_().log()
    if noise == GAUSSIAN:
        return scores + std * torch.randn_like(scores)
    return scores


def pick(weights: Tensor, scores: Tensor, k: int, sampling: bool) -> tuple[Tensor, Tensor]:
    """The ``k`` largest ``scores`` and their ``weights`` renormalised (see :func:`top_k`; ``sampling``: with
    the gradient factor ``m / m.detach()``)."""
    chosen = scores.topk(k, dim=1).indices
    picked = weights.gather(1, chosen)
    mass = picked.sum(1, keepdim=True)
    mix = picked / mass
    return chosen, mix * (mass / mass.detach()) if sampling else mix


def pick_probability(weights: Tensor, scores: Tensor, k: int, noise: str, std: float = 1.0) -> Tensor:
    """Shazeer et al.'s smooth load: the probability that each expert is among the ``k`` picks when its own
    noise is drawn again, the others' kept; ``(B, n[, H, W])``, differentiable in ``weights``.

    For expert ``i`` the threshold ``t_i`` is the ``k``-th largest noisy score of the other experts (the
    ``k+1``-th of all when ``i`` was picked, else the ``k``-th); ``P_i = P(log w_i + noise > t_i)``: the normal
    CDF ``Phi((log w_i - t_i) / std)`` for :data:`GAUSSIAN` noise, ``1 - exp(-exp(log w_i - t_i))`` for
    :data:`GUMBEL`. With ``k`` equal to the number of experts every expert is always picked (ones)."""
    n = weights.shape[1]
    if k >= n:
        return torch.ones_like(weights)
    if noise not in (GUMBEL, GAUSSIAN):
        raise ValueError(f'the load of the experts needs noisy routing (gumbel or gaussian), got noise {noise!r}')
    top = scores.detach().topk(k + 1, dim=1).values
    kth, next_kth = top.narrow(1, k - 1, 1), top.narrow(1, k, 1)
    picked = scores.detach() >= kth
    margin = weights.float().clamp(min=1e-20).log() - torch.where(picked, next_kth, kth).float()
    if noise == GAUSSIAN:
        return torch.special.ndtr(margin / std)
    return -torch.expm1(-margin.exp())


def scatter_picks(weights: Tensor, chosen: Tensor, mix: Tensor) -> Tensor:
    """The weights of :func:`top_k`'s picks in ``weights``' shape, zero for the experts not picked."""
    return torch.zeros_like(weights).scatter(1, chosen, mix)


def used_experts(chosen: Tensor, n: int) -> list[list[bool]]:
    """``used[b][i]``: whether image ``b`` picked expert ``i`` (per-pixel picks: at any of its pixels)."""
    hits = torch.zeros(chosen.shape[0], n, dtype=torch.bool, device=chosen.device)
    return hits.scatter_(1, chosen.reshape(chosen.shape[0], -1), True).tolist()


def parse_expert_mapping(experts, where):
    """``{label: Name or [names]}`` -> ``{label: [names]}``; ValueError naming ``<where>[.label]``."""
    if not isinstance(experts, dict) or not experts:
        raise ValueError(
            f'{where}: expected a mapping from degradation label to expert name(s), '
            f'e.g. {{lowlight: ColourExpert, rain: RainExpert, haze: HazeExpert}}; got {experts!r}'
        )
    mapping = {}
    for label, names in experts.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f'{where}.{label}: expected an expert name or a list of names, got {names!r}')
        mapping[str(label)] = list(names)
    return mapping


def target_indices(mapping, expert_names, where):
    """``{label: [names]}`` -> ``{label: [indices into expert_names]}`` (every expert of that class).

    Raises ValueError naming ``<where>.<label>`` and the network's experts for a name the network lacks."""
    indices = {}
    for label, names in mapping.items():
        unknown = [n for n in names if n not in expert_names]
        if unknown:
            raise ValueError(
                f'{where}.{label}: the network has no expert {", ".join(unknown)}; '
                f'its experts (network_g.experts) are {", ".join(expert_names) or "none"}'
            )
        indices[label] = [i for i, name in enumerate(expert_names) if name in names]
    return indices


def pad_label_map(label_map: Tensor, multiple: int) -> Tensor:
    """``(B, H, W)`` label map padded right/bottom with :data:`IGNORE` to multiples of ``multiple``, as the
    network pads its input, so that each level's blocks see it downsampled on their own grid."""
    h, w = label_map.shape[-2:]
    return F.pad(label_map, (0, (-w) % multiple, 0, (-h) % multiple), value=IGNORE)


def label_mask(labels, indices, n, size=None, label_names=None):
    """The target experts at each image or pixel, as a float mask broadcastable against :func:`per_pixel`
    weights of the same batch.

    Args:
        labels: ``B`` strings (one degradation label per image) -> ``(B, n, 1, 1)``; or a ``(B, H, W)``
            long label map of indices into ``label_names`` (:data:`IGNORE` or any other value outside it:
            no target) -> ``(B, n, h, w)``, resized to ``size = (h, w)`` by nearest neighbour (None: as is).
        indices: ``{label: [expert indices]}`` (:func:`target_indices`); labels not in it have no target.
        n: the number of experts.
        label_names: the labels the map's indices stand for (``gmmoe_arch.data.degradations.names()``).
    """
    if not isinstance(labels, Tensor):
        mask = torch.zeros(len(labels), n)
        for b, label in enumerate(labels):
            mask[b, indices.get(label, [])] = 1
        return mask[:, :, None, None]
    table = torch.zeros(len(label_names) + 1, n, device=labels.device)  # the last row: no target
    for row, label in enumerate(label_names):
        table[row, indices.get(label, [])] = 1
    index = labels if size is None or tuple(labels.shape[-2:]) == tuple(size) else _nearest(labels, size)
    index = torch.where((index >= 0) & (index < len(label_names)), index, len(label_names))
    return table[index].permute(0, 3, 1, 2)


def _nearest(label_map, size):
    return F.interpolate(label_map[:, None].float(), size=tuple(size), mode='nearest')[:, 0].long()


def _label_scores(gate_vectors, expert_names, mapping):
    """``(N, n_experts)`` -> ``(list of mapped labels, (N, n_labels) summed target weights)``."""
    parsed = parse_expert_mapping(mapping, 'mapping')
    indices = target_indices(parsed, list(expert_names), 'mapping')
    vectors = torch.as_tensor(np.asarray(gate_vectors, dtype=np.float64))
    if vectors.numel() == 0:
        vectors = vectors.reshape(0, len(expert_names))
    if vectors.dim() != 2 or vectors.shape[1] != len(expert_names):
        raise ValueError(
            f'gate vectors must be (N, {len(expert_names)}) for experts {", ".join(expert_names)}, '
            f'got {tuple(vectors.shape)}'
        )
    scores = torch.stack([vectors[:, idx].sum(1) for idx in indices.values()], dim=1)
    return list(indices), scores


def predict_labels(gate_vectors, expert_names, mapping):
    """The degradation label read off each image's gate vector.

    ``gate_vectors``: ``(N, n_experts)`` (tensor or array; e.g. :func:`per_image` weights averaged over the
    blocks), ``expert_names``: the n class names, ``mapping``: label -> expert name(s).
    Returns N labels: for each image, the label whose target experts get the highest summed weight (ties go
    to the label first in ``mapping``)."""
    labels, scores = _label_scores(gate_vectors, expert_names, mapping)
    return [labels[i] for i in scores.argmax(1).tolist()] if len(scores) else []


def mapped_predictions(gate_vectors, labels, expert_names, mapping):
    """``[(predicted, true label)]`` for the images whose label is a key of ``mapping``."""
    if len(labels) != len(gate_vectors):
        raise ValueError(f'routing_accuracy: {len(labels)} label(s) for {len(gate_vectors)} gate vector(s)')
    predicted = predict_labels(gate_vectors, expert_names, mapping)
    return [(p, t) for p, t in zip(predicted, labels) if t in mapping]


def accuracy(pairs):
    """The fraction of ``(predicted, true)`` pairs that agree."""
    return sum(p == t for p, t in pairs) / len(pairs)


def routing_accuracy(gate_vectors, labels, expert_names, mapping):
    """Fraction of the images whose label is a key of ``mapping`` for which :func:`predict_labels` gives
    that label; ValueError when no image has such a label."""
    pairs = mapped_predictions(gate_vectors, labels, expert_names, mapping)
    if not pairs:
        raise ValueError(f'routing_accuracy: no image has a label of the mapping ({", ".join(mapping)})')
    return accuracy(pairs)
