"""Losses on the gates of GM-MoE's expert blocks: routing supervision by degradation label, load balancing.

Both take the dense gate weights of every expert block, ``{block path: (B, n_experts)}`` (per-image gates)
or ``(B, n_experts, H, W)`` (per-pixel gates) as ``record_gates(net, keep_grad=True)`` records them, read
through :mod:`gmmoe_arch.archs.routing`, and return a scalar tensor in float32.

* :class:`GateRoutingLoss` (``train.gate_opt``): teaches the gate to route each image, or each pixel of a
  per-pixel label map, to the experts of its degradation label. ``loss_weight * mean over blocks of the
  mean over labelled images (pixels) of -log(sum of the weights of the label's target experts)``.
* :class:`GateBalanceLoss` (``train.balance_opt``): keeps every expert in use under top-k routing, the
  squared coefficient of variation of the experts' importance (Shazeer et al. 2017), averaged over blocks.
  Its subclasses, selectable in the same option (one loss or a list of them):
  :class:`GateLoadLoss`, Shazeer's load loss on the smooth probability that each expert is picked
  (``record_loads``), and :class:`CostWeightedBalanceLoss`, the importance weighted by each expert's cost
  (MoCE-IR's idea: cheap experts may take more of the traffic).
"""

import copy

import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..archs import routing
from ..archs.routing import per_image, per_pixel
from ..data.degradations import names as degradation_names
from ..registry import register

OPTION = 'train.gate_opt'
EXPERTS_OPTION = f'{OPTION}.experts'


def parse_expert_mapping(experts, where=EXPERTS_OPTION):
    """:func:`.routing.parse_expert_mapping`, naming ``train.gate_opt.experts`` by default."""
    return routing.parse_expert_mapping(experts, where)


def target_indices(mapping, expert_names, where=EXPERTS_OPTION):
    """:func:`.routing.target_indices`, naming ``train.gate_opt.experts`` by default."""
    return routing.target_indices(mapping, expert_names, where)


def _check_recorded(gates):
    if not gates:
        raise ValueError('no gate weights were recorded: the network has no expert blocks')


def _image_weights(gates):
    """``{path: (B, n) or (B, n, H, W)}`` -> ``(blocks, B, n)`` float32 per-image weights
    (:func:`.routing.per_image`); ValueError on an empty dict or mixed shapes."""
    _check_recorded(gates)
    weights = [per_image(w.float()) for w in gates.values()]
    shapes = {tuple(w.shape) for w in weights}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f'gate weights must all be (B, n) or (B, n, H, W) for one B and n, got {sorted(shapes)}')
    return torch.stack(weights)


def _check_label_map(label_map, batch):
    if label_map.dtype != torch.long or label_map.dim() != 3 or label_map.shape[0] != batch:
        raise ValueError(
            f'GateRoutingLoss: label_map must be a (B, H, W) long tensor of degradation indices for a batch of '
            f'{batch} image(s), got {tuple(label_map.shape)} {label_map.dtype}'
        )


@register(LOSS_REGISTRY)
class GateRoutingLoss(nn.Module):
    """Gate supervision by degradation label, per image or per pixel.

    ``loss_weight * mean_blocks mean_{labelled sites} -log(clamp(sum_{e in targets(label)} w_e, eps))``,
    with ``w`` the dense weights of each block. Labels are one string per image, or a ``(B, H, W)`` label
    map (``data['label_map']``: degradation indices; the model pads it as the network pads its input,
    :func:`~gmmoe_arch.archs.routing.pad_label_map`). The sites: the labelled images for string labels and a
    per-image gate; every pixel of a per-pixel gate (string labels: the image's label at each pixel; a
    map: resized to the block's resolution by nearest neighbour); every pixel of the map for a per-image
    gate (the image's weights at each pixel, so the loss weighs the degradations by their area). Sites
    whose label is not a key of ``experts`` are left out (each such label is logged once); a batch with
    none of the mapped labels gives a loss of zero.

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
        """``gates``: ``{path: (B, n) or (B, n, H, W)}``; ``expert_names``: n class names; ``labels``: B strings,
        or a ``(B, H, W)`` long label map of degradation indices (``gmmoe_arch.data.degradations.names()``
        order; -1 or any other index outside the table: unlabelled pixel) -> scalar."""
        indices = self.check(expert_names)
        _check_recorded(gates)
        batch = next(iter(gates.values())).shape[0]
        if isinstance(labels, torch.Tensor):
            _check_label_map(labels, batch)
            table = degradation_names()
            self._log_unmapped(table[i] for i in labels.unique().tolist() if 0 <= i < len(table))
        elif len(labels) != batch:
            raise ValueError(f'GateRoutingLoss: {len(labels)} label(s) for a batch of {batch} image(s)')
        else:
            self._log_unmapped(labels)
        per_block = []
        for w in gates.values():
            size = w.shape[-2:] if w.dim() == 4 else None  # per-image weights meet the map at full resolution
            w = per_pixel(w.float())
            mask = routing.label_mask(labels, indices, len(expert_names), size, degradation_names()).to(w.device)
            target = (w * mask).sum(1)
            labelled = (mask.sum(1) > 0).expand_as(target)
            if labelled.any():
                per_block.append(-torch.log(target[labelled].clamp(min=self.eps)).mean())
        if not per_block:
            return sum(w.sum() for w in gates.values()) * 0
        return self.loss_weight * torch.stack(per_block).mean()

    def _log_unmapped(self, labels):
        for label in dict.fromkeys(labels):
            if label not in self.mapping and label not in self._unmapped_logged:
                self._unmapped_logged.add(label)
                get_root_logger().warning(
                    f'{OPTION}: images labelled "{label}" have no target experts in {OPTION}.experts '
                    f'({", ".join(self.mapping)}); the gate loss leaves them out'
                )


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

    def bind(self, net):
        """Read what the loss needs of the network ``net`` (bare, not wrapped) before training; returns self.
        The importance needs nothing."""
        return self

    def forward(self, gates, loads=None):
        """``gates``: ``{path: (B, n) or (B, n, H, W)}`` (per-pixel weights: their pixel means) -> scalar.
        ``loads`` (``record_loads``) is read by :class:`GateLoadLoss` only."""
        return self.loss_weight * _cv_squared(_image_weights(gates).sum(1), self.eps).mean()


def _cv_squared(values, eps):
    """``(blocks, n)`` -> ``(blocks,)``: ``var / mean^2`` over the experts (population variance)."""
    return values.var(1, correction=0) / (values.mean(1).pow(2) + eps)


@register(LOSS_REGISTRY)
class GateLoadLoss(GateBalanceLoss):
    """Shazeer et al.'s load loss: ``loss_weight * mean over blocks of CV(L)^2``, ``L_i = sum_b P[b, i]``.

    ``P[b, i]`` is the smooth probability that image ``b`` (per-pixel gates: the mean over its pixels) picks
    expert ``i`` under the block's training noise, the others' noise kept
    (:func:`~gmmoe_arch.archs.routing.pick_probability`, recorded by ``record_loads`` in top-k blocks that
    sample). Where importance balances the summed weights, load balances how often each expert is picked,
    which is what its compute follows under top-k. Zero when no block sampled top-k picks (dense training).

    Args:
        loss_weight (float): scale of the loss (Shazeer et al.: 0.1 for each of importance and load).
        eps (float): added to ``mean(L)^2``.
    """

    def forward(self, gates, loads=None):
        if not loads:
            return sum(w.sum() for w in gates.values()) * 0 if gates else torch.zeros(())
        return self.loss_weight * _cv_squared(_image_weights(loads).sum(1), self.eps).mean()


@register(LOSS_REGISTRY)
class CostWeightedBalanceLoss(GateBalanceLoss):
    """Importance weighted by cost (MoCE-IR's complexity-aware balancing): ``CV(c * I)^2`` per block.

    ``I_i`` is expert ``i``'s batch-summed weight (as :class:`GateBalanceLoss`), ``c_i`` its cost relative to
    the block's mean cost, measured from the module by :meth:`bind`: ``cost: flops`` (default), the
    floating-point operations per pixel of one forward (``torch.utils.flop_counter`` on a 32x32 input at the
    block's width), or ``cost: params``, its parameter count. The loss is zero when every expert carries the
    same share of the compute, ``I_i`` proportional to ``1 / c_i``: a cheap expert may take more images than a
    costly one, which lowers the mean cost of top-k routing.

    Args:
        loss_weight (float): scale of the loss.
        cost (str): ``flops`` or ``params``.
        eps (float): added to the squared mean.
    """

    COSTS = ('flops', 'params')

    def __init__(self, loss_weight=0.01, cost='flops', eps=1e-10):
        super().__init__(loss_weight, eps)
        if cost not in self.COSTS:
            raise ValueError(f'CostWeightedBalanceLoss: cost must be {" or ".join(self.COSTS)}, got {cost!r}')
        self.cost = cost
        self.costs = None

    def bind(self, net):
        """Measure each block's expert costs, ``{block path: (n,) relative costs}`` (mean one)."""
        self.costs = {path: costs / costs.mean() for path, costs in expert_costs(net, self.cost).items()}
        return self

    def forward(self, gates, loads=None):
        if self.costs is None:
            raise ValueError('CostWeightedBalanceLoss: call bind(net) first (GMMoEModel does), to measure the costs')
        importance = _image_weights(gates).sum(1)
        costs = torch.stack([self.costs[path] for path in gates]).to(importance.device)
        return self.loss_weight * _cv_squared(importance * costs, self.eps).mean()


def expert_costs(net, cost='flops', side=32):
    """``{block path: (n,) float tensor}``: each routed expert's cost in every expert block of ``net``,
    ``flops`` per pixel (measured on a ``side`` x ``side`` input of the block's width) or ``params``."""
    from ..archs.gmmoe_arch import ExpertBlock  # the archs import the losses' package indirectly

    costs = {}
    for path, block in net.named_modules():
        if isinstance(block, ExpertBlock):
            costs[path] = torch.tensor(
                [_cost(e, block.channels, cost, side) for e in block.experts], dtype=torch.float64
            )
    return costs


def _cost(expert, channels, cost, side):
    if cost == 'params':
        return float(sum(p.numel() for p in expert.parameters()))
    probe = copy.deepcopy(expert).float().cpu().eval()
    for module in probe.modules():  # the straightforward path: the fast one's fused kernels are not all counted
        if hasattr(module, 'fast'):
            module.fast = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.zeros(1, channels, side, side))
    return max(float(counter.get_total_flops()), 1.0) / (side * side)
