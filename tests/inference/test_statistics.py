"""gmmoe_arch.inference.statistics: whole-image pooled statistics through the pooling seam, fp32 and bf16."""

import numpy as np
import pytest
import torch
from inference_helpers import CPU, smooth_image

from gmmoe_arch.archs.pooling import pooling_hook
from gmmoe_arch.inference.runner import RunOptions, _sweep, enhance_tensor
from gmmoe_arch.inference.tiling import TilePlan, Tiling

SITES = 27  # 9 expert blocks x (gate, channel attention, SCA) in the reference network


def into(out):
    def add(y0, y1, x0, x1, pred):
        out[..., y0:y1, x0:x1] += pred

    return add


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_one_tile_records_the_image_means_and_injecting_them_changes_nothing(ref_net, precision):
    """On a single tile the recorded statistics are the network's own global means (seen through the hook),
    site by site in call order; injecting them back gives the same output, injecting zeros another one."""
    x = smooth_image(100, 90)
    plan = TilePlan(100, 90, [(0, 100)], [(0, 90)])
    plain, injected, zeroed = (torch.zeros_like(x) for _ in range(3))
    seen = []

    def tile(y0, y1, x0, x1):
        return x[..., y0:y1, x0:x1]

    def watch(fmap, mean):
        seen.append(mean.double().flatten())

    options = RunOptions(CPU, precision)
    with torch.inference_mode(), options.autocast():
        with pooling_hook(watch):
            direct = ref_net(x)
        stats = _sweep(ref_net, tile, plan, CPU, None, into(plain)).means()
        _sweep(ref_net, tile, plan, CPU, stats, into(injected))
        _sweep(ref_net, tile, plan, CPU, {k: v * 0 for k, v in stats.items()}, into(zeroed))
    assert sorted(stats) == list(range(SITES)) and len(seen) == SITES
    # fp32: the same sums; bf16: maps summed in fp32 vs the network's mean rounded to bf16 (8 significant bits)
    rtol, atol = (0, 1e-6) if precision == 'fp32' else (2**-7, 1e-3)
    for site, mean in enumerate(seen):
        torch.testing.assert_close(stats[site], mean, rtol=rtol, atol=atol)
    torch.testing.assert_close(plain, direct.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(injected, plain, rtol=0, atol=1e-6 if precision == 'fp32' else 0.05)
    assert (zeroed - plain).abs().max() > 0.1  # the injected values are really used


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_tiled_output_approximates_whole_image_output(ref_net, precision):
    """Reference weights (far from init, outputs in about [-1.5, 2.5]), 336x256, two 256-px tiles.

    Measured (CPU), each tile on its own statistics / with one statistics pass:
    fp32: max 0.079 / 0.025, mean 0.0072 / 0.0014, gate weights off by up to 0.0098 / 0.0027;
    bf16 (each against the whole image in bf16): max 0.11 / 0.078, mean 0.0076 / 0.0032, gates 0.011 / 0.0037.
    """
    h, w = 336, 256
    x = smooth_image(h, w)
    whole_gates, local_gates, shared_gates = {}, {}, {}
    whole = enhance_tensor(
        ref_net, x, Tiling(max_pixels=h * w).plan(h, w), RunOptions(CPU, precision), gates=whole_gates
    )
    plan = Tiling(tile=256, overlap=64).plan(h, w, align=ref_net.padder_size)
    assert plan.ys == [(0, 256), (80, 336)] and plan.xs == [(0, 256)]
    local = enhance_tensor(ref_net, x, plan, RunOptions(CPU, precision, stat_passes=0), gates=local_gates)
    shared = enhance_tensor(ref_net, x, plan, RunOptions(CPU, precision, stat_passes=1), gates=shared_gates)

    def gate_error(gates):
        return max(float(np.abs(gates[k] - whole_gates[k]).max()) for k in whole_gates)

    err_local, err_shared = (local - whole).abs(), (shared - whole).abs()
    print(
        precision,
        float(err_local.max()),
        float(err_local.mean()),
        gate_error(local_gates),
        float(err_shared.max()),
        float(err_shared.mean()),
        gate_error(shared_gates),
    )
    assert err_shared.mean() < 0.5 * err_local.mean()
    if precision == 'fp32':  # bf16 rounds the gate weights themselves to steps of up to 2^-8
        assert err_shared.max() < 0.04 and err_shared.mean() < 0.003
        assert err_local.max() < 0.12 and err_local.mean() < 0.012
        assert gate_error(shared_gates) < 0.005 and gate_error(shared_gates) < 0.5 * gate_error(local_gates)


@pytest.fixture(scope='module')
def spatial_net():
    """Width 8, two levels, SpatialGate in every block, every branch active."""
    from gmmoe_arch import GMMoE

    from helpers import activate_branches

    torch.manual_seed(0)
    net = GMMoE(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1], gate={'type': 'SpatialGate'})
    return activate_branches(net).eval().requires_grad_(False)


def test_a_spatial_gates_global_context_is_shared_between_tiles(spatial_net):
    """SpatialGate pools its context through global_mean (mean and mean of squares: 2 sites, plus the experts'
    2 per block): one tile's recorded statistics injected back give the whole-image output within 1e-5, and
    with a statistics pass the tiled output is closer to the whole image than with each tile's own context.

    Measured (CPU, 120x100, six 64-px tiles): mean error 3.4e-4 on the tiles' own statistics, 3.5e-5 with one
    statistics pass; per-image gate weights off by up to 2.0e-4."""
    h, w = 120, 100
    x = smooth_image(h, w)
    whole_plan = TilePlan(h, w, [(0, h)], [(0, w)])
    tile = into_tile(x)
    plain, injected = torch.zeros_like(x), torch.zeros_like(x)
    with torch.inference_mode():
        direct = spatial_net(x)
        stats = _sweep(spatial_net, tile, whole_plan, CPU, None, into(plain)).means()
        _sweep(spatial_net, tile, whole_plan, CPU, stats, into(injected))
    assert len(stats) == 5 * 4
    torch.testing.assert_close(plain, direct, rtol=0, atol=1e-5)
    torch.testing.assert_close(injected, direct, rtol=0, atol=1e-5)
    whole_gates, shared_gates = {}, {}
    whole = enhance_tensor(spatial_net, x, Tiling(max_pixels=h * w).plan(h, w), RunOptions(CPU), gates=whole_gates)
    plan = Tiling(tile=64, overlap=16).plan(h, w, align=spatial_net.padder_size)
    assert len(plan) == 6
    local = enhance_tensor(spatial_net, x, plan, RunOptions(CPU, stat_passes=0))
    shared = enhance_tensor(spatial_net, x, plan, RunOptions(CPU, stat_passes=1), gates=shared_gates)
    err_local, err_shared = (local - whole).abs().mean(), (shared - whole).abs().mean()
    assert err_shared < 0.5 * err_local
    for path, g in whole_gates.items():  # per-image mean weights per block, as --gates writes them
        assert g.shape == (3,) and abs(g.sum() - 1) < 1e-6
        assert np.abs(shared_gates[path] - g).max() < 0.002


def into_tile(x):
    def tile(y0, y1, x0, x1):
        return x[..., y0:y1, x0:x1]

    return tile
