"""The released checkpoints' state-dict layout, in one table, and how a GM-MoE checkpoint is recognised.

Three readers follow it: :class:`~gmmoe_arch.archs.gmmoe_arch.ExpertBlock` saves and loads its experts and
gate under these names, :func:`~gmmoe_arch.archs.checkpoint_config.infer_config` reads a checkpoint's
experts by them, and the loader's mismatch report leaves the unused keys out. Names are relative to an
expert block (``encoders.0.0.``, ``middle_blks.3.``, ...) unless said otherwise.

* :data:`EXPERTS`: an expert at its released position is saved under its released prefix (``Expert1.*``,
  ``Expert2.*``, or inline directly under the block); a checkpoint holds it where a key starts with its
  ``marker``. Every other expert is saved as ``experts.<i>.*``.
* :data:`GATE`: the released gate's ``gate.mlp.*`` is saved as ``GateNetwork.*``; other gates (``network_g.gate``)
  keep ``gate.*`` (:data:`OWN_GATE`).
* :data:`SHARED`: shared experts (``network_g.shared_experts``) are saved as ``shared.<j>.*``, a name no
  released key starts with.
* :data:`UNUSED`: ``conv6.*``, weights the released forward never used; loading drops them.
* :data:`REQUIRED_KEYS`: full keys every GM-MoE checkpoint has, of any size and experts (the stem and the
  SFEB; not a gate: ``middle_blk_num: 0`` is a valid network), and NAFNet, whose blocks GM-MoE's feature
  expert shares, has not. All are conv kernels: one that is not a 4-D tensor counts as lacking. A state
  dict lacking one is refused by :func:`require_gmmoe` (:func:`refusal`: ``not a GM-MoE checkpoint: it lacks ...``).
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional


class ReleasedExpert(NamedTuple):
    """An expert of the released block: its ``position`` in the block's list, its registry name ``expert``,
    the ``prefix`` its keys have under the block (``''``: inline), and the key prefix ``marker`` that only
    it has there (how a checkpoint shows that it holds this expert)."""

    position: int
    expert: str
    prefix: str
    marker: str


EXPERTS = (
    ReleasedExpert(0, 'ColourExpert', 'Expert1.', 'Expert1.'),
    ReleasedExpert(1, 'DetailExpert', 'Expert2.', 'Expert2.'),
    ReleasedExpert(2, 'FeatureExpert', '', 'conv11.'),
)
OWN_EXPERTS = 'experts.'  # ours: the block's nn.ModuleList of experts
OWN_GATE = 'gate.'  # ours: the gate module; the released Gate's ``mlp`` is saved as GATE
SHARED = 'shared.'  # ours: shared experts (``network_g.shared_experts``), which no released checkpoint has
GATE = 'GateNetwork.'
GATE_IN = GATE + '0.weight'  # (C / 4, C): C, the block's width
GATE_OUT = GATE + '2.weight'  # (n_experts, C / 4)
UNUSED = 'conv6.'

MIDDLE_BLOCK = 'middle_blks.0.'  # the block whose experts a checkpoint is read by
REQUIRED_KEYS = (
    'intro.weight',
    'ending.weight',
    'MSFEblock.conv0.weight',
    'MSFEblock.conv_spatial.weight',
    'MSFEblock.conv_squeeze.weight',
    'MSFEblock.conv.weight',
)


class NotGMMoECheckpointError(ValueError):
    """A state dict without the keys every GM-MoE checkpoint has; the message names them."""


def saved_prefixes(experts: Sequence[str], released_gate: bool = True) -> dict[str, str]:
    """``{our prefix: saved prefix}`` for a block of the experts named ``experts`` (class names, in order):
    each expert at its released position, and the gate if it is the released one (``released_gate``; other
    gates keep ``gate.*``). Prefixes not in it are saved as they are."""
    released = {e.position: e for e in EXPERTS}
    names = {
        f'{OWN_EXPERTS}{i}.': released[i].prefix
        for i, name in enumerate(experts)
        if i in released and released[i].expert == name
    }
    if released_gate:
        names[OWN_GATE + 'mlp.'] = GATE
    return names


def held_released_expert(state_dict: Mapping[str, object], block: str, position: int) -> Optional[str]:
    """The name of the released expert ``state_dict`` holds at ``position`` of the block with keys under
    ``block`` (its ``marker`` is there), else None."""
    for e in EXPERTS:
        if e.position == position and any(key.startswith(block + e.marker) for key in state_dict):
            return e.expert
    return None


def is_unused(key: str) -> bool:
    """Whether ``key`` (a full key, ``encoders.0.0.conv6.weight``) is one of the released blocks' unused weights."""
    return key.split('.')[-2:-1] == [UNUSED.rstrip('.')]


def lacks(state_dict: Mapping[str, object]) -> list[str]:
    """The :data:`REQUIRED_KEYS` ``state_dict`` lacks or holds as other than a 4-D tensor (none: it is a
    GM-MoE state dict)."""
    return [key for key in REQUIRED_KEYS if getattr(state_dict.get(key), 'ndim', None) != 4]


def refusal(state_dict: Mapping[str, object]) -> Optional[str]:
    """``'not a GM-MoE checkpoint: it lacks A, B'`` naming the :data:`REQUIRED_KEYS` ``state_dict`` lacks;
    None when it has them all."""
    missing = lacks(state_dict)
    return f'not a GM-MoE checkpoint: it lacks {", ".join(missing)}' if missing else None


def require_gmmoe(state_dict: Mapping[str, object]) -> None:
    """Raise :class:`NotGMMoECheckpointError` with the :func:`refusal` of ``state_dict``, if it has one."""
    message = refusal(state_dict)
    if message:
        raise NotGMMoECheckpointError(message)
