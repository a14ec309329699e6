"""The ``gmmoe evaluate`` command: one-line errors for bad input, a run on tiny labelled data, targets, exit codes."""

import json
import re

import pytest
import torch
import yaml

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
import gmmoe_console
from datasets_lmdb.synth import synthesize_images
from gmmoe_arch import GMMoE
from gmmoe_arch.enhance_cli import main

from helpers import run_basicsr, tiny_gmmoe_options, write_pairs, write_yaml

NETWORK = dict(type='GMMoE', width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])
NETWORK['experts'] = ['ColourExpert', 'DetailExpert', 'FeatureExpert', 'RainExpert', 'HazeExpert']
MAPPING = {'lowlight': 'ColourExpert', 'rain': 'RainExpert', 'haze': 'HazeExpert'}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A labelled LMDB pair (2 pairs per degradation), a tiny checkpoint and its option file."""
    root = tmp_path_factory.mktemp('evaluate_cli')
    rng = torch.Generator().manual_seed(0)
    images = [(f'p{i}', (torch.rand(20, 28, 3, generator=rng) * 255).to(torch.uint8).numpy()) for i in range(2)]
    synthesize_images(images, str(root / 'data'), 'mixed', seed=2, per_image=3, lmdb=True, progress=False)
    torch.manual_seed(0)
    net = GMMoE(**{k: v for k, v in NETWORK.items() if k != 'type'})
    torch.save({'params': net.state_dict()}, root / 'net.pth')
    opt = {'network_g': NETWORK, 'train': {'gate_opt': {'experts': MAPPING}}}
    (root / 'train.yml').write_text(yaml.safe_dump(opt))
    return root


def run(setup, *extra):
    args = ['evaluate', '--weights', str(setup / 'net.pth'), '--opt', str(setup / 'train.yml'), '--device', 'cpu']
    return main(args + ['--data', str(setup / 'data' / 'lmdb'), '--metrics', 'psnr', 'ssim'] + list(extra))


def test_missing_data_is_a_usage_error_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exit:
        gmmoe_console.main(['evaluate', '--weights', 'w.pth'])
    assert exit.value.code == 2
    assert 'gmmoe evaluate: error: the following arguments are required: --data' in capsys.readouterr().err


@pytest.mark.parametrize(
    'extra,message',
    [
        (['--data', 'no/such/folder'], '--data no/such/folder: no such folder'),
        (['--metrics', 'psnr', 'lpips'], '--metrics lpips: choose from psnr, ssim, psnr_released, ssim_released'),
        (['--baselines', 'snow'], '--baselines snow: unknown baseline(s)'),
        (['--mapping', 'rain'], '--mapping rain: expected LABEL=EXPERT'),
        (['--mapping', 'rain=SnowExpert'], '--mapping: the network has no SnowExpert'),
        (['--labels', 'snow'], '--labels snow: no pair'),
    ],
)
def test_bad_input_is_one_line(setup, capsys, extra, message):
    assert run(setup, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith('gmmoe evaluate: error: ') and 'Traceback' not in err


def test_missing_checkpoint_is_one_line(setup, capsys):
    assert main(['evaluate', '--weights', str(setup / 'none.pth'), '--data', str(setup / 'data')]) == 2
    assert f'checkpoint {setup / "none.pth"}: no such file' in capsys.readouterr().err


def test_a_run_writes_json_and_markdown_and_checks_targets(setup, tmp_path, capsys):
    report, table = tmp_path / 'r.json', tmp_path / 'r.md'
    assert run(setup, '--json', str(report), '--markdown', str(table), '--target-over-input', '-100') == 0
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data['data']['pairs'] == {'lowlight': 2, 'rain': 2, 'haze': 2}
    assert set(data['baselines']['rain']) == {'median 5x5', 'guided filter'}
    assert 0 <= data['networks']['net']['routing_accuracy'] <= 1  # the mapping of --opt's gate_opt
    assert all(t['met'] for t in data['targets']) and len(data['targets']) == 3
    assert table.read_text().strip() in out and '| GM-MoE |' in out and 'targets met (3 checked)' in out
    assert run(setup, '--target-over-input', '100', '--baselines', 'none', '--labels', 'haze') == 1
    out = capsys.readouterr().out
    assert 'TARGETS MISSED: haze: PSNR over the input' in out and 'dark channel prior' not in out


@pytest.mark.slow
def test_the_scores_are_basicsr_validations(tmp_path, plugin_env):
    """A network trained a few iterations by ``basicsr train``: ``gmmoe evaluate`` on its validation pairs gives
    the PSNR/SSIM BasicSR's own end-of-training validation logs (the same network, pixels and metrics)."""
    data = write_pairs(tmp_path / 'data', n=3)
    opt = tiny_gmmoe_options(data, 'tiny_eval', total_iter=3, checkpoint_freq=3)
    opt['val']['metrics'] = {m: {'type': f'calculate_{m}', 'crop_border': 0} for m in ('psnr', 'ssim')}
    path = write_yaml(tmp_path / 'train.yml', opt)
    done = run_basicsr(['train', '-opt', str(path)], tmp_path, plugin_env)
    assert done.returncode == 0, done.stderr[-2000:]
    log = next((tmp_path / 'experiments' / 'tiny_eval').glob('train_tiny_eval_*.log')).read_text()
    logged = {m: float(re.findall(rf'# {m}: ([0-9.]+)', log)[-1]) for m in ('psnr', 'ssim')}
    weights = tmp_path / 'experiments' / 'tiny_eval' / 'models' / 'net_g_latest.pth'
    report = tmp_path / 'r.json'
    args = ['evaluate', '--weights', str(weights), '--opt', str(path), '--data', str(data), '--device', 'cpu']
    assert main(args + ['--metrics', 'psnr', 'ssim', '--json', str(report)]) == 0
    measured = json.loads(report.read_text())['networks']['net']['scores']['all']
    assert measured == pytest.approx(logged, abs=1e-4)  # the log's 4 decimals


def test_gate_ablation_and_routing_maps(setup, tmp_path, capsys):
    maps = tmp_path / 'maps'
    assert run(setup, '--gate-ablation', '--routing-maps', str(maps), '--json', str(tmp_path / 'e.json')) == 0
    out = capsys.readouterr().out
    assert 'Gates frozen to their mean weights over these pairs' in out and 'psnr delta' in out
    report = json.loads((tmp_path / 'e.json').read_text())
    ablation = report['gate_ablation']
    assert set(ablation) >= {'trained', 'frozen_mean', 'delta', 'means', 'spread'}
    assert ablation['trained']['all']['psnr'] - ablation['frozen_mean']['all']['psnr'] == pytest.approx(
        ablation['delta']['all']['psnr']
    )
    assert len(list(maps.glob('*.png'))) == 6


def test_routing_maps_into_a_file_is_one_line(setup, tmp_path, capsys):
    target = tmp_path / 'file.png'
    target.write_bytes(b'x')
    assert run(setup, '--routing-maps', str(target)) == 2
    assert f'--routing-maps {target}: is a file, not a folder' in capsys.readouterr().err
