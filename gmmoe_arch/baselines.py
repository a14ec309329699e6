"""Classical restoration baselines, one or two per degradation, for the demos' comparison tables.

Every baseline maps an RGB uint8 image ``(H, W, 3)`` to an RGB uint8 image of the same shape and uses
fixed parameters (nothing is tuned per image or per data set, except where a docstring says what is
measured on the image itself). Which baselines belong to which degradation is said once, in the table of
:mod:`gmmoe_arch.data.degradations`; ``BASELINES[label][name]`` here is that table's view (by degradation
label: ``'lowlight'``, ``'rain'``, ``'haze'`` and any registered since), rebuilt on each access.
"""

import cv2
import numpy as np


def _to_float(img):
    """RGB uint8 ``(H, W, 3)`` -> float64 in [0, 1]; anything else is a ``ValueError``."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected an RGB uint8 image of shape (H, W, 3), got {img.dtype} {img.shape}')
    return img.astype(np.float64) / 255.0


def _to_uint8(x):
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def box_mean(x, radius):
    """Mean over the ``(2r+1) x (2r+1)`` window around each pixel (reflected borders); float64, any channels."""
    return cv2.boxFilter(x, cv2.CV_64F, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide, src, radius, eps):
    """He et al.'s guided filter: ``src`` smoothed by a per-window linear model of the grey ``guide``.

    In each window ``src ~ a * guide + b`` (least squares with ridge ``eps`` on ``a``); the output is the
    window-averaged ``a`` and ``b`` applied to the guide, so edges of the guide survive and texture that
    the guide does not explain is averaged away.

    Args:
        guide: ``(H, W)`` float, values in [0, 1].
        src: ``(H, W)`` or ``(H, W, C)`` float.
        radius (int): window radius in pixels. eps (float): regularisation (the edge/flat threshold, squared).

    Returns:
        float64 array of ``src``'s shape.
    """
    guide = np.asarray(guide, np.float64)
    src = np.asarray(src, np.float64)
    g = guide[..., None] if src.ndim == 3 else guide
    mean_g = box_mean(guide, radius)
    var_g = box_mean(guide * guide, radius) - mean_g * mean_g
    mean_g = mean_g[..., None] if src.ndim == 3 else mean_g
    var_g = var_g[..., None] if src.ndim == 3 else var_g
    mean_s = box_mean(src, radius)
    cov = box_mean(g * src, radius) - mean_g * mean_s
    a = cov / (var_g + eps)
    b = mean_s - a * mean_g
    return box_mean(a, radius) * g + box_mean(b, radius)


def gamma_correction(img):
    """Low light: gamma correction chosen per image so that the mean brightness becomes 0.5."""
    x = _to_float(img)
    gamma = np.log(0.5) / np.log(min(max(x.mean(), 1e-3), 0.999))
    return _to_uint8(x**gamma)


def clahe(img):
    """Low light: CLAHE (clip limit 2, 8x8 tiles) on the L channel of Lab; colour (a, b) left as it is."""
    _to_float(img)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def median_filter(img, size=5):
    """Rain: per-channel median over a ``size x size`` window (fixed: 5).

    A streak narrower than half the window's width covers fewer than half its pixels, so the median
    takes the background's value; streaks 1-2 px wide vanish with 5x5, at the price of fine texture.
    """
    _to_float(img)
    return cv2.medianBlur(img, size)


def guided_derain(img, radius=4, eps=0.01):
    """Rain: edge-preserving smoothing by the guided filter, guided by the 5x5 median of the grey image.

    The median guide has lost the thin streaks but kept the scene's edges; each window's linear fit of
    the rainy image on that guide keeps what the guide explains (edges, shading) and averages the
    streaks into the window's offset. Fixed radius 4 and eps 0.01 (a step of about 0.1 in brightness
    counts as an edge).
    """
    x = _to_float(img)
    guide = cv2.medianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 5).astype(np.float64) / 255.0
    return _to_uint8(guided_filter(guide, x, radius, eps))


def dark_channel(x, size=15):
    """``(H, W, 3)`` float -> ``(H, W)``: the minimum over the colour channels and a ``size x size`` window."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    return cv2.erode(np.ascontiguousarray(x.min(axis=2)), kernel, borderType=cv2.BORDER_REFLECT)


def estimate_airlight(x, dark, fraction=0.001):
    """Airlight ``A`` (3,): the mean colour of the input over its brightest ``fraction`` of dark-channel pixels.

    Haze-opaque regions (sky, distant fog) have the largest dark channel and show the airlight's colour.
    """
    n = max(1, int(round(dark.size * fraction)))
    idx = np.argpartition(dark.ravel(), dark.size - n)[-n:]
    return x.reshape(-1, 3)[idx].mean(axis=0)


def dark_channel_prior(img, patch=15, omega=0.95, t0=0.1, radius=40, eps=1e-3, refine=True):
    """Haze: He et al.'s dark channel prior.

    In haze-free outdoor patches some channel of some pixel is near zero, so under
    ``I = J t + A (1 - t)`` the dark channel of ``I / A`` estimates ``1 - t``. Steps: dark channel with a
    15x15 minimum filter; airlight from the brightest 0.1% of dark-channel pixels; transmission
    ``t = 1 - 0.95 * dark(I / A)`` (0.95 keeps a little haze for depth), refined by the guided filter on the
    grey image (radius 40, eps 1e-3; He et al.'s later replacement for soft matting, with this module's
    :func:`guided_filter`), unless ``refine`` is false (:func:`dark_channel_prior_coarse`);
    ``J = (I - A) / max(t, 0.1) + A``.
    """
    x = _to_float(img)
    airlight = np.maximum(estimate_airlight(x, dark_channel(x, patch)), 1e-3)
    t = 1.0 - omega * dark_channel(x / airlight, patch)
    if refine:
        grey = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64)
        t = guided_filter(grey, t, radius, eps)
    return _to_uint8((x - airlight) / np.maximum(t, t0)[..., None] + airlight)


def dark_channel_prior_coarse(img):
    """Haze: :func:`dark_channel_prior` with the coarse transmission (the 15x15 minimum filter's blocks, not
    refined): its halos at depth edges are what the refinement removes."""
    return dark_channel_prior(img, refine=False)


def __getattr__(name):
    """``BASELINES``: degradation label -> {baseline name: function(RGB uint8) -> RGB uint8}, from the
    degradations' table (imported here, not at the top: the table refers to this module's functions)."""
    if name == 'BASELINES':
        from .data.degradations import baselines_by_label

        return baselines_by_label()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
