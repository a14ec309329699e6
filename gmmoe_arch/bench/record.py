"""What a measurement ran on, and the one JSON writer of the benchmarks (results stamped with it)."""

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch


def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere, or ``'unknown'``)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), 'unknown')
    except OSError:
        return platform.processor() or 'unknown'


def machine(device=None):
    """Date (UTC), host, CPU, cores, torch threads, torch and Python versions, load average and, for a CUDA
    ``device``, the GPU's name."""
    meta = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'host': platform.node(),
        'cpu': cpu_model(),
        'cpu_count': os.cpu_count(),
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'python': sys.version.split()[0],
        'load_average': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
    }
    if device is not None and torch.device(device).type == 'cuda':
        meta['gpu'] = torch.cuda.get_device_name(device)
    return meta


def write_json(path, results, device=None):
    """Write ``results`` to ``path`` (atomically: a kill mid-write leaves the previous file), with
    :func:`machine`'s fields added to ``results['meta']`` where it lacks them."""
    meta = results.setdefault('meta', {})
    for key, value in machine(device).items():
        meta.setdefault(key, value)
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, path)


def rss_mb(field='VmHWM'):
    """This process's ``VmHWM`` (peak; ``ru_maxrss`` would include a parent's from before exec) or ``VmRSS``,
    in MB, from ``/proc/self/status``."""
    with open('/proc/self/status', encoding='utf-8') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':')) / 1024
