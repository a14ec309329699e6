"""gmmoe_arch.compat: basicsr 1.4.2 on current torch/torchvision, on CPU (the two-rank gloo run is in
tests/models/test_training_runs.py)."""

import sys

import pytest
import torch

from gmmoe_arch import compat

from helpers import run_basicsr, tiny_train_options, write_pairs, write_yaml


def test_patches_applied_and_idempotent():
    from basicsr.data import degradations  # failed to import before the patch
    from torchvision.transforms import functional

    assert degradations.rgb_to_grayscale is functional.rgb_to_grayscale
    assert {'functional_tensor', 'load_resume_state', 'init_dist', 'model_to_device', 'local-rank'} <= set(
        compat.APPLIED
    )
    assert compat.apply() == compat.APPLIED


def test_functional_tensor_stand_in_lives_only_within_the_block():
    """Afterwards torchvision is as installed: other programs' ``except ImportError`` fallbacks still run."""
    name = 'torchvision.transforms.functional_tensor'
    with compat._patch_functional_tensor() as supplied:
        from torchvision.transforms.functional_tensor import rgb_to_grayscale
    assert supplied and name not in sys.modules and callable(rgb_to_grayscale)
    with pytest.raises(ModuleNotFoundError, match=name):
        import torchvision.transforms.functional_tensor  # noqa: F401


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


def test_jpeg_quality_patch_where_opencv_refuses_a_float_quality():
    import cv2
    import numpy as np
    from basicsr.data import degradations

    refuses = compat.jpeg_rejects_float_quality()
    assert ('jpeg quality int' in compat.APPLIED) == refuses
    if refuses:
        assert degradations.add_jpg_compression is compat.add_jpg_compression
        with pytest.raises(cv2.error):  # the symptom: upstream's call with a float quality
            cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8), [int(cv2.IMWRITE_JPEG_QUALITY), 80.5])
    img = np.random.default_rng(0).random((24, 20, 3)).astype(np.float32)
    # what upstream computes where opencv takes the quality (an int): the float image, encoded by opencv itself
    _, encoded = cv2.imencode('.jpg', np.clip(img, 0, 1) * 255.0, [int(cv2.IMWRITE_JPEG_QUALITY), 80])
    expected = np.float32(cv2.imdecode(encoded, 1)) / 255.0
    out = degradations.add_jpg_compression(img, 80.7)
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    smooth = np.repeat(np.tile(np.linspace(0, 1, 20, dtype=np.float32), (24, 1))[..., None], 3, axis=2)
    compressed = degradations.random_add_jpg_compression(smooth, (30, 95))
    assert compressed.shape == smooth.shape and 0 < np.abs(compressed - smooth).mean() < 0.05


def test_basicsr_degradations_run_on_current_libraries(tmp_path):
    """Every degradation Real-ESRGAN- and GFPGAN-style pipelines call, and ``RealESRGANDataset`` on two images."""
    import math

    import cv2
    import numpy as np
    from basicsr.data import degradations as D
    from basicsr.data.realesrgan_dataset import RealESRGANDataset
    from basicsr.utils.diffjpeg import DiffJPEG
    from basicsr.utils.img_process_util import USMSharp, filter2D, usm_sharp

    np.random.seed(0)
    torch.manual_seed(0)
    img = np.random.rand(32, 32, 3).astype(np.float32)
    batch = torch.rand(2, 3, 32, 32)
    kinds = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']
    kernel = D.random_mixed_kernels(kinds, [1 / 6] * 6, 21, (0.2, 3), (0.2, 3), (-math.pi, math.pi), (0.5, 4), (1, 2))
    assert kernel.shape == (21, 21) and abs(kernel.sum() - 1) < 1e-4
    sinc = D.circular_lowpass_kernel(np.pi / 3, 13, pad_to=21)
    assert sinc.shape == (21, 21)
    for out in (
        D.random_add_gaussian_noise(img, (1, 30), gray_prob=0.5),
        D.random_add_poisson_noise(img, (0.05, 3), gray_prob=0.5),
        D.random_add_jpg_compression(img, (30, 95)),
        usm_sharp(img),
    ):
        assert out.shape == img.shape and np.isfinite(out).all()
    kernels = torch.from_numpy(np.stack([kernel, sinc])).float()
    for out in (
        D.random_add_gaussian_noise_pt(batch, (1, 30), gray_prob=0.5),
        D.random_add_poisson_noise_pt(batch, (0.05, 3), gray_prob=0.5),
        filter2D(batch, kernels),
        USMSharp()(batch),
        DiffJPEG(differentiable=False)(batch, quality=torch.tensor([30.0, 80.0])),
    ):
        assert out.shape == batch.shape and torch.isfinite(out).all()
    (tmp_path / 'gt').mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / 'gt' / f'{i}.png'), (np.random.rand(400, 400, 3) * 255).astype(np.uint8))
    (tmp_path / 'meta.txt').write_text('0.png\n1.png\n')
    blur = dict(kernel_list=kinds, kernel_prob=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03], betag_range=[0.5, 4])
    opt = dict(
        dataroot_gt=str(tmp_path / 'gt'),
        meta_info=str(tmp_path / 'meta.txt'),
        io_backend=dict(type='disk'),
        blur_kernel_size=21,
        sinc_prob=1.0,
        blur_sigma=[0.2, 3],
        betap_range=[1, 2],
        blur_kernel_size2=21,
        sinc_prob2=1.0,
        blur_sigma2=[0.2, 1.5],
        betap_range2=[1, 2],
        final_sinc_prob=1.0,
        use_hflip=True,
        use_rot=False,
        **blur,
        **{k + '2': v for k, v in blur.items()},
    )
    sample = RealESRGANDataset(opt)[1]
    assert sample['gt'].shape == (3, 400, 400) and sample['kernel1'].shape == sample['sinc_kernel'].shape == (21, 21)


def eta_logged(current_iter, total_iter, seconds_per_iter=4.0):
    """The ``eta: ...`` of the line BasicSR's MessageLogger logs at ``current_iter`` of ``total_iter``."""
    import time
    import types

    from basicsr.utils import MessageLogger

    opt = {'name': 'eta', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': total_iter}}
    msg = MessageLogger(opt, start_iter=0)
    msg.start_time = time.time() - seconds_per_iter * (current_iter + 1)
    lines = []
    msg.logger = types.SimpleNamespace(info=lines.append)
    msg({'epoch': 0, 'iter': current_iter, 'lrs': [1e-3], 'time': 1.0, 'data_time': 0.1, 'l_pix': 0.5})
    assert msg.max_iters == total_iter
    return lines[0].split('eta: ')[1].split(',')[0]


def test_eta_of_the_last_iteration_is_zero_not_negative():
    """Upstream counts ``total - iter - 1`` iterations left: ``-1 day, 23:59:56`` at the last one (4 s each)."""
    assert 'message logger eta' in compat.APPLIED
    assert eta_logged(current_iter=10, total_iter=10) == '0:00:00'
    assert eta_logged(current_iter=12, total_iter=10) == '0:00:00'  # resumed past a lowered total_iter
    assert eta_logged(current_iter=5, total_iter=10) == '0:00:20'  # 5 left at 4 s


def test_eta_patch_is_applied_once():
    from basicsr.utils import logger

    assert not compat._eta_goes_negative(logger.MessageLogger)
    assert compat._eta_goes_negative(type('Upstream', (), {'__call__': logger.MessageLogger.__call__.__wrapped__}))
