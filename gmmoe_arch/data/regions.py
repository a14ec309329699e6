"""Several degradations in different regions of one image, with the per-pixel label map.

:func:`compose` is what ``datasets_lmdb synth --degradation regions`` does to each clean image:

1. draw 2 to all of the degradations that ``mixed`` sets draw (:func:`gmmoe_arch.data.degradations.names`),
   in random order, and the share of the frame of each (at least :data:`MIN_SHARE`);
2. the regions: one smooth random field (:func:`~gmmoe_arch.data.degradations.smooth_field`, features 12-25%
   of the longest side) cut at its quantiles of those shares, so that each degradation gets its share
   exactly, in blobs with smooth boundaries; the hard map of which region each pixel is in is the label map;
3. each degradation applied to the whole clean image, with its own parameters (rain its streaks, haze its
   depth over the whole frame, ...), as if the image had only that one;
4. the degraded images blended by soft masks: each region's indicator blurred by a Gaussian of sigma 1-2
   pixels (transitions of 3-5 pixels; the masks still sum to 1), so away from the boundaries each pixel is
   exactly that of its region's degraded image.

The label map holds, per pixel, the index of its region's degradation in the table
(:func:`~gmmoe_arch.data.degradations.label_indices`: ``lowlight`` 0, ``rain`` 1, ``haze`` 2, ...), as uint8.
"""

import cv2
import numpy as np

from . import degradations

#: smallest share of the frame of each region
MIN_SHARE = 0.15
#: feature size of the region field, as a fraction of the longest side
SCALE = (0.12, 0.25)
#: sigma (pixels) of the Gaussian that softens the region boundaries
EDGE_SIGMA = (1.0, 2.0)


def regions_params(rng, choices=None):
    """The regions of one image: ``labels`` (2 or more of ``choices``, default the table's ``mixed`` ones, in
    region order), their ``shares`` (summing to 1), the field's ``scale`` and ``field_seed``, ``edge_sigma``."""
    choices = tuple(choices or degradations.names())
    if len(choices) < 2:
        raise ValueError(f'regions: need at least 2 degradations to combine, got {choices}')
    count = int(rng.integers(2, len(choices) + 1))
    labels = [choices[i] for i in rng.permutation(len(choices))[:count]]
    shares = MIN_SHARE + (1.0 - count * MIN_SHARE) * rng.dirichlet(np.ones(count))
    return {
        'labels': labels,
        'shares': shares.round(4).tolist(),
        'scale': round(float(rng.uniform(*SCALE)), 4),
        'field_seed': int(rng.integers(2**31)),
        'edge_sigma': round(float(rng.uniform(*EDGE_SIGMA)), 3),
    }


def region_index(shape, params):
    """``(H, W)`` int: the position in ``params['labels']`` of each pixel's region (see the module docstring)."""
    field = degradations.smooth_field(shape, params['field_seed'], params['scale'] * max(shape))
    cuts = np.quantile(field, np.cumsum(params['shares'])[:-1])
    return np.digitize(field, cuts)


def soft_masks(index, count, sigma):
    """``(count, H, W)`` float64 weights: each region's indicator blurred by a Gaussian of ``sigma`` pixels."""
    return np.stack(
        [
            cv2.GaussianBlur((index == i).astype(np.float64), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            for i in range(count)
        ]
    )


def compose(img, rng, **options):
    """Degrade an RGB uint8 ``(H, W, 3)`` image in regions -> ``(lq uint8 (H, W, 3), params, label map uint8
    (H, W))``.

    ``options`` go to each degradation's ``params`` (e.g. ``rain='heavy'``). ``params``: those of
    :func:`regions_params`, ``regions`` (per region: ``label``, its degradation's ``params``) and ``dominant``
    (the label of the largest region). Draws from ``rng`` in that order, so a seed gives the same pair."""
    params = regions_params(rng)
    index = region_index(img.shape[:2], params)
    masks = soft_masks(index, len(params['labels']), params['edge_sigma'])
    blend = np.zeros(img.shape, np.float64)
    params['regions'] = []
    for label, mask in zip(params['labels'], masks):
        entry = degradations.TABLE[label]
        drawn = entry.params(rng, **options)
        blend += mask[..., None] * entry.apply(img, drawn, rng)
        params['regions'].append({'label': label, 'params': drawn})
    values = np.array([degradations.label_indices()[label] for label in params['labels']], np.uint8)
    params['dominant'] = params['labels'][int(np.argmax(np.bincount(index.ravel(), minlength=len(values))))]
    return np.round(np.clip(blend, 0, 255)).astype(np.uint8), params, values[index]
