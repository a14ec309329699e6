"""Architectures: importing this package registers them in BasicSR's ``ARCH_REGISTRY``."""

from . import experts, gmmoe_arch  # noqa: F401
