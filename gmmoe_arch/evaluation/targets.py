"""Targets checked against a report (:mod:`.report`) and returned as data: one :class:`Target` per check.

Each check names the network(s) it reads; with several, the best of them counts (e.g. "some variant reaches
3 dB over the baseline"). :func:`verdict` turns a list of targets into ``(met, one line)``; :func:`split_verdict`
does so for a driver that checks some targets as claims (a miss is a regression) and reports the others.
"""

from dataclasses import asdict, dataclass

from .scores import best_baseline


@dataclass(frozen=True)
class Target:
    """``value`` (None: not measurable) must be ``>= threshold`` (``> threshold`` when ``strict``)."""

    name: str
    value: object
    threshold: float
    strict: bool = False
    unit: str = 'dB'

    @property
    def met(self):
        if self.value is None:
            return False
        return self.value > self.threshold if self.strict else self.value >= self.threshold

    def text(self):
        shown = 'n/a' if self.value is None else self._format(self.value)
        return f'{self.name}: {shown} (target {">" if self.strict else ">="} {self._format(self.threshold)})'

    def _format(self, x):
        if self.unit == '%':
            return f'{x:.0%}'
        if self.unit == 'x':
            return f'{x:.2f}x'
        return f'{x:+.2f} {self.unit}'

    def to_dict(self):
        return dict(asdict(self), met=self.met, text=self.text())


def _keys(networks):
    return (networks,) if isinstance(networks, str) else tuple(networks)


def _best_psnr(report, networks, label):
    return max(report['networks'][key]['scores'][label]['psnr'] for key in _keys(networks))


def gain_over_input(report, networks, min_db=0.0, strict=False):
    """Per label: the best PSNR of ``networks`` minus the input's, against ``min_db``."""
    return [
        Target(f'{label}: PSNR over the input', _best_psnr(report, networks, label) - scores['psnr'], min_db, strict)
        for label, scores in report['input'].items()
    ]


def gain_over_best_baseline(report, networks, min_db=0.0, strict=False):
    """Per label with baselines: the best PSNR of ``networks`` minus the best classical baseline's."""
    targets = []
    for label in report['input']:
        best = best_baseline(report['baselines'], label)
        if best is not None:
            gain = _best_psnr(report, networks, label) - best[1]['psnr']
            targets.append(Target(f'{label}: PSNR over {best[0]}', gain, min_db, strict))
    return targets


def routing_at_least(report, network, minimum):
    """The routing accuracy of ``network`` (None when not measurable) against ``minimum`` (a fraction)."""
    title = report['networks'][network]['title']
    return [Target(f'{title}: routing accuracy', report['networks'][network]['routing_accuracy'], minimum, unit='%')]


def routing_of_label_at_least(report, network, label, minimum):
    """The share of ``label``'s images that ``network`` routes to ``label``'s expert (``routing_by_label`` of its
    entry; None when not measured) against ``minimum`` (a fraction)."""
    entry = report['networks'][network]
    value = (entry.get('routing_by_label') or {}).get(label)
    return [Target(f'{entry["title"]}: routing accuracy on {label}', value, minimum, unit='%')]


def speedup_at_least(report, minimum):
    """``report['timing']``'s dense time over its top-1 time (None without a timing) against ``minimum``."""
    timing = report.get('timing')
    value = timing['dense_s'] / timing['top1_s'] if timing else None
    return [Target('top-1 speed-up over dense', value, minimum, unit='x')]


def top1_cost_at_least(report, min_db):
    """The worst degradation's PSNR of top-1 minus dense (``report['timing']['psnr_change']``) against ``min_db``
    (negative: the loss allowed)."""
    timing = report.get('timing')
    value = min(timing['psnr_change'].values()) if timing else None
    return [Target('top-1 PSNR minus dense, worst degradation', value, min_db)]


def expert_preferred(report, network, label, expert):
    """``network``'s gate weighs ``expert`` more on ``label`` images than on any other label's: the margin
    over the next label (in mean gate weight) must be positive."""
    gates = report['networks'][network]['gates']
    others = [weights[expert] for lb, weights in gates.items() if lb != label]
    margin = gates[label][expert] - max(others) if others and label in gates else None
    title = report['networks'][network]['title']
    return [Target(f'{title}: {expert} preferred by {label}', margin, 0.0, strict=True, unit='weight')]


def verdict(targets):
    """``(all met, line)``: the missed targets named, else a short confirmation."""
    missed = [t.text() for t in targets if not t.met]
    if missed:
        return False, 'TARGETS MISSED: ' + '; '.join(missed)
    return True, f'targets met ({len(targets)} checked)'


def split_verdict(claims, targets, where):
    """``(every claim met, line)``: the claims' count met (the missed ones named) and the targets' count met,
    pointing to ``where`` for the targets this run does not settle."""
    met = sum(t.met for t in claims)
    missed = [t.text() for t in claims if not t.met]
    head = f'demo claims met ({met}/{len(claims)})' if not missed else 'DEMO CLAIMS MISSED: ' + '; '.join(missed)
    return not missed, f'{head}; bench targets met {sum(t.met for t in targets)}/{len(targets)}, see {where}'
