"""The private torch APIs the fast path uses, each behind an adapter that checks itself.

A private API can change its arguments or behaviour in any torch release. Each one here is wrapped
in a :class:`CheckedAdapter`: on its first call the adapter runs the private function and its
public fallback on a tiny input; if the private one raises or disagrees, a warning names it and
every call from then on takes the fallback (the same result by public means, slower). Nothing else
in the package calls a private torch API.

* :data:`onednn_conv`: conv + ReLU/sigmoid in one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise``); fallback ``F.conv2d`` then the activation.
* :data:`onednn_conv_add`: conv + residual add (+ ReLU) in one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise.binary``); fallback ``F.conv2d``, add, ReLU.
* :data:`version_counter`: a tensor's in-place version counter (``Tensor._version``), the key of
  the fast path's weight caches; fallback: a fresh key every call, i.e. no caching (derived weights
  rebuilt per forward: correct, slower).
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F


class CheckedAdapter:
    """``adapter(*args)``: ``private(*args)`` once ``check(private, public)`` has passed, else ``public(*args)``.

    ``check`` runs on the first call (``private`` None, i.e. missing from this torch build: no
    check, the fallback); it returns normally when ``private`` agrees with ``public`` and raises
    otherwise. The outcome is kept for the process.
    """

    def __init__(
        self, name: str, private: Optional[Callable], public: Callable, check: Callable[[Callable, Callable], None]
    ):
        self.name = name
        self.private = private
        self.public = public
        self._check = check
        self._chosen: Optional[Callable] = None if private is not None else public

    def __call__(self, *args: Any) -> Any:
        fn = self._chosen
        if fn is None:
            fn = self._choose()
        return fn(*args)

    @property
    def uses_private(self) -> bool:
        """Whether calls take the private API (runs the check if it has not run yet)."""
        return (self._chosen or self._choose()) is self.private

    def _choose(self) -> Callable:
        try:
            with torch.inference_mode(False), torch.no_grad(), torch.autocast('cpu', enabled=False):
                self._check(self.private, self.public)
            self._chosen = self.private
        except Exception as err:  # any failure of the private API means: do not use it
            warnings.warn(
                f'{self.name} failed its self-check on torch {torch.__version__} ({type(err).__name__}: '
                f'{err}); using the public fallback instead (same results, slower)',
                RuntimeWarning,
                stacklevel=2,
            )
            self._chosen = self.public
        return self._chosen

    @contextmanager
    def fallback_only(self) -> Iterator['CheckedAdapter']:
        """Within the block every call takes the public fallback (for tests and comparisons)."""
        saved = self._chosen
        self._chosen = self.public
        try:
            yield self
        finally:
            self._chosen = saved


def _agree(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    if ours.shape != reference.shape or ours.dtype != reference.dtype:
        raise ValueError(
            f'{what}: {tuple(ours.shape)} {ours.dtype} where {tuple(reference.shape)} {reference.dtype} was expected'
        )
    if not torch.allclose(ours, reference, rtol=1e-5, atol=1e-5):
        raise ValueError(f'{what}: max |diff| {(ours - reference).abs().max().item():.3g} from the public op')


def _probe(*shape: int) -> torch.Tensor:
    """A small fixed channels-last float32 tensor (no random state touched)."""
    n = 1
    for s in shape:
        n *= s
    x = torch.linspace(-1, 1, n).reshape(shape).sin_()
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _public_conv(x, weight, bias, padding, stride, dilation, groups, act, scalars, algorithm):
    """``F.conv2d`` then ``act`` (``'none'``, ``'relu'`` or ``'sigmoid'``): the oneDNN unary op's signature."""
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if act == 'relu':
        return F.relu(y, inplace=not torch.is_grad_enabled())
    if act == 'sigmoid':
        return y.sigmoid_() if not torch.is_grad_enabled() else y.sigmoid()
    return y


def _public_conv_add(x, other, weight, bias, padding, stride, dilation, groups, binary, alpha, act, scalars, algorithm):
    """``F.conv2d(...) + other`` then ``act`` (None or ``'relu'``): the oneDNN binary op's signature."""
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups) + other
    return F.relu(y, inplace=not torch.is_grad_enabled()) if act == 'relu' else y


def _check_conv(private, public):
    x, weight, bias = _probe(1, 4, 6, 5), _probe(3, 4, 3, 3), _probe(3)
    for act in ('none', 'relu', 'sigmoid'):
        args = (x, weight, bias, [1, 1], [1, 1], [1, 1], 1, act, [], '')
        _agree(private(*args), public(*args), f'conv + {act}')


def _check_conv_add(private, public):
    x, weight, bias = _probe(1, 4, 6, 5), _probe(3, 4, 3, 3), _probe(3)
    other = _probe(1, 3, 6, 5).flip(0)
    for act in (None, 'relu'):
        args = (x, other, weight, bias, [1, 1], [1, 1], [1, 1], 1, 'add', None, act, [], None)
        _agree(private(*args), public(*args), f'conv + add + {act}')


class _FreshKey:
    """A key equal to nothing else: the fallback's "version", so that no cache ever matches."""


def _private_version(t: torch.Tensor) -> Any:
    return t._version


def _public_version(t: torch.Tensor) -> Any:
    return _FreshKey()


def _check_version(private, public):
    t = torch.zeros(3)
    before = private(t)
    t.add_(1)
    after = private(t)
    t[0] = 2
    if not (isinstance(before, int) and after > before and private(t) > after):
        raise ValueError(f'the counter did not grow with in-place writes ({before}, {after}, {private(t)})')


def _onednn_op():
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, '_convolution_pointwise', None)


def _onednn_binary():
    op = _onednn_op()
    return getattr(op, 'binary', None) if op is not None else None


onednn_conv = CheckedAdapter('torch.ops.mkldnn._convolution_pointwise', _onednn_op(), _public_conv, _check_conv)
onednn_conv_add = CheckedAdapter(
    'torch.ops.mkldnn._convolution_pointwise.binary', _onednn_binary(), _public_conv_add, _check_conv_add
)
version_counter = CheckedAdapter('Tensor._version', _private_version, _public_version, _check_version)

ADAPTERS = (onednn_conv, onednn_conv_add, version_counter)
