"""datasets_lmdb synth: seeded low light, rain, haze, mixed and regions pairs with labels (and label maps); bad
sources and outputs."""

import json
import os
import signal

import cv2
import numpy as np
import pytest
import torch

from datasets_lmdb import synth, verify
from datasets_lmdb.__main__ import main
from datasets_lmdb.synth import META_INFO as META
from datasets_lmdb.synth import as_rgb8, synthesize, synthesize_images
from gmmoe_arch.data import degradations
from gmmoe_arch.data.image_io import DataError, MissingDataError
from gmmoe_arch.data.llie_paired_dataset import LLIEPairedDataset

SIZE = (32, 48)


def photo(rng, size=SIZE):
    """A smooth colour image with edges: blurred noise plus a bright and a dark block, RGB uint8."""
    img = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (7, 7), 0)
    img[: size[0] // 2, : size[1] // 3] = 230
    img[size[0] // 2 :, -size[1] // 3 :] = 25
    return img


@pytest.fixture
def clean(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / 'clean'
    src.mkdir()
    for name in ('a', 'b', 'c'):
        assert cv2.imwrite(str(src / f'{name}.png'), cv2.cvtColor(photo(rng), cv2.COLOR_RGB2BGR))
    return src


def run(src, out, degradation, **kwargs):
    return synthesize(str(src), str(out), degradation, progress=False, **kwargs)


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float64) / 255


@pytest.mark.parametrize('degradation', synth.KINDS)
def test_same_seed_same_bytes_other_seed_differs(clean, tmp_path, degradation):
    first = run(clean, tmp_path / 'one', degradation, seed=5, per_image=2)
    again = run(clean, tmp_path / 'two', degradation, seed=5, per_image=2)
    other = run(clean, tmp_path / 'three', degradation, seed=6, per_image=2)
    assert files(tmp_path / 'one' / 'lq') == files(tmp_path / 'two' / 'lq')
    assert first['pairs'] == again['pairs'] and first['pairs'] != other['pairs']
    lq_one, lq_other = files(tmp_path / 'one' / 'lq'), files(tmp_path / 'three' / 'lq')
    assert sorted(lq_one) == sorted(lq_other) == [f'{n}_{k}.png' for n in 'abc' for k in (0, 1)]
    assert all(lq_one[name] != lq_other[name] for name in lq_one)
    for name in 'abc':  # the targets are the sources, exactly
        assert np.array_equal(rgb(tmp_path / 'one' / 'gt' / f'{name}_0.png'), rgb(clean / f'{name}.png'))


def test_a_pair_does_not_depend_on_the_images_after_it(clean, tmp_path):
    images = [(p.stem, str(p)) for p in sorted(clean.iterdir())]
    synthesize_images(images, str(tmp_path / 'all'), 'rain', seed=2, progress=False)
    synthesize_images(images[:1], str(tmp_path / 'first'), 'rain', seed=2, progress=False)
    assert (tmp_path / 'all' / 'lq' / 'a.png').read_bytes() == (tmp_path / 'first' / 'lq' / 'a.png').read_bytes()


def test_lowlight_is_darker_and_noisy(clean, tmp_path):
    record = run(clean, tmp_path / 'out', 'lowlight', seed=1)
    for pair in record['pairs']:
        lq, gt = (rgb(tmp_path / 'out' / side / f'{pair["name"]}.png') for side in ('lq', 'gt'))
        assert lq.mean() < 0.6 * gt.mean()
        assert 0.04 <= pair['params']['exposure'] <= 0.1 and pair['label'] == 'lowlight'


def gradient_ratio(img):
    """Mean |d/dx| over mean |d/dy|: above 1 for near-vertical structure."""
    return np.abs(np.diff(img, axis=1)).mean() / np.abs(np.diff(img, axis=0)).mean()


@pytest.mark.parametrize('level', synth.RAIN_LEVELS)
def test_rain_adds_bright_near_vertical_streaks(level):
    flat = np.full((160, 160, 3), 90, np.uint8)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        params = synth.rain_params(rng, level)
        assert all(abs(layer['angle']) <= synth.RAIN_ANGLE + synth.RAIN[level]['spread'] for layer in params['layers'])
        added = synth.add_rain(flat, params, rng).astype(np.float64) - flat
        assert added.min() >= 0 and added.max() > 60  # the screen blend only brightens
        assert gradient_ratio(added.mean(axis=2)) > 1.3


def test_rain_streaks_follow_their_angle():
    flat = np.full((160, 160, 3), 90, np.uint8)
    layer = {'density': 0.004, 'length': 40.0, 'width': 1.0, 'brightness': 0.8}
    ratios = {}
    for angle in (0.0, 80.0):
        params = {'level': 'light', 'layers': [dict(layer, angle=angle)]}
        added = synth.add_rain(flat, params, np.random.default_rng(0)).astype(np.float64) - flat
        ratios[angle] = gradient_ratio(added.mean(axis=2))
    assert ratios[0.0] > 2 and ratios[80.0] < 0.5


def test_heavy_rain_covers_more_than_light():
    flat = np.full((160, 160, 3), 90, np.uint8)
    cover = {}
    for level in synth.RAIN_LEVELS:
        covered = []
        for seed in range(4):
            rng = np.random.default_rng(seed)
            covered.append((synth.add_rain(flat, synth.rain_params(rng, level), rng) > 110).mean())
        cover[level] = np.mean(covered)
    assert cover['heavy'] > 2 * cover['light'] > 0


@pytest.mark.parametrize('kind', ['haze', 'haze_bright'])
def test_haze_lowers_contrast_towards_the_airlight(clean, tmp_path, kind):
    record = run(clean, tmp_path / 'out', kind, seed=3)
    for pair in record['pairs']:
        lq, gt = (rgb(tmp_path / 'out' / side / f'{pair["name"]}.png') for side in ('lq', 'gt'))
        airlight = np.asarray(pair['params']['airlight_rgb'])
        assert 0.6 <= pair['params']['beta'] <= 1.8 and np.all((airlight >= 0.67) & (airlight <= 1.0))
        assert (lq.std(axis=(0, 1)) < 0.9 * gt.std(axis=(0, 1))).all()
        # I - A = t (J - A) with t < 1: every pixel moves towards the airlight (up to rounding), on average clearly
        assert np.all(np.abs(lq - airlight) <= np.abs(gt - airlight) + 1 / 255)
        assert np.abs(lq - airlight).mean() < 0.9 * np.abs(gt - airlight).mean()


def test_haze_bright_depth_proxy_puts_the_top_of_a_flat_image_farther():
    flat = np.full((64, 40, 3), 60, np.uint8)
    params = {'beta': 1.2, 'airlight_rgb': [0.9, 0.9, 0.9], 'depth_mix': 0.5}
    veil = (synth.add_haze_bright(flat, params).astype(np.float64) - flat).mean(axis=(1, 2))
    assert np.all(np.diff(veil) <= 0) and veil[0] > veil[-1] + 20
    depth = synth.depth_proxy(flat, 0.5)
    assert depth.min() == pytest.approx(synth.HAZE_NEAREST) and depth.max() == pytest.approx(1.0)


def test_mixed_gives_every_label_in_meta_info_and_record(clean, tmp_path):
    record = run(clean, tmp_path / 'out', 'mixed', per_image=2, lmdb=True)
    labels = [pair['label'] for pair in record['pairs']]
    assert labels == ['lowlight', 'rain', 'haze'] * 2 and record['counts'] == {'lowlight': 2, 'rain': 2, 'haze': 2}
    lines = (tmp_path / 'out' / 'meta_info.txt').read_text().splitlines()
    assert lines == [f'{p["name"]}.png ({SIZE[0]},{SIZE[1]},3) label={p["label"]}' for p in record['pairs']]
    for side in ('lq', 'gt'):
        lmdb_lines = (tmp_path / 'out' / 'lmdb' / f'{side}.lmdb' / 'meta_info.txt').read_text().splitlines()
        assert [line.split()[-1] for line in lmdb_lines] == [f'label={label}' for label in labels]
    assert json.loads((tmp_path / 'out' / 'synth.json').read_text()) == record


def test_in_memory_images_gray_float_and_large(tmp_path):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, SIZE, dtype=np.uint8)
    floats = rng.random((*SIZE, 3))
    large = photo(rng, (60, 90))
    images = [('gray', gray), ('floats', floats), ('large', large)]
    record = synthesize_images(images, str(tmp_path / 'out'), 'haze', max_side=60, progress=False)
    assert [p['name'] for p in record['pairs']] == ['gray', 'floats', 'large']
    assert np.array_equal(rgb(tmp_path / 'out' / 'gt' / 'gray.png'), np.repeat(gray[..., None], 3, 2) / 255)
    assert np.array_equal(rgb(tmp_path / 'out' / 'gt' / 'floats.png'), as_rgb8(floats) / 255)
    assert cv2.imread(str(tmp_path / 'out' / 'lq' / 'large.png')).shape == (40, 60, 3)


@pytest.mark.parametrize(
    'images, needle',
    [
        ([('a b', np.zeros((8, 8, 3), np.uint8))], "'a b'"),
        ([('x', np.zeros(4))] * 2, "unique: 'x'"),
        ([('y', np.zeros((8, 8, 2)))], r"image 'y': expected an \(H, W\)"),
        ([('z', np.zeros((8, 8), np.int32))], "image 'z': unsupported pixel type int32"),
    ],
)
def test_bad_image_names_are_refused(tmp_path, images, needle):
    with pytest.raises(DataError, match=needle):
        synthesize_images(images, str(tmp_path / 'out'), 'rain', progress=False)
    assert not (tmp_path / 'out').exists()


def assert_nothing_complete(parent, out):
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith('.partial-') or p.name == '.pack.lock']


def test_missing_empty_and_unreadable_sources(clean, tmp_path, capsys):
    out = tmp_path / 'out'
    with pytest.raises(MissingDataError, match='nowhere'):
        run(tmp_path / 'nowhere', out, 'rain')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='empty'):
        run(tmp_path / 'empty', out, 'rain')
    (clean / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    with pytest.raises(DataError, match='b.png'):
        run(clean, out, 'mixed', lmdb=True)
    assert_nothing_complete(tmp_path, out)
    capsys.readouterr()
    assert main(['synth', '--degradation', 'haze', '--src', str(clean), '--out', str(out), '--no-progress']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'b.png' in err and err.startswith('datasets_lmdb: error:')
    assert_nothing_complete(tmp_path, out)


def test_complete_output_is_refused_unless_overwrite(clean, tmp_path, capsys):
    out = tmp_path / 'out'
    run(clean, out, 'rain', seed=1)
    before = files(out / 'lq')
    with pytest.raises(FileExistsError, match='--overwrite'):
        run(clean, out, 'rain', seed=2)
    assert files(out / 'lq') == before
    record = run(clean, out, 'haze', seed=2, overwrite=True)
    assert json.loads((out / 'synth.json').read_text()) == record and files(out / 'lq') != before
    assert_nothing_complete(tmp_path, tmp_path / 'absent')
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not a synth output'):
        run(clean, foreign, 'rain', overwrite=True)
    assert os.listdir(foreign) == ['notes.txt']


def test_cli_synth(clean, tmp_path, capsys):
    out = tmp_path / 'out'
    args = ['synth', '--degradation', 'mixed', '--src', str(clean), '--out', str(out), '--seed', '3']
    assert main(args + ['--per-image', '2', '--lmdb', '--rain', 'heavy', '--no-progress']) == 0
    assert '6 pairs (lowlight: 2, rain: 2, haze: 2)' in capsys.readouterr().out
    record = json.loads((out / 'synth.json').read_text())
    assert record['settings']['seed'] == 3 and record['settings']['lmdb']
    assert {p['params']['level'] for p in record['pairs'] if p['label'] == 'rain'} == {'heavy'}
    assert sorted(os.listdir(out / 'lmdb')) == ['gt.lmdb', 'lq.lmdb']
    assert main(args) == 2 and '--overwrite' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['synth', '--degradation', 'snow', '--src', str(clean), '--out', str(out)])


@pytest.mark.parametrize(
    'option, value, message',
    [
        ('--seed', '-1', '--seed: expected an integer >= 0, got -1'),
        ('--per-image', '0', '--per-image: expected an integer >= 1, got 0'),
        ('--max-side', '4', '--max-side: expected an integer >= 8, got 4'),
    ],
)
def test_cli_synth_names_each_bad_option_before_any_work(tmp_path, capsys, option, value, message):
    # --src does not exist and --out is never created: the option is checked before either is looked at
    args = ['synth', '--degradation', 'rain', '--src', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out')]
    assert main(args + [option, value, '--lmdb', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err == f'datasets_lmdb: error: {message}\n'
    assert os.listdir(tmp_path) == []


def test_synth_api_refuses_a_bad_seed_or_form_before_reading(tmp_path):
    with pytest.raises(ValueError, match='--seed: expected an integer >= 0, got True'):
        synthesize(str(tmp_path / 'nowhere'), str(tmp_path / 'out'), 'haze', seed=True)
    with pytest.raises(ValueError, match="--form: expected one of raw, png, got 'jpeg'"):
        synthesize_images([('a', str(tmp_path / 'missing.png'))], str(tmp_path / 'out'), 'haze', lmdb=True, form='jpeg')


def test_killed_run_leaves_no_output_and_the_next_run_cleans_up(clean, tmp_path):
    out = tmp_path / 'out'
    pid = os.fork()
    if pid == 0:  # child: die (no cleanup at all) while the second image is being degraded
        calls = []
        real = synth.degrade

        def degrade_or_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        synth.degrade = degrade_or_die
        try:
            run(clean, out, 'rain')
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not out.exists()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != 'clean')
    assert left[0] == '.pack.lock' and len(left) == 2 and left[1].startswith('.partial-')  # flock dies with its holder
    run(clean, out, 'rain')
    assert sorted(os.listdir(out)) == ['gt', 'lq', 'meta_info.txt', 'synth.json']
    assert_nothing_complete(tmp_path, tmp_path / 'absent')


def test_regions_write_label_maps_into_meta_info_and_the_lmdb(clean, tmp_path, capsys):
    out = tmp_path / 'out'
    args = ['synth', '--degradation', 'regions', '--src', str(clean), '--out', str(out), '--seed', '1']
    assert main(args + ['--per-image', '2', '--lmdb', '--no-progress']) == 0
    assert '6 pairs (' in capsys.readouterr().out
    record = json.loads((out / 'synth.json').read_text())
    indices = degradations.label_indices()
    assert record['settings']['label_indices'] == indices
    lines = (out / 'meta_info.txt').read_text().splitlines()
    maps = {}
    for pair, line in zip(record['pairs'], lines):
        assert line == f'{pair["name"]}.png ({SIZE[0]},{SIZE[1]},3) label={pair["label"]} labelmap={pair["labelmap"]}'
        label_map = cv2.imread(str(out / pair['labelmap']), cv2.IMREAD_UNCHANGED)
        assert label_map.shape == SIZE and label_map.dtype == np.uint8
        values = {indices[label] for label in pair['params']['labels']}
        assert set(np.unique(label_map)) == values and len(values) >= 2
        assert pair['label'] == pair['params']['dominant']
        maps[pair['name']] = torch.from_numpy(label_map).long()
    assert sum(record['counts'].values()) == 6
    problems = verify(str(out / 'lmdb'), progress=False)
    assert problems[1] == [] and problems[0][str(out / 'lmdb' / 'labelmap.lmdb')] == 6
    common = {'name': 'regions', 'type': 'LLIEPairedDataset', 'phase': 'val'}
    on_disk = {'dataroot_lq': str(out / 'lq'), 'dataroot_gt': str(out / 'gt'), 'meta_info_file': str(out / META)}
    packed = {'dataroot_lq': str(out / 'lmdb' / 'lq.lmdb'), 'dataroot_gt': str(out / 'lmdb' / 'gt.lmdb')}
    for opt in (on_disk, dict(packed, io_backend={'type': 'lmdb'})):
        dataset = LLIEPairedDataset({**common, **opt})
        for sample, pair in zip(dataset, record['pairs']):
            assert torch.equal(sample['label_map'], maps[pair['name']]) and sample['label'] == pair['label']


def test_regions_pairs_are_seeded(clean, tmp_path):
    first = run(clean, tmp_path / 'one', 'regions', seed=4)
    again = run(clean, tmp_path / 'two', 'regions', seed=4)
    assert first['pairs'] == again['pairs']
    assert files(tmp_path / 'one' / 'labelmap') == files(tmp_path / 'two' / 'labelmap')
