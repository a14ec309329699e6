"""gmmoe_arch.inference.runner: enhance_image against the network itself, precisions, dtypes, options."""

import numpy as np
import pytest
import torch
from inference_helpers import CPU, direct_output

from gmmoe_arch import GMMoE
from gmmoe_arch.inference.errors import EnhanceError
from gmmoe_arch.inference.runner import RunOptions, enhance_image


@pytest.mark.parametrize('shape', [(37, 53), (1, 1), (64, 48)])
def test_an_untiled_image_is_the_network_called_directly(ref_net, shape):
    img = (np.random.default_rng(0).random(shape + (3,)) * 120).astype(np.uint8)
    out = enhance_image(ref_net, img)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, direct_output(ref_net, img))
    assert not np.array_equal(out, img)


def test_precisions(ref_net):
    """bf16 stays within 8 levels (mean) of fp32 on a dim 8-bit image but is not fp32 in disguise."""
    img = (np.random.default_rng(1).random((48, 40, 3)) * 120).astype(np.uint8)
    fp32 = enhance_image(ref_net, img).astype(int)
    bf16 = enhance_image(ref_net, img, precision='bf16').astype(int)
    assert np.abs(bf16 - fp32).mean() < 8
    assert not np.array_equal(bf16, fp32)
    if not torch.cuda.is_available():
        with pytest.raises(EnhanceError, match='fp16 needs a CUDA device'):
            enhance_image(ref_net, img, precision='fp16')


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(precision='fp64'), '--precision fp64: choose from fp32, fp16, bf16'),
        (dict(stat_passes=-1), '--stat-passes -1: must be >= 0'),
    ],
)
def test_bad_run_options_are_refused_when_made(kwargs, message):
    with pytest.raises(EnhanceError, match=message):
        RunOptions(CPU, **kwargs)


def test_an_array_that_is_not_an_image_is_refused(tiny_net):
    for img, message in [(np.zeros((4, 4, 2), np.uint8), 'image of shape'), (np.zeros((4, 4), np.int32), 'dtype')]:
        with pytest.raises(EnhanceError, match=message):
            enhance_image(tiny_net, img)


def test_identity_network_reproduces_every_dtype():
    net = GMMoE(width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]).eval()
    for p in net.ending.parameters():  # output = ending(x) + input: zero ending -> identity
        torch.nn.init.zeros_(p)
    rng = np.random.default_rng(2)
    for img in [
        (rng.random((20, 30, 3)) * 255).astype(np.uint8),
        (rng.random((20, 30)) * 65535).astype(np.uint16),
        rng.random((20, 30, 3)).astype(np.float32),
    ]:
        out = enhance_image(net, img)
        assert out.dtype == img.dtype
        np.testing.assert_allclose(out.astype(float), img.astype(float), atol=1e-5 if img.dtype == np.float32 else 1)
