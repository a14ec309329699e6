"""The degradations this package knows, as one table: name -> :class:`Degradation`.

Each entry holds what every part of the package needs of a degradation: how ``datasets_lmdb synth``
draws its parameters (``params(rng, **options)``) and applies them (``apply(img, params, rng)``, RGB
uint8 ``(H, W, 3)`` in and out), its classical baselines for the comparison tables (``{name: fn}``,
functions of :mod:`gmmoe_arch.baselines`) and a title for help texts. The name is also the label
written into ``meta_info.txt`` (``label=NAME``). Synthesis, the CLI's choices, the gate statistics'
order of labels, the evaluation's baselines and :data:`gmmoe_arch.baselines.BASELINES` all read
:data:`TABLE`, so a new degradation is one :func:`register_degradation` call (docs/data.md).

Synthesis models (ranges and their sources: ``docs/data.md``):

* ``lowlight``: :func:`lowlight_params` / :func:`degrade_lowlight`; linear light (sRGB decoded),
  exposure 0.04-0.1 with a +-8% white-balance cast, photon shot noise (Poisson, 300-3000 photons
  for white) and read noise (Gaussian, sigma 0.0005-0.003), display encoding gamma 2.0-2.5, 8 bits.
* ``rain``: :func:`rain_params` / :func:`add_rain`; streak layers (seed points motion-blurred by
  a one-pixel line kernel, widened by a Gaussian), screen-blended onto the image. ``light``
  (Rain100L-like): one layer, one direction; ``heavy`` (Rain100H-like): 2-3 denser, longer, brighter
  layers whose directions spread +-12 degrees around a common one. Directions are -30..30 degrees
  from vertical.
* ``haze``: :func:`haze_params` / :func:`add_haze`; ``I = J t + A (1 - t)``, ``t = exp(-beta d)``
  with beta 0.6-1.8 and A 0.7-1.0 (RESIDE ITS's ranges), A tinted +-0.03 per channel, and the scene
  depth of :func:`scene_depth`, drawn without looking at the image (ground plane, smooth field, occluders).
* ``haze_bright``: the first haze model, kept for comparison (not in ``mixed`` or ``regions`` sets):
  :func:`haze_bright_params` / :func:`add_haze_bright`, depth from :func:`depth_proxy`, half of which is the
  image's blurred brightness, the dark channel prior's own cue.

:func:`smooth_field` (low-frequency noise) is shared with the region masks of :mod:`.regions`.
"""

import dataclasses
from collections.abc import Callable, Mapping

import cv2
import numpy as np

from .. import baselines
from .pairing import check_label

RAIN_LEVELS = ('light', 'heavy')
RAIN_CHOICES = (*RAIN_LEVELS, 'both')

#: streak layer settings per rain level: (low, high) ranges; lengths are in pixels of a 400-pixel image
RAIN = {
    'light': {
        'layers': (1, 1),
        'density': (0.002, 0.005),
        'length': (10.0, 25.0),
        'width': (0.8, 1.5),
        'brightness': (0.45, 0.7),
        'spread': 0.0,
    },
    'heavy': {
        'layers': (2, 3),
        'density': (0.003, 0.007),
        'length': (20.0, 40.0),
        'width': (1.0, 2.0),
        'brightness': (0.5, 0.8),
        'spread': 12.0,
    },
}
RAIN_ANGLE = 30.0  # degrees from vertical, either side
RAIN_REFERENCE_SIDE = 400
HAZE_BETA = (0.6, 1.8)
HAZE_AIRLIGHT = (0.7, 1.0)
HAZE_TINT = 0.03
HAZE_MIX = (0.3, 0.7)
HAZE_NEAREST = 0.2
#: scene depth of ``haze``: horizon row (fraction of the height from the top; < 0: above the frame), its tilt
#: (degrees), the band below the horizon that is still at the far limit (fraction of the height), the smooth
#: field's strength (log-depth std) and feature size (fraction of the longest side), occluders per image
HAZE_HORIZON = (-0.1, 0.6)
HAZE_TILT = 8.0
HAZE_FAR_BAND = (0.2, 0.5)
HAZE_FIELD = (0.1, 0.3)
HAZE_FIELD_SCALE = (0.1, 0.3)
HAZE_OCCLUDERS = (0, 3)


@dataclasses.dataclass(frozen=True)
class Degradation:
    """One degradation: ``params(rng, **options) -> dict`` (JSON-ready; ``options`` are the synthesis run's,
    e.g. ``rain='both'``: each reads those it knows), ``apply(img, params, rng) -> img`` on RGB uint8
    ``(H, W, 3)``, ``baselines`` ``{name: fn(RGB uint8) -> RGB uint8}``, a ``title`` for help texts, and
    ``in_mixed``: whether ``mixed`` and ``regions`` sets draw it (False for variants kept for comparison)."""

    params: Callable
    apply: Callable
    baselines: Mapping[str, Callable]
    title: str
    in_mixed: bool = True


def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def lowlight_params(rng, **_options):
    """One image's low-light parameters (see the module docstring); takes no options."""
    gains = 1 + rng.uniform(-0.08, 0.08, 3)
    return {
        'exposure': float(np.exp(rng.uniform(np.log(0.04), np.log(0.1)))),
        'gains_rgb': (gains / gains.mean()).round(4).tolist(),
        'photons_white': float(np.exp(rng.uniform(np.log(300), np.log(3000)))),
        'read_noise': float(rng.uniform(0.0005, 0.003)),
        'gamma': float(rng.uniform(2.0, 2.5)),
    }


def degrade_lowlight(img, params, rng):
    """Dark, noisy, slightly tinted version of an RGB uint8 ``(H, W, 3)`` image -> uint8 ``(H, W, 3)``."""
    linear = srgb_to_linear(img.astype(np.float64) / 255.0)
    signal = linear * params['exposure'] * np.asarray(params['gains_rgb'])
    q = params['photons_white']
    noisy = rng.poisson(np.clip(signal, 0, None) * q) / q + rng.normal(0.0, params['read_noise'], signal.shape)
    encoded = np.clip(noisy, 0.0, 1.0) ** (1.0 / params['gamma'])
    return np.round(encoded * 255.0).astype(np.uint8)


def rain_params(rng, level):
    """Streak layers for one image at ``level`` (``'light'`` or ``'heavy'``): ``{'level', 'layers': [...]}``."""
    spec = RAIN[level]
    angle = rng.uniform(-RAIN_ANGLE, RAIN_ANGLE)
    layers = []
    for _ in range(int(rng.integers(spec['layers'][0], spec['layers'][1] + 1))):
        layers.append(
            {
                'angle': round(float(angle + rng.uniform(-spec['spread'], spec['spread'])), 3),
                **{
                    key: round(float(rng.uniform(*spec[key])), 4)
                    for key in ('density', 'length', 'width', 'brightness')
                },
            }
        )
    return {'level': level, 'layers': layers}


def draw_rain(rng, rain='both', **_options):
    """Rain parameters for the option ``rain`` (a level of :data:`RAIN_LEVELS`, or ``'both'``: one drawn)."""
    level = RAIN_LEVELS[int(rng.integers(2))] if rain == 'both' else rain
    return rain_params(rng, level)


def line_kernel(length, angle):
    """One-pixel line of ``length`` pixels at ``angle`` degrees from vertical: float32 ``(k, k)`` of 0/1, k odd.

    8-connected: ``cv2.line`` anti-aliases 8-bit images only, so ``LINE_AA`` on this float kernel draws a
    plain line (the Gaussian of the streak's width smooths it afterwards)."""
    k = int(np.ceil(length)) // 2 * 2 + 1
    kernel = np.zeros((k, k), np.float32)
    centre, half, theta = (k - 1) / 2, (length - 1) / 2, np.deg2rad(angle)
    dx, dy = half * np.sin(theta), half * np.cos(theta)
    fixed = 16  # cv2.line's sub-pixel coordinates: 4 fractional bits
    ends = [(round((centre + s * dx) * fixed), round((centre + s * dy) * fixed)) for s in (-1, 1)]
    cv2.line(kernel, ends[0], ends[1], 1.0, 1, cv2.LINE_AA, 4)
    return kernel


def streak_layer(shape, layer, scale, rng):
    """One layer of rain streaks, float32 ``(H, W)`` in [0, brightness] for an image of ``shape`` (H, W)."""
    length = max(3.0, layer['length'] * scale)
    kernel = line_kernel(length, layer['angle'])
    pad = kernel.shape[0]
    h, w = shape[0] + 2 * pad, shape[1] + 2 * pad  # seeds outside the image streak into it too
    seeds = (rng.random((h, w)) < layer['density']) * rng.uniform(0.6, 1.0, (h, w))
    streaks = cv2.filter2D(seeds.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)
    sigma = max(0.3, layer['width'] * scale / 2.355)  # width is the full width at half maximum
    streaks = cv2.GaussianBlur(streaks, (0, 0), sigma)
    peak = cv2.GaussianBlur(np.pad(kernel, pad), (0, 0), sigma).max()  # one isolated streak's maximum
    return np.clip(streaks[pad:-pad, pad:-pad] / peak, 0.0, 1.0) * layer['brightness']


def add_rain(img, params, rng):
    """Screen-blend the streak layers of ``params`` onto an RGB uint8 ``(H, W, 3)`` image -> uint8."""
    scale = max(img.shape[:2]) / RAIN_REFERENCE_SIDE
    clear = np.ones(img.shape[:2], np.float32)
    for layer in params['layers']:
        clear *= 1.0 - streak_layer(img.shape[:2], layer, scale, rng)
    out = 1.0 - (1.0 - img.astype(np.float32) / 255.0) * clear[..., None]
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def smooth_field(shape, seed, scale):
    """Low-frequency random field: float64 ``(H, W)`` of zero mean and unit standard deviation whose features
    are about ``scale`` pixels across (white noise blurred by a Gaussian of sigma ``scale / 2``).

    Drawn from ``default_rng(seed)`` on a grid about ``scale / 6`` pixels apart, blurred there and resized
    (bicubic) to ``shape``: the same cost for any ``scale``, and smooth, as the blurred grid has no detail
    finer than a few of its cells."""
    h, w = shape
    step = max(1.0, scale / 6)
    grid = (int(np.ceil(h / step)) + 2, int(np.ceil(w / step)) + 2)
    noise = np.random.default_rng(seed).standard_normal(grid)
    noise = cv2.GaussianBlur(noise, (0, 0), scale / 2 / step, borderType=cv2.BORDER_REFLECT)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    std = field.std()
    return (field - field.mean()) / std if std > 0 else np.zeros(shape)


def scattering(rng):
    """A haze's ``beta`` (RESIDE's 0.6-1.8) and airlight ``airlight_rgb`` (0.7-1.0, tinted +-0.03 per channel)."""
    airlight = rng.uniform(*HAZE_AIRLIGHT) + rng.uniform(-HAZE_TINT, HAZE_TINT, 3)
    return {
        'beta': round(float(rng.uniform(*HAZE_BETA)), 4),
        'airlight_rgb': np.clip(airlight, 0.0, 1.0).round(4).tolist(),
    }


def scatter(img, depth, params):
    """``I = J t + A (1 - t)``, ``t = exp(-beta d)`` on sRGB values in [0, 1] (as RESIDE does) of an RGB uint8
    ``(H, W, 3)`` image and a depth ``d`` ``(H, W)``, with ``params``' ``beta`` and ``airlight_rgb`` -> uint8."""
    t = np.exp(-params['beta'] * depth)[..., None]
    hazy = img.astype(np.float64) / 255.0 * t + np.asarray(params['airlight_rgb']) * (1.0 - t)
    return np.round(np.clip(hazy, 0.0, 1.0) * 255.0).astype(np.uint8)


def haze_params(rng, **_options):
    """One image's haze: :func:`scattering`, and the scene of :func:`scene_depth` (horizon, tilt, far band,
    smooth field, occluders as fractions of the frame)."""
    params = scattering(rng)
    horizon = float(rng.uniform(*HAZE_HORIZON))
    occluders = []
    for _ in range(int(rng.integers(HAZE_OCCLUDERS[0], HAZE_OCCLUDERS[1] + 1))):
        bottom = float(rng.uniform(max(horizon, 0.0) + 0.1, 1.0))
        width, height = float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.15, 0.6))
        left = float(rng.uniform(-0.5 * width, 1.0 - 0.5 * width))
        box = {'left': left, 'right': left + width, 'top': bottom - height, 'bottom': bottom}
        occluders.append({key: round(value, 4) for key, value in box.items()})
    params.update(
        horizon=round(horizon, 4),
        tilt=round(float(rng.uniform(-HAZE_TILT, HAZE_TILT)), 3),
        far_band=round(float(rng.uniform(*HAZE_FAR_BAND)), 4),
        field=round(float(rng.uniform(*HAZE_FIELD)), 4),
        field_scale=round(float(rng.uniform(*HAZE_FIELD_SCALE)), 4),
        field_seed=int(rng.integers(2**31)),
        occluders=occluders,
    )
    return params


def ground_depth(rows, columns, params, shape):
    """Depth in [0, 1] of a tilted ground plane at pixel ``(rows, columns)`` of an image of ``shape`` (H, W).

    A camera looking at flat ground sees a point ``v`` image heights below the horizon at a distance
    proportional to ``1 / v``; rows within ``far_band`` of the horizon, and everything above it (sky, far
    scenery), are at the far limit 1."""
    h, w = shape
    slope = np.tan(np.deg2rad(params['tilt']))
    below = (rows + 0.5) / h - params['horizon'] - slope * (columns + 0.5 - w / 2) / h
    return np.minimum(1.0, params['far_band'] / np.maximum(below, 1e-6))


def scene_depth(shape, params):
    """Relative scene depth for an image of ``shape`` (H, W) from ``haze`` ``params``: float64 in [HAZE_NEAREST, 1].

    Drawn without looking at the image, so that a dehazer cannot read the depth off the brightness (the
    dark channel prior's cue): a ground plane receding towards a random, tilted horizon
    (:func:`ground_depth`), times ``exp(field x smooth_field)`` (terrain and scenery that do not lie on one
    plane), then occluders: boxes standing on the ground, each at the constant depth of its foot, nearer
    than what they hide (steps of depth with sharp edges, as objects make them). Rescaled so that the
    farthest point is 1 and the nearest ``HAZE_NEAREST``, as :func:`depth_proxy`.
    """
    h, w = shape
    rows, columns = np.mgrid[0:h, 0:w].astype(np.float64)
    field = smooth_field(shape, params['field_seed'], params['field_scale'] * max(h, w))
    depth = ground_depth(rows, columns, params, shape) * np.exp(params['field'] * field)
    for box in params['occluders']:
        top, bottom = (int(round(np.clip(box[k], 0.0, 1.0) * h)) for k in ('top', 'bottom'))
        left, right = (int(round(np.clip(box[k], 0.0, 1.0) * w)) for k in ('left', 'right'))
        if bottom <= top or right <= left:
            continue
        foot = ground_depth(np.float64(bottom - 1), np.float64((left + right - 1) / 2), params, shape)
        depth[top:bottom, left:right] = np.minimum(depth[top:bottom, left:right], foot)
    span = depth.max() - depth.min()
    depth = (depth - depth.min()) / span if span > 0 else np.ones_like(depth)
    return HAZE_NEAREST + (1.0 - HAZE_NEAREST) * depth


def add_haze(img, params, rng=None):
    """:func:`scatter` an RGB uint8 ``(H, W, 3)`` image with the depth of :func:`scene_depth` -> uint8. Draws
    nothing from ``rng`` (the depth is fixed by ``params``, seed of its field included)."""
    return scatter(img, scene_depth(img.shape[:2], params), params)


def haze_bright_params(rng, **_options):
    """One image's ``haze_bright``: :func:`scattering` (``beta``, tinted ``airlight_rgb``) and the depth proxy's mix."""
    return {
        **scattering(rng),
        'depth_mix': round(float(rng.uniform(*HAZE_MIX)), 4),
    }


def depth_proxy(img, mix):
    """Relative scene depth of an RGB uint8 ``(H, W, 3)`` image: float64 ``(H, W)`` in [HAZE_NEAREST, 1].

    ``mix`` x a vertical ramp (top of the frame far, bottom near: the ground plane of most photographs
    recedes towards the horizon) + ``(1 - mix)`` x the image's luminance blurred at 1/16 of its longest
    side (bright, low-frequency regions are mostly sky and distant surfaces; the blur keeps the
    transmission smooth instead of following texture), rescaled so the farthest point is 1 and the
    nearest ``HAZE_NEAREST`` (every pixel carries some haze, as in outdoor scenes).
    """
    h, w = img.shape[:2]
    ramp = np.repeat(np.linspace(1.0, 0.0, h)[:, None], w, axis=1)
    luminance = img.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722]) / 255.0
    smooth = cv2.GaussianBlur(luminance, (0, 0), max(h, w) / 16)
    depth = mix * ramp + (1.0 - mix) * smooth
    span = depth.max() - depth.min()
    depth = (depth - depth.min()) / span if span > 0 else np.ones_like(depth)
    return HAZE_NEAREST + (1.0 - HAZE_NEAREST) * depth


def add_haze_bright(img, params, rng=None):
    """Atmospheric scattering ``I = J t + A (1 - t)``, ``t = exp(-beta d)`` on sRGB values in [0, 1] (as RESIDE
    does) of an RGB uint8 ``(H, W, 3)`` image -> uint8; ``d`` from :func:`depth_proxy`. Draws nothing from
    ``rng`` (there for the table's ``apply`` signature)."""
    return scatter(img, depth_proxy(img, params['depth_mix']), params)


#: degradation name (= its label) -> :class:`Degradation`, in the order of ``mixed`` sets and of reports
TABLE = {
    'lowlight': Degradation(
        lowlight_params,
        degrade_lowlight,
        {'gamma correction': baselines.gamma_correction, 'CLAHE': baselines.clahe},
        'low light',
    ),
    'rain': Degradation(
        draw_rain,
        add_rain,
        {'median 5x5': baselines.median_filter, 'guided filter': baselines.guided_derain},
        'rain streaks',
    ),
    'haze': Degradation(haze_params, add_haze, {'dark channel prior': baselines.dark_channel_prior}, 'haze'),
    'haze_bright': Degradation(
        haze_bright_params,
        add_haze_bright,
        {'dark channel prior': baselines.dark_channel_prior},
        'haze whose depth follows brightness (the first model, for comparison)',
        in_mixed=False,
    ),
}


def register_degradation(name, params, apply, baselines=None, title=None, in_mixed=True):
    """Add (or replace) the degradation ``name`` in :data:`TABLE`; returns its :class:`Degradation`.

    ``params(rng, **options)`` draws one image's parameters (accept ``**options`` and read only the ones you
    need), ``apply(img, params, rng)`` degrades an RGB uint8 ``(H, W, 3)`` image, ``baselines`` is
    ``{name: fn}`` of classical restorations (default none), ``title`` a phrase for help texts (default
    ``name``), ``in_mixed`` whether ``mixed`` and ``regions`` sets draw it. ``name`` becomes ``label=NAME`` in
    ``meta_info.txt``, so it is a label (letters, digits, ``_``, ``-``; ``DataError`` otherwise), and it cannot
    be ``mixed`` or ``regions`` (``ValueError``: the CLI's kinds that combine the degradations).
    """
    if name in ('mixed', 'regions'):
        raise ValueError(f'register_degradation: "{name}" is a kind that combines the degradations, not one')
    check_label(name, 'register_degradation')
    entry = Degradation(params, apply, dict(baselines or {}), title or name, bool(in_mixed))
    TABLE[name] = entry
    return entry


def names():
    """The degradations that ``mixed`` and ``regions`` sets draw (their labels), in table order."""
    return tuple(name for name, entry in TABLE.items() if entry.in_mixed)


def all_names():
    """Every degradation of the table (variants kept for comparison included), in table order."""
    return tuple(TABLE)


def label_indices():
    """``{label: index}`` of the per-pixel label maps: every degradation's position in :data:`TABLE`."""
    return {name: index for index, name in enumerate(TABLE)}


def baselines_by_label():
    """``{label: {baseline name: function}}`` of every degradation (empty for one without baselines)."""
    return {name: dict(entry.baselines) for name, entry in TABLE.items()}
