"""What the fast-path benchmark's parts share: the allocator switch between the two CPU baselines, and the
printed table of medians and paired ratios."""

from ...runtime import configure_allocator, restore_allocator
from ..timing import Runs

#: whether the allocator tuning is on (set once by :func:`setup_allocator`; ``GMMOE_MALLOC=off`` keeps it off)
TUNED = {'on': False}


def setup_allocator():
    """Apply the allocator tuning as the ``basicsr``/``gmmoe`` commands do; returns whether it is on."""
    TUNED['on'] = bool(configure_allocator())
    return TUNED['on']


def set_allocator(tuned):
    """Switch glibc's allocator between the project's tuning and plain settings (no-op when untuned)."""
    if TUNED['on']:
        configure_allocator(True) if tuned else restore_allocator()


def two_baselines(device):
    """Whether a separate ``plain+malloc`` baseline exists (CPU with the allocator tuning available)."""
    return TUNED['on'] and device.type == 'cpu'


def report(title, runs: Runs, bases):
    """Print medians and ratios against each of ``bases`` (paired run by run); return a dict of them."""
    print(f'  {title}')
    rows = {}
    for name in runs.walls:
        rows[name] = r = runs.summary(name)
        print(f'    {name:14s} median {r["median_s"]:8.3f} s  min {r["min_s"]:8.3f} s')
        for base in bases:
            if base == name:
                continue
            r[f'vs {base}'] = v = runs.ratios(base, name)
            print(
                f'    {"":14s}   speed-up vs {base:14s} paired {v["paired_ratio"]:5.2f}x  of medians '
                f'{v["ratio_of_medians"]:5.2f}x  (cpu time {v["cpu_paired_ratio"]:5.2f}x)'
            )
    return rows
