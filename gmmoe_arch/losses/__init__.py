"""Registers this package's losses with BasicSR."""

from . import gate_losses, psnr_loss  # noqa: F401
