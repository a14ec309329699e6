"""gmmoe_arch.enhance file handling: formats, bit depths, channels, alpha, EXIF, names, failures."""
import cv2
import numpy as np
import pytest
import torch
from conftest import activate_branches
from PIL import Image, ImageOps

from gmmoe_arch import GMMoE
from gmmoe_arch.enhance import EnhanceError, collect_jobs, enhance_image, enhance_paths, read_image, write_image


@pytest.fixture(scope='module')
def tiny_net():
    """Width-4, two-level GMMoE with random weights and non-zero beta/gamma (every branch active)."""
    torch.manual_seed(0)
    net = GMMoE(width=4, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    return activate_branches(net).eval()


def random_image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape).astype(np.float32) * 0.4
    return (rng.random(shape) * 0.4 * np.iinfo(dtype).max).astype(dtype)


CASES = [  # (extension, shape suffix, dtype)
    ('.png', (3,), np.uint8), ('.png', (3,), np.uint16), ('.png', (), np.uint8), ('.png', (), np.uint16),
    ('.png', (4,), np.uint8), ('.png', (4,), np.uint16),
    ('.jpg', (3,), np.uint8), ('.jpg', (), np.uint8),
    ('.bmp', (3,), np.uint8), ('.bmp', (), np.uint8),
    ('.tif', (3,), np.uint8), ('.tif', (3,), np.uint16), ('.tif', (), np.uint16), ('.tif', (4,), np.uint16),
    ('.tif', (3,), np.float32),
]


@pytest.mark.parametrize('ext, channels, dtype', CASES, ids=[f'{e[1:]}-{len(c) and c[0] or 1}ch-{d.__name__}'
                                                             for e, c, d in CASES])
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
    Image.fromarray(np.stack([np.full((9, 7), 30, np.uint8), np.arange(63, dtype=np.uint8).reshape(9, 7)], 2),
                    'LA').save(path)
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


def test_output_names_mirror_inputs_and_inputs_are_never_overwritten(tmp_path):
    (tmp_path / 'in' / 'sub').mkdir(parents=True)
    for rel in ['a.png', 'sub/b.jpg', 'sub/notes.txt']:
        (tmp_path / 'in' / rel).write_bytes(b'x')
    jobs = collect_jobs([str(tmp_path / 'in')], str(tmp_path / 'out'), suffix='_gm')
    assert [(j.name, j.dst) for j in jobs] == [('a.png', str(tmp_path / 'out' / 'a_gm.png')),
                                               ('sub/b.jpg', str(tmp_path / 'out' / 'sub' / 'b_gm.jpg'))]
    globbed = collect_jobs([str(tmp_path / 'in' / '**' / '*.jpg')], str(tmp_path / 'out'))
    assert [j.dst for j in globbed] == [str(tmp_path / 'out' / 'b.jpg')]
    with pytest.raises(EnhanceError, match='would overwrite the input'):
        collect_jobs([str(tmp_path / 'in')], str(tmp_path / 'in'))
    with pytest.raises(EnhanceError, match='no such file or folder'):
        collect_jobs([str(tmp_path / 'missing.png')], str(tmp_path / 'out'))


def test_same_basename_from_two_places_is_refused(tmp_path):
    for folder in ('x', 'y'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'a.png').write_bytes(b'x')
    with pytest.raises(EnhanceError, match='would both be written'):
        collect_jobs([str(tmp_path / 'x' / 'a.png'), str(tmp_path / 'y' / 'a.png')], str(tmp_path / 'out'))


def test_corrupt_file_in_folder_does_not_stop_the_others(tiny_net, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'good1.png'), random_image((20, 24, 3), np.uint8))
    cv2.imwrite(str(folder / 'good2.jpg'), random_image((37, 53, 3), np.uint8))
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    (folder / 'empty.jpg').write_bytes(b'')
    summary = enhance_paths([str(folder)], str(tmp_path / 'out'), tiny_net, record=True)
    assert sorted(name for name, _ in summary.failed) == ['broken.png', 'empty.jpg']
    assert all('not a readable image' in msg for _, msg in summary.failed)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['good1.png', 'good2.jpg']
    assert set(summary.gates) == {'good1.png', 'good2.jpg'}
    weights = summary.gates['good2.jpg']['encoders.0.0']
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-6


def whole_image_reference(net, img, **options):
    """What enhance_image computed before row bands: the whole image in float32, blended, then converted."""
    from gmmoe_arch.enhance import _check_image, _from_network, _to_network, enhance_tensor, plan_tiles

    img, scale = _check_image(img)
    plan = plan_tiles(img.shape[0], img.shape[1], options.get('tile'), options.get('overlap', 96),
                      options.get('max_pixels', 512 * 512), net.padder_size)
    y = enhance_tensor(net, _to_network(img, scale), plan, stat_passes=options.get('stat_passes', 1))
    out = _from_network(y[0].numpy().transpose(1, 2, 0), img.ndim == 2, scale, img.dtype)
    return np.concatenate([out, img[..., 3:]], axis=2) if img.ndim == 3 and img.shape[2] == 4 else out


@pytest.mark.parametrize('shape, dtype', [((150, 100, 4), np.uint8), ((120, 130), np.uint16),
                                          ((100, 150, 3), np.float32)])
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
    assert out.shape == img.shape
    assert peak < 2 * img.nbytes, f'{peak / img.nbytes:.2f} x the image'
