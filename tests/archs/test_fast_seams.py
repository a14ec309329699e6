"""The fast path's seams: layers read by attribute, no writes into shared inputs, private torch APIs checked."""

import warnings

import pytest
import torch
from torch import nn

from gmmoe_arch.archs import fast_ops
from gmmoe_arch.archs.fast_path import FastPath
from gmmoe_arch.archs.gmmoe_arch import GMMoE, activate_branches
from gmmoe_arch.archs.torch_private import (
    ADAPTERS,
    CheckedAdapter,
    _check_conv,
    _check_version,
    _public_conv,
    onednn_conv,
    onednn_conv_add,
    version_counter,
)

from arch_helpers import FAST_MODULES, paths_taken

SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


def small_net(seed=0):
    torch.manual_seed(seed)
    return activate_branches(GMMoE(**SMALL), norm_jitter=0.1).eval()


def image(b=1, h=20, w=24, seed=1):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def conv_attributes():
    """``(class, attribute)`` for every named attribute of a built-in fast module that holds convs."""
    net = GMMoE(**SMALL)
    cases = []
    for cls in FAST_MODULES:
        module = next(m for m in net.modules() if type(m) is cls)
        for name, child in module.named_children():
            if any(isinstance(m, nn.Conv2d) for m in child.modules()):
                cases.append((cls, name))
            for sub, grandchild in child.named_children():
                if isinstance(grandchild, nn.Conv2d) and not sub.isdigit():
                    cases.append((cls, f'{name}.{sub}'))
    return cases


@pytest.mark.parametrize('cls, path', conv_attributes(), ids=lambda v: getattr(v, '__name__', v))
@pytest.mark.parametrize('change', ['rename', 'remove'])
def test_a_renamed_or_removed_conv_fails_loudly_on_both_paths(cls, path, change):
    net = small_net()  # eval(): the fast path's weights are cached before the change
    module = next(m for m in net.modules() if type(m) is cls)
    *parents, name = path.split('.')
    parent = module.get_submodule('.'.join(parents))
    layer = getattr(parent, name)
    delattr(parent, name)
    if change == 'rename':
        parent.add_module(name + '_renamed', layer)
    for fast in (True, False):
        with torch.no_grad(), pytest.raises(AttributeError, match=f"'{name}'"):
            net.set_fast(fast)(image())


def test_a_missing_derived_weight_or_a_foreign_conv_is_named():
    net = small_net()
    feature = net.encoders[0][0].experts[2]
    with torch.no_grad():
        w = feature.fused()
    assert w.conv135[0].shape[-1] == 5
    with pytest.raises(AttributeError, match=r'FeatureExpert.fused_params\(\) derives no weight "conv7".*conv135'):
        _ = w.conv7
    with pytest.raises(KeyError, match='not one of its own nn.Conv2d layers'):
        w[net.intro]


# Every public function of fast_ops with arguments of the shapes the network gives it.
def _op_calls(dtype):
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        x = torch.rand(*shape, generator=g).to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    x, weight, bias = t(2, 6, 9, 7), t(4, 6, 3, 3), t(4)
    out = t(2, 4, 9, 7)
    norm = nn.LayerNorm(6).to(dtype)
    return {
        'conv': (fast_ops.conv, (x, weight, bias, 1, 'relu')),
        'conv_add': (fast_ops.conv_add, (x, weight, bias, out, 1, 'relu')),
        'conv_mul': (fast_ops.conv_mul, (x, weight, bias, out, None, 1, 'sigmoid')),
        'conv_mul_plus': (fast_ops.conv_mul, (x, weight, bias, t(2, 1, 9, 7), out, 1)),
        'sum_of_products': (fast_ops.sum_of_products, (x, t(2, 6, 1, 1), x, t(2, 1, 9, 7))),
        'upsample_add': (fast_ops.upsample_add, (x, t(8, 6, 1, 1), t(2, 2, 18, 14))),
        'weighted_sum': (fast_ops.weighted_sum, (t(2, 3).softmax(1), [x, x, t(2, 6, 9, 7)], True)),
        'channel_mean': (fast_ops.channel_mean, (x,)),
        'channel_max': (fast_ops.channel_max, (t(2, 16, 5, 4),)),
        'fast_channel_mean_max': (fast_ops.fast_channel_mean_max, (x,)),
        'dilated_depthwise': (fast_ops.dilated_depthwise, (x, t(6, 1, 7, 7), t(6), 3)),
        'layer_norm_nchw': (fast_ops.layer_norm_nchw, (x, norm)),
    }


def _tensors(args):
    for a in args:
        if torch.is_tensor(a):
            yield a
        elif isinstance(a, list):
            yield from a


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_no_fast_op_writes_into_its_arguments(dtype):
    for name, (fn, args) in _op_calls(dtype).items():
        before = [a.clone() for a in _tensors(args)]
        with torch.no_grad():
            fn(*args)
        assert all(torch.equal(a, b) for a, b in zip(_tensors(args), before)), name


@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_no_expert_gate_or_block_changes_its_input_on_the_fast_path(batch, dtype):
    net = small_net(seed=3)
    changed, checked = [], []

    def keep(module, args):
        module._input_copy = args[0].clone()

    def compare(module, args, _out):
        checked.append(type(module).__name__)
        if not torch.equal(args[0], module._input_copy):
            changed.append(type(module).__name__)

    for m in net.modules():
        if type(m).__name__ in ('ColourExpert', 'DetailExpert', 'FeatureExpert', 'Gate', 'ExpertBlock', 'SFEB'):
            m.register_forward_pre_hook(keep)
            m.register_forward_hook(compare)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype or torch.float32, enabled=dtype is not None):
        with paths_taken() as taken:
            net.set_fast(True)(image(batch))
    assert taken and set(taken) == {'fast'}
    assert len(checked) == 5 * 5 + 1  # 5 blocks: the gate, 3 experts and the block itself; and the SFEB
    assert changed == []


def test_each_private_api_passes_its_self_check_on_this_torch():
    for adapter in ADAPTERS:
        assert adapter.uses_private == (adapter.private is not None), adapter.name


@pytest.mark.parametrize('adapter', ADAPTERS, ids=lambda a: a.name)
@pytest.mark.parametrize('batch', [1, 2])
def test_each_adapter_forced_onto_its_fallback_gives_equal_outputs(adapter, batch, monkeypatch):
    net = small_net(seed=4)
    x = image(batch, 26, 21)
    calls = []
    public = adapter.public
    monkeypatch.setattr(adapter, 'public', lambda *args: calls.append(1) or public(*args))
    with torch.no_grad():
        ours = net(x)
        with adapter.fallback_only():
            fallback = net(x)
            feature = net.encoders[0][0].experts[2]
            rebuilt = feature.fused() is not feature.fused()
    assert calls, 'the fallback ran'
    assert (fallback - ours).abs().max().item() <= 1e-6
    assert rebuilt == (adapter is version_counter), 'without a version counter nothing is cached'


def test_a_private_api_that_disagrees_or_raises_is_replaced_by_its_fallback():
    x = torch.rand(1, 4, 6, 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(3, 4, 3, 3), torch.rand(3)
    args = (x, weight, bias, [1, 1], [1, 1], [1, 1], 1, 'relu', [], '')
    expected = _public_conv(*args)

    def off_by_one(*a):
        return _public_conv(*a) + 1

    def changed_signature(x, weight):
        return x

    for private in (off_by_one, changed_signature):
        adapter = CheckedAdapter('fake._conv', private, _public_conv, _check_conv)
        with pytest.warns(RuntimeWarning, match='fake._conv failed its self-check'):
            assert torch.equal(adapter(*args), expected)
        assert not adapter.uses_private
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            adapter(*args)  # decided once: no second check, no second warning
    frozen = CheckedAdapter('fake._version', lambda t: 0, version_counter.public, _check_version)
    with pytest.warns(RuntimeWarning, match='did not grow'):
        assert not frozen.uses_private


def test_the_conv_adapters_are_what_the_fast_path_calls(monkeypatch):
    calls = {'conv': 0, 'conv_add': 0}
    for key, adapter in (('conv', onednn_conv), ('conv_add', onednn_conv_add)):
        chosen = adapter._chosen or adapter._choose()
        monkeypatch.setattr(
            adapter, '_chosen', lambda *a, key=key, chosen=chosen: calls.update({key: calls[key] + 1}) or chosen(*a)
        )
    with torch.no_grad():
        small_net()(image())
    assert calls['conv'] > 0 and calls['conv_add'] > 0


def test_fast_modules_are_the_ones_the_helpers_patch():
    net = GMMoE(**SMALL)
    assert {type(m) for m in net.modules() if isinstance(m, FastPath)} == set(FAST_MODULES)
