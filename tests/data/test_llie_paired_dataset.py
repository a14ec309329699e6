"""LLIEPairedDataset on tiny generated trees: preset layouts, both backends, formats, bad inputs."""

import os
import random

import cv2
import lmdb
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from datasets_lmdb import PRESETS, pack_pairs, pack_preset
from gmmoe_arch.data.image_io import DataError, MissingDataError

SIZE = (24, 32)  # h, w of the generated images

# preset -> function(split, index) -> (lq file name, gt file name)
NAMES = {
    'lol_v1': lambda split, i: (f'{i + 1}.png',) * 2,
    'lol_v2_real': lambda split, i: (f'low{i + 1:05d}.png', f'normal{i + 1:05d}.png'),
    'lol_v2_synthetic': lambda split, i: (f'r{i:04d}{split}.png',) * 2,
    'lsrw_huawei': lambda split, i: (f'{i + 2}.jpg',) * 2,
    'lsrw_nikon': lambda split, i: (f'{i + 3000}.jpg',) * 2,
    'rain100l': lambda split, i: (f'rain-{i + 1:03d}.png', f'norain-{i + 1:03d}.png'),
    'rain100h': lambda split, i: (f'rain-{i + 1}.png', f'norain-{i + 1}.png'),
    'reside_sots_indoor': lambda split, i: (f'{1400 + i}_{i + 1}.png', f'{1400 + i}.png'),
    'reside_sots_outdoor': lambda split, i: (f'{i + 1:04d}_0.8_0.2.jpg', f'{i + 1:04d}.png'),
    'reside_its': lambda split, i: (f'{i + 1}_1_0.90179.png', f'{i + 1}.png'),
    'reside_ots': lambda split, i: (f'{i + 1:04d}_1_0.2.jpg', f'{i + 1:04d}.jpg'),
}


def noise(rng, shape, dtype=np.uint8):
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, shape, dtype=np.int64).astype(dtype)


def write(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return str(path)


def write_preset_tree(root, preset, n=3, seed=0):
    """Write ``n`` pairs per split in ``preset``'s layout; returns {split: [(lq_path, gt_path)]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, (lq_dir, gt_dir, _) in PRESETS[preset].items():
        written[split] = []
        for i in range(n):
            lq_name, gt_name = NAMES[preset](split, i)
            written[split].append(
                (
                    write(root / lq_dir / lq_name, noise(rng, (*SIZE, 3))),
                    write(root / gt_dir / gt_name, noise(rng, (*SIZE, 3))),
                )
            )
    return written


def options(lq, gt, backend='disk', phase='val', **extra):
    opt = {
        'name': 'test',
        'type': 'LLIEPairedDataset',
        'phase': phase,
        'dataroot_lq': str(lq),
        'dataroot_gt': str(gt),
        'io_backend': {'type': backend},
    }
    opt.update(extra)
    return opt


def as_rgb_tensor(path):
    """What the dataset must return for an 8-bit colour file: RGB CHW float in [0, 1]."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255)


def samples(dataset, seed=7):
    random.seed(seed)
    return [dataset[i] for i in range(len(dataset))]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x['lq'], y['lq']) and torch.equal(x['gt'], y['gt'])


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_preset_layouts_disk_and_lmdb_agree(tmp_path, preset):
    written = write_preset_tree(tmp_path / 'src', preset)
    counts = pack_preset(preset, str(tmp_path / 'src'), str(tmp_path / 'lmdb'), workers=1, progress=False)
    assert counts == {split: 3 for split in PRESETS[preset]}
    for split, (lq_dir, gt_dir, rule) in PRESETS[preset].items():
        disk_val = build_dataset(options(tmp_path / 'src' / lq_dir, tmp_path / 'src' / gt_dir, pair_rule=rule))
        lmdb_val = build_dataset(
            options(tmp_path / 'lmdb' / split / 'lq.lmdb', tmp_path / 'lmdb' / split / 'gt.lmdb', 'lmdb')
        )
        got = samples(disk_val)
        for sample, (lq_path, gt_path) in zip(got, sorted(written[split])):
            assert sample['lq_path'] == lq_path and sample['gt_path'] == gt_path
            assert torch.equal(sample['lq'], as_rgb_tensor(lq_path))
            assert torch.equal(sample['gt'], as_rgb_tensor(gt_path))
        assert_same(got, samples(lmdb_val))
        assert [s['lq_path'] for s in samples(lmdb_val)] == [
            os.path.splitext(os.path.basename(p))[0] for p, _ in sorted(written[split])
        ]
        train = dict(phase='train', gt_size=16, use_hflip=True, use_rot=True)
        disk_train = build_dataset(
            options(tmp_path / 'src' / lq_dir, tmp_path / 'src' / gt_dir, pair_rule=rule, **train)
        )
        lmdb_train = build_dataset(
            options(tmp_path / 'lmdb' / split / 'lq.lmdb', tmp_path / 'lmdb' / split / 'gt.lmdb', 'lmdb', **train)
        )
        crops = samples(disk_train, seed=3)
        assert crops[0]['lq'].shape == (3, 16, 16) and crops[0]['lq'].dtype == torch.float32
        assert_same(crops, samples(lmdb_train, seed=3))


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        write(tmp_path / 'lq' / f'{i}.png', noise(rng, (*SIZE, 3)))
        write(tmp_path / 'gt' / f'{i}.png', noise(rng, (*SIZE, 3)))
    return tmp_path


@pytest.mark.parametrize('form', ['raw', 'png'])
def test_both_stored_forms_read_the_same(pairs, form):
    pack_pairs(str(pairs / 'lq'), str(pairs / 'gt'), str(pairs / form), form=form, workers=1, progress=False)
    disk = build_dataset(options(pairs / 'lq', pairs / 'gt', phase='train', gt_size=8, use_hflip=True))
    packed = build_dataset(
        options(pairs / form / 'lq.lmdb', pairs / form / 'gt.lmdb', 'lmdb', phase='train', gt_size=8, use_hflip=True)
    )
    assert_same(samples(disk), samples(packed))


def test_reads_lmdb_packed_by_basicsr(pairs):
    for side in ('lq', 'gt'):
        names = sorted(os.listdir(pairs / side))
        make_lmdb_from_imgs(
            str(pairs / side), str(pairs / f'{side}.lmdb'), names, [os.path.splitext(n)[0] for n in names]
        )
    packed = build_dataset(options(pairs / 'lq.lmdb', pairs / 'gt.lmdb', 'lmdb'))
    assert_same(samples(build_dataset(options(pairs / 'lq', pairs / 'gt'))), samples(packed))


@pytest.mark.parametrize('ext', ['.png', '.tif'])
def test_16_bit_images_scale_by_65535(tmp_path, ext):
    rng = np.random.default_rng(2)
    lq, gt = noise(rng, (*SIZE, 3), np.uint16), noise(rng, (*SIZE, 3), np.uint16)
    write(tmp_path / 'lq' / f'a{ext}', lq)
    write(tmp_path / 'gt' / f'a{ext}', gt)
    pack_pairs(str(tmp_path / 'lq'), str(tmp_path / 'gt'), str(tmp_path / 'db'), workers=1, progress=False)
    expected = torch.from_numpy(lq[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 65535)
    for opt in (
        options(tmp_path / 'lq', tmp_path / 'gt'),
        options(tmp_path / 'db' / 'lq.lmdb', tmp_path / 'db' / 'gt.lmdb', 'lmdb'),
    ):
        sample = build_dataset(opt)[0]
        assert torch.allclose(sample['lq'], expected, atol=1e-7)
        assert sample['gt'].max() > 255 / 65535 * 1.5  # not squashed to 8 bits


def test_grayscale_and_alpha_become_rgb(tmp_path):
    rng = np.random.default_rng(3)
    gray = noise(rng, SIZE)
    rgba = noise(rng, (*SIZE, 4))
    write(tmp_path / 'lq' / 'a.bmp', gray)
    write(tmp_path / 'gt' / 'a.png', rgba)
    sample = build_dataset(options(tmp_path / 'lq', tmp_path / 'gt'))[0]
    assert sample['lq'].shape == (3, *SIZE)
    for c in range(3):
        assert torch.equal(sample['lq'][c], torch.from_numpy(gray.astype(np.float32) / 255))
    assert torch.equal(sample['gt'], torch.from_numpy(rgba[:, :, 2::-1].transpose(2, 0, 1).astype(np.float32) / 255))
    pack_pairs(str(tmp_path / 'lq'), str(tmp_path / 'gt'), str(tmp_path / 'db'), workers=1, progress=False)
    packed = build_dataset(options(tmp_path / 'db' / 'lq.lmdb', tmp_path / 'db' / 'gt.lmdb', 'lmdb'))
    assert_same(samples(build_dataset(options(tmp_path / 'lq', tmp_path / 'gt'))), samples(packed))


def test_regex_pair_rule_for_deraining_folders(tmp_path):
    rng = np.random.default_rng(4)
    for i in (1, 2):
        write(tmp_path / 'in' / f'rain-{i:03d}.png', noise(rng, (*SIZE, 3)))
        write(tmp_path / 'out' / f'norain-{i:03d}.png', noise(rng, (*SIZE, 3)))
    rule = {'lq': 'rain-(.*)', 'gt': r'norain-\1'}
    dataset = build_dataset(options(tmp_path / 'in', tmp_path / 'out', pair_rule=rule))
    assert [os.path.basename(s['gt_path']) for s in samples(dataset)] == ['norain-001.png', 'norain-002.png']


def test_meta_info_file_selects_pairs_and_skip_unpaired(pairs, tmp_path):
    (tmp_path / 'list.txt').write_text('2.png (24,32,3) 1\n0\n')
    dataset = build_dataset(options(pairs / 'lq', pairs / 'gt', meta_info_file=str(tmp_path / 'list.txt')))
    assert [os.path.basename(s['lq_path']) for s in samples(dataset)] == ['0.png', '2.png']
    write(pairs / 'lq' / 'extra.png', noise(np.random.default_rng(0), (*SIZE, 3)))
    assert len(build_dataset(options(pairs / 'lq', pairs / 'gt', skip_unpaired=True))) == 3


def test_mean_std_normalise(pairs):
    plain = build_dataset(options(pairs / 'lq', pairs / 'gt'))[0]
    shifted = build_dataset(options(pairs / 'lq', pairs / 'gt', mean=[0.5] * 3, std=[0.25] * 3))[0]
    assert torch.allclose(shifted['gt'], (plain['gt'] - 0.5) / 0.25)


def test_lmdb_dataset_in_worker_processes(pairs):
    pack_pairs(str(pairs / 'lq'), str(pairs / 'gt'), str(pairs / 'db'), workers=1, progress=False)
    dataset = build_dataset(options(pairs / 'db' / 'lq.lmdb', pairs / 'db' / 'gt.lmdb', 'lmdb'))
    first = dataset[0]  # opens the environment in this process before the workers fork
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    batch = next(iter(loader))
    assert torch.equal(batch['lq'][0], first['lq']) and batch['lq'].shape == (3, 3, *SIZE)


# ---- bad inputs: each error names the culprit and the option ----


def build_error(opt, kind=ValueError):
    with pytest.raises(kind) as info:
        build_dataset(opt)
    return str(info.value)


def test_missing_option_and_bad_backend(pairs):
    assert 'dataroot_gt' in build_error(
        {'name': 'x', 'type': 'LLIEPairedDataset', 'phase': 'val', 'dataroot_lq': str(pairs / 'lq')}
    )
    assert 'io_backend.type' in build_error(options(pairs / 'lq', pairs / 'gt', 'memcached'))


def test_missing_folder(pairs):
    msg = build_error(options(pairs / 'nowhere', pairs / 'gt'), MissingDataError)
    assert 'dataroot_lq' in msg and str(pairs / 'nowhere') in msg
    assert '`datasets_lmdb presets`' in msg and 'docs/data.md' in msg


def test_empty_folder(pairs):
    (pairs / 'empty').mkdir()
    (pairs / 'empty' / 'notes.txt').write_text('not an image')
    msg = build_error(options(pairs / 'lq', pairs / 'empty'))
    assert 'dataroot_gt' in msg and 'no images' in msg and 'notes.txt' in msg


def test_unpaired_files(pairs):
    rng = np.random.default_rng(5)
    write(pairs / 'lq' / 'only_lq.png', noise(rng, (*SIZE, 3)))
    write(pairs / 'gt' / 'only_gt.png', noise(rng, (*SIZE, 3)))
    msg = build_error(options(pairs / 'lq', pairs / 'gt'), DataError)
    assert 'only_lq' in msg and 'only_gt' in msg and 'dataroot_lq' in msg and 'dataroot_gt' in msg


def test_lol_v2_real_names_need_their_rule(tmp_path):
    write_preset_tree(tmp_path, 'lol_v2_real', n=2)
    low, normal = tmp_path / 'Real_captured/Train/Low', tmp_path / 'Real_captured/Train/Normal'
    msg = build_error(options(low, normal))
    assert 'low00001' in msg and 'normal00001' in msg and 'pair_rule' in msg
    assert len(build_dataset(options(low, normal, pair_rule='lol_v2_real'))) == 2


def test_unreadable_image(pairs):
    (pairs / 'gt' / '1.png').write_bytes(b'this is not a png')
    msg = build_error(options(pairs / 'lq', pairs / 'gt'), DataError)
    assert 'unreadable' in msg and str(pairs / 'gt' / '1.png') in msg


def test_size_mismatch(pairs):
    write(pairs / 'gt' / '2.png', noise(np.random.default_rng(6), (SIZE[0] + 1, SIZE[1], 3)))
    msg = build_error(options(pairs / 'lq', pairs / 'gt'))
    assert str(pairs / 'gt' / '2.png') in msg and '25x32' in msg


def test_crop_larger_than_image(pairs):
    msg = build_error(options(pairs / 'lq', pairs / 'gt', phase='train', gt_size=64))
    assert 'gt_size 64' in msg and '0.png' in msg


def test_bad_pair_rule(pairs):
    assert 'pair_rule.lq' in build_error(options(pairs / 'lq', pairs / 'gt', pair_rule={'lq': '(', 'gt': 'x'}))
    assert 'pair_rule' in build_error(options(pairs / 'lq', pairs / 'gt', pair_rule='lol_v3'))


def test_meta_info_file_names_missing_pair(pairs, tmp_path):
    (tmp_path / 'list.txt').write_text('0.png\n7.png\n')
    msg = build_error(options(pairs / 'lq', pairs / 'gt', meta_info_file=str(tmp_path / 'list.txt')))
    assert 'meta_info_file' in msg and '7 -> 7' in msg


def test_missing_and_incomplete_lmdb(pairs):
    pack_pairs(str(pairs / 'lq'), str(pairs / 'gt'), str(pairs / 'db'), workers=1, progress=False)
    msg = build_error(options(pairs / 'db' / 'nope.lmdb', pairs / 'db' / 'gt.lmdb', 'lmdb'), FileNotFoundError)
    assert 'dataroot_lq' in msg and 'nope.lmdb' in msg
    os.remove(pairs / 'db' / 'gt.lmdb' / 'meta_info.txt')
    msg = build_error(options(pairs / 'db' / 'lq.lmdb', pairs / 'db' / 'gt.lmdb', 'lmdb'), FileNotFoundError)
    assert 'dataroot_gt' in msg and 'meta_info.txt' in msg


def test_lmdb_key_listed_but_not_stored(pairs):
    pack_pairs(str(pairs / 'lq'), str(pairs / 'gt'), str(pairs / 'db'), workers=1, progress=False)
    env = lmdb.open(str(pairs / 'db' / 'gt.lmdb'))
    with env.begin(write=True) as txn:
        txn.delete(b'1')
    env.close()
    msg = build_error(options(pairs / 'db' / 'lq.lmdb', pairs / 'db' / 'gt.lmdb', 'lmdb'))
    assert 'dataroot_gt' in msg and 'not stored' in msg and ': 1' in msg


def test_lmdb_keys_differ_between_lq_and_gt(pairs):
    pack_pairs(str(pairs / 'lq'), str(pairs / 'gt'), str(pairs / 'db'), workers=1, progress=False)
    for side in ('lq', 'gt'):
        os.rename(pairs / side / '2.png', pairs / side / '9.png')
    pack_pairs(str(pairs / 'lq'), str(pairs / 'gt'), str(pairs / 'db9'), workers=1, progress=False)
    msg = build_error(options(pairs / 'db' / 'lq.lmdb', pairs / 'db9' / 'gt.lmdb', 'lmdb'))
    assert 'dataroot_lq without a partner: 2' in msg and 'dataroot_gt without a partner: 9' in msg


def test_lmdb_size_mismatch_from_meta_info(pairs):
    pack_pairs(str(pairs / 'lq'), str(pairs / 'gt'), str(pairs / 'db'), workers=1, progress=False)
    meta = pairs / 'db' / 'gt.lmdb' / 'meta_info.txt'
    meta.write_text(meta.read_text().replace('1.raw (24,32,3)', '1.raw (24,30,3)'))
    msg = build_error(options(pairs / 'db' / 'lq.lmdb', pairs / 'db' / 'gt.lmdb', 'lmdb'))
    assert '1 (24, 32) vs 1 (24, 30)' in msg


def test_image_damaged_after_building_is_a_data_error_naming_it(pairs):
    dataset = build_dataset(options(pairs / 'lq', pairs / 'gt'))
    png = (pairs / 'gt' / '2.png').read_bytes()
    (pairs / 'gt' / '2.png').write_bytes(png[: len(png) // 2])
    with pytest.raises(DataError, match=r"LLIEPairedDataset 'test': .*gt/2\.png: not a decodable image"):
        dataset[2]
    os.remove(pairs / 'lq' / '1.png')
    with pytest.raises(MissingDataError, match=r'lq/1\.png: file not found'):
        dataset[1]


def test_verify_checksum_is_an_lmdb_option(pairs):
    opt = options(pairs / 'lq', pairs / 'gt')
    opt['io_backend']['verify_checksum'] = True
    assert 'verify_checksum' in build_error(opt)
