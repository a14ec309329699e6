"""train.gate_schedule: dense-to-sparse fine-tuning with k and the gate temperature annealed by iteration."""

import pytest
from basicsr.models import build_model
from test_gate_training import LABELS, W8, labelled_batch, make_opt

import gmmoe_arch  # noqa: F401,I001
from gmmoe_arch import GMMoE
from gmmoe_arch.models.gate_schedule import GateSchedule

FIVE = ['ColourExpert', 'DetailExpert', 'FeatureExpert', 'RainExpert', 'HazeExpert']
SPEC = {'top_k': [5, 1], 'temperature': [1.0, 0.5], 'start_iter': 10, 'end_iter': 50}


def test_values_ramp_linearly_and_hold():
    schedule = GateSchedule.from_option(SPEC, 5)
    assert schedule.values(0, 5) == (None, 1.0)  # k = 5 of 5: dense
    assert schedule.values(10, 5) == (None, 1.0)
    assert schedule.values(30, 5) == (3, 0.75)
    assert schedule.values(50, 5) == (1, 0.5)
    assert schedule.values(1000, 5) == (1, 0.5)


def test_applying_is_a_function_of_the_iteration_alone():
    """A resumed training (a fresh network, the same iteration) gets what the uninterrupted one had."""
    schedule = GateSchedule.from_option(SPEC, 5)
    walked = GMMoE(**{k: v for k, v in W8.items() if k != 'type'}, experts=FIVE, gate_temperature=1)
    for i in range(0, 41):
        schedule.apply(walked, i)
    resumed = GMMoE(**{k: v for k, v in W8.items() if k != 'type'}, experts=FIVE, gate_temperature=1)
    schedule.apply(resumed, 40)
    assert walked.gate_top_k == resumed.gate_top_k == 2
    assert walked.middle_blks[0].gate.temperature == resumed.middle_blks[0].gate.temperature == pytest.approx(0.625)
    assert all(m.top_k == 2 for m in walked.modules() if hasattr(m, 'top_k'))


@pytest.mark.parametrize(
    'spec, message',
    [
        ({'start_iter': 0, 'end_iter': 5}, 'top_k or temperature'),
        ({'top_k': [5, 1], 'end_iter': 5, 'steps': 3}, 'unknown key'),
        ({'top_k': [5, 1], 'start_iter': 5, 'end_iter': 5}, 'start_iter < end_iter'),
        ({'top_k': [6, 1], 'end_iter': 5}, r'train\.gate_schedule\.top_k: .*integers from 1 to 5'),
        ({'temperature': [1, 0], 'end_iter': 5}, r'train\.gate_schedule\.temperature'),
    ],
)
def test_bad_schedules_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        GateSchedule.from_option(spec, 5)


def test_the_model_applies_it_every_iteration_with_balancing_on(tmp_path):
    net = dict(W8, experts=FIVE[:3], gate_temperature=1)
    spec = {'top_k': [3, 1], 'temperature': [1.0, 0.5], 'start_iter': 0, 'end_iter': 4}
    model = build_model(make_opt(tmp_path, net, gate_schedule=spec))
    assert [type(loss).__name__ for loss in model.cri_balance] == ['GateBalanceLoss']
    bare = model.get_bare_model(model.net_g)
    model.feed_data(labelled_batch(LABELS))
    model.optimize_parameters(1)
    assert bare.gate_top_k is None  # round(3 - 2/4) = 3 of 3: dense
    model.optimize_parameters(4)
    assert bare.gate_top_k == 1 and bare.middle_blks[0].gate.temperature == 0.5
    assert 'l_balance' in model.log_dict


def test_a_temperature_schedule_needs_the_released_gate(tmp_path):
    net = dict(W8, gate='AdaptiveGate')
    with pytest.raises(ValueError, match='train.gate_schedule.temperature: the gate AdaptiveGate'):
        build_model(make_opt(tmp_path, net, gate_schedule={'temperature': [1, 0.5], 'end_iter': 4}))


def test_balance_opt_takes_a_list_with_the_load_loss(tmp_path):
    net = dict(W8, experts=FIVE[:3], gate_top_k=1, gate_noise='gaussian')
    balance = [{'type': 'GateBalanceLoss', 'loss_weight': 0.1}, {'type': 'GateLoadLoss', 'loss_weight': 0.1}]
    model = build_model(make_opt(tmp_path, net, balance_opt=balance))
    assert [type(loss).__name__ for loss in model.cri_balance] == ['GateBalanceLoss', 'GateLoadLoss']
    model.feed_data(labelled_batch(LABELS))
    model.optimize_parameters(1)
    assert model.log_dict['l_balance'] > 0
    with pytest.raises(ValueError, match=r'train\.balance_opt\[1\]\.type: unknown loss'):
        build_model(make_opt(tmp_path, net, balance_opt=[balance[0], {'type': 'Nope'}]))
