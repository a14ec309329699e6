"""Enhance users' own photos with a GM-MoE network: the Python API behind ``gmmoe enhance``.

Three layers, each usable alone::

    net = load_network('net_g.pth', preset='paper')          # or option_file=, or inferred
    out = enhance_image(net, img)                             # numpy in, numpy out (same dtype)
    summary = enhance_paths(['photos/'], 'enhanced/', net)    # files, folders, globs

The code lives in :mod:`gmmoe_arch.inference`, a module per job (loading, tiling, statistics, running,
image files, batch jobs); this module gathers what users and the ``gmmoe`` command call. Options are
checked once, when :class:`Tiling` and :class:`RunOptions` are made; a user's mistake is one
:class:`EnhanceError` naming the file, key or option.
"""

from .inference.errors import EnhanceError
from .inference.image_files import DEFAULT_MAX_IMAGE_PIXELS, read_image, write_file, write_image
from .inference.jobs import Job, Summary, check_writable, collect_jobs, describe_skipped, enhance_jobs, enhance_paths
from .inference.loading import load_network, resolve_device
from .inference.runner import DEFAULT_STAT_PASSES, PRECISIONS, RunOptions, enhance_image, enhance_tensor
from .inference.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, TilePlan, Tiling

__all__ = [
    'DEFAULT_MAX_IMAGE_PIXELS',
    'DEFAULT_MAX_PIXELS',
    'DEFAULT_OVERLAP',
    'DEFAULT_STAT_PASSES',
    'PRECISIONS',
    'EnhanceError',
    'Job',
    'RunOptions',
    'Summary',
    'TilePlan',
    'Tiling',
    'check_writable',
    'collect_jobs',
    'describe_skipped',
    'enhance_image',
    'enhance_jobs',
    'enhance_paths',
    'enhance_tensor',
    'load_network',
    'read_image',
    'resolve_device',
    'write_file',
    'write_image',
]
