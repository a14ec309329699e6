"""Reading checkpoints from outside: ``weights_only=True``, harmless numpy globals allowed, and an explicit way out.

Every ``torch.load`` of a checkpoint the user hands in (``gmmoe enhance``/``export --weights``, an option
file's ``path.pretrain_network_*`` through BasicSR's ``load_network``) goes through :func:`load_checkpoint`:

* it unpickles with ``weights_only=True`` and, for that call only (``torch.serialization.safe_globals``,
  never torch's process-wide list), allows the numpy globals that BasicSR-family checkpoints carry next to
  their tensors: scalars (``numpy._core.multiarray.scalar``, e.g. a ``np.float64`` best PSNR), dtypes and
  their classes, and arrays (``_reconstruct`` + ``ndarray``), under numpy 2's and numpy 1's module names;
* anything else refused is one :class:`UntrustedCheckpointError` naming the file, the global refused and
  how to opt in;
* the opt-in is per file or folder, never global: the file is listed in the environment variable
  ``GMMOE_TRUSTED_CHECKPOINTS`` (files or folders, separated by ``os.pathsep``), or the caller passes it
  (``--trust-checkpoint``; an option file's top-level ``trusted_checkpoints``). A trusted file is still read
  with ``weights_only=True`` first; only when that refuses it is it read again with ``weights_only=False``,
  which runs whatever code the file holds.
"""

import os
import pickle
import re
from collections.abc import Iterable
from typing import Optional

import torch

TRUST_ENV = 'GMMOE_TRUSTED_CHECKPOINTS'
_REFUSED = re.compile(r'Unsupported global: GLOBAL (\S+) was not an allowed global')


class UntrustedCheckpointError(ValueError):
    """A checkpoint holds a global that ``weights_only`` loading refuses, and the user has not trusted it."""


def harmless_globals() -> list:
    """The numpy globals allowed next to tensors: ``[obj]`` or ``(obj, 'module.name')`` entries for
    ``torch.serialization.safe_globals`` (the second form matches pickles written under numpy 1's
    ``numpy.core`` names)."""
    import numpy as np

    try:
        multiarray = np._core.multiarray
    except AttributeError:  # numpy < 2
        multiarray = np.core.multiarray
    entries = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    for name in ('scalar', '_reconstruct'):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            entries.append((getattr(multiarray, name), f'{module}.{name}'))
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25: one class per dtype, the type a dtype's state builds
    if dtypes is not None:
        entries += [
            getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType') and isinstance(getattr(dtypes, n), type)
        ]
    return entries


def trusted_paths(extra: Iterable[str] = ()) -> list[str]:
    """The files and folders trusted: ``GMMOE_TRUSTED_CHECKPOINTS`` (``os.pathsep``-separated) and ``extra``."""
    listed = [p for p in os.environ.get(TRUST_ENV, '').split(os.pathsep) if p.strip()]
    return listed + [str(p) for p in extra if str(p).strip()]


def is_trusted(path: str, extra: Iterable[str] = ()) -> bool:
    """True when ``path`` is a trusted file or lies under a trusted folder (paths compared after ``realpath``)."""
    real = os.path.realpath(path)
    for entry in trusted_paths(extra):
        entry = os.path.realpath(os.path.expanduser(entry))
        if real == entry or (os.path.isdir(entry) and os.path.commonpath([real, entry]) == entry):
            return True
    return False


def refused_global(path: str, exc: BaseException) -> Optional[str]:
    """The global ``torch.load(path, weights_only=True)`` refused (from its message, else from the file); None
    when the failure was of another kind (a damaged file, not a checkpoint)."""
    found = _REFUSED.search(str(exc))
    if found:
        return found.group(1)
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy-format or damaged file: the scan cannot tell
        return None
    allowed = {
        entry[1] if isinstance(entry, tuple) else f'{entry.__module__}.{entry.__qualname__}'
        for entry in harmless_globals()
    }
    unsafe = [name for name in unsafe if name not in allowed]
    return unsafe[0] if unsafe else None


def refusal_message(path: str, name: str, what: str = 'checkpoint', opt_in: str = '') -> str:
    """The one line for a refused global: the file, the global, and how to trust the file."""
    ways = f'{opt_in}, or ' if opt_in else ''
    return (
        f'{what} {path}: holds {name}, which weights_only loading refuses (unpickling it may run code); '
        f'if you trust this file, {ways}add it or its folder to {TRUST_ENV} (separate entries with "{os.pathsep}")'
    )


def load_checkpoint(
    path: str, trusted: Iterable[str] = (), what: str = 'checkpoint', opt_in: str = '', map_location='cpu'
):
    """``torch.load(path, weights_only=True)`` with :func:`harmless_globals` allowed for this call.

    Args:
        path: the checkpoint.
        trusted: files or folders the caller trusts besides ``GMMOE_TRUSTED_CHECKPOINTS``.
        what: the words before the path in messages (``'checkpoint'``, ``'cannot load network checkpoint'``).
        opt_in: the caller's own way to trust a file, for the message (``'pass --trust-checkpoint'``).
        map_location: as for ``torch.load``.

    Raises:
        UntrustedCheckpointError: a refused global in an untrusted file (the message names both).
        Exception: whatever ``torch.load`` raises for a damaged file or one that is no checkpoint.
    """
    try:
        with torch.serialization.safe_globals(harmless_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        name = refused_global(path, exc)
        if name is None:
            raise
        if not is_trusted(path, trusted):
            raise UntrustedCheckpointError(refusal_message(path, name, what, opt_in)) from exc
    return torch.load(path, map_location=map_location, weights_only=False)
