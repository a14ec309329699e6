"""GM-MoE's spandrel support registered as soon as both ``gmmoe_arch`` and ``spandrel`` are imported, in either order.

Importing spandrel takes seconds (it imports every architecture it knows), so ``import gmmoe_arch`` does not
import it: when spandrel is already imported, :func:`install` registers at once
(:func:`gmmoe_arch.spandrel_arch.register_spandrel`); otherwise it adds a finder to ``sys.meta_path`` that
registers right after spandrel's own module has run, then removes itself. Where spandrel is not installed,
nothing happens. Importing this module (``import gmmoe_arch`` does) calls :func:`install`.
"""

import importlib.abc
import importlib.util
import sys
import warnings


def _register():
    try:
        from .spandrel_arch import register_spandrel

        register_spandrel()
    except Exception as exc:  # spandrel's API changed: GM-MoE stays unsupported there, spandrel itself works
        warnings.warn(f'gmmoe: GM-MoE support for spandrel not registered: {type(exc).__name__}: {exc}', stacklevel=2)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``spandrel`` through the other finders and registers GM-MoE once its module has executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'spandrel':
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install():
    """Register now if spandrel is imported, else when it is; idempotent."""
    if 'spandrel' in sys.modules:
        _register()
    elif importlib.util.find_spec('spandrel') is not None and not any(
        isinstance(f, _RegisterAfterImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _RegisterAfterImport())


install()
