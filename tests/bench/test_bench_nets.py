"""gmmoe_arch.bench.nets: the bench model is a real GMMoEModel with the weights of the seeded bench network, and
a bench training step is the model's own (it changes the weights, reports the PSNR loss, stops on a NaN)."""

import pytest
import torch

from gmmoe_arch.bench import nets
from gmmoe_arch.losses.psnr_loss import PSNRLoss
from gmmoe_arch.models.gmmoe_model import GMMoEModel, TrainingDivergedError

TINY = dict(preset='paper', width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])


def test_bench_model_holds_the_bench_networks_weights():
    model = nets.bench_model(TINY, seed=3)
    net = nets.random_net(**TINY, seed=3)
    assert isinstance(model, GMMoEModel) and model.net_g.training
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.net_g.state_dict().values()))
    other = nets.random_net(**TINY, seed=4)
    assert not torch.equal(net.intro.weight, other.intro.weight)


def test_a_training_step_is_the_models_and_updates_the_weights():
    model = nets.bench_model(TINY, seed=0, train={'optim_g': {'type': 'SGD', 'lr': 0.1}})
    assert isinstance(model.optimizer_g, torch.optim.SGD)
    lq, gt = nets.random_batch(2, 32, seed=1)
    expected = PSNRLoss()(nets.random_net(**TINY, seed=0)(lq), gt).item()
    before = model.net_g.intro.weight.detach().clone()
    loss = nets.train_step(model, lq, gt)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert not torch.equal(before, model.net_g.intro.weight)
    with pytest.raises(TrainingDivergedError):
        nets.train_step(model, lq * float('nan'), gt)


def test_agreement_and_gradient_agreement():
    x = torch.rand(1, 3, 4, 4)
    assert nets.agreement(x, x) == {'max_abs_diff': 0.0, 'psnr_db': None}
    assert nets.agreement(x + 0.1, x)['psnr_db'] == pytest.approx(20.0, abs=1e-4)
    a, b = nets.random_net(**TINY, seed=0), nets.random_net(**TINY, seed=0)
    lq, gt = nets.random_batch(1, 16, seed=1)
    grads = nets.grad_agreement({'plain': a, 'same': b}, PSNRLoss(), lq, gt)
    assert grads['same'] == {'max_param_rel': 0.0, 'global_rel': 0.0}
