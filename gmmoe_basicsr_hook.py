"""Start-up hook that makes a plain ``import basicsr`` work and know GM-MoE, in any program.

``pip install`` puts ``gmmoe_basicsr_hook.pth`` into site-packages; Python runs its one line at every start-up,
which imports this module and calls :func:`install`. That only puts :class:`BasicsrHookFinder` at the front of
``sys.meta_path``: this module imports nothing the interpreter has not loaded already (no torch), and the finder
answers every import except two with one string comparison, so unrelated programs start as fast as without it.
The two imports it acts on:

* ``torchvision.transforms.functional_tensor``, removed in torchvision 0.17: ``basicsr.data.degradations``
  imports ``rgb_to_grayscale`` from it, so ``import basicsr`` dies with ``ModuleNotFoundError``. When the
  installed torchvision lacks the module, the finder supplies :func:`make_functional_tensor_shim`. This is the
  project's only copy of that shim; :mod:`gmmoe_arch.compat` calls :func:`install_functional_tensor_shim`,
  which covers interpreters without the hook (a source checkout on ``PYTHONPATH``).
* ``basicsr``: once the package has executed, :func:`after_basicsr` makes a registry miss load the
  ``basicsr.plugins`` entry points and retry (:func:`retry_registry_misses_with_plugins`), then imports
  ``gmmoe_arch``, which applies :mod:`gmmoe_arch.compat` and registers GM-MoE's network, dataset, loss, metrics
  and model. This runs before ``python -m basicsr.train`` executes ``basicsr/train.py`` as ``__main__``, so the
  names that script binds with ``from basicsr.x import y`` are the patched ones. A failing ``gmmoe_arch``
  import becomes a ``RuntimeWarning``: ``import basicsr`` itself still succeeds.

``GMMOE_BASICSR_HOOK=0`` in the environment turns the hook off for that process. ``pip uninstall gmmoe``
removes the ``.pth`` and this module. See docs/pipelines.md.
"""

import os
import sys

BASICSR = 'basicsr'
FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'
PLUGIN_GROUP = 'basicsr.plugins'
PLUGIN_PACKAGE = 'gmmoe_arch'

_loaded_plugins = None  # names of the basicsr.plugins entry points, once a registry miss has imported them


class BasicsrHookFinder:
    """Meta-path finder for ``basicsr`` and the removed ``functional_tensor``; declines every other name."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == BASICSR:
            spec = self._find_elsewhere(fullname, path, target)
            if spec is not None and hasattr(spec.loader, 'exec_module'):
                spec.loader = RunAfterExec(spec.loader, after_basicsr)
            return spec
        if fullname == FUNCTIONAL_TENSOR and self._find_elsewhere(fullname, path, target) is None:
            import importlib.util

            return importlib.util.spec_from_loader(fullname, ShimLoader())
        return None

    def _find_elsewhere(self, fullname, path, target):
        """The spec the rest of ``sys.meta_path`` finds for ``fullname``, or None."""
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, 'find_spec'):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    return spec
        return None


class RunAfterExec:
    """Loader proxy: the real loader executes the module, then ``after(module)`` runs.

    Afterwards the module's ``__loader__`` and ``__spec__.loader`` are the real loader again.
    """

    def __init__(self, loader, after):
        self.loader = loader
        self.after = after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        self.after(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class ShimLoader:
    """Loader that supplies :func:`make_functional_tensor_shim` as the module."""

    def create_module(self, spec):
        return make_functional_tensor_shim()

    def exec_module(self, module):
        """Nothing to run: the shim is complete when created."""


def make_functional_tensor_shim():
    """A stand-in ``torchvision.transforms.functional_tensor`` exporting ``rgb_to_grayscale``."""
    import types

    from torchvision.transforms import functional

    shim = types.ModuleType(
        FUNCTIONAL_TENSOR,
        'gmmoe_basicsr_hook: stand-in for the module removed in '
        'torchvision 0.17 (basicsr 1.4.2 imports rgb_to_grayscale from it).',
    )
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    shim.__gmmoe_shim__ = True
    return shim


def install_functional_tensor_shim():
    """Make ``functional_tensor`` importable, with or without the hook's finder.

    Returns True when this call loaded the shim (torchvision lacks the module and nothing had imported it yet),
    False when torchvision has its own or the module was already loaded.
    """
    import importlib

    if FUNCTIONAL_TENSOR in sys.modules:
        return False
    try:
        module = importlib.import_module(FUNCTIONAL_TENSOR)
    except ModuleNotFoundError as exc:
        if exc.name != FUNCTIONAL_TENSOR:
            raise
        module = sys.modules[FUNCTIONAL_TENSOR] = make_functional_tensor_shim()
        sys.modules['torchvision.transforms'].functional_tensor = module
    return getattr(module, '__gmmoe_shim__', False)


def load_plugins():
    """Import every ``basicsr.plugins`` entry point (the first call only); return the names that imported.

    A plug-in that fails to import is reported as a ``RuntimeWarning`` naming it and skipped.
    """
    global _loaded_plugins
    if _loaded_plugins is None:
        import importlib.metadata
        import warnings

        _loaded_plugins = []
        for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
            except Exception as exc:
                warnings.warn(
                    f'basicsr plug-in "{ep.name}" ({ep.value}, entry point group {PLUGIN_GROUP}) '
                    f'failed to import: {type(exc).__name__}: {exc}',
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                _loaded_plugins.append(ep.name)
    return _loaded_plugins


def retry_registry_misses_with_plugins():
    """Wrap ``basicsr.utils.registry.Registry.get``: a miss loads the plug-ins and asks again.

    When nothing provides the name, the ``KeyError`` is upstream's (it names the key and the registry) plus
    the plug-ins that were searched.
    """
    import functools

    from basicsr.utils.registry import Registry

    upstream = Registry.get
    if getattr(upstream, '__gmmoe_plugin_retry__', False):
        return

    @functools.wraps(upstream)
    def get(self, name, *args, **kwargs):
        try:
            return upstream(self, name, *args, **kwargs)
        except KeyError:
            plugins = load_plugins()
        try:
            return upstream(self, name, *args, **kwargs)
        except KeyError as miss:
            searched = ', '.join(plugins) or 'none installed'
            raise KeyError(f'{miss.args[0]} (also searched the {PLUGIN_GROUP} entry points: {searched})') from None

    get.__gmmoe_plugin_retry__ = True
    Registry.get = get


def after_basicsr(module):
    """Run once the ``basicsr`` package has executed: the registry retry, then ``import gmmoe_arch``.

    Either step failing becomes a ``RuntimeWarning``; ``import basicsr`` itself succeeds. When the user imported
    ``gmmoe_arch`` first, its compat step is what imports basicsr: ``import gmmoe_arch`` here then returns the
    half-initialised package, which finishes on its own afterwards.
    """
    import importlib
    import warnings

    try:
        retry_registry_misses_with_plugins()
    except Exception as exc:
        warnings.warn(
            f'import basicsr: registry misses will not load the {PLUGIN_GROUP} entry points '
            f'({type(exc).__name__}: {exc})',
            RuntimeWarning,
        )
    try:
        importlib.import_module(PLUGIN_PACKAGE)
    except Exception as exc:
        warnings.warn(
            f'import basicsr: GM-MoE is not registered, importing {PLUGIN_PACKAGE} failed '
            f'({type(exc).__name__}: {exc}); basicsr itself works. GMMOE_BASICSR_HOOK=0 skips this step.',
            RuntimeWarning,
        )


def install():
    """Put :class:`BasicsrHookFinder` first on ``sys.meta_path`` (once), unless ``GMMOE_BASICSR_HOOK=0``."""
    if os.environ.get('GMMOE_BASICSR_HOOK') == '0':
        return
    # by name: a second copy of this module (imported under another path) must not add a second finder
    if not any(type(finder).__name__ == BasicsrHookFinder.__name__ for finder in sys.meta_path):
        sys.meta_path.insert(0, BasicsrHookFinder())
