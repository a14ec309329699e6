"""gmmoe_arch.spandrel_arch / spandrel_hook: ``spandrel.ModelLoader`` loads GM-MoE checkpoints, outputs equal
``gmmoe enhance``'s, NAFNet stays NAFNet, registration works in either import order."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import gmmoe_arch  # noqa: F401  (registers GM-MoE with spandrel once spandrel is imported)
from gmmoe_arch import GMMoE, enhance_image, load_network
from gmmoe_arch.archs.gmmoe_arch import activate_branches

from helpers import REPO, nafnet_state_dict

spandrel = pytest.importorskip('spandrel')
from gmmoe_arch.spandrel_arch import ARCH_ID, register_spandrel  # noqa: E402  (needs spandrel)

FIVE = ['ColourExpert', 'DetailExpert', 'FeatureExpert', 'RainExpert', 'HazeExpert']
SMALL = dict(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


def image(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def through_spandrel(descriptor, img):
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    return descriptor(x)[0].numpy().transpose(1, 2, 0)


def test_released_format_reference_loads_as_restoration_model(reference_dir):
    ckpt = str(reference_dir / 'gmmoe_w8_net_g.pth')
    descriptor = spandrel.ModelLoader().load_from_file(ckpt)
    assert isinstance(descriptor, spandrel.ImageModelDescriptor) and descriptor.architecture.id == ARCH_ID
    assert descriptor.purpose == 'Restoration' and descriptor.scale == 1
    assert descriptor.input_channels == descriptor.output_channels == 3
    assert descriptor.tiling == spandrel.ModelTiling.INTERNAL
    assert descriptor.size_requirements.none  # the network pads itself, as released
    net = load_network(ckpt, device='cpu')
    for h, w in ((37, 53), (300, 900)):  # one tile; tiles with a statistics pass (over 512 x 512 pixels)
        img = image(h, w)
        assert np.abs(through_spandrel(descriptor, img) - enhance_image(net, img)).max() <= 1e-5


def test_five_expert_checkpoint_in_our_format_loads(tmp_path):
    torch.manual_seed(3)
    net = activate_branches(GMMoE(**SMALL, experts=FIVE)).eval()
    ckpt = tmp_path / 'five.pth'
    torch.save({'params': {}, 'params_ema': {'module.' + k: v for k, v in net.state_dict().items()}}, ckpt)
    descriptor = spandrel.ModelLoader().load_from_file(str(ckpt))
    assert descriptor.architecture.id == ARCH_ID and '+'.join(FIVE) in descriptor.tags
    opt = tmp_path / 'five.yml'
    opt.write_text(yaml.safe_dump({'network_g': {'type': 'GMMoE', **SMALL, 'experts': FIVE}}))
    ours = load_network(str(ckpt), option_file=str(opt), device='cpu')  # what gmmoe enhance --opt builds
    img = image(40, 36, seed=1)
    out = through_spandrel(descriptor, img)
    assert np.abs(out - enhance_image(ours, img)).max() <= 1e-5
    assert np.abs(out - img).max() > 1e-2  # the network did something


@pytest.mark.parametrize('gate', ['AdaptiveGate', 'SpatialGate'])
def test_a_checkpoint_with_another_gate_is_detected_and_loads(tmp_path, gate):
    torch.manual_seed(4)
    net = GMMoE(**SMALL, gate=gate).eval()
    ckpt = tmp_path / 'gate.pth'
    torch.save({'params': net.state_dict()}, ckpt)
    descriptor = spandrel.ModelLoader().load_from_file(str(ckpt))  # no --opt: the gate is read off its keys
    assert descriptor.architecture.id == ARCH_ID
    img = image(33, 41, seed=2)
    assert np.abs(through_spandrel(descriptor, img) - enhance_image(net, img)).max() <= 1e-5


def test_nafnet_is_still_nafnet_and_registration_is_idempotent():
    from spandrel.architectures.NAFNet import NAFNet

    nafnet = NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    assert spandrel.ModelLoader().load_from_state_dict(nafnet.state_dict()).architecture.id == 'NAFNet'
    first = register_spandrel()
    assert register_spandrel() is first and sum(a.architecture.id == ARCH_ID for a in spandrel.MAIN_REGISTRY) == 1
    order = [a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures('detection')]
    assert order.index(ARCH_ID) < order.index('NAFNet')


def test_nafnet_lacks_the_keys_gmmoe_enhance_requires_and_detection_reads_the_same_ones():
    from spandrel.architectures.NAFNet import NAFNet

    from gmmoe_arch.archs.checkpoint_config import infer_config
    from gmmoe_arch.archs.released_layout import REQUIRED_KEYS, NotGMMoECheckpointError
    from gmmoe_arch.spandrel_arch import detect

    nafnet = NAFNet(img_channel=3, **SMALL).state_dict()
    assert set(nafnet) == set(nafnet_state_dict(**SMALL))  # the NAFNet-shaped state dict of the layout tests
    with pytest.raises(NotGMMoECheckpointError, match='^not a GM-MoE checkpoint: it lacks MSFEblock.conv0.weight, '):
        infer_config(nafnet)
    gmmoe = GMMoE(**SMALL).state_dict()
    assert detect(gmmoe) and not detect(nafnet)
    for key in REQUIRED_KEYS:
        assert not detect({k: v for k, v in gmmoe.items() if k != key}), key


@pytest.mark.slow
@pytest.mark.parametrize('imports', ['import gmmoe_arch, spandrel', 'import spandrel, gmmoe_arch'])
def test_registered_in_either_import_order_and_spandrel_not_imported_by_gmmoe(imports):
    code = (
        'import sys; import gmmoe_arch; lazy = "spandrel" not in sys.modules; '
        if imports.startswith('import gmmoe')
        else 'lazy = True; '
    ) + f'{imports}; print(lazy, "{ARCH_ID}" in spandrel.MAIN_REGISTRY)'
    done = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ['True', 'True']
