"""Deraining and dehazing presets: Rain100L/H and RESIDE trees (many hazy images per clear one) pack and read."""

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset

from datasets_lmdb import PRESETS, pack_preset
from datasets_lmdb.__main__ import main

SIZE = (24, 32)
NEW = ('rain100l', 'rain100h', 'reside_sots_indoor', 'reside_sots_outdoor', 'reside_its', 'reside_ots')

#: preset -> (lq names, gt names); several hazy images per clear one, lq and gt extensions may differ
TREES = {
    'rain100l': (['rain-001.png', 'rain-002.png'], ['norain-001.png', 'norain-002.png']),
    'reside_sots_outdoor': (
        ['0001_0.8_0.2.jpg', '0001_0.9_0.16.jpg', '0002_0.8_0.2.jpg', '0002_1_0.08.jpg'],
        ['0001.png', '0002.png'],
    ),
    'reside_its': (['1_1_0.90179.png', '1_2_0.7.png', '2_1_0.61.png'], ['1.png', '2.png']),
}

GT_STEM = {
    'rain100l': lambda key: 'no' + key,
    'reside_sots_outdoor': lambda key: key.split('_')[0],
    'reside_its': lambda key: key.split('_')[0],
}


def write_tree(root, preset, rng):
    """Every split of ``preset`` under ``root`` with the names of ``TREES``; returns the gt folder per split."""
    gt_dirs = {}
    for split, (lq_dir, gt_dir, _) in PRESETS[preset].items():
        for folder, names in zip((lq_dir, gt_dir), TREES[preset]):
            (root / folder).mkdir(parents=True)
            for name in names:
                assert cv2.imwrite(str(root / folder / name), rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
        gt_dirs[split] = root / gt_dir
    return gt_dirs


def test_presets_command_lists_the_new_trees(capsys):
    assert main(['presets']) == 0
    shown = capsys.readouterr().out
    for preset in NEW:
        assert f'{preset}:' in shown
    assert 'rain-(.*)->norain-\\1' in shown and '(\\d+)_.*->\\1' in shown


@pytest.mark.parametrize('preset', sorted(TREES))
def test_many_lq_per_gt_pack_and_read(tmp_path, preset):
    gt_dirs = write_tree(tmp_path / 'src', preset, np.random.default_rng(0))
    lq_names, gt_names = TREES[preset]
    counts = pack_preset(preset, str(tmp_path / 'src'), str(tmp_path / 'out'), workers=1, progress=False)
    assert counts == {split: len(lq_names) for split in PRESETS[preset]}
    split = sorted(gt_dirs)[-1]
    db = tmp_path / 'out' / split
    dataset = build_dataset(
        {'name': preset, 'type': 'LLIEPairedDataset', 'phase': 'val', 'dataroot_lq': str(db / 'lq.lmdb'),
         'dataroot_gt': str(db / 'gt.lmdb'), 'io_backend': {'type': 'lmdb'}}
    )  # fmt: skip
    assert [s['lq_path'] for s in dataset] == sorted(name.rsplit('.', 1)[0] for name in lq_names)
    for sample in dataset:
        gt_name = next(n for n in gt_names if n.split('.')[0] == GT_STEM[preset](sample['lq_path']))
        clean = cv2.cvtColor(cv2.imread(str(gt_dirs[split] / gt_name)), cv2.COLOR_BGR2RGB)
        assert torch.equal(sample['gt'], torch.from_numpy(clean.transpose(2, 0, 1).astype(np.float32) / 255))
