"""Sizes, repeat counts and budgets of a GPU check run: the GPU's and the CPU dry run's."""

import dataclasses
from typing import Optional

import torch

COMPILE_MODES = ('reduce-overhead', 'max-autotune-no-cudagraphs')
KNOWN_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
GRAPH_MODES = ('reduce-overhead', 'max-autotune')  # the modes that capture CUDA graphs
# shares of --budget-s (how they were sized: docs/performance.md, the GPU check)
PART_WEIGHTS = {
    'reference': 2,
    'inference': 14,
    'training': 8,
    'released': 6,
    'training_compiled': 34,
    'loader': 16,
    'inference_compiled': 20,
    'basicsr': 20,
    'profile': 4,
}
DEFAULT_PARTS = 'reference,inference,training,released,training_compiled,loader,inference_compiled'


@dataclasses.dataclass
class Plan:
    """Sizes and repeat counts of one run (:func:`gpu_plan` or :func:`dry_plan`)."""

    device: torch.device
    infer_shapes: list  # [(height, width, batch)], in priority order
    train_batch: int
    train_crop: int
    released_crop: int
    net_size: dict  # GMMoE size arguments overriding the paper preset's (dry run: tiny)
    released_size: dict  # the same for the released preset
    warmup: int  # eager calls before timing
    compile_warmup: int  # compiled calls before timing (compile, CUDA-graph recording)
    min_runs: int
    max_runs: int
    target_s: float  # time aimed at per measurement
    compile_backend: str
    compile_infer_max: Optional[int]  # compiled inference variants to try at most (None: all)
    loader_pairs: int
    loader_size: tuple  # (height, width) of the synthetic pairs
    loader_workers: tuple
    min_eager_s: float  # left in a part's budget for an eager measurement to start
    min_compile_s: float
    min_loader_s: float
    seed: int = 0

    @property
    def cuda(self):
        return self.device.type == 'cuda'


def gpu_plan():
    return Plan(
        device=torch.device('cuda'),
        infer_shapes=[(400, 600, 1), (400, 600, 8), (1024, 1024, 1), (1024, 1024, 8)],
        train_batch=8,
        train_crop=256,
        released_crop=256,
        net_size={},
        released_size={},
        warmup=3,
        compile_warmup=3,
        min_runs=3,
        max_runs=200,
        target_s=1.0,
        compile_backend='inductor',
        compile_infer_max=None,
        loader_pairs=200,
        loader_size=(400, 600),
        loader_workers=(4, 8, 16),
        min_eager_s=2.0,
        min_compile_s=25.0,
        min_loader_s=6.0,
    )


def dry_plan():
    # width 16, not 8: torch 2.14's CPU kernel for the SFEB's dilated depthwise conv returns NaN weight gradients
    # (and corrupts memory) with 8 channels-last bf16 channels, which would end the run in a segfault
    tiny = dict(width=16, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    return Plan(
        device=torch.device('cpu'),
        infer_shapes=[(48, 64, 1), (64, 64, 2)],
        train_batch=2,
        train_crop=64,
        released_crop=32,
        net_size=tiny,
        released_size=dict(width=4),
        warmup=1,
        compile_warmup=1,
        min_runs=2,
        max_runs=2,
        target_s=0.0,
        compile_backend='eager',
        compile_infer_max=1,
        loader_pairs=6,
        loader_size=(64, 64),
        loader_workers=(0, 2),
        min_eager_s=0.0,
        min_compile_s=0.0,
        min_loader_s=0.0,
    )


DTYPES = {'fp32': None, 'bf16': torch.bfloat16}
