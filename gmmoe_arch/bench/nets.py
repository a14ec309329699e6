"""Bench networks and training steps: seeded GM-MoEs with every branch active, random batches, output
agreement, and a real :class:`~gmmoe_arch.models.gmmoe_model.GMMoEModel` built from a dict of options, so that
a benchmark's training step is the model's own ``feed_data`` + ``optimize_parameters``."""

import contextlib
import copy
import logging
import math

import torch
from basicsr.utils import get_root_logger

from ..archs.gmmoe_arch import GMMoE, activate_branches
from ..models.gmmoe_model import GMMoEModel

#: the training options of every bench model: the released optimiser and loss, a constant learning rate
TRAIN_OPTIONS = {
    'optim_g': {'type': 'AdamW', 'lr': 1e-4, 'betas': [0.9, 0.9]},
    'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
    'scheduler': {'type': 'MultiStepLR', 'milestones': [2**31], 'gamma': 1.0},
}


def random_net(preset='paper', seed=0, device=None, **kwargs):
    """A GMMoE of ``preset`` (``kwargs`` override its sizes and settings) with seeded random weights,
    ``beta``/``gamma`` ~ N(0, 0.5^2) and LayerNorms jittered, so every expert branch matters; built on
    ``device`` (default: the CPU)."""
    torch.manual_seed(seed)
    with torch.device(device or 'cpu'):
        return activate_branches(GMMoE(preset=preset, **kwargs), norm_jitter=0.1)


@contextlib.contextmanager
def quiet_basicsr():
    """BasicSR's root logger at WARNING within the block (a model logs its network and settings)."""
    logger = get_root_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def bench_model(network, device='cpu', seed=0, train=None):
    """A training :class:`GMMoEModel` of ``network_g: {type: GMMoE, **network}`` on ``device``, with
    :data:`TRAIN_OPTIONS` updated by ``train`` (e.g. ``use_amp``, ``compile``, ``optim_g``), its network's
    weights those of :func:`random_net` with the same ``network`` and ``seed``."""
    device = torch.device(device)
    opt = {
        'is_train': True,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'num_gpu': 1 if device.type == 'cuda' else 0,
        'network_g': {'type': 'GMMoE', **network},
        'path': {},
        'train': copy.deepcopy({**TRAIN_OPTIONS, **(train or {})}),
    }
    torch.manual_seed(seed)
    with quiet_basicsr(), device:
        model = GMMoEModel(opt)
        activate_branches(model.get_bare_model(model.net_g), norm_jitter=0.1)
    return model


def train_step(model, lq, gt, current_iter=1):
    """One step of ``model`` on the batch (forward, loss, backward, optimiser step, the model's finite
    checks): the loss, a float."""
    model.feed_data({'lq': lq, 'gt': gt})
    model.optimize_parameters(current_iter)
    return model.log_dict['l_pix']


def random_batch(batch, crop, seed=0, device='cpu'):
    """A seeded ``(lq, gt)`` training batch: uniform noise and its brightened copy, ``(batch, 3, crop, crop)``."""
    lq = torch.rand(batch, 3, crop, crop, generator=torch.Generator().manual_seed(seed))
    return lq.to(device), (lq * 2.5).clamp(0, 1).to(device)


def agreement(out, ref):
    """``out`` against ``ref``: max |diff| and PSNR in dB (peak 1; None when identical)."""
    diff = out.double() - ref.double()
    mse = diff.pow(2).mean().item()
    return {'max_abs_diff': diff.abs().max().item(), 'psnr_db': None if mse == 0 else 10 * math.log10(1 / mse)}


def grad_agreement(nets, loss, lq, gt, base='plain'):
    """``{name: {max_param_rel, global_rel}}``: each net's gradients of ``loss(net(lq), gt)`` against
    ``nets[base]``'s, per parameter (max over parameters of ``|g - g_base| / |g_base|``) and over all."""
    grads = {}
    for name, net in nets.items():
        net.zero_grad(set_to_none=True)
        loss(net(lq), gt).backward()
        bare = getattr(net, '_orig_mod', net)  # a compiled net's parameters under the module's own names
        grads[name] = {k: p.grad.detach().clone() for k, p in bare.named_parameters()}
        net.zero_grad(set_to_none=True)
    ref = grads[base]
    out = {}
    for name, g in grads.items():
        per = [((g[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-30)).item() for k in ref]
        num = sum((g[k] - ref[k]).pow(2).sum() for k in ref)
        den = sum(ref[k].pow(2).sum() for k in ref)
        out[name] = {'max_param_rel': max(per), 'global_rel': (num / den).sqrt().item()}
    return out
