"""Sparse routing that keeps quality (issue 23): shared experts beside the routed ones, the noise of the top-k
picks in training (network_g.gate_noise) and the smooth pick probability of Shazeer's load loss."""

import math

import pytest
import torch

import gmmoe_arch  # noqa: F401  (registers the arch and the experts)
from gmmoe_arch import GMMoE
from gmmoe_arch.archs import routing
from gmmoe_arch.archs.gmmoe_arch import ExpertBlock, record_loads

from helpers import activate_branches, block_inputs_outputs, distinct_images

SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
ROUTED = ['ColourExpert', 'DetailExpert', 'RainExpert', 'HazeExpert']


def shared_net(seed=0, **kwargs):
    torch.manual_seed(seed)
    net = activate_branches(GMMoE(**SMALL, experts=ROUTED, shared_experts=['FeatureExpert'], **kwargs))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if '.gate.' in name or 'GateNetwork' in name:
                p.normal_(0, 1.0)
    return net


def blocks(net):
    return [(path, m) for path, m in net.named_modules() if isinstance(m, ExpertBlock)]


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('batch', [1, 3])
def test_top_1_plus_one_shared_runs_exactly_two_experts_per_block_per_image(fast, batch):
    net = shared_net(gate_top_k=1).eval().set_fast(fast)
    images_run, handles = {}, []
    for path, block in blocks(net):
        for expert in list(block.experts) + list(block.shared):

            def hook(_m, inputs, _out, path=path):
                images_run[path] = images_run.get(path, 0) + inputs[0].shape[0]

            handles.append(expert.register_forward_hook(hook))
    with torch.no_grad():
        net(distinct_images()[:batch])
    for h in handles:
        h.remove()
    assert images_run == {path: 2 * batch for path, _ in blocks(net)}


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('top_k', [None, 1, 2])
def test_the_block_output_is_the_convex_mix_of_routed_and_shared(fast, top_k):
    net = shared_net(gate_top_k=top_k, shared_weight=0.3).eval().set_fast(fast)
    seen = block_inputs_outputs(net, distinct_images())
    with torch.no_grad():
        for block, (u, out) in seen.items():
            w = block.gate(u)
            for b in range(3):
                top = w[b].topk(top_k or len(ROUTED)).indices.tolist()
                routed = sum(w[b, i] * block.experts[i](u[b : b + 1]) for i in top) / w[b, top].sum()
                expected = 0.7 * routed + 0.3 * block.shared[0](u[b : b + 1])
                torch.testing.assert_close(out[b : b + 1], expected, rtol=1e-5, atol=1e-5)


def test_shared_experts_are_saved_under_their_own_names_and_load_strictly():
    net = shared_net()
    keys = list(net.state_dict())
    shared = [k for k in keys if '.shared.' in k]
    prefixes = tuple(f'{path}.shared.0.' for path, _ in blocks(net))
    assert shared and all(k.startswith(prefixes) for k in shared)
    assert {k[: k.index('.shared.')] for k in shared} == {path for path, _ in blocks(net)}
    plain = GMMoE(**SMALL, experts=ROUTED)
    assert [k for k in keys if '.shared.' not in k] == list(plain.state_dict())  # routed names unchanged
    other = GMMoE(**SMALL, experts=ROUTED, shared_experts=['FeatureExpert'])
    other.load_state_dict(net.state_dict(), strict=True)
    x = distinct_images()
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), net.eval()(x))
    with pytest.raises(RuntimeError, match='shared'):
        other.load_state_dict(plain.state_dict(), strict=True)


def test_without_shared_experts_the_block_has_none():
    net = GMMoE(**SMALL)
    assert all(len(block.shared) == 0 for _, block in blocks(net))


@pytest.mark.parametrize(
    'option, value, message',
    [
        ('shared_experts', 'FeatureExpert', 'network_g.shared_experts: expected a list'),
        ('shared_weight', 1.0, 'network_g.shared_weight must be a number between 0 and 1'),
        ('gate_noise', 'normal', 'network_g.gate_noise: expected gumbel, gaussian, none'),
        ('gate_noise', {'type': 'gaussian', 'std': 0}, 'network_g.gate_noise'),
        ('gate_noise', {'type': 'gaussian', 'scale': 1}, 'network_g.gate_noise'),
    ],
)
def test_bad_sparse_options_name_the_option(option, value, message):
    with pytest.raises(ValueError, match=message):
        GMMoE(**SMALL, experts=ROUTED, **{option: value})


@pytest.mark.parametrize('noise', ['gumbel', 'gaussian', {'type': 'gaussian', 'std': 0.5}])
def test_noisy_picks_vary_in_training_and_not_at_inference(noise):
    w = torch.softmax(torch.tensor([[0.5, 0.2, 0.0, -0.3]]).repeat(400, 1), dim=1)
    block = ExpertBlock(8, ROUTED, top_k=1, **routing_options(noise))
    block.train()
    with torch.enable_grad():
        picks = block.route(w.requires_grad_())[0].flatten()
    assert len(set(picks.tolist())) > 1  # noise: not always the largest
    assert (picks == 0).float().mean() > 0.3  # but the largest most often
    block.eval()
    assert set(block.route(w)[0].flatten().tolist()) == {0}


def routing_options(noise):
    from gmmoe_arch.archs.gmmoe_arch import parse_noise

    kind, std = parse_noise(noise)
    return {'noise': kind, 'noise_std': std}


def test_no_noise_picks_as_at_inference_in_training():
    w = torch.softmax(torch.randn(50, 4), dim=1)
    chosen, _ = routing.top_k(w, 1, True, noise=routing.NO_NOISE)
    assert torch.equal(chosen, w.topk(1).indices)


@pytest.mark.parametrize('noise', [routing.GAUSSIAN, routing.GUMBEL])
@pytest.mark.parametrize('k', [1, 2])
def test_pick_probability_matches_resampling_one_expert(noise, k):
    """P_i of :func:`pick_probability` is the chance that expert i is picked when its own noise is drawn
    again and the others' kept: checked by Monte Carlo for one draw of the others."""
    torch.manual_seed(0)
    w = torch.softmax(torch.tensor([[0.6, 0.1, -0.2, -0.5]]), dim=1)
    scores = routing.noisy_scores(w, noise, 0.8)
    p = routing.pick_probability(w, scores, k, noise, 0.8)[0]
    trials = 20000
    for i in range(4):
        fresh = routing.noisy_scores(w.expand(trials, 4), noise, 0.8)[:, i]
        others = torch.cat([scores[0, :i], scores[0, i + 1 :]])
        threshold = others.topk(k).values[-1]
        assert abs((fresh > threshold).float().mean().item() - p[i].item()) < 0.015, (i, p)


def test_pick_probability_has_a_gradient_and_is_one_for_dense():
    w = torch.softmax(torch.randn(3, 4, requires_grad=True), dim=1)
    scores = routing.noisy_scores(w, routing.GAUSSIAN)
    routing.pick_probability(w, scores, 1, routing.GAUSSIAN).sum().backward()
    assert torch.equal(routing.pick_probability(w, scores, 4, routing.GAUSSIAN), torch.ones(3, 4))
    with pytest.raises(ValueError, match='needs noisy routing'):
        routing.pick_probability(w, scores, 1, routing.NO_NOISE)


def test_record_loads_records_the_sampling_blocks_only():
    net = shared_net(gate_top_k=1, gate_noise='gaussian')
    x = distinct_images()
    with record_loads(net) as loads:
        net.train()(x)
    assert set(loads) == {path for path, _ in blocks(net)}
    assert all(v.shape == (3, len(ROUTED)) and v.requires_grad for v in loads.values())
    assert all(block.load_sink is None for _, block in blocks(net))
    with torch.no_grad(), record_loads(net) as loads:
        net.eval()(x)
    assert loads == {}


def test_gumbel_load_is_the_probability_of_an_exponential_race():
    """With Gumbel noise and k = 1, the chance that expert i beats a fixed threshold t is 1 - exp(-w_i e^-t)."""
    w = torch.tensor([[0.5, 0.3, 0.2]])
    scores = torch.tensor([[0.1, 0.4, -1.0]])
    p = routing.pick_probability(w, scores, 1, routing.GUMBEL)[0]
    expected = [1 - math.exp(-0.5 * math.exp(-0.4)), 1 - math.exp(-0.3 * math.exp(-0.1))]
    torch.testing.assert_close(p[:2], torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('checkpoint', [True, 'expert'])
def test_checkpointing_recomputes_the_same_noisy_picks_and_gradients(checkpoint):
    """Gaussian picks and shared experts under activation checkpointing: the recomputed blocks draw the same
    noise (torch restores the generator), so the gradients, load losses included, equal those without."""
    x = distinct_images()
    grads = []
    for level in (False, checkpoint):
        net = shared_net(gate_top_k=1, gate_noise='gaussian', checkpoint=level).train()
        torch.manual_seed(5)
        with record_loads(net) as loads:
            out = net(x)
        (out.square().mean() + sum(v.sum() for v in loads.values())).backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any('.shared.' in k for k in grads[0])
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-4, atol=1e-6)
