"""gmmoe_arch.inference.tiling: tile plans, blending shares, row bands; options checked when made."""

import numpy as np
import pytest
from inference_helpers import CPU, random_image

from gmmoe_arch.inference import runner
from gmmoe_arch.inference.errors import EnhanceError
from gmmoe_arch.inference.runner import RunOptions, enhance_image, enhance_tensor
from gmmoe_arch.inference.tiling import MIN_TILE, Tiling


@pytest.mark.parametrize('h, w, tile, overlap', [(1000, 700, 256, 64), (333, 4000, None, 128), (300, 260, 128, 32)])
def test_tile_plan_covers_aligned_overlapping_and_shares_sum_to_one(h, w, tile, overlap):
    plan = Tiling(tile, overlap, max_pixels=300 * 300).plan(h, w, align=16)
    total = np.zeros((h, w))
    for y0, y1, x0, x1, share in plan.tiles():
        assert y0 % 16 == 0 and x0 % 16 == 0
        total[y0:y1, x0:x1] += share
    np.testing.assert_allclose(total, 1, atol=1e-5)
    for spans in (plan.ys, plan.xs):
        assert spans[0][0] == 0
        for (_a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 - b0 >= overlap and b1 > a1
    if tile is None:  # automatic tiles: at least MIN_TILE where the image allows, about max_pixels
        assert min(plan.ys[0][1], plan.xs[0][1]) >= min(h, w, MIN_TILE)


def test_small_images_are_one_tile_and_bad_tiling_options_are_refused():
    assert len(Tiling().plan(37, 53)) == 1 and len(Tiling().plan(1, 1)) == 1
    assert len(Tiling().plan(2000, 1500)) > 1
    for kwargs, text in [
        (dict(tile=32), '--tile 32'),
        (dict(tile=256, overlap=128), '--overlap 128'),
        (dict(overlap=-1), '--overlap -1'),
        (dict(max_pixels=0), '--max-pixels 0'),
        (dict(overlap=300), r'--overlap 300: must be under half the tile side \(512 px\)'),
    ]:
        with pytest.raises(EnhanceError, match=text):
            Tiling(**kwargs)


def whole_image_reference(net, img, **options):
    """What enhance_image computed before row bands: the whole image in float32, blended, then converted."""
    img, scale = runner.check_image(img)
    tiling = Tiling(options.get('tile'), options.get('overlap', 96), options.get('max_pixels', 512 * 512))
    plan = tiling.plan(img.shape[0], img.shape[1], net.padder_size)
    run = RunOptions(CPU, stat_passes=options.get('stat_passes', 1))
    y = enhance_tensor(net, runner._to_network(img, scale), plan, run)
    out = runner._from_network(y[0].numpy().transpose(1, 2, 0), img.ndim == 2, scale, img.dtype)
    return np.concatenate([out, img[..., 3:]], axis=2) if img.ndim == 3 and img.shape[2] == 4 else out


@pytest.mark.parametrize(
    'shape, dtype', [((150, 100, 4), np.uint8), ((120, 130), np.uint16), ((100, 150, 3), np.float32)]
)
def test_row_bands_give_the_whole_image_result(tiny_net, shape, dtype):
    img = random_image(shape, dtype, seed=3)
    options = dict(tile=64, overlap=16, stat_passes=1)
    out = enhance_image(tiny_net, img, **options)
    expected = whole_image_reference(tiny_net, img, **options)
    assert out.dtype == img.dtype and out.shape == img.shape
    tolerance = 1e-6 if dtype == np.float32 else 1  # the gray luma of a band may round differently by 1 LSB
    assert np.abs(out.astype(float) - expected.astype(float)).max() <= tolerance
    assert np.mean(out != expected) < 0.001


def test_image_sized_memory_is_the_input_and_the_output_only(tiny_net):
    """numpy's allocations (tracked by tracemalloc) while enhancing a tall 8-bit image in 128-px tiles: the
    output array (1 x the image), one band of rows (0.14 x) and Python's per-forward garbage (about 0.1 x
    here), measured 1.45 x in all. One float32 copy of the image alone would be 4 x; before row bands, 12 x."""
    import tracemalloc

    img = random_image((8192, 128, 3), np.uint8)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = enhance_image(tiny_net, img, tile=128, overlap=16, stat_passes=0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert out.shape == img.shape and not np.array_equal(out, img)
    assert peak < 2 * img.nbytes, f'{peak / img.nbytes:.2f} x the image'
