"""The gate contract (docs/experts.md, "Gates"), checked for every gate in ``GATE_REGISTRY``: a newly registered
gate is checked without editing a list. Built as ``Gate(channels, n_experts)``: weights of its declared kind's
shape that are non-negative and sum to one, for any input size; a gradient for every parameter; a strict
state-dict round trip; finite under bf16 autocast; deterministic in eval mode; and in a network: both paths
agree, top-k runs, the checkpoint loads back strictly and its configuration is read off its keys."""

from pathlib import Path

import pytest
import torch

import gmmoe_arch  # noqa: F401  (registers the built-in gates)
from gmmoe_arch import GMMoE, record_gates
from gmmoe_arch.archs.checkpoint_config import infer_config
from gmmoe_arch.archs.gates import GATE_REGISTRY, build_gate
from gmmoe_arch.archs.routing import KINDS, PER_PIXEL

from helpers import activate_branches

GATES = sorted(name for name, _ in GATE_REGISTRY)
SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
SIZES = [(1, 1), (3, 5), (16, 12)]


def build(name, channels=8, n=3, seed=0):
    torch.manual_seed(seed)
    return GATE_REGISTRY.get(name)(channels, n)


def expected_shape(gate, b, n, h, w):
    return (b, n, h, w) if gate.kind == PER_PIXEL else (b, n)


def test_the_registry_holds_the_built_in_gates():
    assert {'Gate', 'AdaptiveGate', 'SpatialGate'} <= set(GATES)


@pytest.mark.parametrize('name', GATES)
@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('channels', [8, 16])
def test_weights_have_the_kinds_shape_and_sum_to_one(name, size, channels):
    gate = build(name, channels).eval()
    assert gate.kind in KINDS
    u = torch.randn(2, channels, *size) * 3
    with torch.no_grad():
        w = gate(u)
    assert tuple(w.shape) == expected_shape(gate, 2, 3, *size)
    assert (w >= 0).all() and torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(1), torch.ones_like(w.sum(1)), rtol=0, atol=1e-6)


@pytest.mark.parametrize('name', GATES)
def test_every_parameter_gets_a_gradient(name):
    gate = build(name).train()
    u = torch.randn(2, 8, 6, 7)
    w = gate(u)
    (w * torch.randn_like(w)).sum().backward()
    for key, p in gate.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, key


@pytest.mark.parametrize('name', GATES)
def test_state_dict_round_trip_and_eval_determinism(name):
    gate, fresh = build(name, seed=0).eval(), build(name, seed=1).eval()
    u = torch.randn(3, 8, 5, 9)
    with torch.no_grad():
        first, second = gate(u), gate(u)
        assert torch.equal(first, second)
        fresh.load_state_dict(gate.state_dict(), strict=True)
        assert torch.equal(fresh(u), first)


@pytest.mark.parametrize('name', GATES)
def test_bf16_autocast_gives_finite_weights_close_to_fp32(name):
    gate = build(name).eval()
    u = torch.randn(2, 8, 9, 6)
    with torch.no_grad():
        exact = gate(u)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = gate(u)
    assert low.shape == exact.shape and torch.isfinite(low).all()
    assert (low.float() - exact).abs().max() < 0.05
    torch.testing.assert_close(low.float().sum(1), torch.ones_like(exact.sum(1)), rtol=0, atol=1e-2)


@pytest.mark.parametrize('name', GATES)
@pytest.mark.parametrize('top_k', [None, 1])
def test_in_a_network_paths_agree_top_k_runs_and_the_checkpoint_loads_back(name, top_k):
    torch.manual_seed(0)
    net = activate_branches(GMMoE(**SMALL, gate={'type': name}, gate_top_k=top_k)).eval()
    x = torch.rand(2, 3, 13, 10)
    with torch.no_grad(), record_gates(net) as gates:
        fast = net.set_fast(True)(x)
        plain = net.set_fast(False)(x)
    assert (fast - plain).abs().max() < 1e-4
    block = net.middle_blks[0]
    w = gates['middle_blks.0']
    assert tuple(w.shape) == expected_shape(block.gate, 2, 3, 4, 3) and type(block.gate).__name__ == name  # 16x12 / 4
    config = infer_config(net.state_dict())
    assert config.get('gate', {'type': 'Gate'}) == {'type': name}
    again = GMMoE(**config, gate_top_k=top_k).eval()
    again.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(again.set_fast(False)(x), plain)


def test_the_released_gate_is_the_default_and_keeps_its_released_names():
    torch.manual_seed(0)
    default = GMMoE(**SMALL)
    torch.manual_seed(0)
    named = GMMoE(**SMALL, gate='Gate', gate_temperature=2.0)
    keys = list(default.state_dict())
    assert 'middle_blks.0.GateNetwork.0.weight' in keys and not any('.gate.' in k for k in keys)
    assert keys == list(named.state_dict()) and named.middle_blks[0].gate.temperature == 2.0
    assert 'gate' not in infer_config(default.state_dict())


def test_an_adaptive_gate_keeps_its_own_names():
    keys = list(GMMoE(**SMALL, gate={'type': 'AdaptiveGate'}).state_dict())
    assert 'middle_blks.0.gate.log_temperature' in keys and not any('GateNetwork' in k for k in keys)


@pytest.mark.parametrize(
    'spec, temperature, message',
    [
        ('NoSuchGate', 3.0, 'network_g.gate: unknown gate "NoSuchGate"; registered: AdaptiveGate, Gate, SpatialGate'),
        (['Gate'], 3.0, 'network_g.gate: expected a gate name or a dict with "type"'),
        ({'type': 'AdaptiveGate'}, 2.0, 'network_g.gate_temperature applies to the released gate only'),
        ({'type': 'AdaptiveGate', 'temperature': 0}, 3.0, 'network_g.gate.temperature must be a number > 0'),
    ],
)
def test_bad_gate_options_name_the_option(spec, temperature, message):
    with pytest.raises((ValueError, KeyError)) as info:
        build_gate(spec, 8, 3, temperature)
    assert message in str(info.value)


def test_a_gate_without_a_kind_is_refused():
    class NoKind(torch.nn.Module):
        def __init__(self, channels, n_experts):
            super().__init__()

    GATE_REGISTRY.register(NoKind)
    try:
        with pytest.raises(ValueError, match='network_g.gate: gate NoKind declares no kind'):
            build_gate('NoKind', 8, 3)
    finally:
        GATE_REGISTRY._obj_map.pop('NoKind', None)


def test_the_guide_example_gate_meets_the_contract():
    guide = (Path(__file__).resolve().parents[2] / 'docs' / 'experts.md').read_text()
    code = guide.split('## Gates')[1].split('```python\n')[1].split('```')[0]
    exec(code, {})
    try:
        assert 'LinearGate' in GATE_REGISTRY
        test_weights_have_the_kinds_shape_and_sum_to_one('LinearGate', (3, 5), 8)
        test_every_parameter_gets_a_gradient('LinearGate')
        test_state_dict_round_trip_and_eval_determinism('LinearGate')
        test_bf16_autocast_gives_finite_weights_close_to_fp32('LinearGate')
        torch.manual_seed(0)
        net = GMMoE(**SMALL, gate={'type': 'LinearGate', 'temperature': 2.0}).eval()
        with torch.no_grad():
            assert net(torch.rand(1, 3, 9, 7)).shape == (1, 3, 9, 7)
        assert 'middle_blks.0.gate.linear.weight' in net.state_dict()
    finally:
        GATE_REGISTRY._obj_map.pop('LinearGate', None)
