"""gmmoe_arch.registry: GM-MoE's names in BasicSR registries never take a name from another package.

Each test uses a fresh ``basicsr.utils.registry.Registry``, so the real registries stay as the session has them
(the subprocess checks with real projects are in tests/test_plugin_hook.py).
"""

import logging

import pytest
from basicsr.utils.registry import LOSS_REGISTRY, Registry

from gmmoe_arch.registry import qualified, register


def make(name):
    return type(name, (), {'__module__': 'elsewhere'})


def gmmoe_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == 'gmmoe']


def test_a_free_name_is_registered_plain_and_qualified(caplog):
    reg = Registry('loss')
    ours = register(reg)(make('FreeLoss'))
    assert reg.get('FreeLoss') is ours and reg.get('FreeLoss_gmmoe') is ours
    assert gmmoe_lines(caplog) == []


def test_a_name_taken_first_stays_theirs(caplog):
    reg = Registry('loss')
    theirs = make('PSNRLoss')
    reg.register(theirs)
    ours = register(reg)(type('PSNRLoss', (), {}))
    assert reg.get('PSNRLoss') is theirs and reg.get(qualified('PSNRLoss')) is ours
    assert gmmoe_lines(caplog) == [
        "gmmoe: 'PSNRLoss' in BasicSR's loss registry stays elsewhere.PSNRLoss; "
        "GM-MoE's PSNRLoss is registered as 'PSNRLoss_gmmoe' only"
    ]


@pytest.mark.parametrize('how', ['decorator', 'call'])
def test_a_plain_name_of_ours_yields_to_a_later_registration(caplog, how):
    reg = Registry('arch')
    ours = register(reg)(type('GMMoE', (), {}))
    theirs = make('GMMoE')
    if how == 'decorator':
        reg.register()(theirs)
    else:
        reg.register(theirs)
    assert reg.get('GMMoE') is theirs and reg.get('GMMoE_gmmoe') is ours
    assert gmmoe_lines(caplog) == [
        "gmmoe: 'GMMoE' in BasicSR's arch registry is now elsewhere.GMMoE; GM-MoE's GMMoE stays available as "
        "'GMMoE_gmmoe'"
    ]
    with pytest.raises(AssertionError, match="An object named 'GMMoE' was already registered"):
        reg.register(make('GMMoE'))  # a second foreign registration: upstream's collision, theirs to resolve


def test_other_collisions_keep_upstreams_assertion():
    reg = Registry('arch')
    reg.register(make('SomeNet'))
    with pytest.raises(AssertionError, match="An object named 'SomeNet' was already registered"):
        reg.register(make('SomeNet'))


def test_the_real_registries_hold_both_names_of_gmmoe_psnr_loss():
    from gmmoe_arch.losses.psnr_loss import PSNRLoss

    assert LOSS_REGISTRY.get('PSNRLoss_gmmoe') is PSNRLoss
    assert LOSS_REGISTRY.get('PSNRLoss') is PSNRLoss  # nobody else registered it in this session


def test_log_lines_can_be_silenced(caplog):
    logging.getLogger('gmmoe').setLevel(logging.ERROR)
    try:
        reg = Registry('loss')
        reg.register(make('QuietLoss'))
        register(reg)(type('QuietLoss', (), {}))
    finally:
        logging.getLogger('gmmoe').setLevel(logging.NOTSET)
    assert gmmoe_lines(caplog) == []
