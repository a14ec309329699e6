"""Whole ``basicsr train`` runs of GMMoEModel (tiny network, CPU): torchrun with two ranks, kill and resume."""
import subprocess
import sys
import time

from conftest import assert_ranks_match_saved, run_basicsr, train_two_ranks, write_pairs, write_yaml


def tiny_gmmoe_options(data, name, total_iter, checkpoint_freq, val_freq=1000):
    """Train options: GMMoEModel, a width-4 GM-MoE, LLIEPairedDataset, PSNR loss, AdamW, clipping."""
    pairs = {'type': 'LLIEPairedDataset', 'dataroot_lq': str(data / 'lq'), 'dataroot_gt': str(data / 'gt'),
             'io_backend': {'type': 'disk'}}
    return {
        'name': name, 'model_type': 'GMMoEModel', 'num_gpu': 0, 'manual_seed': 10,
        'datasets': {
            'train': dict(pairs, name='tiny_train', gt_size=32, num_worker_per_gpu=0, batch_size_per_gpu=2),
            'val': dict(pairs, name='tiny_val'),
        },
        'network_g': {'type': 'GMMoE', 'width': 4, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1,
                      'dec_blk_nums': [1, 1]},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.9], 'weight_decay': 0},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'eta_min': 1e-7},
                  'total_iter': total_iter, 'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
                  'grad_clip': {'max_norm': 1.0}},
        'val': {'val_freq': val_freq, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0},
                            'psnr_gt_mean': {'type': 'calculate_psnr_gt_mean', 'crop_border': 0}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': checkpoint_freq, 'use_tb_logger': False},
    }


def test_torchrun_two_ranks_hold_identical_weights(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data', n=8)
    opt = write_yaml(tmp_path / 'ddp.yml', tiny_gmmoe_options(data, 'ddp', total_iter=4, checkpoint_freq=100,
                                                               val_freq=2))
    _, ranks = train_two_ranks(opt, tmp_path, plugin_env)
    exp = tmp_path / 'experiments' / 'ddp'
    log = max(exp.glob('train_ddp_*.log')).read_text()
    assert 'world_size: 2' in log and 'GMMoEModel' in log and 'Gate weights on tiny_val' in log
    assert_ranks_match_saved(ranks, exp / 'models' / 'net_g_latest.pth')


def test_killed_run_resumes_to_the_planned_iteration(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data', n=4)
    opt = write_yaml(tmp_path / 'run.yml', tiny_gmmoe_options(data, 'killed', total_iter=12, checkpoint_freq=3))
    cmd = [sys.executable, '-m', 'gmmoe_arch.cli', 'train', '-opt', str(opt)]
    exp = tmp_path / 'experiments' / 'killed'
    run = subprocess.Popen(cmd, cwd=tmp_path, env=plugin_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # kill once iteration 4 is logged: 3.state was written completely, the next save is at 6
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            logs = list(exp.glob('train_killed_*.log'))
            if logs and 'iter:       4,' in logs[0].read_text():
                run.kill()
                break
            time.sleep(0.005)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == -9, f'the run was not killed mid-way: {run.returncode} {run.stderr.read()[-2000:]!r}'
    assert not (exp / 'models' / 'net_g_latest.pth').exists()
    assert not (exp / 'models' / 'net_g_12.pth').exists()

    done = run_basicsr(['train', '-opt', str(opt), '--auto_resume'], tmp_path, plugin_env)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = max(exp.glob('train_killed_*.log'), key=lambda p: p.stat().st_mtime).read_text()
    start = int(resumed.split('Resuming training from epoch: ')[1].split('iter: ')[1].split('.')[0])
    assert start in (3, 6, 9)
    assert f'iter:{start + 1:8d},' in resumed and 'iter:       1,' not in resumed
    assert 'iter:      12,' in resumed and 'iter:      13,' not in resumed
    assert (exp / 'models' / 'net_g_12.pth').is_file() and (exp / 'training_states' / '12.state').is_file()
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
