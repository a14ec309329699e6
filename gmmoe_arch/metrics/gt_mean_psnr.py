"""GT-mean PSNR: PSNR after rescaling the output so that its mean brightness equals the ground truth's.

Many low-light enhancement papers report it next to plain PSNR: it removes the global exposure
error (which the ground truth alone determines) and keeps the structural and colour error.
"""

import numpy as np
from basicsr.metrics.psnr_ssim import calculate_psnr
from basicsr.utils.registry import METRIC_REGISTRY

from ..registry import register
from .pairs import checked_crop


def rescale_to_mean(img, ref, max_value=255.0):
    """Return ``clip(img * mean(ref) / mean(img), 0, max_value)`` as float64, same shape as ``img``.

    The means are taken over every pixel and channel. An all-black ``img`` cannot be rescaled and is
    returned unchanged (as float64).
    """
    img = img.astype(np.float64)
    mean = img.mean()
    if mean == 0:
        return img
    return np.clip(img * (ref.astype(np.float64).mean() / mean), 0.0, max_value)


@register(METRIC_REGISTRY)
def calculate_psnr_gt_mean(img, img2, crop_border, input_order='HWC', test_y_channel=False, **kwargs):
    """PSNR of ``img`` rescaled to the mean of ``img2`` (per image, clipped to [0, 255]), then BasicSR's PSNR.

    Args:
        img (ndarray): the output, ``(H, W, C)`` or ``(C, H, W)`` per ``input_order``, range [0, 255].
        img2 (ndarray): the ground truth, same shape and range.
        crop_border (int): pixels left out at each edge, before the means are taken.
        input_order (str): ``'HWC'`` or ``'CHW'``.
        test_y_channel (bool): measure on the Y channel of YCbCr (as ``calculate_psnr`` does).

    Returns:
        float: the PSNR in dB (no offsets).
    """
    img, img2 = checked_crop(img, img2, crop_border, input_order, 'calculate_psnr_gt_mean')
    return calculate_psnr(
        rescale_to_mean(img, img2), img2, crop_border=0, input_order='HWC', test_y_channel=test_y_channel
    )
