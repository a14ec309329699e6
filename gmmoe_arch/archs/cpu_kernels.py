"""Whether the fast path's own CPU inference kernels apply to a tensor: one predicate, read by pooling and fast ops.

Those kernels (the oneDNN conv with fused post-ops, the ones-GEMM mean, the halved channel max, the float32
LayerNorm for half-precision inputs) are for CPU inference only: they have no backward, ``torch.compile`` and
``torch.export`` fuse on their own, and most read channels-last memory.
"""

import torch
from torch import Tensor


def cpu_kernels_apply(x: Tensor, channels_last: bool = True) -> bool:
    """Whether the CPU inference kernels apply to ``x``: on the CPU, grad disabled, not being compiled or
    exported, and (unless ``channels_last`` is False, for a kernel that reads either layout) channels-last."""
    return (
        x.device.type == 'cpu'
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and (not channels_last or x.is_contiguous(memory_format=torch.channels_last))
    )
