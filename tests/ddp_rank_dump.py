"""torchrun entry point for the tests: ``basicsr train`` (``gmmoe_arch.cli``), then this rank's weights.

``torchrun --nproc_per_node=2 ddp_rank_dump.py DUMP_DIR train -opt X.yml --launcher pytorch`` runs the
unchanged command on every rank and saves each rank's final ``net_g`` state dict to
``DUMP_DIR/rank<RANK>.pth`` (BasicSR itself saves rank 0's only).
"""

import os
import sys

import basicsr.train
import torch

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches)
from gmmoe_arch import cli


def main():
    dump, argv = sys.argv[1], sys.argv[2:]
    built = []
    build_model = basicsr.train.build_model

    def build_and_keep(opt):
        built.append(build_model(opt))
        return built[-1]

    basicsr.train.build_model = build_and_keep
    code = cli.main(argv)
    if code == 0:
        model = built[0]
        torch.save(
            model.get_bare_model(model.net_g).state_dict(), os.path.join(dump, f'rank{os.environ.get("RANK", "0")}.pth')
        )
    return code


if __name__ == '__main__':
    sys.exit(main())
