"""gmmoe_arch.enhance: network loading, tiling plans, tiled vs whole-image inference, statistics."""
import numpy as np
import pytest
import torch

from gmmoe_arch import GMMoE
from gmmoe_arch.enhance import (MIN_TILE, EnhanceError, TilePlan, _sweep, enhance_image, enhance_tensor,
                                infer_config, load_network, plan_tiles, resolve_device)


@pytest.fixture(scope='module')
def ref_ckpt(reference_dir):
    return reference_dir / 'gmmoe_w8_net_g.pth'


@pytest.fixture(scope='module')
def ref_net(ref_ckpt):
    return load_network(str(ref_ckpt), device='cpu')


def smooth_image(h, w, seed=1):
    """``(1, 3, h, w)`` dim, smooth image with a little noise (a low-light-like input)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode='bicubic').clamp(0, 1) * 0.3
    return x + 0.02 * torch.rand(1, 3, h, w, generator=g)


# ---------------------------------------------------------------- loading


def test_released_checkpoint_loads_strictly_with_inferred_config(ref_ckpt, ref_net):
    released = torch.load(ref_ckpt, weights_only=True)['params']
    assert any('.conv6.' in k for k in released)  # the unused weights the load hook drops
    state = ref_net.state_dict()
    assert set(state) == {k for k in released if '.conv6.' not in k}
    assert all(torch.equal(v, released[k]) for k, v in state.items())
    assert not ref_net.training and not any(p.requires_grad for p in ref_net.parameters())
    assert infer_config(released) == dict(img_channel=3, width=8, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1,
                                          dec_blk_nums=[1, 1, 1, 1])


def test_option_file_network_and_params_ema_preferred(ref_ckpt, tmp_path):
    released = torch.load(ref_ckpt, weights_only=True)['params']
    wrong = {k: torch.zeros_like(v) for k, v in released.items()}
    ckpt = tmp_path / 'ours.pth'
    torch.save({'params': wrong, 'params_ema': {'module.' + k: v for k, v in released.items()}}, ckpt)
    opt = tmp_path / 'net.yml'
    opt.write_text('network_g:\n  type: OURNet24\n  width: 8\n  enc_blk_nums: [1, 1, 1, 1]\n'
                   '  middle_blk_num: 1\n  dec_blk_nums: [1, 1, 1, 1]\n')
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
    expected = {'missing_file': 'no such file', 'not_checkpoint': 'not a PyTorch checkpoint',
                'no_tensors': 'expected a state dict of tensors',
                'wrong_preset': 'holds a width-8 network (enc [1, 1, 1, 1], middle 1, dec [1, 1, 1, 1]); '
                                '--preset paper is a width-24 network (enc [1, 1, 1, 1], middle 1, dec [1, 1, 1, 1]); '
                                'drop --preset',
                'missing_key': '1 missing: encoders.1.0.GateNetwork.0.weight'}[case]
    assert expected in msg


def test_checkpoint_of_another_size_than_the_option_file_is_named(ref_ckpt, tmp_path):
    opt = tmp_path / 'net.yml'
    opt.write_text('network_g:\n  type: GMMoE\n  width: 16\n  enc_blk_nums: [1, 1]\n  middle_blk_num: 2\n'
                   '  dec_blk_nums: [1, 1]\n')
    with pytest.raises(EnhanceError) as err:
        load_network(str(ref_ckpt), option_file=str(opt), device='cpu')
    assert str(err.value) == (f'checkpoint {ref_ckpt} holds a width-8 network (enc [1, 1, 1, 1], middle 1, dec '
                              f'[1, 1, 1, 1]); --opt {opt} is a width-16 network (enc [1, 1], middle 2, dec [1, 1]); '
                              'drop --opt to read the size off the checkpoint')


def test_random_weights_need_explicit_consent():
    with pytest.raises(EnhanceError, match='--random-weights'):
        load_network(device='cpu')
    net = load_network(preset='paper', random_weights=True, device='cpu')
    assert net.intro.out_channels == 24 and len(net.encoders) == 4


def test_device_resolution():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    if not torch.cuda.is_available():
        with pytest.raises(EnhanceError, match='CUDA is not available'):
            resolve_device('cuda:0')
    with pytest.raises(EnhanceError, match='--device tpu'):
        resolve_device('tpu')


# ---------------------------------------------------------------- tiling plans


@pytest.mark.parametrize('h, w, tile, overlap', [(1000, 700, 256, 64), (333, 4000, None, 128), (300, 260, 128, 32)])
def test_tile_plan_covers_aligned_overlapping_and_shares_sum_to_one(h, w, tile, overlap):
    plan = plan_tiles(h, w, tile, overlap, max_pixels=300 * 300, align=16)
    total = np.zeros((h, w))
    for y0, y1, x0, x1, share in plan.tiles():
        assert y0 % 16 == 0 and x0 % 16 == 0
        total[y0:y1, x0:x1] += share
    np.testing.assert_allclose(total, 1, atol=1e-5)
    for spans in (plan.ys, plan.xs):
        assert spans[0][0] == 0
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 - b0 >= overlap and b1 > a1
    if tile is None:  # automatic tiles: at least MIN_TILE where the image allows, about max_pixels
        assert min(plan.ys[0][1], plan.xs[0][1]) >= min(h, w, MIN_TILE)


def test_small_images_are_one_tile_and_bad_tiling_options_are_refused():
    assert len(plan_tiles(37, 53)) == 1 and len(plan_tiles(1, 1)) == 1
    assert len(plan_tiles(2000, 1500)) > 1
    for kwargs, text in [(dict(tile=32), '--tile 32'), (dict(tile=256, overlap=128), '--overlap 128'),
                         (dict(overlap=-1), '--overlap -1'), (dict(max_pixels=0), '--max-pixels 0')]:
        with pytest.raises(EnhanceError, match=text):
            plan_tiles(500, 500, **kwargs)


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize('shape', [(37, 53), (1, 1)])
def test_small_images_work(ref_net, shape):
    img = (np.random.default_rng(0).random(shape + (3,)) * 255).astype(np.uint8)
    out = enhance_image(ref_net, img)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_injecting_the_image_statistics_into_the_whole_image_changes_nothing(ref_net):
    x = smooth_image(100, 90)
    plan = TilePlan(100, 90, [(0, 100)], [(0, 90)])
    plain, injected, zeroed = (torch.zeros_like(x) for _ in range(3))

    def tile(y0, y1, x0, x1):
        return x[..., y0:y1, x0:x1]

    def into(out):
        def add(y0, y1, x0, x1, pred):
            out[..., y0:y1, x0:x1] += pred
        return add

    with torch.inference_mode():
        stats = _sweep(ref_net, tile, plan, None, into(plain)).means()
        _sweep(ref_net, tile, plan, stats, into(injected))
        _sweep(ref_net, tile, plan, {k: v * 0 for k, v in stats.items()}, into(zeroed))
        direct = ref_net(x)
    assert len(stats) == 27  # 9 expert blocks x (gate, channel attention, SCA)
    torch.testing.assert_close(plain, direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(injected, plain, rtol=0, atol=1e-6)
    assert (zeroed - plain).abs().max() > 0.1  # the injected values are really used


def test_tiled_output_approximates_whole_image_output(ref_net):
    """Reference weights (far from init, outputs in about [-1.5, 2.5]), 336x256, two 256-px tiles.

    Measured (float32, CPU): each tile on its own statistics: max 0.079, mean 0.0072, gate weights
    off by up to 0.0098; with one statistics pass: max 0.025, mean 0.0014, gates 0.0027.
    """
    h, w = 336, 256
    x = smooth_image(h, w)
    whole_gates, local_gates, shared_gates = {}, {}, {}
    whole = enhance_tensor(ref_net, x, plan_tiles(h, w, max_pixels=h * w), gates=whole_gates)
    plan = plan_tiles(h, w, tile=256, overlap=64, align=ref_net.padder_size)
    assert plan.ys == [(0, 256), (80, 336)] and plan.xs == [(0, 256)]
    local = enhance_tensor(ref_net, x, plan, stat_passes=0, gates=local_gates)
    shared = enhance_tensor(ref_net, x, plan, stat_passes=1, gates=shared_gates)

    def gate_error(gates):
        return max(float(np.abs(gates[k] - whole_gates[k]).max()) for k in whole_gates)

    err_local, err_shared = (local - whole).abs(), (shared - whole).abs()
    assert err_shared.max() < 0.04 and err_shared.mean() < 0.003
    assert err_local.max() < 0.12 and err_local.mean() < 0.012
    assert err_shared.mean() < 0.5 * err_local.mean()
    assert gate_error(shared_gates) < 0.005 and gate_error(shared_gates) < 0.5 * gate_error(local_gates)


def test_precisions(ref_net):
    img = (np.random.default_rng(1).random((48, 40, 3)) * 120).astype(np.uint8)
    fp32 = enhance_image(ref_net, img).astype(int)
    bf16 = enhance_image(ref_net, img, precision='bf16').astype(int)
    assert np.abs(bf16 - fp32).mean() < 8
    if not torch.cuda.is_available():
        with pytest.raises(EnhanceError, match='fp16 needs a CUDA device'):
            enhance_image(ref_net, img, precision='fp16')


def test_identity_network_reproduces_every_dtype():
    net = GMMoE(width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]).eval()
    for p in net.ending.parameters():  # output = ending(x) + input: zero ending -> identity
        torch.nn.init.zeros_(p)
    rng = np.random.default_rng(2)
    for img in [(rng.random((20, 30, 3)) * 255).astype(np.uint8), (rng.random((20, 30)) * 65535).astype(np.uint16),
                rng.random((20, 30, 3)).astype(np.float32)]:
        out = enhance_image(net, img)
        assert out.dtype == img.dtype
        np.testing.assert_allclose(out.astype(float), img.astype(float), atol=1e-5 if img.dtype == np.float32 else 1)
