"""Degradation labels in the data: meta_info label= fields (disk and LMDB), the label option, MixedPairedDataset."""

import shutil

import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from torch.utils.data import DataLoader

from datasets_lmdb import pack_pairs, verify
from datasets_lmdb.synth import synthesize_images
from gmmoe_arch.data.image_io import DataError, MissingDataError

from helpers import write_pairs

SIZE = (24, 32)


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
    """A synthesized ``mixed`` set of 6 pairs (labels lowlight, rain, haze, ...), with LMDBs in both forms."""
    root = tmp_path_factory.mktemp('labels')
    rng = np.random.default_rng(0)
    images = [(f'im{i}', rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)) for i in range(6)]
    record = synthesize_images(images, str(root / 'mixed'), 'mixed', lmdb=True, progress=False)
    synthesize_images(images[:3], str(root / 'png'), 'mixed', lmdb=True, form='png', progress=False)
    return root, {p['name']: p['label'] for p in record['pairs']}


def options(lq, gt, backend='disk', **extra):
    return dict(
        name='labels', type='LLIEPairedDataset', phase='val', dataroot_lq=str(lq), dataroot_gt=str(gt),
        io_backend={'type': backend}, **extra,
    )  # fmt: skip


def disk(root, **extra):
    return options(root / 'lq', root / 'gt', meta_info_file=str(root / 'meta_info.txt'), **extra)


def lmdb(root, **extra):
    return options(root / 'lmdb' / 'lq.lmdb', root / 'lmdb' / 'gt.lmdb', 'lmdb', **extra)


def labels_of(dataset):
    return {sample['lq_path'].rsplit('/', 1)[-1].split('.')[0]: sample['label'] for sample in dataset}


def test_labels_round_trip_through_disk_and_lmdb(mixed):
    root, expected = mixed
    assert set(expected.values()) == {'lowlight', 'rain', 'haze'}
    assert labels_of(build_dataset(disk(root / 'mixed'))) == expected
    assert labels_of(build_dataset(lmdb(root / 'mixed'))) == expected
    batch = next(iter(DataLoader(build_dataset(lmdb(root / 'mixed')), batch_size=4)))
    assert batch['label'] == [expected[key] for key in batch['lq_path']]  # a list of str per batch


def test_label_option_labels_every_pair_and_wins(mixed, tmp_path):
    root, _ = mixed
    assert {s['label'] for s in build_dataset(lmdb(root / 'mixed', label='rain'))} == {'rain'}
    plain = write_pairs(tmp_path / 'plain', n=2)
    assert [s['label'] for s in build_dataset(options(plain / 'lq', plain / 'gt', label='haze'))] == ['haze'] * 2


def test_unlabelled_datasets_have_no_label_key(mixed, tmp_path):
    plain = write_pairs(tmp_path / 'plain', n=2)
    assert 'label' not in build_dataset(options(plain / 'lq', plain / 'gt'))[0]
    pack_pairs(str(plain / 'lq'), str(plain / 'gt'), str(tmp_path / 'db'), progress=False, workers=1)
    assert 'label' not in build_dataset(options(tmp_path / 'db' / 'lq.lmdb', tmp_path / 'db' / 'gt.lmdb', 'lmdb'))[0]


def test_basicsr_readers_and_verify_accept_labelled_meta_info(mixed, tmp_path):
    root, expected = mixed
    checked, problems = verify(str(root / 'mixed' / 'lmdb'), progress=False)
    assert not problems and set(checked.values()) == {6}
    common = dict(name='b', type='PairedImageDataset', phase='val', scale=1, filename_tmpl='{}')
    on_disk = build_dataset(
        dict(common, dataroot_lq=str(root / 'png' / 'lq'), dataroot_gt=str(root / 'png' / 'gt'),
             meta_info_file=str(root / 'png' / 'meta_info.txt'), io_backend={'type': 'disk'})
    )  # fmt: skip
    copy = shutil.copytree(root / 'png' / 'lmdb', tmp_path / 'copy')  # py-lmdb opens a database once per process
    in_lmdb = build_dataset(
        dict(common, dataroot_lq=str(copy / 'lq.lmdb'), dataroot_gt=str(copy / 'gt.lmdb'), io_backend={'type': 'lmdb'})
    )
    ours = build_dataset(lmdb(root / 'png'))
    assert len(on_disk) == len(in_lmdb) == len(ours) == 3
    for i in range(3):
        assert torch.equal(in_lmdb[i]['lq'], ours[i]['lq']) and torch.equal(on_disk[i]['gt'], ours[i]['gt'])


def test_partial_and_bad_labels_are_data_errors(tmp_path):
    plain = write_pairs(tmp_path / 'plain', n=3)
    listing = tmp_path / 'list.txt'
    listing.write_text('000.png label=rain\n001.png\n002.png label=haze\n')
    with pytest.raises(DataError, match=r'list.txt: 1 pair\(s\) without a label: 001'):
        build_dataset(options(plain / 'lq', plain / 'gt', meta_info_file=str(listing)))
    listing.write_text('000.png label=rain\n001.png label=r@in\n002.png label=haze\n')
    with pytest.raises(DataError, match='line 2: bad label'):
        build_dataset(options(plain / 'lq', plain / 'gt', meta_info_file=str(listing)))
    with pytest.raises(DataError, match='label: bad label'):
        build_dataset(options(plain / 'lq', plain / 'gt', label='two words'))


def mixed_options(sets, **shared):
    return dict(name='allinone', type='MixedPairedDataset', phase='train', sets=sets, **shared)


def test_mixed_dataset_concatenates_repeats_and_labels(mixed, tmp_path):
    root, expected = mixed
    rain = write_pairs(tmp_path / 'rain', n=2, size=SIZE)
    sets = [
        {'dataroot_lq': str(root / 'mixed' / 'lmdb' / 'lq.lmdb'),
         'dataroot_gt': str(root / 'mixed' / 'lmdb' / 'gt.lmdb'), 'io_backend': {'type': 'lmdb'}},
        {'dataroot_lq': str(rain / 'lq'), 'dataroot_gt': str(rain / 'gt'), 'label': 'rain', 'repeat': 3,
         'gt_size': 8},
    ]  # fmt: skip
    dataset = build_dataset(mixed_options(sets, gt_size=16, use_hflip=True))
    assert len(dataset) == 6 + 2 * 3
    assert dataset.labels == [expected[f'im{i}'] for i in range(6)] + ['rain'] * 6
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s['label'] for s in samples] == dataset.labels
    assert samples[0]['lq'].shape == (3, 16, 16) and samples[6]['lq'].shape == (3, 8, 8)  # inherited, overridden
    assert [s['lq_path'] for s in samples[6:]] == [str(rain / 'lq' / f'{i:03d}.png') for i in (0, 1) * 3]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


@pytest.mark.parametrize(
    'sets, error, message',
    [
        (None, ValueError, r'^datasets\.train\.sets: expected a non-empty list'),
        ([{'label': 'rain'}], ValueError, r'^datasets\.train\.sets\[0\]: missing option\(s\): dataroot_lq'),
        ([{'repeat': 0}], ValueError, r'^datasets\.train\.sets\[0\]\.repeat: expected an integer >= 1'),
        ([{'type': 'PairedImageDataset'}], ValueError, r'^datasets\.train\.sets\[0\]\.type: only LLIEPairedDataset'),
        ([{}, {}], ValueError, r'^datasets\.train\.sets\[0\]\.label: the set is unlabelled'),
        (
            [{'label': 'rain'}, {'dataroot_lq': 'nowhere'}],
            MissingDataError,
            r'^datasets\.train\.sets\[1\]\.dataroot_lq',
        ),
    ],
)
def test_mixed_dataset_errors_name_the_set_and_key(tmp_path, sets, error, message):
    plain = write_pairs(tmp_path / 'plain', n=2)
    base = {'dataroot_lq': str(plain / 'lq'), 'dataroot_gt': str(plain / 'gt')}
    if sets is not None and sets != [{'label': 'rain'}]:
        sets = [dict(base, **entry) for entry in sets]
    with pytest.raises(error, match=message):
        build_dataset(mixed_options(sets))
