"""The evaluation report: a JSON-ready dict of scores per label, built step by step, and its Markdown tables.

Shape (every number a float; ``scores`` are ``{metric: mean}`` as in :mod:`.scores`)::

    {'data': {'pairs': {label: count}, 'names': {label: [pair names]}}, 'metrics': [...],
     'input': {label: scores}, 'baselines': {label: {name: scores}},
     'networks': {key: {'title', 'scores': {label: scores}, 'routing_accuracy', 'gates': {label: {expert: w}}}},
     'targets': [{'name', 'value', 'threshold', 'strict', 'unit', 'met', 'text'}]}
"""

import json

from ..enhance import write_file
from .data import by_label
from .network import run_network
from .scores import OURS, baseline_scores, best_baseline, input_scores

HEADINGS = {
    'psnr': 'PSNR (dB)',
    'ssim': 'SSIM',
    'psnr_released': 'PSNR released (dB)',
    'ssim_released': 'SSIM released',
}


def reference_report(pairs, baselines=None, metrics=OURS):
    """A report with the input's and the baselines' scores (``baselines``: see :func:`.scores.choose_baselines`)
    and no network yet."""
    return {
        'data': {
            'pairs': {label: len(group) for label, group in by_label(pairs).items()},
            'names': {label: [p.name for p in group] for label, group in by_label(pairs).items()},
        },
        'metrics': list(metrics),
        'input': input_scores(pairs, metrics),
        'baselines': baseline_scores(pairs, baselines, metrics),
        'networks': {},
        'targets': [],
    }


def add_network(report, key, title, net, pairs, mapping=None, max_pixels=None):
    """Run ``net`` on ``pairs`` (:func:`.network.run_network`, the report's metrics), store its entry under
    ``report['networks'][key]`` and return the :class:`~.network.NetworkResult` (outputs, gate statistics)."""
    result = run_network(net, pairs, mapping, report['metrics'], max_pixels)
    report['networks'][key] = {
        'title': title,
        'scores': result.scores,
        'routing_accuracy': result.routing_accuracy,
        'gates': result.gates,
    }
    return result


def evaluate(pairs, networks, baselines=None, metrics=OURS, mapping=None, max_pixels=None):
    """The whole report for ``networks`` ``{key: (title, net)}``: ``(report, {key: NetworkResult})``."""
    report = reference_report(pairs, baselines, metrics)
    results = {
        key: add_network(report, key, title, net, pairs, mapping, max_pixels) for key, (title, net) in networks.items()
    }
    return report, results


def set_targets(report, targets):
    """Store the checked :class:`~.targets.Target` list in the report; return it."""
    report['targets'] = [t.to_dict() for t in targets]
    return targets


def _rows(report):
    """``[(method, {label: scores}, routing accuracy or None)]``: input, baselines, networks."""
    rows = [('input', report['input'], None)]
    names = dict.fromkeys(name for table in report['baselines'].values() for name in table)
    rows += [(name, {lb: t[name] for lb, t in report['baselines'].items() if name in t}, None) for name in names]
    rows += [(n['title'], n['scores'], n['routing_accuracy']) for n in report['networks'].values()]
    return rows


def _routing(value):
    return '' if value is None else f'{value:.0%}'


def _single_label_table(report, rows, routed):
    (label,) = report['input']
    metrics = report['metrics']
    lines = [
        '| method | ' + ' | '.join(HEADINGS[m] for m in metrics) + (' | routing accuracy' if routed else '') + ' |',
        '|---' * (len(metrics) + 1 + routed) + '|',
    ]
    for name, by_label_, routing in rows:
        s = by_label_[label]
        cells = [f'{s[m]:.2f}' if m.startswith('psnr') else f'{s[m]:.4f}' for m in metrics]
        lines.append(f'| {name} | ' + ' | '.join(cells + ([_routing(routing)] if routed else [])) + ' |')
    return lines


def _label_table(report, rows, psnr, ssim, routed):
    labels = list(report['input'])
    lines = [
        f'{HEADINGS[psnr]} / {HEADINGS[ssim]} per degradation:',
        '',
        '| method | ' + ' | '.join(labels) + (' | routing accuracy' if routed else '') + ' |',
        '|---' * (len(labels) + 1 + routed) + '|',
    ]
    for name, by_label_, routing in rows:
        cells = [f'{by_label_[lb][psnr]:.2f} / {by_label_[lb][ssim]:.4f}' if lb in by_label_ else '' for lb in labels]
        lines.append(f'| {name} | ' + ' | '.join(cells + ([_routing(routing)] if routed else [])) + ' |')
    return lines


def _gain_table(report):
    labels = list(report['input'])
    best = {lb: best_baseline(report['baselines'], lb) for lb in labels}
    named = ', '.join(f'{lb}: {b[0]}' for lb, b in best.items() if b)
    lines = [
        f'PSNR gain in dB over the input / over the best classical baseline ({named or "none"}):',
        '',
        '| method | ' + ' | '.join(labels) + ' |',
        '|---' * (len(labels) + 1) + '|',
    ]
    for n in report['networks'].values():
        cells = []
        for lb in labels:
            psnr = n['scores'][lb]['psnr']
            over_best = f'{psnr - best[lb][1]["psnr"]:+.2f}' if best[lb] else 'n/a'
            cells.append(f'{psnr - report["input"][lb]["psnr"]:+.2f} / {over_best}')
        lines.append(f'| {n["title"]} | ' + ' | '.join(cells) + ' |')
    return lines


def _gate_table(report):
    gated = [n for n in report['networks'].values() if n['gates']]
    experts = list(dict.fromkeys(e for n in gated for weights in n['gates'].values() for e in weights))
    lines = [
        'Mean gate weight of each expert (over blocks and images), per degradation:',
        '',
        '| method | degradation | ' + ' | '.join(experts) + ' |',
        '|---' * (len(experts) + 2) + '|',
    ]
    for n in gated:
        for lb, weights in n['gates'].items():
            cells = [f'{weights[e]:.3f}' if e in weights else '' for e in experts]
            lines.append(f'| {n["title"]} | {lb} | ' + ' | '.join(cells) + ' |')
    return lines


def markdown(report, gates=True, targets=True):
    """The report's Markdown: one table of scores (methods in rows; one label: a column per metric, else a
    column per label, ours and the released protocol in separate tables), for several labels the PSNR gains
    of each network, with ``gates`` the mean gate weights, with ``targets`` the targets."""
    rows = _rows(report)
    routed = any(n['routing_accuracy'] is not None for n in report['networks'].values())
    metrics = report['metrics']
    if len(report['input']) == 1:
        blocks = [_single_label_table(report, rows, routed)]
    else:
        blocks = [
            _label_table(report, rows, psnr, ssim, routed)
            for psnr, ssim in (('psnr', 'ssim'), ('psnr_released', 'ssim_released'))
            if psnr in metrics and ssim in metrics
        ]
        if report['networks']:
            blocks.append(_gain_table(report))
    if gates and any(n['gates'] for n in report['networks'].values()):
        blocks.append(_gate_table(report))
    if targets and report['targets']:
        blocks.append([f'- {"met" if t["met"] else "MISSED"}: {t["text"]}' for t in report['targets']])
    return '\n\n'.join('\n'.join(block) for block in blocks)


def write_json(report, path):
    """Write ``report`` as JSON to ``path`` (complete or not at all; ``EnhanceError`` naming it on failure)."""
    write_file(path, (json.dumps(report, indent=1) + '\n').encode())


def write_markdown(text, path):
    """Write Markdown ``text`` to ``path`` (complete or not at all)."""
    write_file(path, (text + '\n').encode())
