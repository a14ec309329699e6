"""Every YAML in options/ parses, passes the ``basicsr`` command's checks, and builds its network
(on the meta device: the released preset has 690M parameters) and its datasets on stand-in trees."""

import copy
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.losses import build_loss
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from datasets_lmdb import pack_pairs
from gmmoe_arch.cli import check_option_file
from gmmoe_arch.data.pairing import make_rule

OPTIONS = Path(__file__).resolve().parents[2] / 'options'
FILES = sorted(OPTIONS.glob('*.yml'))
REFERENCE_KEYS = {'paper': 'keys_paper_w24.txt', 'released': 'keys_released_w48.txt'}
# stems to try against a pair rule's lq pattern, one per naming scheme the option files use
CANDIDATE_STEMS = ('img001', 'low00001', 'rain-001', '1400_1_0.9')
BENCHMARKS = ('lol', 'lolv2_real', 'lolv2_syn', 'lsrw_huawei', 'lsrw_nikon')
#: deraining, dehazing and all-in-one files: one train and one test file each
OTHER_TASKS = ('rain100l', 'rain100h', 'reside_its', 'reside_ots', 'allinone', 'allinone_demo')


def reference_shapes(path):
    """``{key: shape}`` of a reference key list, without the ``conv6`` weights the forward never uses."""
    shapes = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith('#'):
            key, shape = line.split('\t')
            if '.conv6.' not in key:
                shapes[key] = tuple(int(v) for v in shape.strip('()').split(',') if v.strip())
    return shapes


def load(path):
    with open(path, encoding='utf-8') as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def stand_in_pair(dataset_opt, folder, size):
    """Write one lq/gt image pair named by the dataset's pair rule into ``folder/{lq,gt}``; return the dirs."""
    rule = make_rule(dataset_opt.get('pair_rule', 'identical'))
    lq_stem = next(s for s in CANDIDATE_STEMS if rule(s) is not None)
    dirs = folder / 'lq', folder / 'gt'
    rng = np.random.default_rng(0)
    for d, s in zip(dirs, (lq_stem, rule(lq_stem))):
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f'{s}.png'), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return dirs


def make_stand_in(dataset_opt, size, scratch):
    """Create the folders (or LMDBs) a dataset option points at, relative to the current directory."""
    lq_root, gt_root = dataset_opt['dataroot_lq'], dataset_opt['dataroot_gt']
    if dataset_opt['io_backend']['type'] == 'lmdb':
        out = os.path.dirname(lq_root)
        assert (lq_root, gt_root) == (os.path.join(out, 'lq.lmdb'), os.path.join(out, 'gt.lmdb')), (
            'LMDB option files follow the datasets_lmdb layout <out>/{lq,gt}.lmdb'
        )
        if not os.path.isdir(lq_root):
            pack_pairs(*stand_in_pair(dataset_opt, scratch, size), out, progress=False, workers=1)
        return
    lq_dir, gt_dir = stand_in_pair(dataset_opt, scratch, size)
    for src, dst in ((lq_dir, lq_root), (gt_dir, gt_root)):
        os.makedirs(dst, exist_ok=True)
        for f in src.iterdir():
            os.replace(f, os.path.join(dst, f.name))


def test_every_benchmark_has_its_files():
    names = {p.name for p in FILES}
    for key in BENCHMARKS:
        for variant in ('', '_released'):
            assert {f'train_gmmoe_{key}{variant}.yml', f'test_gmmoe_{key}{variant}.yml'} <= names
        assert {f'train_gmmoe_{key}_lmdb.yml', f'test_gmmoe_{key}_lmdb.yml'} <= names
    for key in ('demo',) + OTHER_TASKS:
        assert {f'train_gmmoe_{key}.yml', f'test_gmmoe_{key}.yml'} <= names


@pytest.mark.parametrize('path', FILES, ids=[p.name for p in FILES])
def test_option_file_builds(path, tmp_path, monkeypatch, reference_dir):
    phase = 'train' if path.name.startswith('train_') else 'test'
    opt = check_option_file(str(path), phase)
    assert MODEL_REGISTRY.get(opt['model_type'])
    assert opt['num_gpu'] == 'auto'
    for metric in opt['val']['metrics'].values():
        assert METRIC_REGISTRY.get(metric['type'])
        released = metric['type'].endswith('_released')  # the released test code's protocol, beside ours
        assert metric.get('crop_border') == (4 if released else 0) and not metric.get('test_y_channel')

    net_opt = copy.deepcopy(opt['network_g'])
    with torch.device('meta'):
        net = build_network(net_opt)
    if 'preset' in opt['network_g']:
        assert set(opt['network_g']) == {'type', 'preset'}
        expected = reference_shapes(reference_dir / REFERENCE_KEYS[opt['network_g']['preset']])
        assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected

    if phase == 'train':
        train = opt['train']
        assert build_loss(train['pixel_opt'])
        sched = train['scheduler']
        assert sched['type'] == 'CosineAnnealingRestartLR'
        assert len(sched['periods']) == len(sched['restart_weights']) and sum(sched['periods']) >= train['total_iter']
        assert train['optim_g']['type'] == 'AdamW' and list(train['optim_g']['betas']) == [0.9, 0.9]

    monkeypatch.chdir(tmp_path)
    for name, dataset_opt in opt['datasets'].items():
        dataset_opt = dict(dataset_opt, phase=name.split('_')[0])
        size = dataset_opt.get('gt_size') or 32
        shared = {k: v for k, v in dataset_opt.items() if k != 'sets'}
        sets = [dict(shared, **entry) for entry in dataset_opt.get('sets', [dataset_opt])]
        for i, set_opt in enumerate(sets):
            assert not os.path.isabs(set_opt['dataroot_lq']) and set_opt['dataroot_lq'].startswith('datasets/')
            make_stand_in(set_opt, size, tmp_path / 'scratch' / name / str(i))
        dataset = build_dataset(dataset_opt)
        repeats = [set_opt.get('repeat', 1) for set_opt in sets]
        assert len(dataset) == sum(repeats)  # one stand-in pair per set
        for set_opt, start in zip(sets, np.cumsum([0] + repeats[:-1])):
            sample = dataset[int(start)]
            assert sample['lq'].shape == sample['gt'].shape == (3, size, size)
            assert sample.get('label') == set_opt.get('label')


@pytest.mark.parametrize('key', BENCHMARKS + ('demo',))
def test_test_files_load_what_training_writes(key):
    for variant in ('', '_released', '_lmdb') if key != 'demo' else ('',):
        train, test = (load(OPTIONS / f'{p}_gmmoe_{key}{variant}.yml') for p in ('train', 'test'))
        assert test['network_g'] == train['network_g']
        assert test['path']['pretrain_network_g'] == f'experiments/{train["name"]}/models/net_g_latest.pth'
        assert test['datasets']['test_1']['dataroot_lq'] == train['datasets']['val']['dataroot_lq']


def evaluation_sets(opt, prefix):
    """The ``dataroot_lq`` of each dataset whose key starts with ``prefix`` (``val``, ``test``), in order."""
    return [d['dataroot_lq'] for key, d in opt['datasets'].items() if key.split('_')[0] == prefix]


@pytest.mark.parametrize('key', OTHER_TASKS)
def test_other_tasks_test_what_they_validate_on(key):
    train, test = (load(OPTIONS / f'{p}_gmmoe_{key}.yml') for p in ('train', 'test'))
    assert test['network_g'] == train['network_g']
    assert test['path']['pretrain_network_g'] == f'experiments/{train["name"]}/models/net_g_latest.pth'
    assert evaluation_sets(test, 'test') == evaluation_sets(train, 'val')
    experts = train['network_g']['experts']
    assert experts[:3] == ['ColourExpert', 'DetailExpert', 'FeatureExpert'] and len(experts) > 3
    gate_opt = train['train'].get('gate_opt')
    if gate_opt:  # supervision maps every degradation the data carry to an expert the network has
        assert set(gate_opt['experts'].values()) <= set(experts)
        assert build_loss(dict(gate_opt))
