"""Whole ``basicsr train`` runs of GMMoEModel (tiny network, CPU): torchrun with two ranks, kill and resume."""

import subprocess
import sys
import time

import pytest

from helpers import assert_ranks_match_saved, run_basicsr, tiny_gmmoe_options, train_two_ranks, write_pairs, write_yaml

pytestmark = pytest.mark.slow  # whole training runs in subprocesses


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


def last_log(exp):
    return max(exp.glob('train_*.log'), key=lambda p: p.stat().st_mtime).read_text()


def test_partial_last_batch_still_reaches_total_iter(tmp_path, plugin_env):
    # 6 pairs at batch 4: BasicSR plans 2 iterations per epoch but its loader dropped the partial batch,
    # so this run used to stop at iteration 4.
    data = write_pairs(tmp_path / 'data', n=6)
    options = tiny_gmmoe_options(data, 'partial', total_iter=6, checkpoint_freq=4)
    options['datasets']['train']['batch_size_per_gpu'] = 4
    done = run_basicsr(['train', '-opt', str(write_yaml(tmp_path / 'run.yml', options))], tmp_path, plugin_env)
    assert done.returncode == 0, done.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'partial'
    log = last_log(exp)
    assert 'iter:       6,' in log and 'iter:       7,' not in log
    models = {p.name for p in (exp / 'models').iterdir()}
    assert models == {'net_g_4.pth', 'net_g_6.pth', 'net_g_latest.pth'}, models


def test_torchrun_two_ranks_reach_total_iter_with_identical_weights(tmp_path, plugin_env):
    # The one two-rank run of the suite (gloo on CPU, the compat patches for init_dist and DDP on the CPU).
    # 6 pairs over 2 ranks at batch 2: 3 samples per rank, a partial batch each epoch (used to end at 5 of 8).
    data = write_pairs(tmp_path / 'data', n=6)
    options = tiny_gmmoe_options(data, 'ddp8', total_iter=8, checkpoint_freq=3, val_freq=4)
    _, ranks = train_two_ranks(write_yaml(tmp_path / 'ddp.yml', options), tmp_path, plugin_env)
    exp = tmp_path / 'experiments' / 'ddp8'
    log = last_log(exp)
    assert 'world_size: 2' in log and 'dist: True' in log and 'GMMoEModel' in log
    assert 'Gate weights on tiny_val' in log
    assert 'iter:       8,' in log and 'iter:       9,' not in log
    assert {p.name for p in (exp / 'models').iterdir()} == {
        'net_g_3.pth',
        'net_g_6.pth',
        'net_g_8.pth',
        'net_g_latest.pth',
    }
    # what BasicSR saved (rank 0 only) is what both ranks hold after the last step
    assert_ranks_match_saved(ranks, exp / 'models' / 'net_g_8.pth')
    assert_ranks_match_saved(ranks, exp / 'models' / 'net_g_latest.pth')


def test_dataset_smaller_than_a_batch_is_an_error(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data', n=3)
    options = tiny_gmmoe_options(data, 'small', total_iter=2, checkpoint_freq=1)
    options['datasets']['train']['batch_size_per_gpu'] = 4
    done = run_basicsr(['train', '-opt', str(write_yaml(tmp_path / 'run.yml', options))], tmp_path, plugin_env)
    assert done.returncode == 2
    assert '3 training sample(s)' in done.stderr and 'batch_size_per_gpu: 4' in done.stderr
    assert not list((tmp_path / 'experiments' / 'small' / 'models').iterdir())
