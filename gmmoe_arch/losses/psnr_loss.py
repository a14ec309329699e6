"""PSNR loss: minus the PSNR of each image in [0, 1], averaged over the batch (GM-MoE's training loss)."""

import math

import torch
from basicsr.utils.color_util import rgb2ycbcr_pt
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from ..registry import register


@register(LOSS_REGISTRY)
class PSNRLoss(nn.Module):
    """``loss_weight * 10 / ln(10) * mean_b(log(mse_b + 1e-8))`` for ``pred``, ``target`` of shape ``(B, C, H, W)``.

    ``mse_b`` is the mean squared error of image ``b`` over its channels and pixels, so the loss is
    ``-loss_weight * mean_b(PSNR_b)`` for images in [0, 1] (up to the 1e-8 that keeps a perfect
    match finite). It is computed in float32 whatever the autocast dtype of the inputs.

    Args:
        loss_weight (float): scale of the loss.
        toY (bool): measure on the Y channel of BT.601 YCbCr (BasicSR's ``rgb2ycbcr_pt``); needs 3 channels.
        reduction (str): only ``'mean'`` (over the batch), accepted for BasicSR option compatibility.
    """

    EPS = 1e-8

    def __init__(self, loss_weight=1.0, toY=False, reduction='mean'):  # noqa: N803 (the released option's key)
        super().__init__()
        if reduction != 'mean':
            raise ValueError(
                f'PSNRLoss: reduction must be "mean" (the batch average of per-image PSNR), got {reduction!r}'
            )
        self.loss_weight = float(loss_weight)
        self.toY = bool(toY)
        self.scale = 10.0 / math.log(10.0)

    def forward(self, pred, target, weight=None, **kwargs):
        """Return a scalar tensor; ``weight`` is not supported (kept for BasicSR's loss signature)."""
        if weight is not None:
            raise ValueError('PSNRLoss: per-pixel weights are not supported')
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(
                f'PSNRLoss: pred and target must both be (B, C, H, W), got '
                f'{tuple(pred.shape)} and {tuple(target.shape)}'
            )
        pred, target = pred.float(), target.float()
        if self.toY:
            if pred.shape[1] != 3:
                raise ValueError(f'PSNRLoss: toY needs RGB images (3 channels), got {pred.shape[1]}')
            pred, target = rgb2ycbcr_pt(pred, y_only=True), rgb2ycbcr_pt(target, y_only=True)
        mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return self.loss_weight * self.scale * torch.log(mse + self.EPS).mean()
