"""GM-MoE in spandrel: ``spandrel.ModelLoader().load_from_file('net_g.pth')`` returns an ``ImageModelDescriptor``.

Needs ``spandrel`` (``pip install gmmoe[spandrel]``). :func:`register_spandrel` adds GM-MoE's ``ArchSupport`` to
``spandrel.MAIN_REGISTRY`` (once; spandrel's own code is untouched); :mod:`gmmoe_arch.spandrel_hook` calls it when
``gmmoe_arch`` is imported and spandrel is (or later gets) imported. A checkpoint is recognised as GM-MoE by the
keys every GM-MoE has (stem and SFEB: :data:`~gmmoe_arch.archs.released_layout.REQUIRED_KEYS`, the ones
``gmmoe enhance`` requires too) and by :func:`~gmmoe_arch.archs.checkpoint_config.infer_experts` reading the experts
of its middle block's gate, so any preset, size or expert list
:func:`~gmmoe_arch.archs.checkpoint_config.infer_config` reads loads. It is tried before spandrel's NAFNet, whose
keys GM-MoE's feature expert also carries.

The descriptor is a restoration model at scale 1. It has no size requirements: the network zero-pads to a
multiple of ``2**levels`` itself (as released), and spandrel's reflect padding would change its output. Its
gates and channel attentions pool over the whole image, so plain tiling changes the result: the descriptor
tiles internally, exactly as ``gmmoe enhance`` does (one tile up to 512 x 512 pixels, beyond that tiles with
whole-image statistics passes), and says so (``ModelTiling.INTERNAL``): callers should pass whole images.
Outputs equal ``gmmoe enhance``'s with its default options. Experts other than the released three are built
with their default options and ``gate_temperature`` 3 (weights do not store them); a network trained with
others loads but computes differently: use ``gmmoe enhance --opt`` with its option file instead.
"""

from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchSupport,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
    StateDict,
)
from torch import Tensor

from .archs.checkpoint_config import infer_config, infer_experts, middle_block_channels
from .archs.gmmoe_arch import GMMoE, expert_names
from .archs.released_layout import MIDDLE_BLOCK, lacks
from .inference.runner import RunOptions, enhance_tensor, network_device
from .inference.tiling import Tiling

ARCH_ID = 'GMMoE'


def detect(state_dict: StateDict) -> bool:
    """True for a GM-MoE state dict (no required key lacking) whose experts :func:`infer_experts` reads."""
    if lacks(state_dict):
        return False
    return infer_experts(state_dict, MIDDLE_BLOCK, middle_block_channels(state_dict)) is not None


def run_like_enhance(model: GMMoE, image: Tensor) -> Tensor:
    """``model`` over ``image`` ``(1, C, H, W)`` as ``gmmoe enhance`` runs it (its default tiling and statistics
    passes, fp32); returned on ``image``'s device and dtype."""
    plan = Tiling().plan(image.shape[-2], image.shape[-1], getattr(model, 'padder_size', 1))
    out = enhance_tensor(model, image.float().cpu(), plan, RunOptions(network_device(model)))
    return out.to(image)


class GMMoEArch(Architecture[GMMoE]):
    """spandrel's view of GM-MoE: :func:`detect`, and :meth:`load` building the network the keys describe."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name='GM-MoE', detect=detect)

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[GMMoE]:
        config = infer_config(state_dict)
        model = GMMoE(**config)
        tags = [f'{config["width"]}nf', f'{len(config["enc_blk_nums"])} levels', '+'.join(expert_names(model))]
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose='Restoration',
            tags=tags,
            supports_half=False,
            supports_bfloat16=False,
            scale=1,
            input_channels=config['img_channel'],
            output_channels=config['img_channel'],
            size_requirements=SizeRequirements(),
            tiling=ModelTiling.INTERNAL,
            call_fn=run_like_enhance,
        )


def register_spandrel() -> ArchSupport:
    """Add GM-MoE to ``spandrel.MAIN_REGISTRY`` (detected before NAFNet); idempotent. Returns its entry."""
    if ARCH_ID not in MAIN_REGISTRY:
        MAIN_REGISTRY.add(ArchSupport(GMMoEArch(), detect, before=('NAFNet',)))
    return MAIN_REGISTRY[ARCH_ID]
