"""``train.gate_schedule``: dense-to-sparse fine-tuning, ``k`` and the gate temperature as functions of the iteration.

``{top_k: [k0, k1], temperature: [t0, t1], start_iter: s, end_iter: e}`` (``top_k`` or ``temperature`` or
both): at iteration ``i`` each value is ``v0 + (v1 - v0) * clamp((i - s) / (e - s), 0, 1)`` (``k`` rounded to
the nearest integer, halves up), so the first value holds up to ``s``, the second from ``e`` on.
``GMMoEModel`` applies it before every training iteration; it depends on the iteration alone, so a resumed
training continues it.
A ``k`` equal to the number of experts runs dense (no top-k at all).
"""

import math
from typing import NamedTuple, Optional

from ..options import is_integer, is_number

OPTION = 'train.gate_schedule'
EXAMPLE = '{top_k: [5, 1], temperature: [1.0, 0.5], start_iter: 0, end_iter: 1000}'
KEYS = ('top_k', 'temperature', 'start_iter', 'end_iter')


class GateSchedule(NamedTuple):
    """The parsed option: ``top_k`` / ``temperature`` as ``(first, last)`` pairs or None, and the ramp's
    ``start_iter`` / ``end_iter``."""

    top_k: Optional[tuple[int, int]]
    temperature: Optional[tuple[float, float]]
    start_iter: int
    end_iter: int

    @classmethod
    def from_option(cls, spec, n_experts):
        """Check ``spec`` (the option's value) for a network of ``n_experts`` routed experts; ValueError naming
        ``train.gate_schedule`` and the key."""
        if not isinstance(spec, dict) or not ({'top_k', 'temperature'} & set(spec)):
            raise ValueError(f'{OPTION}: expected e.g. {EXAMPLE} (top_k or temperature or both), got {spec!r}')
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise ValueError(f'{OPTION}: unknown key(s) {", ".join(unknown)} (known: {", ".join(KEYS)})')
        start, end = spec.get('start_iter', 0), spec.get('end_iter')
        if not (is_integer(start) and is_integer(end) and 0 <= start < end):
            raise ValueError(
                f'{OPTION}: start_iter and end_iter must be integers with 0 <= start_iter < end_iter, '
                f'got {start!r} and {end!r}'
            )
        top_k = _pair(spec, 'top_k', lambda k: is_integer(k) and 1 <= k <= n_experts, f'integers from 1 to {n_experts}')
        temperature = _pair(spec, 'temperature', lambda t: is_number(t) and t > 0, 'numbers > 0')
        return cls(
            None if top_k is None else (int(top_k[0]), int(top_k[1])),
            None if temperature is None else (float(temperature[0]), float(temperature[1])),
            int(start),
            int(end),
        )

    def progress(self, current_iter):
        """Where ``current_iter`` is on the ramp: 0 up to ``start_iter``, 1 from ``end_iter`` on."""
        return min(max((current_iter - self.start_iter) / (self.end_iter - self.start_iter), 0.0), 1.0)

    def values(self, current_iter, n_experts):
        """``(k or None for dense, temperature or None)`` at ``current_iter``."""
        t = self.progress(current_iter)
        k = temperature = None
        if self.top_k is not None:
            k = math.floor(self.top_k[0] + (self.top_k[1] - self.top_k[0]) * t + 0.5)
            k = None if k >= n_experts else k
        if self.temperature is not None:
            temperature = self.temperature[0] + (self.temperature[1] - self.temperature[0]) * t
        return k, temperature

    def apply(self, net, current_iter):
        """Set ``net``'s (a bare :class:`~gmmoe_arch.archs.gmmoe_arch.GMMoE`) ``gate_top_k`` and gate temperature
        to their values at ``current_iter``."""
        from ..archs.gmmoe_arch import expert_names

        k, temperature = self.values(current_iter, len(expert_names(net)))
        if self.top_k is not None and k != net.gate_top_k:
            net.set_gate_top_k(k)
        if temperature is not None:
            net.set_gate_temperature(temperature)


def _pair(spec, key, valid, words):
    if key not in spec:
        return None
    pair = spec[key]
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(valid(v) for v in pair)):
        raise ValueError(f'{OPTION}.{key}: expected [first, last], two {words}, got {pair!r}')
    return pair
