"""gate_stats: per-label means, the label read off the gates, the routing accuracy, the figure and the JSON."""

import json

import cv2
import numpy as np
import pytest
import torch

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches)
from gmmoe_arch.models.gate_stats import (
    GateStats,
    colour_range,
    predict_labels,
    render_gate_figure,
    routing_accuracy,
    save_gate_figure,
    save_gate_json,
)

NAMES = ['ColourExpert', 'RainX', 'HazeX']
MAPPING = {'lowlight': 'ColourExpert', 'rain': 'RainX', 'haze': ['HazeX']}


def two_batches():
    g = torch.Generator().manual_seed(3)
    batches = []
    for labels in (['rain', 'haze', 'rain'], ['lowlight', 'haze']):
        batches.append(
            ({p: torch.softmax(torch.randn(len(labels), 3, generator=g), 1) for p in ('enc', 'mid')}, labels)
        )
    return batches


def test_means_per_label_and_over_all_images():
    stats = GateStats()
    batches = two_batches()
    for gates, labels in batches:
        stats.add(gates, labels)
    stats.add({p: w[:1] for p, w in batches[0][0].items()})  # an unlabelled image counts for all only
    assert stats.count == 6 and stats.labels == ['lowlight', 'rain', 'haze']
    assert [stats.label_count(x) for x in stats.labels] == [1, 2, 2]
    rows = {p: torch.cat([batches[0][0][p], batches[1][0][p], batches[0][0][p][:1]]).double() for p in ('enc', 'mid')}
    labels = batches[0][1] + batches[1][1] + [None]
    for label in ('rain', 'haze', 'lowlight'):
        pick = [i for i, x in enumerate(labels) if x == label]
        for p in ('enc', 'mid'):
            assert torch.allclose(stats.means(label)[p], rows[p][pick].mean(0))
        assert torch.allclose(stats.overall(label), (rows['enc'][pick].mean(0) + rows['mid'][pick].mean(0)) / 2)
    assert torch.allclose(stats.means()['mid'], rows['mid'].mean(0))
    vectors, got = stats.vectors()
    assert got == labels and torch.allclose(vectors, (rows['enc'] + rows['mid']) / 2)
    assert stats.means('snow') == {} and stats.overall('snow') is None
    with pytest.raises(ValueError, match='2 label'):
        stats.add(batches[0][0], ['rain', 'haze'])
    stats.add({p: w[:1] for p, w in batches[0][0].items()}, ['all'])  # a label named 'all' is just a label
    assert stats.count == 7 and stats.label_count('all') == 1 and stats.labels[-1] == 'all'


def test_predict_labels_and_routing_accuracy():
    vectors = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.4, 0.5], [0.4, 0.4, 0.2]])
    assert predict_labels(vectors, NAMES, MAPPING) == ['lowlight', 'rain', 'haze', 'lowlight']  # tie: first label
    assert predict_labels(vectors, NAMES, {'rain': 'RainX', 'other': ['ColourExpert', 'HazeX']}) == [
        'other',
        'rain',
        'other',
        'other',
    ]
    truth = ['lowlight', 'rain', 'rain', 'snow']  # the third is wrong, the unmapped fourth does not count
    assert routing_accuracy(torch.tensor(vectors), truth, NAMES, MAPPING) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match='no image has a label of the mapping'):
        routing_accuracy(vectors, ['snow'] * 4, NAMES, MAPPING)
    with pytest.raises(ValueError, match=r'mapping\.haze: the network has no expert Haze.*ColourExpert, RainX'):
        predict_labels(vectors, NAMES, {'haze': 'Haze'})
    with pytest.raises(ValueError, match=r'gate vectors must be \(N, 3\)'):
        predict_labels(vectors[:, :2], NAMES, MAPPING)


def filled(label_values):
    """A GateStats whose images of each label all have the gate vector ``label_values[label]`` in 2 blocks."""
    stats = GateStats()
    for label, vector in label_values.items():
        w = torch.tensor([vector, vector])
        stats.add({'encoders.0.0': w, 'middle_blks.0': w}, [label, label])
    return stats


def test_json_has_per_label_statistics_and_routing(tmp_path):
    stats = filled({'rain': [0.1, 0.8, 0.1], 'haze': [0.2, 0.5, 0.3]})
    path = save_gate_json(stats, str(tmp_path / 'sub' / 'g.json'), NAMES, MAPPING, dataset='val', iter=5)
    data = json.loads(open(path).read())
    assert data['dataset'] == 'val' and data['iter'] == 5 and data['experts'] == NAMES
    assert data['blocks'] == ['encoders.0.0', 'middle_blks.0']
    assert data['all']['count'] == 4 and data['all']['mean'] == pytest.approx([0.15, 0.65, 0.2])
    assert list(data['labels']) == ['rain', 'haze']
    assert data['labels']['rain']['count'] == 2 and data['labels']['rain']['mean'] == pytest.approx([0.1, 0.8, 0.1])
    assert data['labels']['haze']['blocks']['middle_blks.0'] == pytest.approx([0.2, 0.5, 0.3])
    routing = data['routing']
    assert routing['images'] == 4 and routing['accuracy'] == 0.5 and routing['per_label'] == {'rain': 1.0, 'haze': 0.0}
    assert 'routing' not in stats.to_dict(NAMES)


def test_figure_one_panel_per_label_with_coloured_cells(tmp_path):
    one = render_gate_figure(filled({'rain': [0.1, 0.8, 0.1]}), NAMES)
    stats = filled({'lowlight': [0.85, 0.075, 0.075], 'rain': [0.1, 0.8, 0.1], 'haze': [0.3, 0.3, 0.4]})
    path = save_gate_figure(stats, str(tmp_path / 'gates' / 'val_10.png'), NAMES, scale=(0, 1))
    img = cv2.imread(path)
    assert img.dtype == np.uint8 and img.shape == render_gate_figure(stats, NAMES, (0, 1)).shape
    assert img.shape[0] == one.shape[0] and img.shape[1] > 2.5 * one.shape[1]  # three panels side by side
    assert img.shape[0] >= 5 * 24  # title, header, all blocks and two block rows

    def pixels_of(value, img=img):
        level = np.uint8(round(value * 255))
        colour = cv2.applyColorMap(np.full((1, 1), level, np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0]
        return int((img == colour).all(axis=2).sum())

    for value in (0.85, 0.8, 0.4, 0.075):  # each value fills its cells (three rows each) in its colour
        assert pixels_of(value) > 3 * 500
    assert pixels_of(0.6) < 100  # no cell has that value (the colour bar has a sliver of it)
    plain = save_gate_figure({'all images': stats.means()}, str(tmp_path / 'plain.png'), NAMES)
    assert cv2.imread(plain).shape[0] == img.shape[0] and cv2.imread(plain).shape[1] < img.shape[1]
    with pytest.raises(ValueError, match='no gate statistics'):
        render_gate_figure(GateStats(), NAMES)
    with pytest.raises(ValueError, match='do not match the 2 expert'):
        render_gate_figure(stats, NAMES[:2])


def test_figure_colour_scale_spans_the_values():
    near_uniform = filled({'rain': [0.30, 0.36, 0.34], 'haze': [0.34, 0.33, 0.33]})
    assert colour_range(near_uniform) == pytest.approx((0.30, 0.36))
    img = render_gate_figure(near_uniform, NAMES)
    ends = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_VIRIDIS)[0]
    for colour in ends:  # the lowest and the highest weight take the two ends of the map
        assert (img == colour).all(axis=2).sum() > 2 * 500
    noise = colour_range(filled({'rain': [0.333, 0.334, 0.333]}))
    assert noise[1] - noise[0] == pytest.approx(0.02) and noise[0] < 0.333 < 0.334 < noise[1]
    assert colour_range({'x': {'b': [0.995, 0.0, 0.005]}}) == pytest.approx((0.0, 0.995))
