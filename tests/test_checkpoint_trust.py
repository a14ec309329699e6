"""gmmoe_arch.checkpoint_trust: numpy values load, other globals are refused with one line, trusted files load.

Through the library call, ``gmmoe enhance --weights`` and BasicSR's ``load_network`` (``path.pretrain_network_g``).
"""

import argparse
import os

import cv2
import numpy as np
import pytest
import torch

from gmmoe_arch.checkpoint_trust import TRUST_ENV, UntrustedCheckpointError, load_checkpoint
from gmmoe_arch.enhance_cli import main


@pytest.fixture()
def weights(reference_dir):
    return torch.load(reference_dir / 'gmmoe_w8_net_g.pth', weights_only=True)['params']


@pytest.fixture(autouse=True)
def no_trusted_env(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def save(path, obj, **kwargs):
    torch.save(obj, path, **kwargs)
    return str(path)


def test_numpy_scalars_dtypes_and_arrays_load_without_trust(tmp_path):
    before = set(map(str, torch.serialization.get_safe_globals()))
    ckpt = {'params': {'w': torch.ones(2)}, 'best_psnr': np.float64(23.5), 'dtype': np.dtype('float32')}
    ckpt['history'] = np.arange(4, dtype=np.int64)
    loaded = load_checkpoint(save(tmp_path / 'np.pth', ckpt))
    assert loaded['best_psnr'] == 23.5 and loaded['dtype'] == np.float32 and loaded['history'].tolist() == [0, 1, 2, 3]
    assert set(map(str, torch.serialization.get_safe_globals())) == before  # allowed for the call only
    with pytest.raises(Exception, match='numpy'):  # torch alone still refuses it: the allow-list did it
        torch.load(tmp_path / 'np.pth', weights_only=True)


def test_numpy_1_module_names_load(tmp_path):
    """A checkpoint written under numpy 1 names ``numpy.core.multiarray.scalar`` (protocol 2 names globals
    as plain text lines, so the numpy 2 name can be rewritten in a legacy-format file)."""
    path = tmp_path / 'np1.pth'
    save(path, {'psnr': np.float64(1.25)}, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert b'numpy._core.multiarray\n' in raw
    path.write_bytes(raw.replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n'))
    assert load_checkpoint(str(path))['psnr'] == 1.25


def test_refused_global_names_the_file_the_global_and_the_opt_in(tmp_path, monkeypatch):
    path = save(tmp_path / 'args.pth', {'params': {'w': torch.ones(1)}, 'args': argparse.Namespace(lr=1)})
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(path, opt_in='pass --trust-checkpoint')
    message = str(info.value)
    assert path in message and 'argparse.Namespace' in message and TRUST_ENV in message
    assert '--trust-checkpoint' in message and '\n' not in message and 'two options' not in message
    assert load_checkpoint(path, trusted=[path])['args'].lr == 1
    with pytest.raises(UntrustedCheckpointError):  # trusting another file trusts nothing else
        load_checkpoint(path, trusted=[str(tmp_path / 'other.pth')])
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([str(tmp_path / 'elsewhere'), str(tmp_path)]))  # a folder
    assert load_checkpoint(path)['args'].lr == 1


def test_damaged_file_is_not_reported_as_untrusted(tmp_path):
    path = tmp_path / 'half.pth'
    path.write_bytes(b'PK\x03\x04 half a checkpoint')
    with pytest.raises(Exception) as info:
        load_checkpoint(str(path), trusted=[str(path)])
    assert not isinstance(info.value, UntrustedCheckpointError)


def test_gmmoe_enhance_refuses_then_trusts(weights, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), np.full((24, 20, 3), 40, np.uint8))
    ckpt = save(tmp_path / 'w.pth', {'params': weights, 'args': argparse.Namespace(lr=1)})
    run = ['enhance', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out'), '--weights', ckpt, '--device', 'cpu']
    assert main(run + ['--no-progress']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ckpt in err and 'argparse.Namespace' in err and '--trust-checkpoint' in err
    assert not (tmp_path / 'out' / 'a.png').exists()
    assert main(run + ['--no-progress', '--trust-checkpoint']) == 0
    assert (tmp_path / 'out' / 'a.png').is_file()


def test_basicsr_load_network_refuses_then_trusts_by_option(weights, tmp_path, monkeypatch):
    from basicsr.models.base_model import BaseModel

    from gmmoe_arch import GMMoE

    ckpt = save(tmp_path / 'w.pth', {'params': weights, 'best': np.float64(2.0), 'args': argparse.Namespace()})
    net = GMMoE(width=8, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])
    opt = {'num_gpu': 0, 'is_train': False, 'dist': False, 'path': {'pretrain_network_g': ckpt}}
    with pytest.raises(UntrustedCheckpointError) as info:
        BaseModel(opt).load_network(net, ckpt)
    message = str(info.value)
    assert (
        ckpt in message
        and 'argparse.Namespace' in message
        and 'list it in trusted_checkpoints of the option file' in message
    )
    assert TRUST_ENV in message
    opt['trusted_checkpoints'] = [ckpt]  # top level: BasicSR makes a folder of every unknown path key
    BaseModel(opt).load_network(net, ckpt)
    assert torch.equal(net.intro.weight, weights['intro.weight'])
    opt['trusted_checkpoints'] = str(tmp_path)  # a single folder, as a string
    BaseModel(opt).load_network(net, ckpt)


@pytest.mark.slow
def test_basicsr_test_command_names_the_refused_global_and_loads_when_trusted(tmp_path, plugin_env):
    from gmmoe_arch import GMMoE

    from helpers import run_basicsr, tiny_gmmoe_options, tiny_test_options, write_pairs, write_yaml

    data = write_pairs(tmp_path / 'data', n=2)
    options = tiny_gmmoe_options(data, 'trust', total_iter=1, checkpoint_freq=1)
    net = GMMoE(**{k: v for k, v in options['network_g'].items() if k != 'type'})
    ckpt = save(tmp_path / 'other_project.pth', {'params': net.state_dict(), 'args': argparse.Namespace(lr=1)})
    test_opt = tiny_test_options(options, 'trust', ckpt)
    env = {k: v for k, v in plugin_env.items() if k != TRUST_ENV}
    done = run_basicsr(['test', '-opt', str(write_yaml(tmp_path / 'refused.yml', test_opt))], tmp_path, env)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert f'cannot load network checkpoint {ckpt}: holds argparse.Namespace' in done.stderr
    assert 'trusted_checkpoints of the option file' in done.stderr
    test_opt['trusted_checkpoints'] = [ckpt]
    done = run_basicsr(['test', '-opt', str(write_yaml(tmp_path / 'trusted.yml', test_opt))], tmp_path, env)
    assert done.returncode == 0, done.stderr[-2000:]


def test_gmmoe_export_refuses_then_trusts(weights, tmp_path, capsys, monkeypatch):
    pytest.importorskip('onnxscript')
    from gmmoe_arch import export
    from gmmoe_arch.export import ExportError

    ckpt = save(tmp_path / 'w.pth', {'params': weights, 'args': argparse.Namespace(lr=1)})
    run = ['export', '--weights', ckpt, '-o', str(tmp_path / 'm.onnx'), '--no-check']
    assert main(run) == 2
    err = capsys.readouterr().err
    assert ckpt in err and 'argparse.Namespace' in err and '--trust-checkpoint' in err

    def loaded(net):  # stop right after loading: tracing takes minutes
        raise ExportError(f'loaded {type(net).__name__}')

    monkeypatch.setattr(export, 'check_dense', loaded)
    main(run + ['--trust-checkpoint'])
    assert 'loaded GMMoE' in capsys.readouterr().err
    assert not (tmp_path / 'm.onnx').exists()
