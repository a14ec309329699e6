"""Start-up hook that makes a plain ``import basicsr`` work on current torch, and find GM-MoE when asked to.

``pip install`` puts ``gmmoe_basicsr_hook.pth`` into site-packages; Python runs its one line at every start-up,
which imports this module and calls :func:`install`. That only puts :class:`BasicsrHookFinder` at the front of
``sys.meta_path``: this module imports nothing the interpreter has not loaded already (no torch), and the finder
answers every import but ``basicsr`` with one string comparison, so unrelated programs start as fast as without
it. Once the ``basicsr`` package has executed, :func:`after_basicsr`:

* makes a name missing from a BasicSR registry load the ``basicsr.plugins`` entry points first
  (:func:`retry_registry_misses_with_plugins`); ``gmmoe_arch`` is one of them, so an option file naming
  ``GMMoE`` or ``PSNRLoss`` works in any BasicSR program;
* applies :mod:`gmmoe_arch.compat` (basicsr 1.4.2 on current torch), loaded by :func:`load_compat` without the
  rest of the package, before ``python -m basicsr.train`` executes ``basicsr/train.py`` as ``__main__``, so the
  names that script binds with ``from basicsr.x import y`` are the patched ones.

It registers nothing: GM-MoE's names enter BasicSR's registries only when a program imports ``gmmoe_arch`` or
names one of them (see gmmoe_arch/registry.py), so another project's own ``PSNRLoss`` registers as without
gmmoe. While basicsr executes, :class:`FunctionalTensorForBasicsr` supplies the
``torchvision.transforms.functional_tensor`` that torchvision 0.17 removed and basicsr 1.4.2 imports; afterwards
the module is gone again. A failing step becomes a ``RuntimeWarning``: ``import basicsr`` itself succeeds.

``GMMOE_BASICSR_HOOK=patches``: the compat patches only (no plug-in loading on a registry miss, so GM-MoE's
names never enter the registries unless the program imports ``gmmoe_arch``). ``GMMOE_BASICSR_HOOK=0``: the hook
is off for that process. ``pip uninstall gmmoe`` removes the ``.pth`` and this module. See docs/pipelines.md.
"""

import os
import sys

BASICSR = 'basicsr'
FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'
PLUGIN_GROUP = 'basicsr.plugins'
PLUGIN_PACKAGE = 'gmmoe_arch'

_loaded_plugins = None  # names of the basicsr.plugins entry points, once a registry miss has imported them


class BasicsrHookFinder:
    """Meta-path finder for ``basicsr``; declines every other name."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != BASICSR:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, 'find_spec'):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if hasattr(spec.loader, 'exec_module'):
                        spec.loader = RunAfterExec(spec.loader, after_basicsr)
                    return spec
        return None


class RunAfterExec:
    """Loader proxy: the real loader executes the module (within :class:`FunctionalTensorForBasicsr`), then
    ``after(module)`` runs.

    Afterwards the module's ``__loader__`` and ``__spec__.loader`` are the real loader again.
    """

    def __init__(self, loader, after):
        self.loader = loader
        self.after = after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with FunctionalTensorForBasicsr():
            self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        self.after(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def make_functional_tensor_shim():
    """A stand-in ``torchvision.transforms.functional_tensor`` exporting ``rgb_to_grayscale``, the one name
    basicsr 1.4.2 imports from it (it lives only while basicsr imports: see :class:`FunctionalTensorForBasicsr`)."""
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


def _torchvision_lacks_functional_tensor():
    """True when torchvision is installed and has no ``transforms.functional_tensor`` (torchvision >= 0.17)."""
    import importlib.util

    try:
        return importlib.util.find_spec(FUNCTIONAL_TENSOR) is None
    except ImportError:  # no torchvision at all: basicsr fails its own way
        return False


class FunctionalTensorForBasicsr:
    """Context manager: within the block ``functional_tensor`` is importable, afterwards torchvision is as installed.

    Where torchvision lacks the module, the stand-in is in ``sys.modules`` for the block only: basicsr's
    ``from torchvision.transforms.functional_tensor import rgb_to_grayscale`` binds the function while it
    imports, and every later ``import torchvision.transforms.functional_tensor`` (another program's, or this
    one's after basicsr) raises ``ModuleNotFoundError`` exactly as without gmmoe, so the usual ImportError
    fallbacks run. ``with`` gives True when it supplied the stand-in, False when nothing was needed (torchvision
    has the module, or it is loaded already, e.g. by an enclosing block). A class, not ``contextlib``: this
    module imports nothing at start-up.
    """

    def __enter__(self):
        self.stand_in = None
        if FUNCTIONAL_TENSOR not in sys.modules and _torchvision_lacks_functional_tensor():
            self.stand_in = sys.modules[FUNCTIONAL_TENSOR] = make_functional_tensor_shim()
        return self.stand_in is not None

    def __exit__(self, *exc_info):
        if self.stand_in is None:
            return
        if sys.modules.get(FUNCTIONAL_TENSOR) is self.stand_in:
            del sys.modules[FUNCTIONAL_TENSOR]
        transforms = sys.modules.get('torchvision.transforms')
        if getattr(transforms, 'functional_tensor', None) is self.stand_in:
            del transforms.functional_tensor


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
    """Wrap ``basicsr.utils.registry.Registry.get``: a name not registered loads the plug-ins first.

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
        suffix = kwargs.get('suffix', args[0] if args else 'basicsr')
        if name not in self and f'{name}_{suffix}' not in self:  # asked first: upstream prints on its fallback
            load_plugins()
        try:
            return upstream(self, name, *args, **kwargs)
        except KeyError as miss:
            searched = ', '.join(load_plugins()) or 'none installed'
            raise KeyError(f'{miss.args[0]} (also searched the {PLUGIN_GROUP} entry points: {searched})') from None

    get.__gmmoe_plugin_retry__ = True
    Registry.get = get


def hook_mode():
    """``GMMOE_BASICSR_HOOK``: ``'off'`` for ``0``, ``'patches'`` for ``patches``, else ``'full'``."""
    value = os.environ.get('GMMOE_BASICSR_HOOK', '')
    return {'0': 'off', 'patches': 'patches'}.get(value, 'full')


def load_compat():
    """The module ``gmmoe_arch.compat``, loaded without running ``gmmoe_arch/__init__.py``.

    The package's ``__init__`` registers GM-MoE's names; ``compat`` imports nothing of the package (only this
    module and the standard library at its top), so the patches can be applied while the registries stay
    untouched. A later ``import gmmoe_arch`` finds this module in ``sys.modules`` and uses it.
    """
    import importlib.machinery
    import importlib.util

    name = f'{PLUGIN_PACKAGE}.compat'
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec(PLUGIN_PACKAGE)  # a top-level name: found, not imported
    spec = package and importlib.machinery.PathFinder.find_spec(name, package.submodule_search_locations)
    if spec is None:
        raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def after_basicsr(module):
    """Run once the ``basicsr`` package has executed: the registry retry, then the compat patches.

    The retry (:func:`retry_registry_misses_with_plugins`) only in the default mode; the patches
    (:mod:`gmmoe_arch.compat`, through :func:`load_compat`) also under ``GMMOE_BASICSR_HOOK=patches``. GM-MoE's
    names are not registered here: they enter BasicSR's registries when a program imports ``gmmoe_arch`` or a
    registry miss loads it. They must be applied here, not on the first miss: ``python -m basicsr.train`` binds
    ``parse_options`` and the other helpers with ``from basicsr.x import y`` when it starts. When
    ``gmmoe_arch.compat`` is loaded already, its ``apply()`` is what imports basicsr (the user imported
    ``gmmoe_arch`` first) or has run: nothing to do. Either step failing becomes a ``RuntimeWarning``;
    ``import basicsr`` itself succeeds.
    """
    import warnings

    if hook_mode() == 'full':
        try:
            retry_registry_misses_with_plugins()
        except Exception as exc:
            warnings.warn(
                f'import basicsr: registry misses will not load the {PLUGIN_GROUP} entry points '
                f'({type(exc).__name__}: {exc})',
                RuntimeWarning,
                stacklevel=2,
            )
    if f'{PLUGIN_PACKAGE}.compat' in sys.modules:
        return
    try:
        load_compat().apply()
    except Exception as exc:
        warnings.warn(
            f'import basicsr: the gmmoe compatibility patches are not applied, loading {PLUGIN_PACKAGE}.compat '
            f'failed ({type(exc).__name__}: {exc}); basicsr itself works. GMMOE_BASICSR_HOOK=0 skips this step.',
            RuntimeWarning,
            stacklevel=2,
        )


def install():
    """Put :class:`BasicsrHookFinder` first on ``sys.meta_path`` (once), unless ``GMMOE_BASICSR_HOOK=0``."""
    if hook_mode() == 'off':
        return
    # by name: a second copy of this module (imported under another path) must not add a second finder
    if not any(type(finder).__name__ == BasicsrHookFinder.__name__ for finder in sys.meta_path):
        sys.meta_path.insert(0, BasicsrHookFinder())
