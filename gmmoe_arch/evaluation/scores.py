"""Mean PSNR/SSIM per degradation label for the input, classical baselines and a network.

Metrics (:data:`METRICS`), all on RGB uint8 images against the ground truth:

* ``psnr``, ``ssim``: this project's protocol, BasicSR's ``calculate_psnr`` / ``calculate_ssim`` on the whole
  image (``crop_border: 0``);
* ``psnr_released``, ``ssim_released``: the GM-MoE authors' released test protocol
  (:mod:`gmmoe_arch.metrics.released_protocol`: 4-pixel crop, +0.125 dB, one SSIM over the H x W x 3 volume;
  about 1 s per 320 x 213 image on one CPU thread, so leave it out where many images are scored).

Scores are ``{metric: mean over the images}`` dicts of floats, JSON-ready.
"""

import numpy as np
from basicsr.metrics import calculate_psnr, calculate_ssim

from ..data.degradations import baselines_by_label
from ..metrics.released_protocol import calculate_psnr_released, calculate_ssim_released
from .data import by_label
from .errors import EvaluationError

#: metric name -> function(output, gt) of RGB uint8 images
METRICS = {
    'psnr': lambda out, gt: calculate_psnr(out, gt, crop_border=0),
    'ssim': lambda out, gt: calculate_ssim(out, gt, crop_border=0),
    'psnr_released': calculate_psnr_released,
    'ssim_released': calculate_ssim_released,
}
OURS = ('psnr', 'ssim')
ALL_METRICS = tuple(METRICS)


def check_metrics(metrics):
    """``metrics`` as a tuple of known names; :class:`EvaluationError` naming an unknown one."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise EvaluationError(f'--metrics {" ".join(unknown)}: choose from {", ".join(METRICS)}')
    return tuple(metrics)


def score(pairs, metrics=OURS):
    """Mean of each metric over ``[(output, gt)]`` RGB uint8 pairs: ``{metric: float}``."""
    values = {m: [float(METRICS[m](out, gt)) for out, gt in pairs] for m in metrics}
    return {m: float(np.mean(v)) for m, v in values.items()}


def input_scores(pairs, metrics=OURS):
    """``{label: scores}`` of the degraded inputs themselves."""
    return {label: score([(p.lq, p.gt) for p in group], metrics) for label, group in by_label(pairs).items()}


def all_baselines():
    """``{name: function}`` of every classical baseline of the degradations' table."""
    return {name: fn for table in baselines_by_label().values() for name, fn in table.items()}


def choose_baselines(labels, names=None):
    """``{label: {name: function}}``: by default each label's own baselines (none for a label
    the degradations' table does not list); with ``names``, those baselines for every label (``[]``: none)."""
    if names is None:
        by_label = baselines_by_label()
        return {label: by_label.get(label, {}) for label in labels}
    known = all_baselines()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EvaluationError(
            f'--baselines {", ".join(unknown)}: unknown baseline(s); choose from {", ".join(known)} (or none)'
        )
    return {label: {n: known[n] for n in names} for label in labels}


def baseline_scores(pairs, baselines=None, metrics=OURS):
    """``{label: {baseline name: scores}}``; ``baselines`` as :func:`choose_baselines` returns (default: each
    label's own)."""
    groups = by_label(pairs)
    baselines = choose_baselines(groups) if baselines is None else baselines
    baselines = {label: baselines.get(label, {}) for label in groups}
    return {
        label: {name: score([(fn(p.lq), p.gt) for p in group], metrics) for name, fn in baselines[label].items()}
        for label, group in groups.items()
    }


def best_baseline(baselines, label):
    """``(name, scores)`` of the baseline with the highest PSNR for ``label``; None when it has none."""
    table = baselines.get(label) or {}
    return max(table.items(), key=lambda item: item[1]['psnr']) if table else None
