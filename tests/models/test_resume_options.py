"""On resume the option file's lr, optimiser and scheduler settings take effect (in-process, tiny network)."""

import copy
import os

import pytest
import torch
from basicsr.models import build_model
from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from gmmoe_arch.models.resume_options import ResumeConflictError, resume_with_options, scheduled_lr

TINY = {'type': 'GMMoE', 'width': 4, 'enc_blk_nums': [1], 'middle_blk_num': 1, 'dec_blk_nums': [1]}
MULTISTEP = {'type': 'MultiStepRestartLR', 'milestones': [3], 'gamma': 0.5}


def make_opt(tmp_path, scheduler, optim=None):
    paths = {k: str(tmp_path / k) for k in ('models', 'training_states')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    paths['resume_state'] = str(tmp_path / 'training_states' / '2.state')
    return {
        'name': 'resume',
        'model_type': 'GMMoEModel',
        'num_gpu': 0,
        'is_train': True,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'network_g': dict(TINY),
        'path': paths,
        'train': {
            'optim_g': optim or {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.9], 'weight_decay': 0},
            'scheduler': dict(scheduler),
            'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
        },
    }


def saved_state(tmp_path, scheduler, iters=2):
    """The training state a run with ``scheduler`` saves after ``iters`` iterations (as BasicSR's save does)."""
    model = build_model(make_opt(tmp_path, scheduler))
    gt = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for it in range(1, iters + 1):
        model.update_learning_rate(it)
        model.feed_data({'lq': gt * 0.2, 'gt': gt})
        model.optimize_parameters(it)
    state = {'epoch': 0, 'iter': iters, 'optimizers': [o.state_dict() for o in model.optimizers]}
    state['schedulers'] = [s.state_dict() for s in model.schedulers]
    return copy.deepcopy(state)


def resumed(tmp_path, state, scheduler, optim=None):
    model = build_model(make_opt(tmp_path, scheduler, optim))
    lines = []
    resume_with_options(model, state, lines.append)
    return model, lines


def lrs_from(model, first, last):
    """The lr BasicSR's loop uses at iterations ``first``..``last`` (it steps the schedulers from iteration 2)."""
    out = []
    for it in range(first, last + 1):
        model.update_learning_rate(it)
        out.append(model.get_current_learning_rate()[0])
    return out


def test_lowered_lr_and_moved_milestone_take_effect(tmp_path):
    state = saved_state(tmp_path, dict(MULTISTEP, gamma=1e12))
    model, lines = resumed(tmp_path, state, dict(MULTISTEP, milestones=[8], gamma=1e12), {'type': 'AdamW', 'lr': 1e-4})
    # AdamW's own defaults (betas, weight_decay 0.01) differ from the state's too: they take effect as well
    assert lines == [
        'train.optim_g.lr 0.0001 from the option file replaces 0.001 of the state',
        'train.optim_g.betas [0.9, 0.999] from the option file replaces [0.9, 0.9] of the state',
        'train.optim_g.weight_decay 0.01 from the option file replaces 0 of the state',
        'train.scheduler.milestones [8] from the option file replaces [3] of the state',
    ]
    assert model.optimizer_g.param_groups[0]['betas'] == (0.9, 0.999)
    assert lrs_from(model, 3, 9) == pytest.approx([1e-4] * 6 + [1e8])


def test_unchanged_options_resume_the_state_as_saved(tmp_path):
    state = saved_state(tmp_path, MULTISTEP, iters=5)
    model, lines = resumed(tmp_path, state, MULTISTEP)
    assert lines == []
    assert model.optimizer_g.param_groups[0]['lr'] == state['optimizers'][0]['param_groups'][0]['lr'] == 5e-4
    assert model.schedulers[0].last_epoch == 4


def test_changed_cosine_schedule_resumes_where_a_fresh_run_would_be(tmp_path):
    old = {'type': 'CosineAnnealingRestartLR', 'periods': [10], 'eta_min': 1e-7}
    new = {'type': 'CosineAnnealingRestartLR', 'periods': [4, 8], 'restart_weights': [1, 0.5], 'eta_min': 1e-6}
    model, lines = resumed(tmp_path, saved_state(tmp_path, old, iters=6), new, {'type': 'AdamW', 'lr': 2e-3})
    assert 'train.scheduler.periods [4, 8] from the option file replaces [10] of the state' in lines
    assert 'train.scheduler.eta_min 1e-06 from the option file replaces 1e-07 of the state' in lines
    fresh = build_model(make_opt(tmp_path, new, {'type': 'AdamW', 'lr': 2e-3}))
    assert lrs_from(model, 7, 12) == pytest.approx(lrs_from(fresh, 1, 12)[6:])


@pytest.mark.parametrize(
    'scheduler, optim, match',
    [
        (
            {'type': 'CosineAnnealingRestartLR', 'periods': [10]},
            None,
            'train.scheduler.type: the state was saved with another scheduler than CosineAnnealingRestartLR',
        ),
        (MULTISTEP, {'type': 'SGD', 'lr': 1e-3}, 'train.optim_g.type: the state was saved with another optimiser'),
    ],
)
def test_a_change_that_cannot_be_resumed_is_refused_with_advice(tmp_path, scheduler, optim, match):
    with pytest.raises(ResumeConflictError, match=match) as caught:
        resumed(tmp_path, saved_state(tmp_path, MULTISTEP), scheduler, optim)
    message = str(caught.value)
    assert '2.state' in message and 'path.pretrain_network_g' in message and '\n' not in message


@pytest.mark.parametrize(
    'settings',
    [
        {'milestones': [2, 5, 5, 9], 'gamma': 0.5},
        {'milestones': [3, 6], 'gamma': 0.1, 'restarts': [0, 5], 'restart_weights': [1, 0.25]},
        {'milestones': [0, 4], 'gamma': 2.0, 'restarts': [7], 'restart_weights': [0.5]},
    ],
)
def test_scheduled_lr_matches_stepping_the_scheduler(settings):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    scheduler = MultiStepRestartLR(optimizer, **settings)
    for epoch in range(12):
        assert scheduled_lr(scheduler, 0.3, epoch) == pytest.approx(optimizer.param_groups[0]['lr'])
        scheduler.step()


def test_scheduled_lr_past_the_cosine_periods_is_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    with pytest.raises(
        ResumeConflictError, match='train.scheduler.periods: the resumed iteration 5 is past their sum 4'
    ):
        scheduled_lr(CosineAnnealingRestartLR(optimizer, [4]), 0.3, 5)
