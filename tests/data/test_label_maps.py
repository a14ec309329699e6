"""Per-pixel label maps in LLIEPairedDataset / MixedPairedDataset: read from meta_info (disk and LMDB), cropped,
flipped and rotated with the pair, filled for pairs without one, collated, and bad maps named."""

import random

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from torch.utils.data import DataLoader

from datasets_lmdb import pack_pairs
from datasets_lmdb.pack import write_lmdb
from gmmoe_arch.data import degradations
from gmmoe_arch.data.image_io import DataError, MissingDataError
from gmmoe_arch.data.pairing import read_lmdb_label_maps, read_pair_list

SIZE = (24, 32)
NAMES = ('a', 'b', 'c')


def write_set(root, size=SIZE, seed=0):
    """Pairs whose every pixel tells its label: gt = 100 x label + noise (< 50), lq = 255 - gt; random labels
    per pixel, so any shift, flip or rotation between the map and the images shows."""
    rng = np.random.default_rng(seed)
    for side in ('lq', 'gt', 'labelmap'):
        (root / side).mkdir(parents=True)
    lines = []
    for name in NAMES:
        label_map = rng.integers(0, 3, size).astype(np.uint8)
        gt = np.repeat((label_map * 100 + rng.integers(0, 50, size))[..., None], 3, axis=2).astype(np.uint8)
        for side, img in (('lq', 255 - gt), ('gt', gt), ('labelmap', label_map)):
            assert cv2.imwrite(str(root / side / f'{name}.png'), img)
        lines.append(f'{name}.png ({size[0]},{size[1]},3) label=rain labelmap=labelmap/{name}.png\n')
    (root / 'meta_info.txt').write_text(''.join(lines))
    pack_pairs(
        str(root / 'lq'),
        str(root / 'gt'),
        str(root / 'lmdb'),
        workers=1,
        progress=False,
        labels=dict.fromkeys(NAMES, 'rain'),
        label_maps=dict.fromkeys(NAMES, '../labelmap.lmdb'),
    )
    maps = [(name, cv2.imread(str(root / 'labelmap' / f'{name}.png'), cv2.IMREAD_UNCHANGED)) for name in NAMES]
    write_lmdb(str(root / 'lmdb' / 'labelmap.lmdb'), maps)
    return root


def disk(root, **extra):
    base = {'name': 'maps', 'type': 'LLIEPairedDataset', 'phase': 'val', 'dataroot_lq': str(root / 'lq')}
    return {**base, 'dataroot_gt': str(root / 'gt'), 'meta_info_file': str(root / 'meta_info.txt'), **extra}


def lmdb(root, **extra):
    base = {'name': 'maps', 'type': 'LLIEPairedDataset', 'phase': 'val', 'io_backend': {'type': 'lmdb'}}
    return {
        **base,
        'dataroot_lq': str(root / 'lmdb' / 'lq.lmdb'),
        'dataroot_gt': str(root / 'lmdb' / 'gt.lmdb'),
        **extra,
    }


TRAIN = {'phase': 'train', 'gt_size': 16, 'use_hflip': True, 'use_rot': True}


@pytest.fixture
def maps(tmp_path):
    return write_set(tmp_path / 'maps')


@pytest.mark.parametrize('layout', [disk, lmdb])
def test_label_map_is_cropped_flipped_and_rotated_with_the_pair(maps, layout):
    dataset = build_dataset(layout(maps, **TRAIN))
    random.seed(3)
    for _ in range(24):
        sample = dataset[random.randrange(len(dataset))]
        label_map = sample['label_map']
        assert label_map.dtype == torch.int64 and label_map.shape == (16, 16)
        gt = torch.round(sample['gt'][0] * 255).long()
        lq = 255 - torch.round(sample['lq'][0] * 255).long()
        assert torch.equal(gt // 100, label_map) and torch.equal(lq // 100, label_map)


def test_full_maps_in_the_val_phase_and_batches_collate(maps):
    dataset = build_dataset(lmdb(maps))
    first = dataset[0]
    expected = cv2.imread(str(maps / 'labelmap' / 'a.png'), cv2.IMREAD_UNCHANGED)
    assert torch.equal(first['label_map'], torch.from_numpy(expected).long())
    batch = next(iter(DataLoader(build_dataset(disk(maps, **TRAIN)), batch_size=3)))
    assert batch['label_map'].shape == (3, 16, 16) and batch['label'] == ['rain'] * 3
    assert 'label_map' not in build_dataset(disk(maps, label_maps=False))[0]


def test_meta_info_fields_round_trip_and_old_lines_read_as_before(maps, tmp_path):
    listed = read_pair_list(str(maps / 'meta_info.txt'))
    assert listed == [(n, None, 'rain', str(maps / 'labelmap' / f'{n}.png')) for n in NAMES]
    assert read_lmdb_label_maps(str(maps / 'lmdb' / 'lq.lmdb'), 'x') == dict.fromkeys(
        NAMES, str(maps / 'lmdb' / 'labelmap.lmdb')
    )
    lines = tmp_path / 'lines.txt'
    lines.write_text('a.png label=haze\nb.png c.png\nd.png labelmap=m/d.png\n')
    assert read_pair_list(str(lines)) == [
        ('a', None, 'haze', None),
        ('b', 'c', None, None),
        ('d', None, None, str(tmp_path / 'm' / 'd.png')),
    ]
    lines.write_text('a.png labelmap=x.png labelmap=y.png\n')
    with pytest.raises(DataError, match='line 1 has 2 labelmap= fields'):
        read_pair_list(str(lines))


def test_pairs_without_a_map_are_filled_with_their_label_index(maps, tmp_path):
    plain = tmp_path / 'plain'
    for side in ('lq', 'gt'):
        (plain / side).mkdir(parents=True)
        cv2.imwrite(str(plain / side / 'p.png'), np.zeros((*SIZE, 3), np.uint8))
    regions = {key: value for key, value in disk(maps).items() if key not in ('name', 'phase')}
    sets = [{'dataroot_lq': str(plain / 'lq'), 'dataroot_gt': str(plain / 'gt'), 'label': 'haze'}, regions]
    mixed = build_dataset({'name': 'mix', 'type': 'MixedPairedDataset', 'phase': 'train', 'gt_size': 16, 'sets': sets})
    filled = mixed[0]['label_map']
    assert torch.equal(filled, torch.full((16, 16), degradations.label_indices()['haze']))
    batch = next(iter(DataLoader(mixed, batch_size=4)))
    assert batch['label_map'].shape == (4, 16, 16) and batch['label'] == ['haze', 'rain', 'rain', 'rain']
    alone = build_dataset({**sets[0], 'name': 'alone', 'type': 'LLIEPairedDataset', 'phase': 'val', 'label_maps': True})
    assert torch.equal(alone[0]['label_map'], torch.full(SIZE, 2))
    with pytest.raises(DataError, match=r"label 'snow' has no index in the degradation table"):
        build_dataset({**sets[0], 'label': 'snow', 'name': 'x', 'type': 'LLIEPairedDataset', 'label_maps': True})
    with pytest.raises(DataError, match=r'1 pair\(s\) with neither a label map \(labelmap=\) nor a label.*: p$'):
        build_dataset({**sets[0], 'label': None, 'name': 'x', 'type': 'LLIEPairedDataset', 'label_maps': True})
    with pytest.raises(ValueError, match="label_maps: expected true or false, got 'yes'"):
        build_dataset(disk(maps, label_maps='yes'))


def one_line_error(kind, build):
    with pytest.raises(kind) as info:
        build()
    message = str(info.value)
    assert '\n' not in message and 'Error:' not in message
    return message


def test_missing_or_wrongly_sized_map_is_one_error_naming_the_file(maps):
    (maps / 'labelmap' / 'b.png').unlink()
    message = one_line_error(MissingDataError, lambda: build_dataset(disk(maps)))
    assert str(maps / 'labelmap' / 'b.png') in message and 'label map of b not found' in message
    cv2.imwrite(str(maps / 'labelmap' / 'b.png'), np.zeros((10, 12), np.uint8))
    message = one_line_error(DataError, lambda: build_dataset(disk(maps)))
    assert f'{maps / "labelmap" / "b.png"}: label map of size 10x12, its pair b is 24x32' in message


def test_lmdb_map_without_the_key_is_named(maps):
    (maps / 'lmdb' / 'labelmap.lmdb' / 'meta_info.txt').write_text('a.raw (24,32,1) uint8\n')
    message = one_line_error(DataError, lambda: build_dataset(lmdb(maps)))
    assert f'{maps / "lmdb" / "labelmap.lmdb"}: no label map under key b' in message


@pytest.mark.parametrize(
    'bad, needle',
    [
        (np.full((*SIZE, 3), 1, np.uint8), 'a label map is a one-channel 8-bit image, got uint8 (24, 32, 3)'),
        (np.full(SIZE, 9, np.uint8), 'label map value 9 is no degradation'),
    ],
)
def test_map_found_bad_when_read_names_the_file(maps, bad, needle):
    dataset = build_dataset(disk(maps))
    cv2.imwrite(str(maps / 'labelmap' / 'a.png'), bad)
    message = one_line_error(DataError, lambda: dataset[0])
    assert str(maps / 'labelmap' / 'a.png') in message and needle in message
