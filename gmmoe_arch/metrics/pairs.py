"""The checks and crop every metric of this package starts with."""

import numpy as np
from basicsr.metrics.metric_util import reorder_image


def checked_crop(img, img2, crop_border, input_order, name):
    """``img`` and ``img2`` as ``(H, W, C)`` float64 with ``crop_border`` pixels left out at each edge.

    Raises:
        ValueError: naming the metric ``name``, for images of different shapes or an unknown ``input_order``.
    """
    if img.shape != img2.shape:
        raise ValueError(f'{name}: image shapes differ: {img.shape}, {img2.shape}')
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f'{name}: input_order must be "HWC" or "CHW", got {input_order!r}')
    img, img2 = reorder_image(img, input_order=input_order), reorder_image(img2, input_order=input_order)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
    return img.astype(np.float64), img2.astype(np.float64)
