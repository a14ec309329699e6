"""GMMoE's fast path computes the straightforward path's function, in inference and in training."""

import math

import pytest
import torch
from torch import nn

from gmmoe_arch.archs.gmmoe_arch import SFEB, ExpertBlock, GMMoE

from arch_helpers import paths_taken, registered_expert
from helpers import activate_branches, reference_net

W8 = dict(width=8, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])
SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


class FastPathTestScaleExpert(nn.Module):
    """A custom expert without a fast path: ``u * (1 + conv(u))``."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, u):
        return u * (1 + self.conv(u))


def random_net(seed=0, dtype=torch.float32, **kwargs):
    """A net with random weights where every branch matters (non-zero beta/gamma, jittered LayerNorms)."""
    torch.manual_seed(seed)
    return activate_branches(GMMoE(**{**SMALL, **kwargs}).to(dtype), norm_jitter=0.1)


def image(b, h, w, seed=1, dtype=torch.float32):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)


def both_paths(net, x, grad=False):
    """Outputs of the fast and the straightforward path of ``net`` on ``x``, each checked to have
    run only its own path."""
    with torch.set_grad_enabled(grad):
        fast = run_on_path(net, x, True)
        plain = run_on_path(net, x, False)
    net.set_fast(True)
    return fast, plain


def run_on_path(net, x, fast):
    """``net.set_fast(fast)(x)``, asserting that the built-in fast modules took that path."""
    with paths_taken() as taken:
        out = net.set_fast(fast)(x)
    assert taken and set(taken) == {'fast' if fast else 'plain'}, taken
    return out


def psnr(x, ref):
    return 10 * math.log10(1 / (x.double() - ref.double()).pow(2).mean().item())


@pytest.fixture(scope='module')
def reference(ref):
    return reference_net(ref, torch.float32), ref


def test_reference_vectors_fast_equals_plain(reference):
    net, io = reference
    fast, plain = both_paths(net, io['input'].float())
    assert (fast - plain).abs().max().item() <= 1e-4
    assert (fast.double() - io['output']).abs().max().item() <= 1e-4
    assert fast.is_contiguous() and fast.shape == io['input'].shape


@pytest.mark.parametrize('shape', [(1, 17, 23), (2, 33, 40), (1, 64, 48), (1, 5, 70)])
@pytest.mark.parametrize('grad', [False, True], ids=['inference', 'training-path'])
def test_random_weights_fast_equals_plain(shape, grad):
    net = random_net(seed=shape[1])
    net.train(grad)
    fast, plain = both_paths(net, image(*shape), grad=grad)
    assert fast.shape == plain.shape == (shape[0], 3, shape[1], shape[2])
    assert (fast - plain).abs().max().item() <= 1e-4
    assert (plain - image(*shape)).abs().max().item() > 1e-2, 'the network must not be (near) the identity'


def test_four_levels_at_a_size_the_released_network_cannot_take():
    net = random_net(seed=3, **W8).eval()
    fast, plain = both_paths(net, image(1, 37, 29))
    assert (fast - plain).abs().max().item() <= 1e-4


def test_bf16_autocast_psnr_against_fp32():
    net = random_net(seed=4, **W8).eval()
    x = image(1, 48, 40)
    with torch.no_grad():
        ref = net.set_fast(False)(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = net.set_fast(True)(x)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert psnr(low, ref) >= 45


def test_bf16_autocast_on_reference_weights_no_worse_than_plain_bf16(reference):
    net, io = reference
    x = io['input'][:1, :, :64, :80].float()
    with torch.no_grad():
        ref = net.set_fast(False)(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            plain_low = net(x)
            fast_low = net.set_fast(True)(x)
    assert psnr(fast_low, ref) >= psnr(plain_low, ref) - 1


def gradients(net, x, fast):
    """``{parameter name: gradient, 'input': gradient}`` of one loss on the chosen path; every
    parameter must get a gradient."""
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = run_on_path(net, x, fast)
    (out - 0.5).pow(2).mean().backward()
    missing = [k for k, p in net.named_parameters() if p.grad is None]
    assert not missing, f'no gradient on the {"fast" if fast else "plain"} path: {missing}'
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    grads['input'] = x.grad.clone()
    return grads


def relative_errors(grads, ref):
    return {k: ((grads[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref}


def test_training_path_gradients_equal_float64():
    net = random_net(seed=5, dtype=torch.float64).train()
    x = image(2, 24, 19, dtype=torch.float64)
    errors = relative_errors(gradients(net, x, True), gradients(net, x, False))
    assert max(errors.values()) <= 1e-5, max(errors.items(), key=lambda kv: kv[1])


def test_training_path_gradients_equal_float32():
    net = random_net(seed=6).train()
    x = image(1, 24, 19)
    fast, plain = gradients(net, x, True), gradients(net, x, False)
    num = sum((fast[k] - plain[k]).pow(2).sum() for k in plain)
    den = sum(plain[k].pow(2).sum() for k in plain)
    assert (num / den).sqrt().item() <= 1e-5


@pytest.mark.parametrize('level, expert_runs', [(True, 2), ('block', 2), ('expert', 3)])
@pytest.mark.parametrize('fast', [True, False])
def test_checkpointing_gives_the_same_gradients_and_recomputes(level, expert_runs, fast):
    net = random_net(seed=7, dtype=torch.float64).train()
    ckpt = random_net(seed=7, dtype=torch.float64, checkpoint=level).train()
    calls = {'gate': 0, 'expert': 0, 'sfeb': 0}

    def count(key):
        def hook(*_):
            calls[key] += 1

        return hook

    block = next(m for m in ckpt.modules() if isinstance(m, ExpertBlock))
    block.gate.register_forward_pre_hook(count('gate'))
    block.experts[1].register_forward_pre_hook(count('expert'))
    ckpt.MSFEblock.register_forward_pre_hook(count('sfeb'))  # pre-hooks: a recomputation may stop early
    x = image(2, 20, 17, dtype=torch.float64)
    errors = relative_errors(gradients(ckpt, x, fast), gradients(net, x, fast))
    assert max(errors.values()) <= 1e-10
    assert calls == {'gate': 2, 'expert': expert_runs, 'sfeb': 2}, 'checkpointed parts run again in the backward pass'
    with torch.no_grad():
        ckpt(x)
    assert calls == {'gate': 3, 'expert': expert_runs + 1, 'sfeb': 3}, 'no recomputation without grad'


def test_cache_follows_weight_changes():
    net = random_net(seed=8).eval()
    x = image(1, 20, 20)
    with torch.no_grad():
        before = net(x)
        net.encoders[0][0].experts[2].conv55.weight.add_(0.05)
        after = net(x)
        assert (after - before).abs().max().item() > 1e-3
        assert (after - net.set_fast(False)(x)).abs().max().item() <= 1e-4
        net.set_fast(True)
        net.encoders[0][0].experts[1].c3.weight.data.mul_(2)  # invisible to autograd: eval() refreshes
        net.eval()
        assert (net(x) - net.set_fast(False)(x)).abs().max().item() <= 1e-4
        net.set_fast(True)
        net.load_state_dict(random_net(seed=9).state_dict())
        assert (net(x) - net.set_fast(False)(x)).abs().max().item() <= 1e-4


def test_train_drops_the_cache_and_eval_rebuilds_it():
    net = random_net(seed=10)
    feature = net.encoders[0][0].experts[2]
    net.eval()
    assert '_fused_cache' in feature.__dict__
    net.train()
    assert '_fused_cache' not in feature.__dict__


def test_state_dict_unchanged_by_eval_fuse_and_fast_forward():
    net = random_net(seed=11, fast=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.set_fast(True).eval().fuse()
    with torch.no_grad():
        net(image(1, 16, 16))
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any('fused' in k for k in after)


def test_custom_experts_fall_back_to_their_own_forward():
    with registered_expert(FastPathTestScaleExpert):
        net = random_net(seed=12, experts=['ColourExpert', 'FastPathTestScaleExpert', 'FeatureExpert']).eval()
    runs = []
    for m in net.modules():
        if isinstance(m, FastPathTestScaleExpert):
            m.register_forward_hook(lambda *_: runs.append(1))
    fast, plain = both_paths(net, image(1, 21, 26))
    assert (fast - plain).abs().max().item() <= 1e-4
    assert len(runs) == 2 * 5, 'its own forward, in each of the 5 blocks, on both paths'


def test_training_step_under_bf16_autocast_runs_on_the_fast_path():
    net = random_net(seed=13).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = (run_on_path(net, image(1, 16, 16), True) - 0.5).pow(2).mean()
    loss.backward()
    missing = [k for k, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize(
    'kwargs, option',
    [
        (dict(checkpoint='yes'), 'network_g.checkpoint'),
        (dict(checkpoint=1), 'network_g.checkpoint'),
        (dict(fast='no'), 'network_g.fast'),
    ],
)
def test_bad_switch_values_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        GMMoE(**SMALL, **kwargs)


def test_parameters_stay_contiguous_on_the_fast_path():
    net = random_net(seed=14).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    (net.set_fast(True)(image(1, 16, 16)) - 0.5).pow(2).mean().backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        net(image(1, 16, 16))
    assert all(p.is_contiguous() and p.grad.is_contiguous() for p in net.parameters())


def _ddp_step(rank, port, queue):
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = DistributedDataParallel(random_net(seed=15).train())
        for _ in range(2):
            (model(image(1, 16, 16, seed=rank)) - 0.5).pow(2).mean().backward()
    dist.destroy_process_group()
    queue.put([str(w.message) for w in caught if 'stride' in str(w.message).lower()])


def test_ddp_training_step_on_the_fast_path_gives_no_grad_stride_warning():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_step, args=(rank, port, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    messages = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert all(proc.exitcode == 0 for proc in procs)
    assert messages == [[], []], messages


def test_auto_takes_the_fast_path_on_cpu_only(monkeypatch):
    calls = []
    fast_forward = SFEB.forward_fast
    monkeypatch.setattr(SFEB, 'forward_fast', lambda self, x: calls.append(x.device.type) or fast_forward(self, x))
    net = GMMoE(**SMALL).eval()
    assert net.fast == 'auto'
    assert '_fused_cache' in net.encoders[0][0].experts[2].__dict__, 'eval() on CPU builds the fast path'
    x = image(1, 20, 20)
    with torch.no_grad():
        assert torch.equal(net(x), net.set_fast(True)(x))
    assert calls == ['cpu', 'cpu']
    # Another device (meta: shapes only) takes the straightforward path under auto, and eval()
    # builds no derived weights for it.
    meta = GMMoE(**SMALL).to('meta').eval()
    assert not any('_fused_cache' in m.__dict__ for m in meta.modules())
    with torch.no_grad():
        assert meta(torch.empty(1, 3, 20, 20, device='meta')).shape == (1, 3, 20, 20)
    assert calls == ['cpu', 'cpu']
