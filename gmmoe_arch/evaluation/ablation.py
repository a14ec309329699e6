"""Does a gate decide? The paper's gate ablation and the spread of the gate weights across images.

:func:`gate_ablation` scores a network on the pairs twice: as trained, and with every expert block's gate
frozen to that block's mean weights (:func:`~gmmoe_arch.archs.gate_control.frozen_gates`, the means from
:func:`~gmmoe_arch.archs.gate_control.mean_gate_weights` over the pairs' inputs or over ``reference``
images). A gate that gives every image the same weights loses nothing when frozen (``delta`` 0); the drop
is what the gate's per-image (per-pixel) routing is worth. :func:`gate_spread` says how much the weights
move between images at all::

    from gmmoe_arch.evaluation.ablation import gate_ablation
    result = gate_ablation(net, ev.load_pairs('datasets/demo/eval15', label='lowlight'))
    result['delta']['all']['psnr']      # trained minus frozen, dB
    result['spread']['max_range']       # the largest max-min of an expert's weight over the images
"""

import numpy as np
import torch

from ..archs.gate_control import frozen_gates, mean_gate_weights
from ..archs.gmmoe_arch import expert_names
from ..enhance import enhance_image
from ..inference.runner import network_device
from .scores import OURS, score

ALL = 'all'  # the key of the scores over every pair, beside the per-label ones


def image_tensor(img, device):
    """An RGB uint8 ``(H, W, 3)`` array -> ``(1, 3, H, W)`` float32 in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div(255.0)[None].to(device)


def run_scored(net, pairs, metrics=OURS):
    """``(scores, weights)``: ``{label and 'all': {metric: mean}}`` of ``net`` on the pairs (whole images,
    as ``gmmoe evaluate``), and ``{block path: (N, n_experts) float64}`` each image's gate weights (a
    per-pixel gate's as their pixel mean)."""
    outputs, weights = [], {}
    for pair in pairs:
        gates = {}
        outputs.append(enhance_image(net, pair.lq, max_pixels=pair.lq.shape[0] * pair.lq.shape[1], gates=gates))
        for path, w in gates.items():
            weights.setdefault(path, []).append(np.asarray(w, dtype=np.float64))
    scored = [(out, p.gt) for out, p in zip(outputs, pairs)]
    scores = {ALL: score(scored, metrics)}
    for label in dict.fromkeys(p.label for p in pairs):
        scores[label] = score([s for s, p in zip(scored, pairs) if p.label == label], metrics)
    return scores, {path: np.stack(ws) for path, ws in weights.items()}


def gate_spread(weights, names):
    """How far each block's gate weights move between images, from :func:`run_scored`'s ``{path: (N, n)}``:
    ``{'blocks': {path: {'std': {expert: std over images}, 'range': {expert: max - min}}}, 'max_std',
    'max_range'}`` (the maxima over blocks and experts)."""
    blocks = {
        path: {
            'std': dict(zip(names, w.std(0).tolist())),
            'range': dict(zip(names, (w.max(0) - w.min(0)).tolist())),
        }
        for path, w in weights.items()
    }
    return {
        'blocks': blocks,
        'max_std': max((max(b['std'].values()) for b in blocks.values()), default=0.0),
        'max_range': max((max(b['range'].values()) for b in blocks.values()), default=0.0),
    }


def gate_ablation(net, pairs, metrics=OURS, reference=None):
    """The network as trained against the same network with each block's gate frozen to its mean weights.

    Args:
        net: a GM-MoE network (put in eval mode here).
        pairs: the scored :class:`~.data.Pair` s.
        reference: RGB uint8 images to take the mean weights over (None: the pairs' inputs).

    Returns ``{'trained': scores, 'frozen_mean': scores, 'delta': trained - frozen, 'means': {path: [n]},
    'spread': gate_spread(...), 'experts': names, 'reference': 'pairs' | N}``; scores are ``{label and
    'all': {metric: mean}}``.
    """
    net.eval()
    names = expert_names(net)
    trained, weights = run_scored(net, pairs, metrics)
    device = network_device(net)
    images = [p.lq for p in pairs] if reference is None else list(reference)
    means = mean_gate_weights(net, (image_tensor(img, device) for img in images))
    with frozen_gates(net, means):
        frozen, _ = run_scored(net, pairs, metrics)
    delta = {label: {m: trained[label][m] - frozen[label][m] for m in trained[label]} for label in trained}
    return {
        'experts': names,
        'reference': 'pairs' if reference is None else len(images),
        'trained': trained,
        'frozen_mean': frozen,
        'delta': delta,
        'means': {path: m.tolist() for path, m in means.items()},
        'spread': gate_spread(weights, names),
    }


def ablation_markdown(result):
    """A Markdown table of :func:`gate_ablation`'s result: per label, trained, frozen and the difference."""
    metrics = list(result['trained'][ALL])
    head = ['label'] + [f'{m} {kind}' for m in metrics for kind in ('trained', 'frozen', 'delta')]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for label, scores in result['trained'].items():
        cells = []
        for m in metrics:
            frozen, delta = result['frozen_mean'][label][m], result['delta'][label][m]
            cells += [f'{scores[m]:.4f}', f'{frozen:.4f}', f'{delta:+.4f}']
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    spread = result['spread']
    lines.append(
        f'\nGate weights across images: largest std {spread["max_std"]:.4f}, largest max-min '
        f'{spread["max_range"]:.4f} (over blocks and experts).'
    )
    return '\n'.join(lines)
