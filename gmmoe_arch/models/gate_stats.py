"""Gate statistics per degradation label: accumulation, the label read off the gates, a figure, a JSON dump.

Public API (GMMoEModel's validation uses it; scripts may too)::

    from gmmoe_arch.archs.gmmoe_arch import expert_names, record_gates
    from gmmoe_arch.models.gate_stats import (
        GateStats, predict_labels, routing_accuracy, save_gate_figure, save_gate_json)

    stats = GateStats()
    with record_gates(net) as gates:
        for lq, labels in batches:                    # labels: one str per image, or None
            net(lq)
            stats.add(gates, labels)
    names = expert_names(net)
    stats.means('rain')                               # {block path: (n_experts,) means over the rain images}
    stats.overall('rain')                             # (n_experts,): the same, averaged over the blocks too
    vectors, labels = stats.vectors()                 # (N, n_experts): per image, mean over blocks; N labels
    mapping = {'lowlight': 'ColourExpert', 'rain': 'RainExpert', 'haze': 'HazeExpert'}
    predict_labels(vectors, names, mapping)           # N predicted labels
    routing_accuracy(vectors, labels, names, mapping) # fraction in [0, 1]
    save_gate_figure(stats, 'gates.png', names)       # one panel per label (or one for all images)
    save_gate_json(stats, 'gates.json', names, mapping, dataset='val', iter=1000)

``mapping`` is ``train.gate_opt.experts``' form: degradation label -> expert class name or list of names.
Per-pixel gate weights count as their mean over the pixels. The predicted label of an image is the label
whose target experts get the highest summed weight in its gate vector (ties go to the label first in
``mapping``); the label functions live in :mod:`gmmoe_arch.archs.routing` and are re-exported here.
"""

import json
import os

import cv2
import numpy as np
import torch

from ..archs.routing import (  # noqa: F401  (predict_labels, routing_accuracy: part of this module's API)
    accuracy,
    mapped_predictions,
    parse_expert_mapping,
    per_image,
    predict_labels,
    routing_accuracy,
)
from ..data.degradations import names as degradation_names

ALL = None  # the key of the all-images group (labels are strings)


class GateStats:
    """Mean gate weights over images, for all images and per degradation label (see the module docstring)."""

    def __init__(self):
        self._sums = {}
        self._counts = {}
        self._vectors = []
        self._labels = []

    def add(self, gates, labels=None):
        """Add one batch: ``gates`` ``{block path: (B, n_experts) or (B, n_experts, H, W)}`` (as ``record_gates``
        gives; per-pixel weights count as their mean over the pixels, :func:`.routing.per_image`), ``labels``
        ``B`` strings or None (the images then count for ``all`` only)."""
        if not gates:
            return
        weights = {path: per_image(w.detach().to('cpu', torch.float64)) for path, w in gates.items()}
        batch = next(iter(weights.values())).shape[0]
        if labels is not None and len(labels) != batch:
            raise ValueError(f'GateStats.add: {len(labels)} label(s) for a batch of {batch} image(s)')
        groups = [(ALL, torch.ones(batch, dtype=torch.bool))]
        if labels is not None:
            labels = [str(x) for x in labels]
            groups += [(label, torch.tensor([x == label for x in labels])) for label in dict.fromkeys(labels)]
        for group, rows in groups:
            sums = self._sums.setdefault(group, {})
            for path, w in weights.items():
                sums[path] = sums.get(path, 0) + w[rows].sum(0)
            self._counts[group] = self._counts.get(group, 0) + int(rows.sum())
        self._vectors.append(torch.stack(list(weights.values())).mean(0))
        self._labels.extend(labels if labels is not None else [None] * batch)

    @property
    def count(self):
        """Images added."""
        return self._counts.get(ALL, 0)

    @property
    def labels(self):
        """Labels seen: the degradations of :data:`gmmoe_arch.data.degradations.TABLE` first (those seen, in
        table order), then the others sorted."""
        seen = [g for g in self._counts if g is not ALL]
        known = degradation_names()
        return [d for d in known if d in seen] + sorted(g for g in seen if g not in known)

    def label_count(self, label=None):
        """Images with ``label`` (all images for None)."""
        return self._counts.get(label, 0)

    def means(self, label=None):
        """``{block path: (n_experts,) float64 tensor}``: mean weights over the images with ``label``
        (all images for None); empty when there are none."""
        count = self._counts.get(label, 0)
        return {path: total / count for path, total in self._sums.get(label, {}).items()} if count else {}

    def overall(self, label=None):
        """``(n_experts,)`` mean weights over the blocks and the images with ``label``; None when there are none."""
        means = self.means(label)
        return torch.stack(list(means.values())).mean(0) if means else None

    def vectors(self):
        """``((N, n_experts) float64 tensor, N labels)``: each image's weights averaged over the blocks, and
        its label (None where unlabelled), in the order added."""
        if not self._vectors:
            return torch.zeros(0, 0, dtype=torch.float64), []
        return torch.cat(self._vectors), list(self._labels)

    def to_dict(self, expert_names, mapping=None):
        """JSON-ready statistics: ``experts``, ``blocks``, ``all`` and ``labels`` (``{label: {count, mean,
        blocks: {path: [...]}}}``); with ``mapping``, also ``routing`` (accuracy over the images whose label
        it maps, and per label)."""
        means = self.means()

        def group(label):
            return {
                'count': self.label_count(label),
                'mean': self.overall(label).tolist(),
                'blocks': {path: m.tolist() for path, m in self.means(label).items()},
            }

        out = {
            'experts': list(expert_names),
            'blocks': list(means),
            'all': group(None) if means else {'count': 0, 'mean': [], 'blocks': {}},
            'labels': {label: group(label) for label in self.labels},
        }
        if mapping is not None:
            vectors, labels = self.vectors()
            pairs = mapped_predictions(vectors, labels, expert_names, mapping)
            if pairs:
                out['routing'] = {
                    'mapping': parse_expert_mapping(mapping, 'mapping'),
                    'images': len(pairs),
                    'accuracy': accuracy(pairs),
                    'per_label': {
                        label: accuracy([(p, t) for p, t in pairs if t == label])
                        for label in dict.fromkeys(t for _, t in pairs)
                    },
                }
        return out


FONT = cv2.FONT_HERSHEY_SIMPLEX
SCALE = 0.45
PAD = 8
CELL_H = 24
MIN_SPAN = 0.02


def _text_width(text):
    return cv2.getTextSize(text, FONT, SCALE, 1)[0][0]


def _put(img, text, x, y, colour=(0, 0, 0)):
    cv2.putText(img, text, (int(x), int(y)), FONT, SCALE, colour, 1, cv2.LINE_AA)


def _panels(stats_or_means):
    """``[(title, {row name: (n,) array})]`` from a GateStats or ``{title: {block path: (n,) values}}``."""
    if isinstance(stats_or_means, GateStats):
        stats = stats_or_means
        labels = stats.labels or [None]
        groups = [
            (f'{label or "all images"} ({stats.label_count(label)} image(s))', stats.means(label)) for label in labels
        ]
    else:
        groups = list(stats_or_means.items())
    panels = []
    for title, means in groups:
        rows = {path: np.asarray(m, dtype=np.float64).reshape(-1) for path, m in means.items()}
        if rows:
            panels.append((str(title), {'all blocks': np.mean(list(rows.values()), axis=0), **rows}))
    return panels


def _colour(level):
    """BGR colour of ``level`` in [0, 1] on the viridis map."""
    level = np.uint8(round(float(np.clip(level, 0, 1)) * 255))
    return tuple(int(c) for c in cv2.applyColorMap(np.full((1, 1), level, np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0])


def colour_range(stats_or_means, min_span=MIN_SPAN):
    """``(lo, hi)`` of the figure's colour scale: the range of the values to draw (a GateStats or a
    ``{title: {block path: (n,) weights}}`` dict), widened to ``min_span`` around its middle (so that
    noise-sized differences stay one colour) and kept inside [0, 1]."""
    values = np.concatenate([v for _, rows in _panels(stats_or_means) for v in rows.values()])
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < min_span:
        lo = min(max(0.0, (lo + hi - min_span) / 2), 1.0 - min_span)
        hi = lo + min_span
    return lo, hi


def render_gate_figure(stats_or_means, expert_names, scale=None):
    """The gate figure as a ``(H, W, 3)`` uint8 BGR image: one panel per degradation label (or per entry of a
    ``{title: {block path: (n,) weights}}`` dict), experts in columns, an ``all blocks`` row and one row per
    block, each cell coloured by its mean weight with the value printed. The viridis colour scale runs
    over ``scale`` = ``(lo, hi)``, by default :func:`colour_range` of the values (the bar at the bottom
    is labelled with both ends), so that the differences between experts show."""
    panels = _panels(stats_or_means)
    if not panels:
        raise ValueError('no gate statistics to draw (no image was added)')
    names = list(expert_names)
    n = len(names)
    if any(len(row) != n for _, rows in panels for row in rows.values()):
        raise ValueError(f'gate weights do not match the {n} expert(s) {", ".join(names)}')
    lo, hi = scale or colour_range(stats_or_means)
    cell_w = max([_text_width(s) for s in names] + [_text_width('0.000')]) + 2 * PAD
    label_w = max(_text_width(r) for _, rows in panels for r in rows) + 2 * PAD
    panel_w = max(label_w + n * cell_w, max(_text_width(t) for t, _ in panels) + 2 * PAD)
    title_h = CELL_H + PAD
    panel_h = title_h + CELL_H * (1 + max(len(rows) for _, rows in panels))
    bar_h = 2 * CELL_H
    height = PAD + panel_h + PAD + bar_h + PAD
    width = PAD + len(panels) * (panel_w + PAD)
    img = np.full((height, width, 3), 255, np.uint8)
    for p, (title, rows) in enumerate(panels):
        x0 = PAD + p * (panel_w + PAD)
        _put(img, title, x0 + PAD, PAD + CELL_H - 6)
        y = PAD + title_h
        for j, name in enumerate(names):
            _put(img, name, x0 + label_w + j * cell_w + PAD, y + CELL_H - 8)
        for r, (row, values) in enumerate(rows.items()):
            top = y + CELL_H * (r + 1)
            _put(img, row, x0 + PAD, top + CELL_H - 8)
            for j, value in enumerate(values):
                left = x0 + label_w + j * cell_w
                level = (value - lo) / (hi - lo)
                cv2.rectangle(img, (left, top), (left + cell_w - 2, top + CELL_H - 2), _colour(level), -1)
                ink = (0, 0, 0) if level > 0.6 else (255, 255, 255)
                _put(img, f'{value:.3f}', left + PAD, top + CELL_H - 8, ink)
        cv2.line(img, (x0, y + 2 * CELL_H - 1), (x0 + panel_w, y + 2 * CELL_H - 1), (0, 0, 0), 1)
    bar_top, bar_w = PAD + panel_h + PAD, min(width - 2 * PAD, 256)
    ramp = np.linspace(0, 255, bar_w).round().astype(np.uint8)[None].repeat(CELL_H // 2, 0)
    img[bar_top : bar_top + CELL_H // 2, PAD : PAD + bar_w] = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)
    _put(img, f'{lo:.3f}', PAD, bar_top + CELL_H + 4)
    _put(img, f'{hi:.3f}', PAD + bar_w - _text_width(f'{hi:.3f}'), bar_top + CELL_H + 4)
    _put(img, 'mean gate weight', PAD + bar_w + PAD, bar_top + CELL_H // 2)
    return img


def save_gate_figure(stats_or_means, path, expert_names, scale=None):
    """Draw :func:`render_gate_figure` and write it to ``path`` (PNG; folders created). Returns ``path``."""
    img = render_gate_figure(stats_or_means, expert_names, scale)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ok, encoded = cv2.imencode('.png', img)
    if not ok:
        raise OSError(f'could not encode the gate figure for {path}')
    with open(path, 'wb') as f:
        f.write(encoded.tobytes())
    return path


def save_gate_json(stats, path, expert_names, mapping=None, **extra):
    """Write ``stats.to_dict(expert_names, mapping)`` plus ``extra`` (e.g. ``dataset``, ``iter``) as JSON to
    ``path`` (folders created). Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump({**extra, **stats.to_dict(expert_names, mapping)}, f, indent=1)
    return path
