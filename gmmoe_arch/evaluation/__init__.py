"""Evaluation of a network per degradation label: scores of the input, the classical baselines and the
network (ours and the released protocol), gate weights, routing accuracy, targets; JSON and Markdown.

The API behind ``gmmoe evaluate`` and the demo drivers (``scripts/demo.py``, ``scripts/allinone.py``)::

    from gmmoe_arch.enhance import load_network
    from gmmoe_arch import evaluation as ev

    pairs = ev.load_pairs('datasets/allinone/test_rain/lmdb')          # lq/gt folders or an LMDB pair
    net = load_network('net_g.pth', option_file='train.yml')
    report, results = ev.evaluate(pairs, {'net': ('GM-MoE', net)}, mapping={'rain': 'RainExpert'})
    ev.set_targets(report, ev.gain_over_best_baseline(report, 'net', 3.0))
    print(ev.markdown(report)); ev.write_json(report, 'eval.json')

Modules: :mod:`.data` (the pairs), :mod:`.scores` (metrics, input and baselines), :mod:`.network` (a network's
outputs, gates, routing), :mod:`.report` (the report, Markdown, files), :mod:`.targets` (checks as data),
:mod:`.figure` (a comparison grid), :mod:`.command` (``gmmoe evaluate``).
"""

from .data import UNLABELLED, Pair, by_label, load_pairs
from .errors import EvaluationError
from .figure import save_grid
from .network import NetworkResult, gate_summary, run_network
from .report import add_network, evaluate, markdown, reference_report, set_targets, write_json, write_markdown
from .scores import ALL_METRICS, METRICS, OURS, baseline_scores, best_baseline, choose_baselines, input_scores, score
from .targets import Target, expert_preferred, gain_over_best_baseline, gain_over_input, routing_at_least, verdict

__all__ = [
    'ALL_METRICS',
    'METRICS',
    'OURS',
    'UNLABELLED',
    'EvaluationError',
    'NetworkResult',
    'Pair',
    'Target',
    'add_network',
    'baseline_scores',
    'best_baseline',
    'by_label',
    'choose_baselines',
    'evaluate',
    'expert_preferred',
    'gain_over_best_baseline',
    'gain_over_input',
    'gate_summary',
    'input_scores',
    'load_pairs',
    'markdown',
    'reference_report',
    'routing_at_least',
    'run_network',
    'save_grid',
    'score',
    'set_targets',
    'verdict',
    'write_json',
    'write_markdown',
]
