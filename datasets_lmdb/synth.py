"""Paired degradation synthesis: low light, rain and haze made from clean images, each pair labelled.

``datasets_lmdb synth --degradation lowlight|rain|haze|...|mixed|regions --src CLEAN_DIR --out OUT`` (or
:func:`synthesize` / :func:`synthesize_images`) writes::

    OUT/lq/<stem>.png        degraded inputs
    OUT/gt/<stem>.png        the clean images (same stems)
    OUT/labelmap/<stem>.png  regions only: per-pixel degradation index (uint8, the table's label order)
    OUT/meta_info.txt        one line per pair: ``<stem>.png (h,w,3) label=<degradation>``, regions
                             ``... label=<largest region's> labelmap=labelmap/<stem>.png``
    OUT/lmdb/{lq,gt}.lmdb    with ``--lmdb``: the same packed by ``datasets_lmdb``, labels in meta_info.txt
                             (regions: ``labelmap=../labelmap.lmdb``, the maps in ``OUT/lmdb/labelmap.lmdb``)
    OUT/synth.json           settings and every pair's drawn parameters, written last

Everything is written into a ``.partial-*`` folder beside ``OUT`` and renamed to ``OUT`` only when
complete, so a failed or killed run never leaves an ``OUT`` that looks complete (the next run removes
the partial folder). Each pair draws its parameters and noise from ``numpy.random.default_rng([seed,
image index, k])``: the same seed gives byte-identical images whatever the order or number of images.

Degradations: the table of :mod:`gmmoe_arch.data.degradations` (``lowlight``, ``rain``, ``haze`` and any
registered with ``register_degradation``; their models, ranges and sources there and in ``docs/data.md``),
whose maths this module re-exports (``degrade_lowlight``, ``add_rain``, ``add_haze``, ...). ``mixed``: pair
number ``n`` gets the ``n % len(names())``-th degradation of those ``mixed`` draws (``names()``: variants
kept for comparison, such as ``haze_bright``, are left out), labelled per pair. ``regions``: several of those
in regions of one image (:mod:`gmmoe_arch.data.regions`), with the label map; ``settings.label_indices``
in ``synth.json`` gives the label of each map value.
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

from gmmoe_arch.data import degradations, regions
from gmmoe_arch.data.degradations import (  # noqa: F401  (re-exported: this module's interface)
    HAZE_NEAREST,
    RAIN,
    RAIN_ANGLE,
    RAIN_CHOICES,
    RAIN_LEVELS,
    add_haze,
    add_haze_bright,
    add_rain,
    degrade_lowlight,
    depth_proxy,
    haze_bright_params,
    haze_params,
    lowlight_params,
    rain_params,
    scene_depth,
    srgb_to_linear,
)
from gmmoe_arch.data.image_io import DataError, MissingDataError, read_image_file
from gmmoe_arch.data.pairing import culprits, list_images
from gmmoe_arch.options import is_integer

from .output import PARTIAL, output_locks, settle_leftovers
from .pack import FORMS, pack_pairs, write_lmdb

RECORD = 'synth.json'
META_INFO = 'meta_info.txt'
LABEL_MAPS = 'labelmap'
LABEL_MAP_LMDB = 'labelmap.lmdb'
VERSION = 1
DEGRADATIONS = degradations.names()  # the built-in ones, for importers; checks read the table itself


def kinds():
    """The ``--degradation`` choices: every degradation of the table, then ``mixed`` and ``regions``."""
    return (*degradations.all_names(), 'mixed', 'regions')


KINDS = kinds()


def degrade(img, degradation, rng, rain='both'):
    """Draw parameters and degrade an RGB uint8 ``(H, W, 3)`` image -> ``(lq uint8 (H, W, 3), params)``."""
    entry = degradations.TABLE.get(degradation)
    if entry is None:
        raise ValueError(f'degradation: expected one of {degradations.all_names()}, got {degradation!r}')
    params = entry.params(rng, rain=rain)
    return entry.apply(img, params, rng), params


def pair_degradation(degradation, number):
    """The degradation of pair ``number`` (0, 1, ...) of a run of kind ``degradation``."""
    names = degradations.names()
    return names[number % len(names)] if degradation == 'mixed' else degradation


def make_pair(clean, kind, number, rng, rain='both'):
    """Pair ``number`` of a run of ``kind`` from the RGB uint8 image ``clean`` -> ``(label, lq, params, label
    map uint8 (H, W) or None)``; ``regions`` pairs carry the label of their largest region and a label map."""
    if kind == 'regions':
        lq, params, label_map = regions.compose(clean, rng, rain=rain)
        return params['dominant'], lq, params, label_map
    label = pair_degradation(kind, number)
    lq, params = degrade(clean, label, rng, rain)
    return label, lq, params, None


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
        degradation (str): a degradation of the table (``'lowlight'``, ``'rain'``, ``'haze'``, ...), ``'mixed'``
            or ``'regions'``.
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
                _pack(tmp, record, form, progress)
            _write_json(os.path.join(tmp, RECORD), record)
            _replace(tmp, out, parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def _pack(folder, record, form, progress):
    """``folder/lmdb/{lq,gt}.lmdb`` of the pairs in ``folder`` (labels in meta_info.txt) and, when the pairs
    have label maps, ``folder/lmdb/labelmap.lmdb`` under the same keys (named by ``labelmap=`` fields)."""
    out = os.path.join(folder, 'lmdb')
    maps = [pair['name'] for pair in record['pairs'] if 'labelmap' in pair]
    pack_pairs(
        os.path.join(folder, 'lq'),
        os.path.join(folder, 'gt'),
        out,
        form=form,
        workers=1,
        progress=progress,
        labels={pair['name']: pair['label'] for pair in record['pairs']},
        label_maps={name: f'../{LABEL_MAP_LMDB}' for name in maps},
    )
    if maps:
        images = [(name, read_image_file(os.path.join(folder, LABEL_MAPS, f'{name}.png'))) for name in maps]
        write_lmdb(os.path.join(out, LABEL_MAP_LMDB), images, form, 'labelmap')


def check_options(degradation, seed, per_image, max_side, rain, form=None):
    """``ValueError`` naming the first bad option, before any image is read or anything written."""
    if degradation not in kinds():
        raise ValueError(f'--degradation: expected one of {", ".join(kinds())}, got {degradation!r}')
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
    settings = {
        'version': VERSION,
        'degradation': degradation,
        'seed': int(seed),
        'per_image': per_image,
        'rain': rain,
        'max_side': max_side,
    }
    if degradation == 'regions':
        settings['label_indices'] = degradations.label_indices()
    return settings


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


def synthesized_pairs(images, kind, seed=0, per_image=1, rain='both', max_side=None, progress=False):
    """Yield every pair of a run over ``images`` (see :func:`synthesize_images`), in order, as dicts: ``name``
    (the stem), ``image``, ``k``, ``label``, ``params``, ``lq`` and ``gt`` (RGB uint8), ``label_map`` (uint8 or
    None). Pair ``k`` of image ``index`` draws from ``default_rng([seed, index, k])``: what is written to disk
    and what is scored in memory (:mod:`datasets_lmdb.baseline_check`) are the same pairs."""
    for index, (name, source) in enumerate(tqdm(images, unit='image', disable=not progress, desc=f'synth {kind}')):
        clean = as_rgb8(_load(source), max_side, f'image {name!r}')
        for k in range(per_image):
            rng = np.random.default_rng([seed, index, k])
            label, lq, params, label_map = make_pair(clean, kind, index * per_image + k, rng, rain)
            stem = f'{name}_{k}' if per_image > 1 else name
            yield {
                'name': stem,
                'image': name,
                'k': k,
                'label': label,
                'params': params,
                'lq': lq,
                'gt': clean,
                'label_map': label_map,
            }


def _write(images, folder, settings, progress):
    """Degrade and write every pair into ``folder/{lq,gt}`` (and ``labelmap``) and ``meta_info.txt``; returns
    the record."""
    kind = settings['degradation']
    for side in ('lq', 'gt', LABEL_MAPS) if kind == 'regions' else ('lq', 'gt'):
        os.makedirs(os.path.join(folder, side))
    pairs, lines = [], []
    options = {key: settings[key] for key in ('seed', 'per_image', 'rain', 'max_side')}
    for made in synthesized_pairs(images, kind, progress=progress, **options):
        stem, label, label_map = made['name'], made['label'], made['label_map']
        pair = {key: made[key] for key in ('name', 'image', 'k', 'label', 'params')}
        for side in ('lq', 'gt'):
            _write_png(os.path.join(folder, side, f'{stem}.png'), cv2.cvtColor(made[side], cv2.COLOR_RGB2BGR))
        h, w = made['gt'].shape[:2]
        line = f'{stem}.png ({h},{w},3) label={label}'
        if label_map is not None:
            pair['labelmap'] = f'{LABEL_MAPS}/{stem}.png'
            _write_png(os.path.join(folder, pair['labelmap']), label_map)
            line += f' labelmap={pair["labelmap"]}'
        lines.append(line + '\n')
        pairs.append(pair)
    with open(os.path.join(folder, META_INFO), 'w', encoding='ascii') as f:
        f.writelines(lines)
    counts = {label: sum(p['label'] == label for p in pairs) for label in degradations.all_names()}
    return {'settings': settings, 'counts': {k: v for k, v in counts.items() if v}, 'pairs': pairs}


def _write_png(path, img):
    if not cv2.imwrite(path, img):
        raise OSError(f'{path}: could not be written')


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
