"""Fixtures of the inference tests: the reference network and a tiny random one with every branch active."""

import pytest
import torch

from gmmoe_arch import GMMoE
from gmmoe_arch.inference.loading import load_network

from helpers import activate_branches


@pytest.fixture(scope='session')
def ref_ckpt(reference_dir):
    return reference_dir / 'gmmoe_w8_net_g.pth'


@pytest.fixture(scope='session')
def ref_net(ref_ckpt):
    """The reference weights (width 8, outputs far outside [0, 1], so every branch matters), on the CPU."""
    return load_network(str(ref_ckpt), device='cpu')


@pytest.fixture(scope='session')
def tiny_net():
    """Width-4, two-level GMMoE with random weights and non-zero beta/gamma (every branch active)."""
    torch.manual_seed(0)
    net = GMMoE(width=4, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    return activate_branches(net).eval().requires_grad_(False)
