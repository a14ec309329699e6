"""The size of a GM-MoE network read off its state dict: what a checkpoint holds, without an option file.

:func:`infer_config` returns the :class:`~gmmoe_arch.archs.gmmoe_arch.GMMoE` size arguments that rebuild
the network a state dict came from; :func:`describe_size` words them for error messages. Both follow the
module names of ``gmmoe_arch.py`` (``intro``, ``downs``, ``encoders``, ``middle_blks``, ``decoders``).
"""

from typing import Any, Dict, Mapping, Optional

from torch import Tensor


def _count(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """How many numbered children (``prefix0.``, ``prefix1.``, ...) the keys under ``prefix`` name."""
    return len({key[len(prefix) :].split('.')[0] for key in state_dict if key.startswith(prefix)})


def infer_config(state_dict: Mapping[str, Tensor]) -> Optional[Dict[str, Any]]:
    """GMMoE size arguments (``img_channel``, ``width``, block counts per level) of a GM-MoE state dict;
    None when ``state_dict`` is not one (no ``intro.weight``)."""
    if 'intro.weight' not in state_dict:
        return None
    intro = state_dict['intro.weight']  # (width, img_channel, 3, 3)
    levels = _count(state_dict, 'downs.')
    return dict(
        img_channel=intro.shape[1],
        width=intro.shape[0],
        enc_blk_nums=[_count(state_dict, f'encoders.{i}.') for i in range(levels)],
        middle_blk_num=_count(state_dict, 'middle_blks.'),
        dec_blk_nums=[_count(state_dict, f'decoders.{i}.') for i in range(levels)],
    )


def describe_size(config: Mapping[str, Any]) -> str:
    """``'width-8 network (enc [1, 1, 1], middle 1, dec [1, 1, 1])'`` for an :func:`infer_config` result."""
    channels = f', {config["img_channel"]} channels' if config['img_channel'] != 3 else ''
    return (
        f'width-{config["width"]} network (enc {config["enc_blk_nums"]}, middle {config["middle_blk_num"]}, '
        f'dec {config["dec_blk_nums"]}{channels})'
    )
