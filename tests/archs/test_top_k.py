"""network_g.gate_top_k: each image runs only its k highest-weighted experts per block (inference), sampled
picks in training, the option's checks, tiled enhancement and export."""

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network

import gmmoe_arch  # noqa: F401  (registers the arch and the experts)
from gmmoe_arch import GMMoE, record_gates
from gmmoe_arch.archs.gmmoe_arch import ExpertBlock
from gmmoe_arch.archs.pooling import pooling_hook
from gmmoe_arch.enhance_cli import main
from gmmoe_arch.inference.loading import load_network
from gmmoe_arch.inference.runner import RunOptions, enhance_image, enhance_tensor
from gmmoe_arch.inference.tiling import Tiling

from helpers import activate_branches, block_inputs_outputs, distinct_images

FIVE = ['ColourExpert', 'DetailExpert', 'FeatureExpert', 'RainExpert', 'HazeExpert']
SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


def routed_net(seed=0, gate_std=1.0, **kwargs):
    """Five experts, every branch active; gate weights drawn from N(0, gate_std^2), so that images differ
    in the experts they pick."""
    torch.manual_seed(seed)
    net = activate_branches(GMMoE(**SMALL, experts=FIVE, **kwargs))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith('residual_scale'):
                p.normal_(0, 0.5)
            elif '.gate.' in name:
                p.normal_(0, gate_std)
    return net


def images(b, h=24, w=20, seed=1):
    """``b`` images with different colour casts and brightness (the gates see different means)."""
    g = torch.Generator().manual_seed(seed)
    cast = torch.rand(b, 3, 1, 1, generator=g) * 2
    return (torch.rand(b, 3, h, w, generator=g) * cast).clamp(0, 1)


def block_paths(net):
    return [path for path, m in net.named_modules() if isinstance(m, ExpertBlock)]


def count_expert_calls(net):
    """``{(block path, expert index): [batch size of each call]}``, filled by forward hooks (removed by
    the caller through the returned handles)."""
    calls, handles = {}, []
    for path in block_paths(net):
        for i, expert in enumerate(net.get_submodule(path).experts):

            def hook(_m, inputs, _out, key=(path, i)):
                calls.setdefault(key, []).append(inputs[0].shape[0])

            handles.append(expert.register_forward_hook(hook))
    return calls, handles


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('batch', [1, 3])
def test_top_1_runs_each_image_through_exactly_its_own_expert(fast, batch):
    net = routed_net(gate_top_k=1).eval().set_fast(fast)
    calls, handles = count_expert_calls(net)
    with torch.no_grad(), record_gates(net) as gates:
        net(distinct_images()[:batch])
    for h in handles:
        h.remove()
    picked = {path: gates[path].topk(1).indices.flatten().tolist() for path in block_paths(net)}
    if batch == 3:  # the test's premise: some block routes the images to different experts
        assert any(len(set(p)) > 1 for p in picked.values()), picked
    for path, choice in picked.items():
        expected = {i: [choice.count(i)] for i in set(choice)}  # one call per picked expert, on its images
        assert {i: calls[path, i] for i in range(5) if (path, i) in calls} == expected, (path, choice)


@pytest.mark.parametrize('fast', [True, False])
def test_top_k_equals_the_renormalised_mix_of_the_k_best_experts(fast):
    net = routed_net(gate_top_k=2).eval().set_fast(fast)
    seen = block_inputs_outputs(net, distinct_images())
    with torch.no_grad():
        for block, (u, out) in seen.items():
            w = block.gate(u)
            for b in range(3):
                top = w[b].topk(2).indices.tolist()
                mix = sum(w[b, i] * block.experts[i](u[b : b + 1]) for i in top) / w[b, top].sum()
                torch.testing.assert_close(out[b : b + 1], mix, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fast', [True, False])
def test_top_n_equals_dense(fast):
    x = images(2)
    with torch.no_grad():
        dense = routed_net().eval().set_fast(fast)(x)
        top_n = routed_net(gate_top_k=5).eval().set_fast(fast)(x)
    torch.testing.assert_close(top_n, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fast', [True, False])
def test_bf16_autocast_top_k_sums_experts_of_mixed_dtypes(fast):
    """Under autocast the built-in experts' fast path returns bfloat16 and the plain ones float32: a batch
    whose images pick different experts still sums them, in the dense sum's dtype, and top-n = dense."""
    x = distinct_images()
    net = routed_net().eval().set_fast(fast)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        dense = net(x)
        top_n = net.set_gate_top_k(5)(x)
        top_1 = net.set_gate_top_k(1)(x)
    assert top_1.dtype == dense.dtype == top_n.dtype and torch.isfinite(top_1).all()
    torch.testing.assert_close(top_n, dense, rtol=0, atol=0.02)


def test_a_pooling_hook_runs_every_expert_and_gives_the_same_output():
    """The tiled enhancer numbers the global means in call order: under a pooling hook every expert runs
    (the same sites on every tile, whatever each tile picked), and the output is still the top-k mix."""
    net = routed_net(gate_top_k=1).eval()
    x = images(2)
    calls, handles = count_expert_calls(net)
    with torch.no_grad():
        alone = net(x)
        sparse_calls = sum(len(c) for c in calls.values())
        calls.clear()
        with pooling_hook(lambda x, mean: None):
            watched = net(x)
    for h in handles:
        h.remove()
    assert sum(len(c) for c in calls.values()) == 5 * len(block_paths(net)) > sparse_calls
    torch.testing.assert_close(watched, alone, rtol=1e-6, atol=1e-6)


def test_training_samples_every_expert_and_each_gets_gradients():
    """Top-1 training (Gumbel-sampled picks): over a few steps every expert of every block is picked and
    trained, and the gate gets a gradient although each image's single weight is renormalised to 1."""
    net = routed_net(gate_top_k=1, gate_std=0.1).train()
    calls, handles = count_expert_calls(net)
    torch.manual_seed(3)
    for step in range(5):
        net(images(4, 16, 16, seed=step)).square().mean().backward()
    for h in handles:
        h.remove()
    assert all((path, i) in calls for path in block_paths(net) for i in range(5)), sorted(calls)
    assert all(p.grad is not None for p in net.parameters())
    for path in block_paths(net):
        gate = net.get_submodule(path).gate
        # measured: 5e-5 .. 1e-3; renormalised weights alone (no m / m.detach()) leave rounding, 1e-12 .. 3e-11
        assert gate.mlp[2].weight.grad.abs().max() > 1e-6, path


@pytest.mark.parametrize('level', ['block', 'expert'])
def test_checkpointed_top_k_training_recomputes_the_same_picks(level):
    """Recomputation in the backward pass restores torch's generator: the sampled picks and so the
    gradients are those of the run without checkpointing."""
    grads = {}
    for checkpoint in (False, level):
        net = routed_net(gate_top_k=2, gate_std=0.1, checkpoint=checkpoint).train()
        torch.manual_seed(7)
        net(images(2, 16, 16)).square().mean().backward()
        grads[checkpoint] = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert grads[False].keys() == grads[level].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[level][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize('k', [0, 6, 1.5, True, '1'])
def test_bad_gate_top_k_is_named(k):
    with pytest.raises(ValueError, match=r'network_g\.gate_top_k .*1 to 5'):
        build_network({'type': 'GMMoE', **SMALL, 'experts': FIVE, 'gate_top_k': k})


def test_set_gate_top_k_switches_every_block():
    net = routed_net()
    assert net.gate_top_k is None and all(m.top_k is None for m in net.modules() if isinstance(m, ExpertBlock))
    net.set_gate_top_k(3)
    assert all(m.top_k == 3 for m in net.modules() if isinstance(m, ExpertBlock))
    with pytest.raises(ValueError, match='network_g.gate_top_k'):
        net.set_gate_top_k(9)


def test_enhance_reads_gate_top_k_from_the_option_file_and_tiles_pick_alike(tmp_path, monkeypatch):
    """A dense-trained checkpoint run with ``gate_top_k: 1`` from the option file: in the output pass every
    tile of an image picks the same experts in every block (their gates read the injected whole-image
    means), and the tiled output matches the whole image's."""
    torch.save({'params': routed_net().state_dict()}, tmp_path / 'net.pth')
    opt = {'network_g': {'type': 'GMMoE', **SMALL, 'experts': FIVE, 'gate_top_k': 1}}
    (tmp_path / 'top1.yml').write_text(yaml.safe_dump(opt))
    net = load_network(str(tmp_path / 'net.pth'), option_file=str(tmp_path / 'top1.yml'), device='cpu')
    assert net.gate_top_k == 1
    picks = []
    route = ExpertBlock.route

    def recording(block, weights):
        chosen, mix = route(block, weights)
        picks.append((block, chosen.tolist()))
        return chosen, mix

    monkeypatch.setattr(ExpertBlock, 'route', recording)
    x = images(1, 96, 80)
    cpu = torch.device('cpu')
    whole = enhance_tensor(net, x, Tiling(max_pixels=96 * 80).plan(96, 80), RunOptions(cpu))
    whole_picks = dict(picks)
    plan = Tiling(tile=64, overlap=16).plan(96, 80, align=net.padder_size)
    assert len(plan) == 4
    picks.clear()
    tiled = enhance_tensor(net, x, plan, RunOptions(cpu, stat_passes=1))
    output_pass = picks[len(picks) // 2 :]  # the statistics pass, then the output pass
    per_block = {}
    for block, chosen in output_pass:
        per_block.setdefault(block, []).append(chosen)
    assert len(per_block) == 5 and all(len(c) == len(plan) for c in per_block.values())
    assert all(c == [whole_picks[block]] * len(plan) for block, c in per_block.items())
    assert (tiled - whole).abs().max() < 0.004 and (tiled - whole).abs().mean() < 0.0005
    # the command line: the same option file, the same result as the library's (and not the dense one)
    img = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'in.png'), img[..., ::-1])
    argv = ['enhance', str(tmp_path / 'in.png'), '-o', str(tmp_path / 'out'), '--tile', '64', '--overlap', '16']
    argv += ['--weights', str(tmp_path / 'net.pth'), '--opt', str(tmp_path / 'top1.yml'), '--no-progress']
    assert main(argv) == 0
    written = cv2.imread(str(tmp_path / 'out' / 'in.png'))[..., ::-1]
    assert np.array_equal(written, enhance_image(net, img, tile=64, overlap=16))
    assert not np.array_equal(written, enhance_image(net.set_gate_top_k(None), img, tile=64, overlap=16))


def test_export_refuses_a_top_k_network_in_one_line(tmp_path, capsys):
    from gmmoe_arch.export import ExportError, export_onnx

    with pytest.raises(ExportError, match=r'^network_g\.gate_top_k: 2: '):
        export_onnx(routed_net(gate_top_k=2), str(tmp_path / 'm.onnx'))
    torch.save({'params': routed_net().state_dict()}, tmp_path / 'net.pth')
    opt = {'network_g': {'type': 'GMMoE', **SMALL, 'experts': FIVE, 'gate_top_k': 1}}
    (tmp_path / 'top1.yml').write_text(yaml.safe_dump(opt))
    argv = ['export', '--weights', str(tmp_path / 'net.pth'), '--opt', str(tmp_path / 'top1.yml')]
    status = main(argv + ['-o', str(tmp_path / 'out' / 'm.onnx')])
    err = capsys.readouterr().err
    assert status == 2 and err.count('\n') == 1 and 'error: network_g.gate_top_k: 1: ' in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['net.pth', 'top1.yml']


def test_one_tile_enhance_runs_only_the_picked_experts():
    """A one-tile image needs no shared statistics, so no pooling hook is installed and top-1 skips the
    experts it did not pick (with several tiles every expert runs, see the pooling-hook test above)."""
    net = routed_net(gate_top_k=1).eval()
    x = images(1, 32, 40)
    calls, handles = count_expert_calls(net)
    with record_gates(net) as gates:
        out = enhance_tensor(
            net, x, Tiling(max_pixels=32 * 40).plan(32, 40, net.padder_size), RunOptions(torch.device('cpu'))
        )
    for h in handles:
        h.remove()
    with torch.no_grad():
        assert torch.equal(out, net(x))
    for path in block_paths(net):
        assert sorted(i for p, i in calls if p == path) == gates[path].topk(1).indices.flatten().tolist()
