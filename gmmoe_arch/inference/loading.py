"""Checkpoints in, a GM-MoE network out: :func:`load_network` and the device it runs on.

Checkpoints come from outside and are read with ``torch.load(..., weights_only=True)``. The network's
size comes from a preset, an option file's ``network_g``, or the checkpoint itself
(:func:`gmmoe_arch.archs.checkpoint_config.infer_config`). Every problem is one :class:`EnhanceError`
naming the file and what does not fit, raised before any image is touched.
"""

import os
from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..archs.checkpoint_config import describe_size, infer_config
from ..archs.released_layout import is_unused, lacks, refusal
from ..checkpoint_trust import UntrustedCheckpointError, load_checkpoint
from ..registry import qualified
from .errors import EnhanceError

NETWORK_TYPE = qualified('GMMoE')  # ours, even where another package holds the plain name

Device = Union[str, torch.device, None]


def resolve_device(device: Device = 'auto') -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; ``'cpu'``, ``'cuda'``, ``'cuda:N'`` checked."""
    if device in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EnhanceError(f'--device {device}: not a device (use auto, cpu, cuda or cuda:N)') from exc
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise EnhanceError(f'--device {device}: CUDA is not available on this machine (use cpu or auto)')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EnhanceError(f'--device {device}: only {torch.cuda.device_count()} CUDA device(s) here')
    elif dev.type != 'cpu':
        raise EnhanceError(f'--device {device}: unsupported device type (use auto, cpu, cuda or cuda:N)')
    return dev


def load_state_dict(path: str, trust: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint with ``weights_only=True``: ``{'params_ema': sd}`` (preferred), ``{'params': sd}``
    or a bare state dict; a ``module.`` prefix (DataParallel) is stripped. ``trust`` (``--trust-checkpoint``)
    lets a file that holds more than tensors load (see :mod:`gmmoe_arch.checkpoint_trust`)."""
    if not os.path.isfile(path):
        raise EnhanceError(f'checkpoint {path}: no such file')
    try:
        ckpt = load_checkpoint(path, trusted=[path] if trust else (), opt_in='pass --trust-checkpoint')
    except UntrustedCheckpointError as exc:
        raise EnhanceError(str(exc)) from exc
    except Exception as exc:  # torch raises many types for non-checkpoints (UnpicklingError, RuntimeError, ...)
        raise EnhanceError(
            f'checkpoint {path}: not a PyTorch checkpoint of tensors (torch.load with '
            f'weights_only=True refused it: {type(exc).__name__})'
        ) from exc
    if isinstance(ckpt, dict):
        for key in ('params_ema', 'params'):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise EnhanceError(
            f'checkpoint {path}: expected a state dict of tensors, {{"params": ...}} or '
            f'{{"params_ema": ...}}; got {type(ckpt).__name__}'
            + (f' with keys {sorted(map(str, ckpt))[:5]}' if isinstance(ckpt, dict) else '')
        )
    return {k[len('module.') :] if k.startswith('module.') else k: v for k, v in ckpt.items()}


def check_finite_state_dict(state_dict: Mapping[str, object], path: str) -> None:
    """Refuse a checkpoint with a NaN or infinite value in a floating-point tensor, naming ``path``, the first
    such tensor (its state-dict key) and how many of its values are not finite.

    Such weights make every output NaN, which clipping turns into black images that look like a success.
    Cheap enough for every load: one sum per tensor (NaN and inf survive a sum); only a tensor whose sum is
    not finite is looked at value by value, which also clears finite values whose sum overflowed.

    Raises:
        EnhanceError: for the first tensor holding a non-finite value.
    """
    for key, value in state_dict.items():
        if not torch.is_tensor(value) or not value.is_floating_point() or bool(torch.isfinite(value.sum())):
            continue
        bad = int(value.numel() - torch.isfinite(value).sum())
        if bad:
            raise EnhanceError(
                f'checkpoint {path}: tensor {key} holds {bad:,} non-finite value(s) (NaN or inf) of '
                f'{value.numel():,}; the training that saved it diverged: use an earlier checkpoint'
            )


def _network_options(
    preset: Optional[str], option_file: Optional[str], state_dict: Optional[dict[str, Tensor]], weights: Optional[str]
) -> tuple[dict, str]:
    """``(network_g options, where they came from)``: the option file, the preset, else the checkpoint.

    The checkpoint gives the size, and the experts' names when they are not the released three; then the
    option file is required: such networks are trained with their own ``gate_temperature`` and expert options
    (``HazeExpert``'s ``window``, ...), which no weight records, and a guess would change the output silently.
    """
    if option_file is not None:
        import yaml

        try:
            with open(option_file, encoding='utf-8') as f:
                opt = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise EnhanceError(f'option file {option_file}: cannot be read: {exc}') from exc
        if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict) or 'type' not in opt['network_g']:
            raise EnhanceError(f'option file {option_file}: needs a "network_g" mapping with a "type"')
        return dict(opt['network_g']), f'network_g of {option_file}'
    if state_dict is not None and (refused := refusal(state_dict)):
        raise EnhanceError(f'checkpoint {weights}: {refused}')
    if preset is not None:
        return dict(type=NETWORK_TYPE, preset=preset), f'preset {preset}'
    config = infer_config(state_dict) if state_dict is not None else None
    if config is None:
        return dict(type=NETWORK_TYPE, preset='paper'), 'preset paper'
    if 'experts' in config:
        raise EnhanceError(
            f'checkpoint {weights} holds a {describe_size(config)}; pass --opt with the option file it was trained '
            'with (its gate_temperature and expert options are not stored in the weights)'
        )
    return dict(type=NETWORK_TYPE, **config), 'configuration read from the checkpoint'


def _mismatch_report(net: nn.Module, state_dict: dict[str, Tensor], limit: int = 5) -> str:
    """The first missing, unexpected and reshaped keys (the released checkpoints' unused ``conv6`` left out)."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if not is_unused(k)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f'{k} {given[k]} vs {expected[k]}' for k in expected if k in given and given[k] != expected[k]]
    parts = [
        f'{len(items)} {what}: {", ".join(items[:limit])}{", ..." if len(items) > limit else ""}'
        for what, items in (
            ('missing', missing),
            ('unexpected', unexpected),
            ('with other shapes (checkpoint vs network)', shapes),
        )
        if items
    ]
    return '; '.join(parts)


def _size_mismatch(
    weights: str, state_dict: dict[str, Tensor], net: nn.Module, preset: Optional[str], option_file: Optional[str]
) -> Optional[str]:
    """The message for a checkpoint of another network size than the one built, else None."""
    held, built = (None if lacks(sd) else infer_config(sd) for sd in (state_dict, net.state_dict()))
    if held is None or built is None or held == built:
        return None
    chosen, flag = (f'--preset {preset}', '--preset') if preset is not None else (f'--opt {option_file}', '--opt')
    return (
        f'checkpoint {weights} holds a {describe_size(held)}; {chosen} is a {describe_size(built)}; '
        f'drop {flag} to read the size off the checkpoint'
    )


def load_network(
    weights: Optional[str] = None,
    preset: Optional[str] = None,
    option_file: Optional[str] = None,
    device: Device = 'auto',
    random_weights: bool = False,
    trust: bool = False,
) -> nn.Module:
    """Build a GM-MoE network, load ``weights`` strictly, and return it in eval mode on ``device``.

    Args:
        weights: checkpoint path (released ``{'params': sd}``, ours, or a bare state dict).
        preset: ``'paper'`` or ``'released'`` (see ``gmmoe_arch.PRESETS``).
        option_file: a BasicSR option YAML whose ``network_g`` is built instead.
            With neither, the size is read off the checkpoint (``paper`` for random weights).
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``; a ``torch.device`` is taken as
            already checked (:func:`resolve_device`).
        random_weights: allow ``weights=None`` (smoke tests and benchmarks only).
        trust: the user trusts ``weights`` (``--trust-checkpoint``): it may hold more than tensors.

    Raises:
        EnhanceError: naming the file and the first mismatched keys or non-finite tensor, before any image work.
    """
    from basicsr.archs import build_network

    if preset is not None and option_file is not None:
        raise EnhanceError('give either --preset or --opt, not both')
    if weights is None and not random_weights:
        raise EnhanceError(
            'no --weights given: a GM-MoE network with random weights does not enhance '
            'anything (pass --random-weights to run one anyway, e.g. for a benchmark)'
        )
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    state_dict = load_state_dict(weights, trust) if weights is not None else None
    if state_dict is not None:
        check_finite_state_dict(state_dict, weights)
    opt, source = _network_options(preset, option_file, state_dict, weights)
    try:
        net = build_network(opt)
    except (KeyError, ValueError, TypeError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # str(KeyError) adds quotes
        raise EnhanceError(f'cannot build the network from {source}: {reason}') from exc
    if state_dict is not None:
        try:
            net.load_state_dict(dict(state_dict), strict=True)
        except RuntimeError as exc:
            sizes = _size_mismatch(weights, state_dict, net, preset, option_file)
            if sizes:
                raise EnhanceError(sizes) from exc
            report = _mismatch_report(net, state_dict) or str(exc).splitlines()[0]
            raise EnhanceError(f'checkpoint {weights} does not fit the network ({source}): {report}') from exc
    net.requires_grad_(False)
    return net.eval().to(dev)
