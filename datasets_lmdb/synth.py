"""Paired degradation synthesis: low light, rain and haze made from clean images, each pair labelled.

``datasets_lmdb synth --degradation lowlight|rain|haze|mixed --src CLEAN_DIR --out OUT`` (or
:func:`synthesize` / :func:`synthesize_images`) writes::

    OUT/lq/<stem>.png        degraded inputs
    OUT/gt/<stem>.png        the clean images (same stems)
    OUT/meta_info.txt        one line per pair: ``<stem>.png (h,w,3) label=<degradation>``
    OUT/lmdb/{lq,gt}.lmdb    with ``--lmdb``: the same packed by ``datasets_lmdb``, labels in meta_info.txt
    OUT/synth.json           settings and every pair's drawn parameters, written last

Everything is written into a ``.partial-*`` folder beside ``OUT`` and renamed to ``OUT`` only when
complete, so a failed or killed run never leaves an ``OUT`` that looks complete (the next run removes
the partial folder). Each pair draws its parameters and noise from ``numpy.random.default_rng([seed,
image index, k])``: the same seed gives byte-identical images whatever the order or number of images.

Degradations (ranges and their sources: ``docs/data.md``):

* ``lowlight``: :func:`lowlight_params` / :func:`degrade_lowlight`; linear light (sRGB decoded),
  exposure 0.04-0.1 with a +-8% white-balance cast, photon shot noise (Poisson, 300-3000 photons
  for white) and read noise (Gaussian, sigma 0.0005-0.003), display encoding gamma 2.0-2.5, 8 bits.
* ``rain``: :func:`rain_params` / :func:`add_rain`; streak layers (seed points motion-blurred by
  a one-pixel line kernel, widened by a Gaussian), screen-blended onto the image. ``light``
  (Rain100L-like): one layer, one direction; ``heavy`` (Rain100H-like): 2-3 denser, longer, brighter
  layers whose directions spread +-12 degrees around a common one. Directions are -30..30 degrees
  from vertical.
* ``haze``: :func:`haze_params` / :func:`add_haze`; ``I = J t + A (1 - t)``, ``t = exp(-beta d)``
  with beta 0.6-1.8 and A 0.7-1.0 (RESIDE ITS's ranges), A tinted +-0.03 per channel, and the depth
  proxy of :func:`depth_proxy`.
* ``mixed``: pair number ``n`` gets ``DEGRADATIONS[n % 3]``, labelled per pair.
"""

import collections
import contextlib
import json
import os
import shutil
import tempfile

import cv2
import numpy as np
from tqdm import tqdm

from gmmoe_arch.data.image_io import DataError, MissingDataError, read_image_file
from gmmoe_arch.data.pairing import culprits, list_images
from gmmoe_arch.options import is_integer

from .output import PARTIAL, output_locks, settle_leftovers
from .pack import FORMS, pack_pairs

DEGRADATIONS = ('lowlight', 'rain', 'haze')
KINDS = (*DEGRADATIONS, 'mixed')
RAIN_LEVELS = ('light', 'heavy')
RAIN_CHOICES = (*RAIN_LEVELS, 'both')
RECORD = 'synth.json'
META_INFO = 'meta_info.txt'
VERSION = 1

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


def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def lowlight_params(rng):
    """One image's low-light parameters (see the module docstring)."""
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


def haze_params(rng):
    """One image's haze: scattering ``beta``, tinted airlight ``airlight_rgb`` and the depth proxy's mix."""
    airlight = rng.uniform(*HAZE_AIRLIGHT) + rng.uniform(-HAZE_TINT, HAZE_TINT, 3)
    return {
        'beta': round(float(rng.uniform(*HAZE_BETA)), 4),
        'airlight_rgb': np.clip(airlight, 0.0, 1.0).round(4).tolist(),
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


def add_haze(img, params):
    """Atmospheric scattering ``I = J t + A (1 - t)``, ``t = exp(-beta d)`` on sRGB values in [0, 1] (as RESIDE
    does) of an RGB uint8 ``(H, W, 3)`` image -> uint8; ``d`` from :func:`depth_proxy`."""
    t = np.exp(-params['beta'] * depth_proxy(img, params['depth_mix']))[..., None]
    hazy = img.astype(np.float64) / 255.0 * t + np.asarray(params['airlight_rgb']) * (1.0 - t)
    return np.round(np.clip(hazy, 0.0, 1.0) * 255.0).astype(np.uint8)


def degrade(img, degradation, rng, rain='both'):
    """Draw parameters and degrade an RGB uint8 ``(H, W, 3)`` image -> ``(lq uint8 (H, W, 3), params)``."""
    if degradation == 'lowlight':
        params = lowlight_params(rng)
        return degrade_lowlight(img, params, rng), params
    if degradation == 'rain':
        level = RAIN_LEVELS[int(rng.integers(2))] if rain == 'both' else rain
        params = rain_params(rng, level)
        return add_rain(img, params, rng), params
    if degradation == 'haze':
        params = haze_params(rng)
        return add_haze(img, params), params
    raise ValueError(f'degradation: expected one of {DEGRADATIONS}, got {degradation!r}')


def pair_degradation(degradation, number):
    """The degradation of pair ``number`` (0, 1, ...) of a run of kind ``degradation``."""
    return DEGRADATIONS[number % len(DEGRADATIONS)] if degradation == 'mixed' else degradation


def as_rgb8(img, max_side=None, name='image'):
    """Any image array (gray, RGB, RGBA; uint8, uint16 or float in [0, 1]) -> RGB uint8 ``(H, W, 3)``,
    downscaled (area) so its longest side is at most ``max_side``; ``DataError`` naming ``name`` otherwise."""
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype.kind == 'f':
        img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f'{name}: unsupported pixel type {img.dtype} (use uint8, uint16 or float in [0, 1])')
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise DataError(f'{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {img.shape}')
    img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img[..., :3]
    if max_side and max(img.shape[:2]) > max_side:
        scale = max_side / max(img.shape[:2])
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def read_folder(src):
    """``[(stem, path)]`` of the images directly inside ``src`` (sorted); ``DataError`` naming it when none."""
    images = list_images(src, '--src')
    return [(name, os.path.join(src, images[name])) for name in sorted(images)]


def _load(source):
    """An in-memory image, or a file read with the datasets' decoder -> RGB(A) or gray array."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    img = read_image_file(os.fspath(source))
    if img.ndim == 3 and img.shape[2] >= 3:
        img = np.concatenate([img[..., 2::-1], img[..., 3:]], axis=2)  # OpenCV's BGR(A) -> RGB(A)
    return img


def synthesize(src, out, degradation, seed=0, per_image=1, lmdb=False, max_side=None, rain='both', **kwargs):
    """Degrade every image in the folder ``src`` into the paired set ``out`` (see the module docstring).

    Images are read (8/16-bit PNG, JPEG, BMP, TIFF; gray and alpha handled) when they are degraded;
    an unreadable one raises ``DataError`` naming it and leaves ``out`` as it was. Other arguments as
    :func:`synthesize_images`. Returns the record written to ``out/synth.json``.
    """
    check_options(degradation, seed, per_image, max_side, rain, kwargs.get('form'))
    if not os.path.isdir(src):
        raise MissingDataError(f'--src: folder not found: {src}')
    files = read_folder(src)
    return synthesize_images(
        files, out, degradation, seed, per_image, lmdb, max_side, rain, source=os.path.abspath(src), **kwargs
    )


def synthesize_images(
    images,
    out,
    degradation,
    seed=0,
    per_image=1,
    lmdb=False,
    max_side=None,
    rain='both',
    overwrite=False,
    progress=True,
    form=None,
    source='images',
):
    """Degrade ``images`` into the paired set ``out``; returns the record written to ``out/synth.json``.

    Args:
        images: sequence of ``(name, image)``: ``name`` a unique ASCII stem without spaces, ``image`` an
            RGB array (``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``; uint8, uint16 or float in [0, 1]) or
            an image file's path.
        out (str): output folder; refused when it holds a complete set unless ``overwrite``, and
            refused always when it is a non-empty folder that is not a synth output.
        degradation (str): ``'lowlight'``, ``'rain'``, ``'haze'`` or ``'mixed'``.
        seed (int): the pair with image index ``i`` and variant ``k`` draws from ``default_rng([seed, i, k])``.
        per_image (int): degraded variants per image; stems are ``<name>_<k>`` when above 1.
        lmdb (bool): also pack ``out/lmdb/{lq,gt}.lmdb`` (labels in their ``meta_info.txt``).
        max_side (int | None): downscale (area) images whose longest side is larger.
        rain (str): ``'light'``, ``'heavy'`` or ``'both'`` (each rain pair draws one).
        overwrite (bool): replace an existing complete set (only once the new one is complete).
        progress (bool): tqdm progress bars.
        form (str | None): stored form of the LMDBs (see ``datasets_lmdb pack``).
        source (str): what the images are, for the record.
    """
    check_options(degradation, seed, per_image, max_side, rain, form)
    images = list(images)
    settings = _check(images, out, degradation, seed, per_image, max_side, rain, overwrite)
    settings.update(lmdb=bool(lmdb), source=source)
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    with output_locks([parent]):
        _check_out(out, overwrite)
        settle_leftovers(parent)
        tmp = tempfile.mkdtemp(prefix=f'{PARTIAL}{os.getpid()}-synth-', dir=parent)
        try:
            record = _write(images, tmp, settings, progress)
            if lmdb:
                labels = {pair['name']: pair['label'] for pair in record['pairs']}
                pack_pairs(
                    os.path.join(tmp, 'lq'),
                    os.path.join(tmp, 'gt'),
                    os.path.join(tmp, 'lmdb'),
                    form=form,
                    workers=1,
                    progress=progress,
                    labels=labels,
                )
            _write_json(os.path.join(tmp, RECORD), record)
            _replace(tmp, out, parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def check_options(degradation, seed, per_image, max_side, rain, form=None):
    """``ValueError`` naming the first bad option, before any image is read or anything written."""
    if degradation not in KINDS:
        raise ValueError(f'--degradation: expected one of {", ".join(KINDS)}, got {degradation!r}')
    if rain not in RAIN_CHOICES:
        raise ValueError(f'--rain: expected one of {", ".join(RAIN_CHOICES)}, got {rain!r}')
    if not is_integer(seed) or seed < 0:
        raise ValueError(f'--seed: expected an integer >= 0, got {seed!r}')
    if not is_integer(per_image) or per_image < 1:
        raise ValueError(f'--per-image: expected an integer >= 1, got {per_image!r}')
    if max_side is not None and (not is_integer(max_side) or max_side < 8):
        raise ValueError(f'--max-side: expected an integer >= 8, got {max_side!r}')
    if form is not None and form not in FORMS:
        raise ValueError(f'--form: expected one of {", ".join(FORMS)}, got {form!r}')


def _check(images, out, degradation, seed, per_image, max_side, rain, overwrite):
    """The settings to record, after checks of the image names and ``out`` (the options: :func:`check_options`)."""
    names = [name for name, _ in images]
    if not names:
        raise DataError(f'no images to degrade for {out}')
    bad = [n for n in names if not isinstance(n, str) or not n or not n.isascii() or any(c in n for c in ' /\\')]
    if bad:
        raise DataError(
            f'image names must be non-empty ASCII stems without spaces or slashes: {culprits(map(repr, bad))}'
        )
    twice = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    if twice:
        raise DataError(f'image names must be unique: {culprits(map(repr, twice))}')
    _check_out(os.path.abspath(out), overwrite)
    return {
        'version': VERSION,
        'degradation': degradation,
        'seed': int(seed),
        'per_image': per_image,
        'rain': rain,
        'max_side': max_side,
    }


def _check_out(out, overwrite):
    """``FileExistsError`` for an ``out`` that is complete (without ``overwrite``) or is not a synth output."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise FileExistsError(f'--out {out} exists and is not a folder')
    if os.path.isfile(os.path.join(out, RECORD)):
        if not overwrite:
            raise FileExistsError(f'--out {out} already holds a synthesized set: pass --overwrite to replace it')
    elif os.listdir(out):
        raise FileExistsError(
            f'--out {out} is a non-empty folder without {RECORD}: not a synth output; remove it or choose another --out'
        )


def _write(images, folder, settings, progress):
    """Degrade and write every pair into ``folder/{lq,gt}`` and ``meta_info.txt``; returns the record."""
    for side in ('lq', 'gt'):
        os.makedirs(os.path.join(folder, side))
    pairs, lines = [], []
    per_image = settings['per_image']
    desc = f'synth {settings["degradation"]}'
    for index, (name, source) in enumerate(tqdm(images, unit='image', disable=not progress, desc=desc)):
        clean = as_rgb8(_load(source), settings['max_side'], f'image {name!r}')
        for k in range(per_image):
            label = pair_degradation(settings['degradation'], index * per_image + k)
            rng = np.random.default_rng([settings['seed'], index, k])
            lq, params = degrade(clean, label, rng, settings['rain'])
            stem = f'{name}_{k}' if per_image > 1 else name
            for side, img in (('lq', lq), ('gt', clean)):
                path = os.path.join(folder, side, f'{stem}.png')
                if not cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                    raise OSError(f'{path}: could not be written')
            h, w = clean.shape[:2]
            lines.append(f'{stem}.png ({h},{w},3) label={label}\n')
            pairs.append({'name': stem, 'image': name, 'k': k, 'label': label, 'params': params})
    with open(os.path.join(folder, META_INFO), 'w', encoding='ascii') as f:
        f.writelines(lines)
    counts = {label: sum(p['label'] == label for p in pairs) for label in DEGRADATIONS}
    return {'settings': settings, 'counts': {k: v for k, v in counts.items() if v}, 'pairs': pairs}


def _write_json(path, record):
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _replace(tmp, out, parent):
    """Move the complete ``tmp`` to ``out``; a previous ``out`` is removed only after the rename."""
    previous = None
    if os.path.lexists(out):
        previous = tempfile.mkdtemp(prefix=f'{PARTIAL}{os.getpid()}-previous-', dir=parent)
        os.rename(out, os.path.join(previous, 'out'))
    try:
        os.rename(tmp, out)
    finally:
        if previous is not None:
            with contextlib.suppress(OSError):
                if not os.path.lexists(out):  # the rename failed: put the previous set back
                    os.rename(os.path.join(previous, 'out'), out)
            shutil.rmtree(previous, ignore_errors=True)
