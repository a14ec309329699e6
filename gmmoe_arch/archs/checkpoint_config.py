"""The configuration of a GM-MoE network read off its state dict: what a checkpoint holds, without an option file.

:func:`infer_config` returns the :class:`~gmmoe_arch.archs.gmmoe_arch.GMMoE` arguments that rebuild the
network a state dict came from (its size and, when they are not the released ones, its experts and gate);
:func:`describe_size` words them for error messages. Both follow the module names of ``gmmoe_arch.py``
(``intro``, ``downs``, ``encoders``, ``middle_blks``, ``decoders``) and the released names of
:mod:`.released_layout` (the released gate's ``GateNetwork``, other gates' ``gate.*``, the released experts'
prefixes). A state dict without
the keys every GM-MoE has is refused (:func:`~.released_layout.require_gmmoe`).
Run-time options are no checkpoint property and are not inferred: ``gate_top_k`` (the same weights run
dense or top-k), ``fast``, ``checkpoint``; an option file sets them.
"""

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from . import released_layout
from .experts import EXPERT_REGISTRY, RELEASED_EXPERTS
from .gates import GATE_REGISTRY, RELEASED_GATE


def _count(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """How many numbered children (``prefix0.``, ``prefix1.``, ...) the keys under ``prefix`` name."""
    return len({key[len(prefix) :].split('.')[0] for key in state_dict if key.startswith(prefix)})


def _module_shapes(build) -> Optional[dict[str, tuple]]:
    """``{key: shape}`` of the module ``build()`` makes on the meta device; None if it cannot be built so."""
    try:
        with torch.device('meta'):
            module = build()
    except Exception:  # a module that needs other arguments, or fails on the meta device: no match
        return None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _held(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, tuple]:
    return {k[len(prefix) :]: tuple(v.shape) for k, v in state_dict.items() if k.startswith(prefix)}


def _expert_count(state_dict: Mapping[str, Tensor], block: str) -> Optional[int]:
    """How many experts the block with keys under ``block`` holds: the released gate's rows, else the
    positions its experts are saved at (released prefixes and ``experts.<i>.``); None without any."""
    gate = state_dict.get(block + released_layout.GATE_OUT)  # (n_experts, C / 4)
    if gate is not None:
        return gate.shape[0] if gate.ndim >= 1 else None
    own = f'{block}{released_layout.OWN_EXPERTS}'
    positions = {int(k[len(own) :].split('.')[0]) for k in state_dict if k.startswith(own) and k[len(own)].isdigit()}
    for e in released_layout.EXPERTS:
        if released_layout.held_released_expert(state_dict, block, e.position):
            positions.add(e.position)
    return max(positions) + 1 if positions else None


def infer_gate(state_dict: Mapping[str, Tensor], block: str, channels: int, n_experts: int) -> Optional[str]:
    """The registry name of the gate of the expert block under ``block`` (``channels`` wide, ``n_experts``
    experts): :data:`~.gates.RELEASED_GATE` where it holds ``GateNetwork.*``, else the registered gate whose
    default keys and shapes are exactly its ``gate.*`` keys and shapes; None when none matches."""
    if any(key.startswith(block + released_layout.GATE) for key in state_dict):
        return RELEASED_GATE
    held = _held(state_dict, block + released_layout.OWN_GATE)
    match = [n for n, g in GATE_REGISTRY if held and _module_shapes(lambda g=g: g(channels, n_experts)) == held]
    return match[0] if match else None


def infer_experts(state_dict: Mapping[str, Tensor], block: str, channels: Optional[int] = None) -> Optional[list[str]]:
    """Names of the experts of the expert block whose keys start with ``block`` (e.g. ``'encoders.0.0.'``),
    in order; None where the block holds no experts or an expert matches no registered expert built with its
    default options.

    ``channels``: the block's width (None: read off the released gate, whose first layer is ``(C / 4, C)``).
    An expert saved as ``experts.<i>.*`` is the registered expert whose default keys and shapes at the
    block's width are exactly its keys and shapes; the released experts at their released positions are
    recognised by their released names (:data:`.released_layout.EXPERTS`: ``Expert1.*``, ``Expert2.*``,
    the feature expert inline).
    """
    if channels is None:
        first = state_dict.get(block + released_layout.GATE_IN)  # (C / 4, C, ...)
        if first is None or first.ndim < 2:  # a damaged gate: loading names it
            return None
        channels = first.shape[1]
    n = _expert_count(state_dict, block)
    if n is None:
        return None
    names = []
    for i in range(n):
        released = released_layout.held_released_expert(state_dict, block, i)
        if released is not None:
            names.append(released)
            continue
        held = _held(state_dict, f'{block}{released_layout.OWN_EXPERTS}{i}.')
        match = [name for name, e in EXPERT_REGISTRY if held and _module_shapes(lambda e=e: e(channels)) == held]
        if not match:
            return None
        names.append(match[0])
    return names


def infer_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """GMMoE arguments (``img_channel``, ``width``, block counts per level, ``experts`` unless they are the
    released three, ``gate`` unless it is the released one) of a GM-MoE state dict.

    Raises:
        NotGMMoECheckpointError: ``state_dict`` lacks a key every GM-MoE has (one line naming them).
    """
    released_layout.require_gmmoe(state_dict)
    intro = state_dict['intro.weight']  # (width, img_channel, 3, 3)
    levels = _count(state_dict, 'downs.')
    config = dict(
        img_channel=intro.shape[1],
        width=intro.shape[0],
        enc_blk_nums=[_count(state_dict, f'encoders.{i}.') for i in range(levels)],
        middle_blk_num=_count(state_dict, 'middle_blks.'),
        dec_blk_nums=[_count(state_dict, f'decoders.{i}.') for i in range(levels)],
    )
    block, channels = released_layout.MIDDLE_BLOCK, intro.shape[0] * 2**levels
    experts = infer_experts(state_dict, block, channels)
    if experts is not None and experts != list(RELEASED_EXPERTS):
        config['experts'] = experts
    gate = infer_gate(state_dict, block, channels, len(experts)) if experts is not None else None
    if gate is not None and gate != RELEASED_GATE:
        config['gate'] = {'type': gate}
    return config


def describe_size(config: Mapping[str, Any]) -> str:
    """``'width-8 network (enc [1, 1, 1], middle 1, dec [1, 1, 1])'`` for an :func:`infer_config` result
    (plus ``, experts [...]`` when it names them)."""
    channels = f', {config["img_channel"]} channels' if config['img_channel'] != 3 else ''
    experts = f', experts [{", ".join(config["experts"])}]' if 'experts' in config else ''
    experts += f', gate {config["gate"]["type"]}' if 'gate' in config else ''
    return (
        f'width-{config["width"]} network (enc {config["enc_blk_nums"]}, middle {config["middle_blk_num"]}, '
        f'dec {config["dec_blk_nums"]}{channels}{experts})'
    )
