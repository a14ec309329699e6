"""Architectures: importing this package registers them in BasicSR's ``ARCH_REGISTRY`` and fills
``EXPERT_REGISTRY`` with the built-in experts and the restoration experts (rain, haze)."""

from . import experts, gmmoe_arch, restoration_experts  # noqa: F401
