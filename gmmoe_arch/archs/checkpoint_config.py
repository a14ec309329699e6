"""The configuration of a GM-MoE network read off its state dict: what a checkpoint holds, without an option file.

:func:`infer_config` returns the :class:`~gmmoe_arch.archs.gmmoe_arch.GMMoE` arguments that rebuild the
network a state dict came from (its size and, when they are not the released three, its experts);
:func:`describe_size` words them for error messages. Both follow the module names of ``gmmoe_arch.py``
(``intro``, ``downs``, ``encoders``, ``middle_blks``, ``decoders``) and the released names of
:mod:`.released_layout` (the gate's ``GateNetwork``, the released experts' prefixes). A state dict without
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


def _count(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """How many numbered children (``prefix0.``, ``prefix1.``, ...) the keys under ``prefix`` name."""
    return len({key[len(prefix) :].split('.')[0] for key in state_dict if key.startswith(prefix)})


def _expert_shapes(name: str, channels: int) -> Optional[dict[str, tuple]]:
    """``{key: shape}`` of expert ``name`` built with its defaults at ``channels`` (on the meta device);
    None if it cannot be built that way."""
    try:
        with torch.device('meta'):
            expert = EXPERT_REGISTRY.get(name)(channels)
    except Exception:  # an expert that needs other arguments, or fails on the meta device: no match
        return None
    return {k: tuple(v.shape) for k, v in expert.state_dict().items()}


def infer_experts(state_dict: Mapping[str, Tensor], block: str) -> Optional[list[str]]:
    """Names of the experts of the expert block whose keys start with ``block`` (e.g. ``'encoders.0.0.'``),
    in order; None where the block has no gate or an expert matches no registered expert built with its
    default options.

    An expert saved as ``experts.<i>.*`` is the registered expert whose default keys and shapes at the
    block's width are exactly its keys and shapes; the released experts at their released positions are
    recognised by their released names (:data:`.released_layout.EXPERTS`: ``Expert1.*``, ``Expert2.*``,
    the feature expert inline).
    """
    gate = state_dict.get(block + released_layout.GATE_OUT)  # (n_experts, C / 4)
    first = state_dict.get(block + released_layout.GATE_IN)  # (C / 4, C, ...)
    if gate is None or first is None or gate.ndim < 1 or first.ndim < 2:  # a damaged gate: loading names it
        return None
    channels = first.shape[1]
    names = []
    for i in range(gate.shape[0]):
        released = released_layout.held_released_expert(state_dict, block, i)
        if released is not None:
            names.append(released)
            continue
        prefix = f'{block}{released_layout.OWN_EXPERTS}{i}.'
        held = {k[len(prefix) :]: tuple(v.shape) for k, v in state_dict.items() if k.startswith(prefix)}
        match = [name for name, _ in EXPERT_REGISTRY if held and _expert_shapes(name, channels) == held]
        if not match:
            return None
        names.append(match[0])
    return names


def infer_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """GMMoE arguments (``img_channel``, ``width``, block counts per level, and ``experts`` unless they are
    the released three) of a GM-MoE state dict.

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
    experts = infer_experts(state_dict, released_layout.MIDDLE_BLOCK)
    if experts is not None and experts != list(RELEASED_EXPERTS):
        config['experts'] = experts
    return config


def describe_size(config: Mapping[str, Any]) -> str:
    """``'width-8 network (enc [1, 1, 1], middle 1, dec [1, 1, 1])'`` for an :func:`infer_config` result
    (plus ``, experts [...]`` when it names them)."""
    channels = f', {config["img_channel"]} channels' if config['img_channel'] != 3 else ''
    experts = f', experts [{", ".join(config["experts"])}]' if 'experts' in config else ''
    return (
        f'width-{config["width"]} network (enc {config["enc_blk_nums"]}, middle {config["middle_blk_num"]}, '
        f'dec {config["dec_blk_nums"]}{channels}{experts})'
    )
