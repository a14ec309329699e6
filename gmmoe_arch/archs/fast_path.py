"""Which path a module takes, and the weights its fast path reads.

* :class:`PathSwitch`: a module with the ``fast`` setting (``True``, ``False`` or ``'auto'``: the
  fast path for CPU inputs), switched for the whole network by ``GMMoE.set_fast``.
* :class:`FastPath`: a :class:`PathSwitch` with two forwards, ``forward_plain`` (the layers as
  described) and ``forward_fast`` (the rewrites of :mod:`.fast_ops`), and the cache of the weights
  the fast one reads (:meth:`FastPath.fused`, a :class:`FastWeights`).

Fast forwards read each conv through the attribute the straightforward forward uses
(``w[self.c1]``) and derived weights by the name :meth:`FastPath.fused_params` gives them
(``w.c23``), never by a string built from a module path: renaming or removing a layer breaks
both forwards alike, and a derived name that does not exist is named in the error.

The derivation is differentiable, so in training (grad enabled) it is rebuilt on every call and
gradients reach the original parameters. Without grad the result is cached per compute dtype and
rebuilt when a parameter is replaced or changed in place (``optimizer.step()``,
``load_state_dict``); changes made through ``param.data`` are invisible to autograd's version
counter, so after those call ``net.eval()`` or ``net.fuse()`` again (BasicSR's EMA and validation
do call ``eval()``).
"""

from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor, nn

from .fast_ops import contiguous_grad
from .torch_private import version_counter

WeightBias = tuple[Tensor, Optional[Tensor]]


def uses_fast_path(fast, device) -> bool:
    """Whether the ``fast`` setting (``True``, ``False`` or ``'auto'``) takes the fast path on ``device``."""
    return fast is True or (fast == 'auto' and torch.device(device).type == 'cpu')


class PathSwitch:
    """Mixin: a module whose forward depends on the ``fast`` setting (``GMMoE.set_fast`` sets it)."""

    fast = 'auto'

    def takes_fast_path(self, x: Tensor) -> bool:
        """Whether a forward on ``x`` takes the fast path."""
        return uses_fast_path(self.fast, x.device)


class FastWeights:
    """The weights one fast forward reads, in its compute dtype.

    ``w[conv]``: ``(weight, bias)`` of ``conv``, one of the module's own ``nn.Conv2d`` layers, looked
    up by the layer itself (``w[self.c1]``); ``w.name``: a ``(weight, bias)`` that
    :meth:`FastPath.fused_params` derives under ``name``.
    """

    def __init__(self, owner: str, convs: dict[nn.Conv2d, WeightBias], derived: dict[str, WeightBias]):
        self._owner = owner
        self._convs = convs
        self._derived = derived

    def __getitem__(self, conv: nn.Conv2d) -> WeightBias:
        try:
            return self._convs[conv]
        except KeyError:
            raise KeyError(
                f'{self._owner}: {conv!r} is not one of its own nn.Conv2d layers (the fast path reads '
                'those, and what fused_params() derives)'
            ) from None

    def __getattr__(self, name: str) -> WeightBias:
        derived = self.__dict__.get('_derived')
        if derived is None or name.startswith('__') or name not in derived:
            raise AttributeError(
                f'{self.__dict__.get("_owner")}.fused_params() derives no weight "{name}" '
                f'(it derives: {", ".join(derived or ()) or "nothing"})'
            )
        return derived[name]


def _own_convs(module: nn.Module) -> Iterator[nn.Conv2d]:
    """The ``nn.Conv2d`` layers of ``module``, not descending into nested fast modules."""
    for child in module.children():
        if isinstance(child, nn.Conv2d):
            yield child
        elif not isinstance(child, FastPath):
            yield from _own_convs(child)


def _cast(pair: WeightBias, dtype: Optional[torch.dtype]) -> WeightBias:
    """``(weight, bias)`` with contiguous gradients, cast to ``dtype`` (None: unchanged, not copied)."""

    def one(t):
        t = contiguous_grad(t)
        return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)

    return tuple(one(t) for t in pair)


class FastPath(PathSwitch):
    """Mixin for modules with a straightforward and a fast forward; ``fast`` picks one.

    Subclasses define ``forward_plain(x)``, ``forward_fast(x)`` and, if they derive weights,
    ``fused_params() -> {name: (weight, bias)}`` (differentiable in the module's parameters).
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fast(x) if self.takes_fast_path(x) else self.forward_plain(x)

    def fused_params(self) -> dict[str, WeightBias]:
        return {}

    def fused(self, dtype: Optional[torch.dtype] = None) -> FastWeights:
        """The own convs' weights and the derived ones, cast to ``dtype`` (None: the parameters' dtype,
        no copy); the parameters themselves stay as they are (contiguous: oneDNN reorders kernels for
        channels-last inputs either way).

        Rebuilt per call with grad (or under ``torch.compile``), else cached per ``dtype`` until a
        parameter is changed, replaced or renamed (autocast then casts no weight per call).
        """

        def build():
            convs = {conv: _cast((conv.weight, conv.bias), dtype) for conv in _own_convs(self)}
            derived = {name: _cast(pair, dtype) for name, pair in self.fused_params().items()}
            return FastWeights(type(self).__name__, convs, derived)

        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return build()
        named = tuple(self.named_parameters())  # names too: a renamed layer must not hit the cache
        params = tuple(p for _, p in named)
        key = tuple((name, p.data_ptr(), version_counter(p)) for name, p in named)
        cache = self.__dict__.get('_fused_cache')
        if cache is None or cache[1] != key or any(a is not b for a, b in zip(cache[0], params)):
            cache = (params, key, {})
            self.__dict__['_fused_cache'] = cache
        if dtype not in cache[2]:
            with torch.inference_mode(False), torch.no_grad():
                cache[2][dtype] = build()
        return cache[2][dtype]

    def clear_fused(self) -> None:
        """Drop the cached derived weights (they are rebuilt on the next no-grad fast forward)."""
        self.__dict__.pop('_fused_cache', None)
