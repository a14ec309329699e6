"""A network over the evaluated pairs: its outputs, scores per label, gate weights and routing accuracy.

The network runs through :func:`gmmoe_arch.enhance.enhance_image` (the same pixel conversion and rounding as
``gmmoe enhance`` and BasicSR's ``tensor2img``), on the whole image unless ``max_pixels`` asks for tiles, and
each image's gate weights (one vector per expert block) are gathered in a :class:`GateStats`.
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..archs.gmmoe_arch import expert_names
from ..enhance import enhance_image
from ..models.gate_stats import GateStats, routing_accuracy
from .data import by_label
from .scores import OURS, score


@dataclass
class NetworkResult:
    """What :func:`run_network` measured: ``scores`` ``{label: {metric: mean}}``, ``gates`` ``{label: {expert:
    mean weight over blocks and images}}`` (empty for a network without gates), ``routing_accuracy`` (None
    without a mapping whose experts the network has), the :class:`GateStats` and ``{label: [outputs]}``."""

    scores: dict[str, dict[str, float]]
    gates: dict[str, dict[str, float]]
    routing_accuracy: Optional[float]
    stats: GateStats
    experts: list[str]
    outputs: dict[str, list[np.ndarray]] = field(repr=False)


def gate_summary(stats, names, mapping=None):
    """``({label: {expert: mean weight}}, routing accuracy)``; the accuracy is None without ``mapping``, when the
    network lacks one of its experts or when no image has one of its labels."""
    weights = {label: dict(zip(names, stats.overall(label).tolist())) for label in stats.labels}
    if not mapping or not weights or not set(expert_list(mapping)) <= set(names):
        return weights, None
    vectors, labels = stats.vectors()
    if not any(label in mapping for label in labels):
        return weights, None
    return weights, routing_accuracy(vectors, labels, names, mapping)


def expert_list(mapping):
    """The expert names of a ``{label: expert name(s)}`` mapping, in order (repeats kept)."""
    return [e for experts in mapping.values() for e in ([experts] if isinstance(experts, str) else experts)]


def run_network(net, pairs, mapping=None, metrics=OURS, max_pixels=None):
    """Run ``net`` (eval mode) on every pair's lq image and score it per label (see :class:`NetworkResult`).

    Args:
        mapping: ``{label: expert name(s)}`` (``train.gate_opt.experts``' form) for the routing accuracy.
        max_pixels: tile images with more pixels than this (None: the whole image, as ``basicsr test``).
    """
    stats, outputs, result = GateStats(), {}, {}
    for label, group in by_label(pairs).items():
        outputs[label] = []
        for pair in group:
            gates = {}
            pixels = max_pixels or pair.lq.shape[0] * pair.lq.shape[1]
            outputs[label].append(enhance_image(net, pair.lq, max_pixels=pixels, gates=gates))
            stats.add({path: torch.from_numpy(np.asarray(w))[None] for path, w in gates.items()}, [label])
        result[label] = score([(out, p.gt) for out, p in zip(outputs[label], group)], metrics)
    names = expert_names(net)
    gates, routing = gate_summary(stats, names, mapping)
    return NetworkResult(result, gates, routing, stats, names, outputs)
