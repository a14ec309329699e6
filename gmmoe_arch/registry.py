"""The one place where GM-MoE's names enter BasicSR's registries, so that they never take a name from anyone.

Every class or function this package registers in a BasicSR registry goes through :func:`register`:

* It is always registered under its **qualified name** ``<Name>_gmmoe`` (``PSNRLoss_gmmoe``, ``GMMoE_gmmoe``,
  ...), the name BasicSR's own ``Registry.register(obj, suffix='gmmoe')`` gives. An option file that writes
  ``type: PSNRLoss_gmmoe`` gets GM-MoE's class whatever else the program has imported.
* It is also registered under its **plain name** (``PSNRLoss``) when that name is free. When another package
  registered the name first, theirs is kept and one line on the ``gmmoe`` logger says so.
* A plain name of ours **yields**: when another package registers it after us (``import gmmoe_arch`` before
  ``import myproj``), theirs replaces ours, instead of upstream's ``AssertionError: An object named ... was
  already registered``, and one line says so; ours stays reachable under the qualified name. This wraps
  ``basicsr.utils.registry.Registry._do_register`` (see :func:`_let_plain_names_yield`); every other name,
  and every other collision, keeps upstream's behaviour.

The log lines go to the ``gmmoe`` logger (``logging.getLogger('gmmoe').setLevel(logging.ERROR)`` silences them;
without logging configured Python prints the message alone on stderr). See docs/pipelines.md.
"""

import logging

SUFFIX = 'gmmoe'

_plain = {}  # (registry, plain name) -> the object GM-MoE registered under that name, which yields it


def qualified(name):
    """The name under which GM-MoE's ``name`` is always registered: ``<name>_gmmoe``."""
    return f'{name}_{SUFFIX}'


def _describe(obj):
    return f'{getattr(obj, "__module__", "?")}.{getattr(obj, "__qualname__", repr(obj))}'


def _registry_name(registry):
    return getattr(registry, '_name', 'a')


def register(registry):
    """Decorator registering a class or function in BasicSR ``registry`` under the rule in this module."""

    def deco(obj):
        _let_plain_names_yield()
        name = obj.__name__
        registry.register(obj, suffix=SUFFIX)
        if name in registry:
            logging.getLogger(SUFFIX).warning(
                f"gmmoe: '{name}' in BasicSR's {_registry_name(registry)} registry stays "
                f"{_describe(registry.get(name))}; GM-MoE's {name} is registered as '{qualified(name)}' only"
            )
        else:
            registry.register(obj)
            _plain[(registry, name)] = obj
        return obj

    return deco


def _let_plain_names_yield():
    """Wrap ``Registry._do_register`` (once): registering a plain name GM-MoE holds replaces ours, with one line.

    Without the private method (a future basicsr) nothing is wrapped, and such a registration fails as upstream's.
    """
    from basicsr.utils.registry import Registry

    upstream = getattr(Registry, '_do_register', None)
    if upstream is None or getattr(upstream, '__gmmoe_yield__', False):
        return

    def _do_register(self, name, obj, suffix=None):
        key = f'{name}_{suffix}' if isinstance(suffix, str) else name
        ours = _plain.get((self, key))
        if ours is not None and obj is not ours and self._obj_map.get(key) is ours:
            del self._obj_map[key], _plain[(self, key)]
            logging.getLogger(SUFFIX).warning(
                f"gmmoe: '{key}' in BasicSR's {_registry_name(self)} registry is now {_describe(obj)}; "
                f"GM-MoE's {key} stays available as '{qualified(key)}'"
            )
        return upstream(self, name, obj, suffix)

    _do_register.__gmmoe_yield__ = True
    _do_register.__wrapped__ = upstream
    _do_register.__doc__ = 'basicsr Registry._do_register where a plain name GM-MoE holds yields (gmmoe_arch.registry)'
    Registry._do_register = _do_register
