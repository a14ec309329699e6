"""Gate ablations: freeze every expert block's gate to a constant weight vector, and the vectors to freeze to.

For measuring what a gate's routing is worth: compare a network with its live gates against the same network
with each block's gate frozen to that block's mean weights over a set of images::

    from gmmoe_arch.archs.gate_control import frozen_gates, mean_gate_weights

    means = mean_gate_weights(net, images)            # {block path: (n_experts,) float64}
    with torch.no_grad(), frozen_gates(net, means):
        constant = net(x)                             # every block mixes its experts with means[path]

Both address blocks by the paths :func:`~.gmmoe_arch.record_gates` uses (``encoders.0.0``, ``middle_blks.0``).
"""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .gmmoe_arch import ExpertBlock, record_gates
from .routing import per_image


def expert_blocks(net: nn.Module) -> dict[str, ExpertBlock]:
    """``{path: block}`` of ``net``'s expert blocks (a DDP/DataParallel wrapper's ``module.`` left out)."""
    bare = net.module if isinstance(getattr(net, 'module', None), nn.Module) else net
    return {path: m for path, m in bare.named_modules() if isinstance(m, ExpertBlock)}


def _constant(path, block, weights):
    vector = torch.as_tensor(weights, dtype=torch.float64).flatten()
    n = len(block.experts)
    if vector.numel() != n or not torch.isfinite(vector).all() or (vector < 0).any():
        raise ValueError(f'frozen_gates: {path}: expected {n} non-negative finite weights, got {weights!r}')
    return vector


@contextmanager
def frozen_gates(net: nn.Module, weights_by_block: Mapping[str, object]) -> Iterator[None]:
    """Within the block, the gate of each expert block named in ``weights_by_block`` (``{path: n weights}``,
    a tensor, array or list; e.g. :func:`mean_gate_weights`) returns those weights for every image (a
    per-pixel gate: at every pixel) instead of its own; blocks not named keep their gates.

    The gate still runs (its output is replaced by a forward hook that runs before any other, so
    :func:`~.gmmoe_arch.record_gates` records the frozen weights), top-k applies to the frozen weights as to
    live ones, and no gradient reaches a frozen gate. The weights are used as given (give them summing to
    one). ValueError, before anything is frozen, for a path that is no expert block of ``net`` or a
    vector of the wrong length.
    """
    blocks = expert_blocks(net)
    unknown = [p for p in weights_by_block if p not in blocks]
    if unknown:
        raise ValueError(
            f'frozen_gates: {", ".join(unknown)}: no expert block of the network has that path '
            f'(its blocks: {", ".join(blocks) or "none"})'
        )
    constants = {p: _constant(p, blocks[p], w) for p, w in weights_by_block.items()}
    handles = []

    def hook_for(vector):
        def hook(_gate, _inputs, out):
            return vector.to(out.device, out.dtype).reshape(1, -1, *[1] * (out.dim() - 2)).expand_as(out)

        return hook

    try:
        for path, vector in constants.items():
            handles.append(blocks[path].gate.register_forward_hook(hook_for(vector), prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def mean_gate_weights(net: nn.Module, images: Iterable[Tensor]) -> dict[str, Tensor]:
    """``{block path: (n_experts,) float64}``: each block's gate weights averaged over ``images`` (an iterable
    of ``(B, C, H, W)`` batches on ``net``'s device; every image counts once, per-pixel weights as their mean
    over the pixels), with ``net`` run as it is (put it in eval mode) without grad. ValueError for no image."""
    sums, count = {}, 0
    with torch.no_grad(), record_gates(net) as gates:
        for x in images:
            net(x)
            for path, w in gates.items():
                sums[path] = sums.get(path, 0) + per_image(w).double().sum(0).cpu()
            count += x.shape[0]
    if not count:
        raise ValueError('mean_gate_weights: no images were given')
    return {path: total / count for path, total in sums.items()}
