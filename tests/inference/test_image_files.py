"""gmmoe_arch.inference.image_files: formats, bit depths, channels, alpha and EXIF, through the network and back."""

import numpy as np
import pytest
from inference_helpers import random_image
from PIL import Image, ImageOps

from gmmoe_arch.inference.image_files import read_image, write_image
from gmmoe_arch.inference.runner import enhance_image

CASES = [  # (extension, shape suffix, dtype)
    ('.png', (3,), np.uint8),
    ('.png', (3,), np.uint16),
    ('.png', (), np.uint8),
    ('.png', (), np.uint16),
    ('.png', (4,), np.uint8),
    ('.png', (4,), np.uint16),
    ('.jpg', (3,), np.uint8),
    ('.jpg', (), np.uint8),
    ('.bmp', (3,), np.uint8),
    ('.bmp', (), np.uint8),
    ('.tif', (3,), np.uint8),
    ('.tif', (3,), np.uint16),
    ('.tif', (), np.uint16),
    ('.tif', (4,), np.uint16),
    ('.tif', (3,), np.float32),
]


@pytest.mark.parametrize(
    'ext, channels, dtype', CASES, ids=[f'{e[1:]}-{len(c) and c[0] or 1}ch-{d.__name__}' for e, c, d in CASES]
)
def test_format_round_trip_keeps_dtype_shape_and_alpha(tiny_net, tmp_path, ext, channels, dtype):
    img = random_image((29, 41) + channels, dtype)
    src, dst = tmp_path / f'in{ext}', tmp_path / 'out' / f'in{ext}'
    write_image(src, img)
    loaded = read_image(str(src))
    assert loaded.shape == img.shape and loaded.dtype == img.dtype
    if ext != '.jpg':
        np.testing.assert_array_equal(loaded, img)
    out = enhance_image(tiny_net, loaded)
    write_image(dst, out)
    back = read_image(str(dst))
    assert back.shape == img.shape and back.dtype == img.dtype
    if len(channels) and channels[0] == 4:
        np.testing.assert_array_equal(back[..., 3], img[..., 3])  # alpha untouched
    if ext != '.jpg':
        np.testing.assert_array_equal(back, out)
        assert not np.array_equal(out, img)  # the network did something
    if dtype == np.uint16:  # really 16-bit: not 8-bit values scaled up
        assert np.any(back % 257 != 0)


def test_gray_alpha_png_is_read_as_rgba(tiny_net, tmp_path):
    path = tmp_path / 'la.png'
    Image.fromarray(
        np.stack([np.full((9, 7), 30, np.uint8), np.arange(63, dtype=np.uint8).reshape(9, 7)], 2), 'LA'
    ).save(path)
    img = read_image(str(path))
    assert img.shape == (9, 7, 4) and (img[..., :3] == 30).all()
    assert (enhance_image(tiny_net, img)[..., 3] == np.arange(63).reshape(9, 7)).all()


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_honoured_like_pillow(tmp_path, orientation):
    stored = (np.random.default_rng(orientation).random((6, 10, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / 'rot.png'
    Image.fromarray(stored).save(path, exif=exif)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
    got = read_image(str(path))
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
