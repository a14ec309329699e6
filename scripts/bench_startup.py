"""What the basicsr start-up hook costs programs that have nothing to do with basicsr.

Builds two scratch venvs of this interpreter's base Python (no pip, nothing installed): ``with`` holds
``gmmoe_basicsr_hook.py`` and the ``.pth`` line exactly as this environment has them installed, ``without`` holds
nothing. Each workload runs ``--runs`` times in each venv, the two interleaved so that load on the machine hits
both alike, and the script prints the median and minimum wall time per run and their ratios (with / without).
Workloads: ``python -c pass`` (bare start-up) and a program importing a few dozen stdlib modules (each import is
first offered to the hook's finder). Wall time of a process is noisy on a loaded machine, so the script also
reads ``python -X importtime -c pass``: the time of ``site`` (which processes the .pth files) in both venvs and the
hook module's own import time. Run: ``.venv/bin/python scripts/bench_startup.py [--runs 60]``.
"""

import argparse
import importlib.util
import py_compile
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from subprocess import DEVNULL

from gmmoe_arch.bench.timing import interleaved

HOOK = 'gmmoe_basicsr_hook'
STDLIB_PROGRAM = (
    'import argparse, asyncio, calendar, concurrent.futures, csv, dataclasses, decimal, difflib, '
    'email.message, fractions, http.client, json, logging, pprint, shutil, statistics, subprocess, '
    'tarfile, tempfile, textwrap, threading, typing, unittest, urllib.request, uuid, '
    'xml.etree.ElementTree, zipfile; import sys; print(len(sys.modules))'
)
CLEAN_ENV = {'PATH': '/usr/bin:/bin'}  # no PYTHON* variables: same interpreter settings in both venvs


def installed_hook():
    """The installed .pth file and the hook module it imports (the source file for an editable install)."""
    pth = Path(sysconfig.get_paths()['purelib']) / f'{HOOK}.pth'
    spec = importlib.util.find_spec(HOOK)
    if not pth.is_file() or spec is None:
        sys.exit(f'bench_startup: {pth} or module {HOOK} not found: install the package first (make install)')
    return pth, Path(spec.origin)


def make_venv(path):
    """A venv without pip; returns its python and site-packages."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)], check=True)
    python = path / 'bin' / 'python'
    return python, Path(python_output(python, 'import sysconfig; print(sysconfig.get_paths()["purelib"])'))


def python_output(python, code):
    """What ``python -c code`` prints, stripped."""
    return subprocess.run([str(python), '-c', code], check=True, capture_output=True, text=True).stdout.strip()


def time_runs(pythons, args, runs):
    """Wall seconds of ``runs`` runs of ``python *args`` for each python, interleaved; {python: [seconds]}."""
    calls = {
        python: (lambda python=python: subprocess.run([str(python)] + args, check=True, env=CLEAN_ENV, stdout=DEVNULL))
        for python in pythons
    }
    return interleaved(calls, runs).walls


def import_times(pythons, module, runs):
    """Cumulative import time (us) of ``module`` in ``python -X importtime -c pass``, interleaved; {python: [us]}."""
    times = {python: [] for python in pythons}
    for _ in range(runs):
        for python in pythons:
            err = subprocess.run(
                [str(python), '-X', 'importtime', '-c', 'pass'],
                check=True,
                capture_output=True,
                text=True,
                env=CLEAN_ENV,
            ).stderr
            fields = next(line.split('|') for line in err.splitlines() if line.split('|')[-1].strip() == module)
            times[python].append(int(fields[1]))
    return times


def print_row(name, without, with_hook, scale, unit):
    """One line: median / min of both series (times ``scale``, in ``unit``) and the with/without ratios."""
    (med_0, min_0), (med_1, min_1) = ((statistics.median(t), min(t)) for t in (without, with_hook))
    print(
        f'{name + " (" + unit + ")":<36}{med_0 * scale:>9.1f} /{min_0 * scale:>7.1f}{med_1 * scale:>11.1f} /'
        f'{min_1 * scale:>7.1f}{med_1 / med_0:>11.3f}{min_1 / min_0:>11.3f}'
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=60, help='runs per workload and venv (default 60)')
    args = parser.parse_args()
    pth, module = installed_hook()
    with tempfile.TemporaryDirectory() as tmp:
        without, _ = make_venv(Path(tmp) / 'without')
        with_hook, site = make_venv(Path(tmp) / 'with')
        shutil.copy(pth, site / pth.name)
        py_compile.compile(str(shutil.copy(module, site / module.name)), doraise=True)  # as pip does on install
        check = python_output(with_hook, 'import sys; print(type(sys.meta_path[0]).__name__)')
        assert check == 'BasicsrHookFinder', f'the hook did not install in the scratch venv: {check}'

        print(f'start-up with / without the basicsr hook, {args.runs} interleaved runs each')
        print(f'{"workload":<36}{"without med/min":>18}{"with med/min":>18}{"ratio med":>11}{"ratio min":>11}')
        workloads = {'python -c pass': ['-c', 'pass'], 'import 27 stdlib modules': ['-c', STDLIB_PROGRAM]}
        for name, cmd in workloads.items():
            times = time_runs([without, with_hook], cmd, args.runs)
            print_row(name, times[without], times[with_hook], 1e3, 'ms')
        times = import_times([without, with_hook], 'site', args.runs)
        print_row('site import, all .pth files', times[without], times[with_hook], 1, 'us')
        hook = import_times([with_hook], HOOK, args.runs)[with_hook]
        print(f'{HOOK} import alone: median {statistics.median(hook):.0f} us, min {min(hook)} us')


if __name__ == '__main__':
    main()
