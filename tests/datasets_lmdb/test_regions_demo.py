"""datasets_lmdb.demo.build_regions: regions sets with label maps from the demo's training photographs and, held
out, from the photographs no demo trains on."""

import json
import os

import numpy as np
from basicsr.data import build_dataset

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from datasets_lmdb import demo


def test_regions_sets_hold_out_the_validation_photos_and_carry_label_maps(tmp_path, capsys):
    out = tmp_path / 'regions'
    record = demo.build_regions(str(out), seed=2, per_image=1, test_per_image=2, train_side=32, test_side=24)
    assert sum(record['counts']['train'].values()) == len(demo.TRAIN_PHOTOS)
    assert sum(record['counts']['test'].values()) == 2 * len(demo.VAL_PHOTOS)
    photos = {}
    for split in ('train', 'test'):
        with open(out / split / 'synth.json', encoding='utf-8') as f:
            photos[split] = {pair['image'] for pair in json.load(f)['pairs']}
        packed = out / split / 'lmdb'
        dataset = build_dataset(
            {
                'name': split, 'type': 'LLIEPairedDataset', 'phase': 'val', 'io_backend': {'type': 'lmdb'},
                'dataroot_lq': str(packed / 'lq.lmdb'), 'dataroot_gt': str(packed / 'gt.lmdb'),
            }
        )  # fmt: skip
        maps = [dataset[i]['label_map'] for i in range(len(dataset))]
        assert all(len(np.unique(m.numpy())) >= 2 for m in maps)
    assert photos == {'train': set(demo.TRAIN_PHOTOS), 'test': set(demo.VAL_PHOTOS)}
    before = os.stat(out / 'test' / 'synth.json').st_mtime_ns
    assert demo.build_regions(str(out), seed=2, per_image=1, test_per_image=2, train_side=32, test_side=24) == record
    assert os.stat(out / 'test' / 'synth.json').st_mtime_ns == before  # built once per settings
