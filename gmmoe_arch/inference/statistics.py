"""Whole-image statistics for tiled inference, shared between tiles through the network's pooling seam.

GM-MoE averages some maps over all of their pixels (each gate, the detail expert's channel attention,
the feature expert's SCA, and any expert that pools through :func:`gmmoe_arch.archs.pooling.global_mean`).
A tile on its own would average over the tile only. :class:`ImageStatistics` is a
:func:`~gmmoe_arch.archs.pooling.pooling_hook` that records each tile's share-weighted sums of those maps
and injects whole-image means estimated from an earlier pass over the tiles.
"""

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class ImageStatistics:
    """Whole-image means of the maps GM-MoE pools globally, estimated over tiles and injected into
    later tiles, so that every tile sees (an estimate of) the whole image's statistics.

    Used as ``with pooling_hook(stats):`` around the forwards of a pass over the tiles, with
    :meth:`set_tile` before each forward. Every global mean within a forward is a site, numbered
    in call order (the network pools in the same order on every tile). Each site adds
    ``sum(share * x)`` and ``sum(share)`` of the current tile (``share``, the tile's blending share,
    averaged down to ``x``'s size), and, where ``inject`` holds a mean for the site, that mean replaces
    the tile's own. Since the shares of all tiles add up to one at every pixel, the sums give the whole
    image's mean wherever the tiles compute the image's features. With ``record=False`` the sums are
    skipped (a pass whose statistics nobody reads); the injection stays.
    """

    def __init__(self, inject: Optional[dict[int, Tensor]] = None, record: bool = True):
        self.inject = inject or {}
        self.record = record
        self.sums: dict[int, tuple[Tensor, float]] = {}
        self.share: Optional[Tensor] = None
        self.site = 0

    def set_tile(self, share: np.ndarray, pad_multiple: int, device: torch.device) -> None:
        """Use ``share`` (``h x w``) for the next forward, replicate-padded as the network pads its input."""
        t = torch.from_numpy(share)[None, None].to(device)
        ph, pw = (-t.shape[2]) % pad_multiple, (-t.shape[3]) % pad_multiple
        self.share = F.pad(t, (0, pw, 0, ph), mode='replicate') if ph or pw else t
        self.site = 0

    def means(self) -> dict[int, Tensor]:
        """``{site: (C,) float64 mean}`` over everything recorded so far."""
        return {site: num / den for site, (num, den) in self.sums.items()}

    def __call__(self, x: Tensor, mean: Tensor) -> Optional[Tensor]:
        """The pooling hook: ``x`` ``(1, C, H, W)`` is pooled to ``mean`` ``(1, C, 1, 1)`` at the next site."""
        site, self.site = self.site, self.site + 1
        if self.record:
            share = F.adaptive_avg_pool2d(self.share, x.shape[-2:])
            num = (x.float() * share).sum((0, 2, 3)).double().cpu()
            old = self.sums.get(site, (0, 0.0))
            self.sums[site] = (old[0] + num, old[1] + float(share.sum()))
        if site in self.inject:
            return self.inject[site].to(device=mean.device, dtype=mean.dtype).reshape(mean.shape)
        return None
