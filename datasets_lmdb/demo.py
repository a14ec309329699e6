"""The embedded demo data set: synthetic low-light pairs from photographs bundled with scikit-image.

``python -m datasets_lmdb.demo --out datasets/demo`` writes, from ``skimage.data`` images that ship
inside the installed package (nothing is downloaded)::

    <out>/our485/{low,high}/*.png       training pairs (LOL-v1 layout)
    <out>/eval15/{low,high}/*.png       validation pairs, from other photographs than training
    <out>/lmdb/{train,val}/{lq,gt}.lmdb the same, packed by datasets_lmdb (preset lol_v1)
    <out>/demo.json                     what was built (photos, degradation parameters per image)

``--regions OUT`` builds instead :func:`build_regions`'s ``OUT/{train,test}`` (several degradations per image,
with label maps), from the same training and held-out photographs.

The degradation is physically motivated and drawn per image from a seeded generator: the sRGB
photograph is linearised, its exposure dropped by a factor of 8-33 with a slight white-balance
cast, photon shot noise (Poisson, at 300-3000 photons for white) and read noise (Gaussian) are added
in linear light, and the result is encoded with a display gamma of 2.0-2.5 and quantised to 8 bits.
Each training photograph appears several times with different draws. The degradation is
:func:`datasets_lmdb.synth.degrade_lowlight`, the ``lowlight`` kind of ``datasets_lmdb synth``. A
second run with the same settings finds ``demo.json`` and leaves everything as it is.
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np

from .synth import degrade_lowlight as degrade
from .synth import lowlight_params as draw_params
from .synth import srgb_to_linear  # noqa: F401  (part of this module's interface: tests undo the degradation)

#: validation photographs (colour scenes the grid shows) and disjoint training photographs
VAL_PHOTOS = ('astronaut', 'chelsea', 'coffee')
TRAIN_PHOTOS = (
    'rocket',
    'stereo_motorcycle',
    'retina',
    'immunohistochemistry',
    'colorwheel',
    'camera',
    'moon',
    'brick',
    'grass',
    'gravel',
    'coins',
    'clock',
    'cell',
)
VERSION = 1


def reusable_record(path, settings):
    """The JSON record at ``path`` of a data set built before, if it was built with ``settings``; else None."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        record = json.load(f)
    return record if record.get('settings') == settings else None


def load_photo(name, max_side):
    """``skimage.data.<name>()`` as an RGB uint8 ``(H, W, 3)`` array, downscaled to ``max_side`` at most."""
    from skimage import data

    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo pairs: the left view
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.uint8)
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def _write_split(out, split, photos, variants, max_side, rng):
    records = []
    for folder in ('low', 'high'):
        os.makedirs(os.path.join(out, split, folder), exist_ok=True)
    for photo in photos:
        clean = load_photo(photo, max_side)
        for k in range(variants):
            params = draw_params(rng)
            name = f'{photo}_{k}.png' if variants > 1 else f'{photo}.png'
            low = degrade(clean, params, rng)
            cv2.imwrite(os.path.join(out, split, 'low', name), cv2.cvtColor(low, cv2.COLOR_RGB2BGR))
            cv2.imwrite(os.path.join(out, split, 'high', name), cv2.cvtColor(clean, cv2.COLOR_RGB2BGR))
            records.append({'name': name, 'photo': photo, **params})
    return records


def build(out, seed=0, variants=6, train_side=400, val_side=320, progress=False):
    """Build the demo set under ``out`` (see the module docstring); return its ``demo.json`` record.

    Args:
        out (str): output folder.
        seed (int): seed of every random draw.
        variants (int): degraded versions of each training photograph.
        train_side, val_side (int): longest side of training / validation photographs in pixels.
        progress (bool): progress bars while packing.
    """
    from .presets import pack_preset

    settings = {
        'version': VERSION,
        'seed': seed,
        'variants': variants,
        'train_side': train_side,
        'val_side': val_side,
        'train_photos': list(TRAIN_PHOTOS),
        'val_photos': list(VAL_PHOTOS),
    }
    record_path = os.path.join(out, 'demo.json')
    record = reusable_record(record_path, settings)
    if record is not None:
        return record
    rng = np.random.default_rng(seed)
    record = {
        'settings': settings,
        'train': _write_split(out, 'our485', TRAIN_PHOTOS, variants, train_side, rng),
        'val': _write_split(out, 'eval15', VAL_PHOTOS, 1, val_side, rng),
    }
    pack_preset('lol_v1', out, os.path.join(out, 'lmdb'), workers=1, progress=progress, overwrite=True)
    with open(record_path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
    return record


def split_settings(version, seed, per_image, test_per_image, train_side, test_side):
    """The settings a synthesised training/held-out set is built from (training photographs: :data:`TRAIN_PHOTOS`,
    held out: :data:`VAL_PHOTOS`); a stored record with the same settings is reused."""
    return {
        'version': version,
        'seed': seed,
        'per_image': per_image,
        'test_per_image': test_per_image,
        'train_side': train_side,
        'test_side': test_side,
        'train_photos': list(TRAIN_PHOTOS),
        'test_photos': list(VAL_PHOTOS),
    }


def build_regions(out, seed=0, per_image=6, test_per_image=3, train_side=400, test_side=320, progress=False):
    """``out/train`` and ``out/test``: ``datasets_lmdb synth --degradation regions`` sets (with ``lmdb/``) of the
    training photographs and of the held-out ones (:data:`VAL_PHOTOS`, which no demo trains on: the split of
    this demo and of ``scripts/allinone.py``), at the all-in-one demo's sizes; returns the ``regions.json``
    record (settings, pair counts). Built once per settings, as :func:`build`."""
    from .synth import synthesize_images

    settings = split_settings(VERSION, seed, per_image, test_per_image, train_side, test_side)
    record_path = os.path.join(out, 'regions.json')
    record = reusable_record(record_path, settings)
    if record is not None:
        return record
    counts = {}
    for split, photos, side, variants in (
        ('train', TRAIN_PHOTOS, train_side, per_image),
        ('test', VAL_PHOTOS, test_side, test_per_image),
    ):
        images = [(photo, load_photo(photo, side)) for photo in photos]
        made = synthesize_images(
            images, os.path.join(out, split), 'regions', seed, variants, lmdb=True, overwrite=True, progress=progress
        )
        counts[split] = made['counts']
    record = {'settings': settings, 'counts': counts}
    with open(record_path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m datasets_lmdb.demo', description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='datasets/demo', help='output folder (default datasets/demo)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the degradations (default 0)')
    parser.add_argument('--variants', type=int, default=6, help='degraded versions per training photo (default 6)')
    parser.add_argument(
        '--regions',
        metavar='OUT',
        help='instead: build regions sets (several degradations per image, label maps) in OUT/{train,test}',
    )
    args = parser.parse_args(argv)
    if args.variants < 1:
        parser.error('--variants must be >= 1')
    if args.regions:
        record = build_regions(args.regions, seed=args.seed, per_image=args.variants)
        print(f'regions data: {json.dumps(record["counts"])} -> {args.regions}/{{train,test}}')
        return 0
    record = build(args.out, seed=args.seed, variants=args.variants)
    print(
        f'demo data: {len(record["train"])} training pairs ({len(TRAIN_PHOTOS)} photos), '
        f'{len(record["val"])} validation pairs ({", ".join(VAL_PHOTOS)}) -> {args.out} '
        f'(LMDB: {os.path.join(args.out, "lmdb")})'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
