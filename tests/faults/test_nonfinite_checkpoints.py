"""Checkpoints with a NaN or inf weight: refused by ``gmmoe enhance``, ``gmmoe export`` and ``basicsr test``
before any work, in one line naming the file, the first such tensor and how many of its values are bad."""

import cv2
import numpy as np
import pytest
import torch

from gmmoe_arch import GMMoE, export
from gmmoe_arch.enhance_cli import main
from gmmoe_arch.inference.errors import EnhanceError
from gmmoe_arch.inference.loading import check_finite_state_dict

from helpers import run_basicsr, tiny_gmmoe_options, tiny_test_options, write_pairs, write_yaml

KEY = 'encoders.0.0.gamma'


def poisoned(ref_ckpt, path, value=float('nan'), count=1, key=KEY):
    """The reference checkpoint with ``count`` values of ``key`` set to ``value``, saved at ``path``."""
    sd = torch.load(ref_ckpt, weights_only=True)['params']
    sd[key].view(-1)[:count] = value
    torch.save({'params': sd}, path)
    return path


def test_the_check_names_the_first_bad_tensor_counts_its_values_and_passes_finite_ones():
    sd = {
        'ints': torch.tensor([1, 2, 3]),
        'huge': torch.full((4,), 3e38),  # finite, but its sum overflows to inf
        'half': torch.full((8,), 60000.0, dtype=torch.float16),
        'fine': torch.zeros(5),
    }
    check_finite_state_dict(sd, 'ok.pth')
    sd['bad'] = torch.tensor([0.0, float('nan'), float('inf'), 1.0, float('-inf')])
    sd['later'] = torch.tensor([float('nan')])
    with pytest.raises(EnhanceError) as err:
        check_finite_state_dict(sd, 'x.pth')
    assert str(err.value) == (
        'checkpoint x.pth: tensor bad holds 3 non-finite value(s) (NaN or inf) of 5; the training that '
        'saved it diverged: use an earlier checkpoint'
    )


@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_enhance_refuses_a_checkpoint_with_one_non_finite_weight_and_writes_nothing(
    value, reference_dir, tmp_path, capsys
):
    ckpt = poisoned(reference_dir / 'gmmoe_w8_net_g.pth', tmp_path / 'bad.pth', value)
    for name in ('a.png', 'b.png'):
        cv2.imwrite(str(tmp_path / name), np.full((16, 16, 3), 40, np.uint8))
    out = tmp_path / 'out'
    code = main(['enhance', str(tmp_path / 'a.png'), str(tmp_path / 'b.png'), '-o', str(out), '--weights', str(ckpt)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ''
    assert captured.err == (
        f'gmmoe enhance: error: checkpoint {ckpt}: tensor {KEY} holds 1 non-finite value(s) (NaN or inf) of 8; '
        'the training that saved it diverged: use an earlier checkpoint\n'
    )
    assert not out.exists()


def test_export_refuses_it_before_tracing(reference_dir, tmp_path, capsys, monkeypatch):
    ckpt = poisoned(reference_dir / 'gmmoe_w8_net_g.pth', tmp_path / 'bad.pth', count=3)

    def no_trace(*args, **kwargs):
        raise AssertionError('traced a network with non-finite weights')

    monkeypatch.setattr(export, '_write_onnx', no_trace)
    assert main(['export', '--weights', str(ckpt), '-o', str(tmp_path / 'm.onnx')]) == 2
    err = capsys.readouterr().err
    assert err == (
        f'gmmoe export: error: checkpoint {ckpt}: tensor {KEY} holds 3 non-finite value(s) (NaN or inf) of 8; '
        'the training that saved it diverged: use an earlier checkpoint\n'
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.pth']


def tiny_checkpoint(options, path, value):
    """A checkpoint of ``options['network_g']`` with one value of its first ``gamma`` set to ``value``."""
    net_opt = {k: v for k, v in options['network_g'].items() if k != 'type'}
    sd = GMMoE(**net_opt).state_dict()
    sd[KEY].view(-1)[0] = value
    torch.save({'params': sd}, path)
    return path


def test_basicsr_model_loading_refuses_it(tmp_path):
    from basicsr.models.base_model import BaseModel

    options = tiny_gmmoe_options(tmp_path, 'nan', total_iter=1, checkpoint_freq=1)
    ckpt = tiny_checkpoint(options, tmp_path / 'nan.pth', float('nan'))
    net = GMMoE(**{k: v for k, v in options['network_g'].items() if k != 'type'})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(EnhanceError, match=f'checkpoint {ckpt}: tensor {KEY} holds 1 non-finite value'):
        BaseModel({'num_gpu': 0, 'is_train': False}).load_network(net, str(ckpt), strict=True)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing was loaded


@pytest.mark.slow
def test_basicsr_test_refuses_it_in_one_line_and_writes_no_result(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data', n=2)
    options = tiny_gmmoe_options(data, 'nan', total_iter=1, checkpoint_freq=1)
    ckpt = tiny_checkpoint(options, tmp_path / 'nan.pth', float('inf'))
    test_opt = tiny_test_options(options, 'nan', ckpt, save_img=True)
    done = run_basicsr(['test', '-opt', str(write_yaml(tmp_path / 'test.yml', test_opt))], tmp_path, plugin_env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f'basicsr test: error: checkpoint {ckpt}: tensor {KEY} holds 1 non-finite value(s) (NaN or inf) of 4; '
        'the training that saved it diverged: use an earlier checkpoint'
    )
    assert 'Traceback' not in done.stderr
    assert not list(tmp_path.glob('results/**/*.png'))
