"""PSNR and SSIM as the GM-MoE authors' released test code computes them, to put numbers beside the paper's table.

Read off the authors' repository (github.com/Sameenok/gm-moe-lowlight-enhancement, commit 30f38b5:
``options/test/GMMoE_4_GPU/test_*.yml`` and ``basicsr/metrics/psnr_ssim.py``), for LOL-v1, LOLv2-Real and
LOLv2-Synthetic alike:

* both metrics on RGB, ``crop_border: 4`` (4 pixels left out at every edge), ``test_y_channel: false``;
* PSNR: ``20 log10(max / sqrt(mse)) + 0.125``: a constant 0.125 dB added to every image's value;
* SSIM: not the per-channel 2-D SSIM of BasicSR's ``calculate_ssim`` but one SSIM over the ``H x W x 3`` volume,
  with an 11 x 11 x 11 Gaussian window (sigma 1.5 along every axis, the channel axis included) and replicate
  padding of 5, float32; no offset (its 2-D fallback, unused by the test files, adds 0.0374).

What remains different, and why: the released test files set ``use_image: false``, so their metrics saw the
network's raw float output (neither clipped to [0, 1] nor rounded to 8 bits), with the data range chosen per
image (1 when the output's maximum is <= 1, else 255). BasicSR passes these functions 8-bit images, and
``max_value`` is 255 here: rounding moves PSNR by thousandths of a dB at LOL's error levels; clipping can only
raise it. ``calculate_psnr`` / ``calculate_ssim`` with ``crop_border: 0`` stay this project's own protocol.
"""

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from basicsr.metrics.psnr_ssim import calculate_psnr
from basicsr.utils.registry import METRIC_REGISTRY

from ..registry import register
from .pairs import checked_crop

RELEASED_CROP_BORDER = 4
RELEASED_PSNR_OFFSET_DB = 0.125


@register(METRIC_REGISTRY)
def calculate_psnr_released(
    img,
    img2,
    crop_border=RELEASED_CROP_BORDER,
    input_order='HWC',
    test_y_channel=False,
    offset_db=RELEASED_PSNR_OFFSET_DB,
    **kwargs,
):
    """BasicSR's PSNR after leaving out ``crop_border`` pixels at each edge, plus ``offset_db``.

    The defaults are the released test code's protocol (crop 4, +0.125 dB); ``offset_db: 0`` gives
    BasicSR's ``calculate_psnr`` with that crop. Images in [0, 255], ``(H, W, C)`` or per ``input_order``.
    """
    img, img2 = checked_crop(img, img2, crop_border, input_order, 'calculate_psnr_released')
    return calculate_psnr(img, img2, crop_border=0, input_order='HWC', test_y_channel=test_y_channel) + offset_db


def gaussian_window_3d(size=11, sigma=1.5):
    """The ``size``-cubed window: the outer product of three 1-D Gaussians (``cv2.getGaussianKernel``)."""
    g = cv2.getGaussianKernel(size, sigma)[:, 0]
    return np.einsum('i,j,k->ijk', g, g, g)


def _window_mean(volume, window):
    """``volume`` ``(H, W, C)`` averaged under ``window`` at every voxel, edges replicated (same size out)."""
    pad = window.shape[0] // 2
    x = F.pad(volume[None, None], (pad,) * 6, mode='replicate')
    return F.conv3d(x, window[None, None])[0, 0]


@register(METRIC_REGISTRY)
def calculate_ssim_released(img, img2, crop_border=RELEASED_CROP_BORDER, input_order='HWC', max_value=255.0, **kwargs):
    """SSIM over the whole ``H x W x C`` volume with a 3-D Gaussian window, as the released test code computes it.

    Args:
        img, img2: [0, ``max_value``] images, ``(H, W, C)`` or per ``input_order``.
        crop_border: pixels left out at each edge first (released: 4).
        max_value: the data range (255 for the 8-bit images BasicSR passes).

    Returns:
        float: the mean of the SSIM map (float32 arithmetic, as released).
    """
    img, img2 = checked_crop(img, img2, crop_border, input_order, 'calculate_ssim_released')
    if img.ndim == 2:
        img, img2 = img[..., None], img2[..., None]
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    window = torch.from_numpy(gaussian_window_3d()).float()
    x, y = torch.from_numpy(img).float(), torch.from_numpy(img2).float()
    mu_x, mu_y = _window_mean(x, window), _window_mean(y, window)
    var_x = _window_mean(x * x, window) - mu_x**2
    var_y = _window_mean(y * y, window) - mu_y**2
    cov = _window_mean(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())
