"""gmmoe_arch.inference.loading and archs.checkpoint_config: checkpoints, option files, sizes, devices."""

import pytest
import torch

from gmmoe_arch.archs.checkpoint_config import describe_size, infer_config
from gmmoe_arch.inference.errors import EnhanceError
from gmmoe_arch.inference.loading import load_network, resolve_device


def test_released_checkpoint_loads_strictly_with_inferred_config(ref_ckpt, ref_net):
    released = torch.load(ref_ckpt, weights_only=True)['params']
    assert any('.conv6.' in k for k in released)  # the unused weights the load hook drops
    state = ref_net.state_dict()
    assert set(state) == {k for k in released if '.conv6.' not in k}
    assert all(torch.equal(v, released[k]) for k, v in state.items())
    assert not ref_net.training and not any(p.requires_grad for p in ref_net.parameters())
    assert infer_config(released) == dict(
        img_channel=3, width=8, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]
    )


def test_inferred_config_rebuilds_other_sizes_and_refuses_other_networks():
    from gmmoe_arch import GMMoE
    from gmmoe_arch.archs.released_layout import NotGMMoECheckpointError

    config = dict(img_channel=1, width=4, enc_blk_nums=[2, 1], middle_blk_num=3, dec_blk_nums=[1, 2])
    assert infer_config(GMMoE(**config).state_dict()) == config
    assert describe_size(config) == 'width-4 network (enc [2, 1], middle 3, dec [1, 2], 1 channels)'
    with pytest.raises(NotGMMoECheckpointError, match='^not a GM-MoE checkpoint: it lacks intro.weight, '):
        infer_config({'conv.weight': torch.zeros(1)})


def test_option_file_network_and_params_ema_preferred(ref_ckpt, tmp_path):
    released = torch.load(ref_ckpt, weights_only=True)['params']
    wrong = {k: torch.zeros_like(v) for k, v in released.items()}
    ckpt = tmp_path / 'ours.pth'
    torch.save({'params': wrong, 'params_ema': {'module.' + k: v for k, v in released.items()}}, ckpt)
    opt = tmp_path / 'net.yml'
    opt.write_text(
        'network_g:\n  type: OURNet24\n  width: 8\n  enc_blk_nums: [1, 1, 1, 1]\n'
        '  middle_blk_num: 1\n  dec_blk_nums: [1, 1, 1, 1]\n'
    )
    net = load_network(str(ckpt), option_file=str(opt), device='cpu')
    assert type(net).__name__ == 'OURNet24'
    assert torch.equal(net.state_dict()['intro.weight'], released['intro.weight'])


@pytest.mark.parametrize('case', ['missing_file', 'not_checkpoint', 'no_tensors', 'wrong_preset', 'missing_key'])
def test_bad_checkpoint_gives_one_clear_error(case, ref_ckpt, tmp_path):
    path = tmp_path / 'bad.pth'
    kwargs = {}
    if case == 'not_checkpoint':
        path.write_bytes(b'\x89PNG\r\n\x1a\n not a checkpoint')
    elif case == 'no_tensors':
        torch.save({'params': {'lr': 1e-3}}, path)
    elif case == 'wrong_preset':
        path, kwargs = ref_ckpt, {'preset': 'paper'}
    elif case == 'missing_key':
        sd = torch.load(ref_ckpt, weights_only=True)['params']
        del sd['encoders.1.0.GateNetwork.0.weight']
        torch.save(sd, path)
    with pytest.raises(EnhanceError) as err:
        load_network(str(path), device='cpu', **kwargs)
    msg = str(err.value)
    assert str(path) in msg
    expected = {
        'missing_file': 'no such file',
        'not_checkpoint': 'not a PyTorch checkpoint',
        'no_tensors': 'expected a state dict of tensors',
        'wrong_preset': 'holds a width-8 network (enc [1, 1, 1, 1], middle 1, dec [1, 1, 1, 1]); '
        '--preset paper is a width-24 network (enc [1, 1, 1, 1], middle 1, dec [1, 1, 1, 1]); '
        'drop --preset',
        'missing_key': '1 missing: encoders.1.0.GateNetwork.0.weight',
    }[case]
    assert expected in msg


def test_checkpoint_of_another_size_than_the_option_file_is_named(ref_ckpt, tmp_path):
    opt = tmp_path / 'net.yml'
    opt.write_text(
        'network_g:\n  type: GMMoE\n  width: 16\n  enc_blk_nums: [1, 1]\n  middle_blk_num: 2\n  dec_blk_nums: [1, 1]\n'
    )
    with pytest.raises(EnhanceError) as err:
        load_network(str(ref_ckpt), option_file=str(opt), device='cpu')
    assert str(err.value) == (
        f'checkpoint {ref_ckpt} holds a width-8 network (enc [1, 1, 1, 1], middle 1, dec '
        f'[1, 1, 1, 1]); --opt {opt} is a width-16 network (enc [1, 1], middle 2, dec [1, 1]); '
        'drop --opt to read the size off the checkpoint'
    )


def test_random_weights_need_explicit_consent():
    with pytest.raises(EnhanceError, match='--random-weights'):
        load_network(device='cpu')
    net = load_network(preset='paper', random_weights=True, device=torch.device('cpu'))
    assert net.intro.out_channels == 24 and len(net.encoders) == 4


def test_device_resolution():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    if not torch.cuda.is_available():
        with pytest.raises(EnhanceError, match='CUDA is not available'):
            resolve_device('cuda:0')
    with pytest.raises(EnhanceError, match='--device tpu'):
        resolve_device('tpu')


@pytest.mark.parametrize(
    'network_g, reason',
    [
        ('type: Nope', "No object named 'Nope' found in 'arch' registry!"),
        ('type: GMMoE\n  preset: huge', 'network_g.preset: unknown preset "huge"; choose from paper, released'),
        ('type: GMMoE\n  widht: 8', "GMMoE.__init__() got an unexpected keyword argument 'widht'"),
    ],
)
def test_network_option_errors_are_plain_lines_without_a_python_class(tmp_path, network_g, reason):
    opt = tmp_path / 'net.yml'
    opt.write_text(f'network_g:\n  {network_g}\n')
    with pytest.raises(EnhanceError) as err:
        load_network(option_file=str(opt), random_weights=True, device='cpu')
    assert str(err.value).startswith(f'cannot build the network from network_g of {opt}: {reason}')
    assert 'Error' not in str(err.value) and '"No object' not in str(err.value)
