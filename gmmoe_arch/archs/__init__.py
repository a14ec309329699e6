"""Architectures: importing this package registers them in BasicSR's ``ARCH_REGISTRY``, fills
``EXPERT_REGISTRY`` with the built-in experts and the restoration experts (rain, haze) and ``GATE_REGISTRY``
(:mod:`.gates`) with the built-in gates."""

from . import experts, gates, gmmoe_arch, restoration_experts  # noqa: F401
