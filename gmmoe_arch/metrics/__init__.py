"""Registers this package's metrics with BasicSR."""

from . import gt_mean_psnr, released_protocol  # noqa: F401
