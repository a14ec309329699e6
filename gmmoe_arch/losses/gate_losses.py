"""Losses on the gates of GM-MoE's expert blocks: routing supervision by degradation label, load balancing.

Both take the dense gate weights of every expert block, ``{block path: (B, n_experts)}`` as
``record_gates(net, keep_grad=True)`` records them, and return a scalar tensor in float32.

* :class:`GateRoutingLoss` (``train.gate_opt``): teaches the gate to route each image to the experts of
  its degradation label. ``loss_weight * mean over blocks and labelled images of -log(sum of the
  weights of the label's target experts)``.
* :class:`GateBalanceLoss` (``train.balance_opt``): keeps every expert in use under top-k routing, the
  squared coefficient of variation of the experts' importance (Shazeer et al. 2017), averaged over blocks.
"""

import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from ..registry import register

OPTION = 'train.gate_opt'
EXPERTS_OPTION = f'{OPTION}.experts'


def _stacked(gates):
    """``{path: (B, n)}`` -> ``(blocks, B, n)`` float32 tensor; ValueError on an empty dict or mixed shapes."""
    if not gates:
        raise ValueError('no gate weights were recorded: the network has no expert blocks')
    shapes = {tuple(w.shape) for w in gates.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f'gate weights must all be (B, n_experts), got shapes {sorted(shapes)}')
    return torch.stack([w.float() for w in gates.values()])


def parse_expert_mapping(experts, where=EXPERTS_OPTION):
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


def target_indices(mapping, expert_names, where=EXPERTS_OPTION):
    """``{label: [names]}`` -> ``{label: [indices into expert_names]}`` (every expert of that class).

    Raises ValueError naming ``<where>.<label>`` and the network's experts for a name the
    network does not have."""
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


@register(LOSS_REGISTRY)
class GateRoutingLoss(nn.Module):
    """Gate supervision by degradation label.

    ``loss_weight * mean_{blocks, labelled images} -log(clamp(sum_{e in targets(label)} w_e, eps))``,
    with ``w`` the dense softmax weights of each block. Images whose label is not a key of ``experts``
    are left out of the mean (each such label is logged once); a batch with none of the mapped labels
    gives a loss of zero.

    Args:
        loss_weight (float): scale of the loss.
        experts (dict): degradation label -> expert class name, or a list of names (their weights are
            summed), e.g. ``{lowlight: ColourExpert, rain: RainExpert, haze: HazeExpert}``.
        eps (float): lower clamp of the summed weight, which keeps the log finite.
    """

    def __init__(self, loss_weight=1.0, experts=None, eps=1e-6):
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.mapping = parse_expert_mapping(experts)
        self.eps = float(eps)
        self._unmapped_logged = set()
        self._resolved = None

    def check(self, expert_names):
        """Check the mapping against the network's experts (class names, in order); ValueError if one is
        missing. Returns ``{label: [expert indices]}``."""
        expert_names = list(expert_names)
        if self._resolved is None or self._resolved[0] != expert_names:
            self._resolved = expert_names, target_indices(self.mapping, expert_names)
        return self._resolved[1]

    def forward(self, gates, expert_names, labels):
        """``gates``: ``{path: (B, n)}``; ``expert_names``: n class names; ``labels``: B strings -> scalar."""
        indices = self.check(expert_names)
        weights = _stacked(gates)
        if len(labels) != weights.shape[1]:
            raise ValueError(f'GateRoutingLoss: {len(labels)} label(s) for a batch of {weights.shape[1]} image(s)')
        mask = torch.zeros(weights.shape[1:], dtype=weights.dtype, device=weights.device)
        for b, label in enumerate(labels):
            if label in indices:
                mask[b, indices[label]] = 1
            elif label not in self._unmapped_logged:
                self._unmapped_logged.add(label)
                get_root_logger().warning(
                    f'{OPTION}: images labelled "{label}" have no target experts in {OPTION}.experts '
                    f'({", ".join(self.mapping)}); the gate loss leaves them out'
                )
        labelled = mask.sum(1) > 0
        if not labelled.any():
            return weights.sum() * 0
        target = (weights * mask).sum(2)[:, labelled]
        return self.loss_weight * -torch.log(target.clamp(min=self.eps)).mean()


@register(LOSS_REGISTRY)
class GateBalanceLoss(nn.Module):
    """Load balancing of the experts (Shazeer et al. 2017, "importance" loss).

    Per block, the importance of expert ``i`` is ``I_i = sum_b w[b, i]`` (the batch-summed dense
    weights); the loss is ``loss_weight * mean over blocks of CV(I)^2 = var(I) / mean(I)^2`` (population
    variance over the experts). It is zero when every expert gets the same total weight and grows as
    the gate favours some experts for the whole batch; per-image routing is left free.

    Args:
        loss_weight (float): scale of the loss (the model's default under top-k training: 0.01).
        eps (float): added to ``mean(I)^2``, which keeps the ratio finite.
    """

    def __init__(self, loss_weight=0.01, eps=1e-10):
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.eps = float(eps)

    def forward(self, gates):
        """``gates``: ``{path: (B, n)}`` -> scalar."""
        importance = _stacked(gates).sum(1)
        cv_squared = importance.var(1, correction=0) / (importance.mean(1).pow(2) + self.eps)
        return self.loss_weight * cv_squared.mean()
