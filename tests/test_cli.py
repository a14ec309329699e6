"""The ``basicsr`` command: BasicSR's own pipelines with plug-ins, and clear errors for bad option files."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gmmoe_arch import cli
from gmmoe_arch.data.image_io import DataError

from helpers import run_basicsr as run
from helpers import tiny_train_options, write_pairs, write_yaml


@pytest.mark.slow
def test_train_then_test_with_basicsr_pipelines(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data')
    opt = write_yaml(tmp_path / 'train.yml', tiny_train_options(data))
    done = run(['train', '-opt', str(opt)], tmp_path, plugin_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'tinyplug' in done.stdout
    exp = tmp_path / 'experiments' / 'tiny'
    assert (exp / 'models' / 'net_g_4.pth').is_file() and (exp / 'training_states' / '4.state').is_file()
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    weights = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert set(weights) == {'body.0.weight', 'body.0.bias', 'body.2.weight', 'body.2.bias'}

    test_opt = tiny_train_options(data)
    test_opt = {k: test_opt[k] for k in ('name', 'model_type', 'scale', 'num_gpu', 'network_g', 'val')}
    test_opt['name'] = 'tiny_test'
    test_opt['datasets'] = {
        'test_1': {
            'name': 'gen_test',
            'type': 'PairedImageDataset',
            'filename_tmpl': '{}',
            'dataroot_gt': str(data / 'gt'),
            'dataroot_lq': str(data / 'lq'),
            'io_backend': {'type': 'disk'},
        }
    }
    test_opt['path'] = {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True}
    done = run(['test', '-opt', str(write_yaml(tmp_path / 'test.yml', test_opt))], tmp_path, plugin_env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = next((tmp_path / 'results' / 'tiny_test').glob('test_tiny_test_*.log')).read_text()
    psnr = float(log.split('# psnr: ')[1].split()[0])
    ssim = float(log.split('# ssim: ')[1].split()[0])
    assert 5 < psnr < 60 and 0 < ssim <= 1


def test_plugin_entry_point_is_imported(plugin_env, tmp_path):
    code = 'from gmmoe_arch.cli import load_plugins; print(load_plugins())'
    out = subprocess.run([sys.executable, '-c', code], env=plugin_env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "'tinyplug'" in out.stdout and "'gmmoe_arch'" in out.stdout


def test_help_explains_itself(tmp_path, plugin_env):
    top = run(['--help'], tmp_path, plugin_env)
    assert top.returncode == 0 and 'train' in top.stdout and 'basicsr.plugins' in top.stdout
    sub = run(['train', '--help'], tmp_path, plugin_env)
    for flag in ('-opt', '--launcher', '--auto_resume', '--debug', '--force_yml', '--local_rank'):
        assert flag in sub.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / 'basicsr'
    assert script.is_file(), 'pip install -e . should have created the basicsr command'
    out = subprocess.run([str(script), 'test', '--help'], capture_output=True, text=True)
    assert out.returncode == 0 and '-opt' in out.stdout


@pytest.mark.parametrize(
    'content,message',
    [
        (None, 'option file not found'),
        ('name: [unclosed\n', 'is not valid YAML'),
        ('- just\n- a list\n', 'expected a mapping'),
        ('name: x\nmodel_type: SRModel\n', 'missing key(s) num_gpu, datasets'),
        (
            'name: x\nmodel_type: SRModel\nnum_gpu: 1\ndatasets: {val: {}}\nnetwork_g: {}\npath: {}\ntrain: {}\n'
            'logger: {}\n',
            'num_gpu: 1 but this machine has 0 CUDA',
        ),
    ],
)
def test_bad_option_file_gives_a_clear_error(tmp_path, plugin_env, content, message):
    if torch.cuda.is_available() and 'CUDA' in message:
        pytest.skip('this case needs a machine without GPUs')
    opt = tmp_path / 'bad.yml'
    if content is not None:
        opt.write_text(content)
    done = run(['train', '-opt', str(opt)], tmp_path, plugin_env)
    assert done.returncode == 2
    assert message in done.stderr and str(opt) in done.stderr
    assert 'Traceback' not in done.stderr


def test_registry_mistake_is_reported_without_traceback(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data', n=2)
    opt = tiny_train_options(data)
    opt['network_g'] = {'type': 'NoSuchNet'}
    done = run(['train', '-opt', str(write_yaml(tmp_path / 'x.yml', opt))], tmp_path, plugin_env)
    assert done.returncode == 2
    assert 'NoSuchNet' in done.stderr and 'Traceback' not in done.stderr


def test_local_rank_spellings():
    parser = cli.build_parser()
    for flag in (['--local-rank=1'], ['--local_rank', '1'], ['--local-rank', '1']):
        assert parser.parse_args(['train', '-opt', 'x.yml'] + flag).local_rank == 1


@pytest.mark.slow
def test_diverged_training_stops_with_a_message(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data', n=2)
    opt = tiny_train_options(data, name='nan', model_type='GMMoEModel')
    opt['train']['optim_g']['lr'] = 1e30  # finite (an infinite lr is refused as an option), yet it diverges
    done = run(['train', '-opt', str(write_yaml(tmp_path / 'nan.yml', opt))], tmp_path, plugin_env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert 'basicsr train: stopped:' in done.stderr and 'Traceback' not in done.stderr


class _BadImages(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DataError(f'datasets.train: img{i}.png is truncated')


def test_data_error_from_a_loader_worker_keeps_its_own_message():
    loader = torch.utils.data.DataLoader(_BadImages(), num_workers=1)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert 'Original Traceback' in str(caught.value)
    assert cli.worker_message(caught.value) == 'datasets.train: img0.png is truncated'


def test_run_logged_echoes_the_progress_lines_keeps_the_log_and_stops_on_failure(tmp_path, capsys, plugin_env):
    """``run_logged`` (the demo drivers' way to run ``basicsr``): a failing run keeps its whole log, echoes the
    lines with ``error:`` and stops with a message naming the log."""
    log = tmp_path / 'train.log'
    with pytest.raises(SystemExit, match=f'basicsr train failed \\(exit code 2\\); see {log}'):
        cli.run_logged('train', str(tmp_path / 'missing.yml'), str(tmp_path), str(log), plugin_env)
    echoed = capsys.readouterr().out.splitlines()
    assert echoed[0].startswith('$ basicsr train -opt') and 'missing.yml' in log.read_text()
    assert echoed[1:] and all('error' in line.lower() for line in echoed[1:])
