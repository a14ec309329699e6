"""gmmoe_arch.compat: basicsr 1.4.2 on current torch/torchvision, on CPU (the two-rank gloo run is in
tests/models/test_training_runs.py)."""

import sys

import pytest
import torch

from gmmoe_arch import compat

from helpers import run_basicsr, tiny_train_options, write_pairs, write_yaml


def test_patches_applied_and_idempotent():
    import torchvision.transforms.functional_tensor as ft
    from basicsr.data import degradations  # noqa: F401  (failed to import before the patch)

    assert callable(ft.rgb_to_grayscale)
    assert {'functional_tensor', 'load_resume_state', 'init_dist', 'model_to_device', 'local-rank'} <= set(
        compat.APPLIED
    )
    assert compat.apply() == compat.APPLIED
    # the shim is in place now, so the check that decides whether to patch sees a working torchvision
    assert compat._patch_functional_tensor() is False


def test_patched_functions_are_the_ones_basicsr_calls():
    import basicsr.test
    import basicsr.train
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import options

    assert basicsr.train.load_resume_state is compat.load_resume_state
    assert options.init_dist is compat.init_dist
    assert BaseModel.model_to_device is compat.model_to_device
    assert basicsr.train.parse_options.__wrapped__ is basicsr.test.parse_options.__wrapped__


def test_resume_state_with_counter_loads_on_cpu(tmp_path):
    from basicsr.models.lr_scheduler import MultiStepRestartLR

    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    scheduler = MultiStepRestartLR(optimizer, milestones=[10, 20])
    net(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler.step()
    states = tmp_path / 'experiments' / 'x' / 'training_states'
    states.mkdir(parents=True)
    models = tmp_path / 'models'
    models.mkdir()
    for it in (2, 10, 4, 12):
        torch.save(
            {'epoch': 0, 'iter': it, 'optimizers': [optimizer.state_dict()], 'schedulers': [scheduler.state_dict()]},
            states / f'{it}.state',
        )
        torch.save({'params': net.state_dict()}, models / f'net_g_{it}.pth')
    (models / 'net_g_12.pth').unlink()  # a state whose network checkpoint is missing is no pair
    opt = {
        'name': 'x',
        'auto_resume': True,
        'network_g': {},
        'path': {'training_states': str(states), 'models': str(tmp_path / 'models'), 'resume_state': None},
    }
    state = compat.load_resume_state(opt)
    assert state['iter'] == 10 and opt['path']['resume_state'].endswith('10.state')
    assert state['schedulers'][0]['milestones'] == scheduler.state_dict()['milestones']
    assert state['optimizers'][0]['state'][0]['exp_avg'].device.type == 'cpu'
    assert opt['path']['pretrain_network_g'].endswith('net_g_10.pth')

    (states / '12.state').write_bytes((states / '10.state').read_bytes()[:100])  # killed while saving
    opt['path']['resume_state'] = None
    state = compat.load_resume_state(opt)
    assert state['iter'] == 10 and opt['path']['resume_state'].endswith('10.state')

    opt = {
        'name': 'x',
        'auto_resume': False,
        'network_g': {},
        'path': {'resume_state': str(states / '4.state'), 'models': str(tmp_path / 'models')},
    }
    assert compat.load_resume_state(opt)['iter'] == 4
    opt['path']['resume_state'] = str(states / 'missing.state')
    with pytest.raises(FileNotFoundError, match='missing.state'):
        compat.load_resume_state(opt)
    opt['path']['resume_state'] = str(states / '12.state')
    with pytest.raises(ValueError, match='12.state'):
        compat.load_resume_state(opt)


def test_upstream_parse_options_accepts_local_rank_dash(tmp_path, monkeypatch):
    from basicsr.utils.options import parse_options

    data = write_pairs(tmp_path / 'data', n=1)
    opt = tiny_train_options(data)
    opt['datasets'] = {'test_1': opt['datasets']['val']}
    path = write_yaml(tmp_path / 't.yml', opt)
    monkeypatch.setattr(sys, 'argv', ['test.py', '-opt', str(path), '--local-rank=1'])
    parsed, args = parse_options(str(tmp_path), is_train=False)
    assert args.local_rank == 1 and parsed['dist'] is False


@pytest.mark.slow
def test_auto_resume_on_cpu_continues_to_the_planned_iteration(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data')
    opt = write_yaml(tmp_path / 'train.yml', tiny_train_options(data, name='resume', total_iter=4))
    assert run_basicsr(['train', '-opt', str(opt)], tmp_path, plugin_env).returncode == 0
    done = run_basicsr(
        ['train', '-opt', str(opt), '--auto_resume', '--force_yml', 'train:total_iter=6'], tmp_path, plugin_env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'resume'
    log = max(exp.glob('train_resume_*.log')).read_text()
    assert 'Resuming training from epoch' in log and 'iter: 4.' in log
    assert (exp / 'models' / 'net_g_6.pth').is_file() and (exp / 'training_states' / '6.state').is_file()
