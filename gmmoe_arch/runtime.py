"""Process-wide settings that the project's own commands (``basicsr``, ``gmmoe``) apply at start.

Allocator: GM-MoE's full-resolution activations (48 channels x 600x400 float32 = 47 MB) are above
glibc's mmap threshold, so by default every such tensor is a fresh ``mmap`` whose pages are
zero-filled on first touch, hundreds of thousands of minor page faults per forward pass. With
``mmap`` disabled for the main arena (``M_MMAP_MAX=0``) and the heap never trimmed
(``M_TRIM_THRESHOLD`` at its maximum), freed blocks are reused instead. The cost is that the
process keeps its peak heap until it exits, which suits a training or inference command.

Switch it off with ``GMMOE_MALLOC=off`` in the environment. Library users who import
``gmmoe_arch`` are never affected: only the console commands call :func:`configure_allocator`.
"""

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
# glibc's defaults: up to 65536 mmaps; the mmap threshold starts at 128 KiB and, as mmapped blocks are
# freed, rises to the largest of them up to DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit), with the
# trim threshold at twice the mmap threshold.
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_MMAP_THRESHOLD_MAX = 32 * 2**20


def _mallopt():
    """glibc's ``mallopt`` via ctypes, or None where there is none (not Linux, musl, ...)."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def configure_allocator(enable=None):
    """Stop glibc from serving large tensors with fresh mmaps; return True if it was applied.

    Args:
        enable (bool | None): None reads ``GMMOE_MALLOC`` (``off``/``0``/``false`` disable).
    """
    if enable is None:
        enable = os.environ.get('GMMOE_MALLOC', 'on').lower() not in ('0', 'off', 'false', 'no')
    mallopt = _mallopt() if enable else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))


def restore_allocator():
    """Undo :func:`configure_allocator` for benchmarks that time a plain process in the same process.

    glibc cannot return to its adaptive mmap threshold once it was set, so this sets the value that
    the adaptive rule reaches at most (32 MiB, trim threshold twice that): blocks up to 32 MiB come
    from the heap, larger ones are mmapped again. A warmed-up plain process mmaps at least as much,
    so timings under this setting are never slower than a plain process's. Returns True if applied.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return (
        bool(mallopt(M_MMAP_MAX, _DEFAULT_MMAP_MAX))
        and bool(mallopt(M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD_MAX))
        and bool(mallopt(M_TRIM_THRESHOLD, 2 * _DEFAULT_MMAP_THRESHOLD_MAX))
    )
