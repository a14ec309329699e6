"""gmmoe_arch.archs.released_layout: one table of the released names, read by the expert block, infer_config and
the loader; a state dict without GM-MoE's own keys (NAFNet's) is refused in one line naming what it lacks."""

import pytest
import torch

import gmmoe_arch  # noqa: F401  (registers the experts)
from gmmoe_arch import GMMoE
from gmmoe_arch.archs import released_layout
from gmmoe_arch.archs.checkpoint_config import infer_config
from gmmoe_arch.archs.released_layout import NotGMMoECheckpointError, ReleasedExpert, lacks
from gmmoe_arch.enhance_cli import main

from helpers import nafnet_state_dict

SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
NAFNET_LACKS = (
    'MSFEblock.conv0.weight, MSFEblock.conv_spatial.weight, MSFEblock.conv_squeeze.weight, MSFEblock.conv.weight'
)


def test_every_gmmoe_state_dict_has_the_required_keys_and_infer_config_reads_it(ref):
    released = torch.load(ref['checkpoint'], weights_only=True)['params']
    assert lacks(released) == []
    five = ['ColourExpert', 'DetailExpert', 'FeatureExpert', 'RainExpert', 'HazeExpert']
    for config in (
        dict(SMALL, img_channel=3),
        dict(SMALL, img_channel=3, experts=five),
        dict(img_channel=1, width=4, enc_blk_nums=[], middle_blk_num=2, dec_blk_nums=[]),  # no levels
        dict(img_channel=3, width=4, enc_blk_nums=[1], middle_blk_num=0, dec_blk_nums=[2]),  # no middle block
    ):
        state = GMMoE(**config).state_dict()
        assert lacks(state) == []
        assert infer_config(state) == config


def test_a_nafnet_state_dict_is_refused_by_infer_config_in_one_line():
    with pytest.raises(NotGMMoECheckpointError) as err:
        infer_config(nafnet_state_dict(**SMALL))
    assert str(err.value) == f'not a GM-MoE checkpoint: it lacks {NAFNET_LACKS}'
    flat = dict(GMMoE(**SMALL).state_dict())
    flat['intro.weight'] = flat['intro.weight'].reshape(-1)  # no conv kernel: no size to read off it
    with pytest.raises(NotGMMoECheckpointError, match='^not a GM-MoE checkpoint: it lacks intro.weight$'):
        infer_config(flat)


@pytest.mark.parametrize('extra', [[], ['--preset', 'paper']], ids=['size-read-off-the-checkpoint', 'preset'])
def test_gmmoe_enhance_refuses_a_nafnet_checkpoint_in_one_line(extra, tmp_path, capsys):
    weights = tmp_path / 'nafnet.pth'
    torch.save({'params': nafnet_state_dict(**SMALL)}, weights)
    (tmp_path / 'a.png').write_bytes(b'')  # never read: the checkpoint is refused first
    out = tmp_path / 'out'
    assert main(['enhance', str(tmp_path / 'a.png'), '-o', str(out), '--weights', str(weights)] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f'checkpoint {weights}: not a GM-MoE checkpoint: it lacks {NAFNET_LACKS}')
    assert len(err.splitlines()) == 1 and 'Traceback' not in err and not out.exists()


def test_a_made_up_table_entry_changes_what_the_block_saves_and_infer_config_reads(monkeypatch):
    four = ['ColourExpert', 'DetailExpert', 'FeatureExpert', 'RainExpert']
    before = GMMoE(**SMALL, experts=four).state_dict()
    assert 'middle_blks.0.experts.3.fuse.weight' in before and infer_config(before)['experts'] == four
    entry = ReleasedExpert(3, 'RainExpert', 'Expert4.', 'Expert4.')
    monkeypatch.setattr(released_layout, 'EXPERTS', released_layout.EXPERTS + (entry,))
    torch.manual_seed(0)
    net = GMMoE(**SMALL, experts=four)
    saved = net.state_dict()
    assert 'middle_blks.0.Expert4.fuse.weight' in saved and not any('.experts.3.' in k for k in saved)
    assert {k.replace('.Expert4.', '.experts.3.') for k in saved} == set(before)
    assert infer_config(saved)['experts'] == four
    fresh = GMMoE(**SMALL, experts=four)
    fresh.load_state_dict(saved, strict=True)
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())
