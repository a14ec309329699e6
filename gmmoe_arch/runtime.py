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
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def configure_allocator(enable=None):
    """Stop glibc from serving large tensors with fresh mmaps; return True if it was applied.

    Args:
        enable (bool | None): None reads ``GMMOE_MALLOC`` (``off``/``0``/``false`` disable).
    """
    if enable is None:
        enable = os.environ.get('GMMOE_MALLOC', 'on').lower() not in ('0', 'off', 'false', 'no')
    if not enable or not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))
