"""Does installing gmmoe change what its neighbours rely on? BasicSR's own test suite and other packages' imports,
run with gmmoe and without it, side by side.

``with``: this interpreter (gmmoe installed, its start-up hook active; ``--with-python`` takes another).
``without``: a scratch venv of the same base Python that reaches this environment's packages through a plain path
entry, so none of their ``.pth`` files run: no gmmoe hook and, for an editable install, no ``gmmoe_arch``
(``--without-python`` takes another interpreter instead). ``--extra-path`` folders (e.g. a ``pip install
--target`` of Real-ESRGAN and GFPGAN) are on ``PYTHONPATH`` for both.

``--basicsr-tests``: the ``tests`` folder of a BasicSR checkout at the installed version (the PyPI sdist has
none): ``git clone -b v1.4.2 https://github.com/XPixelGroup/BasicSR``. Each interpreter runs pytest there with
a JUnit report, and the outcome of every test is compared. Each ``--imports`` module is imported by each
interpreter. Prints a Markdown table; exits 1 when a test or an import that passed without gmmoe fails with it.
Run: ``.venv/bin/python scripts/neighbours.py --basicsr-tests BasicSR/tests [--imports basicsr,realesrgan]``.
"""

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def clean_env(extra_path):
    """No PYTHON* or GMMOE* variables, one thread; ``extra_path`` as PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTHON', 'GMMOE'))}
    env['OMP_NUM_THREADS'] = '1'
    if extra_path:
        env['PYTHONPATH'] = os.pathsep.join(str(p) for p in extra_path)
    return env


def make_without(root):
    """A venv whose site-packages reaches this environment's through ``base_env.pth`` (a plain path entry)."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(root)], check=True)
    python = root / 'bin' / 'python'
    code = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
    site = subprocess.run([str(python), '-c', code], check=True, capture_output=True, text=True).stdout.strip()
    Path(site, 'base_env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    return python


def outcomes(report):
    """``{test id: 'passed' | 'failed' | 'skipped'}`` from a pytest JUnit XML report (errors count as failed)."""
    result = {}
    for case in ET.parse(report).getroot().iter('testcase'):
        test = f'{case.get("classname")}::{case.get("name")}'
        if case.find('failure') is not None or case.find('error') is not None:
            result[test] = 'failed'
        elif case.find('skipped') is not None:
            result[test] = 'skipped'
        else:
            result[test] = 'passed'
    return result


def run_suite(python, tests, report, env, timeout):
    """BasicSR's tests under ``python`` (run from the checkout root, as its tests expect); their outcomes."""
    cmd = [str(python), '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f'--junitxml={report}', tests.name]
    subprocess.run(cmd, cwd=tests.parent, env=env, capture_output=True, text=True, timeout=timeout)
    if not report.is_file():
        sys.exit(f'neighbours: pytest under {python} wrote no report {report} (is pytest installed there?)')
    return outcomes(report)


def try_import(python, module, env):
    """``'ok'``, ``'not installed'`` or ``'fails: <last line of the error>'``."""
    done = subprocess.run([str(python), '-c', f'import {module}'], env=env, capture_output=True, text=True)
    if done.returncode == 0:
        return 'ok'
    last = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
    if last == f"ModuleNotFoundError: No module named '{module.split('.')[0]}'":
        return 'not installed'
    return f'fails: {last[:120]}'


def count(results, outcome):
    return sum(1 for value in results.values() if value == outcome)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--basicsr-tests', type=Path, help='the tests folder of a BasicSR checkout')
    parser.add_argument('--imports', default='basicsr,realesrgan,gfpgan', help='comma-separated modules to import')
    parser.add_argument('--with-python', type=Path, default=Path(sys.executable))
    parser.add_argument('--without-python', type=Path, help='default: a scratch venv without .pth files')
    parser.add_argument('--extra-path', type=Path, action='append', default=[], help='on PYTHONPATH for both')
    parser.add_argument('--timeout', type=int, default=1800, help='seconds per test-suite run')
    args = parser.parse_args(argv)
    if args.basicsr_tests is not None and not args.basicsr_tests.is_dir():
        parser.error(f'--basicsr-tests {args.basicsr_tests}: no such folder')
    env = clean_env(args.extra_path)
    with tempfile.TemporaryDirectory(prefix='neighbours_') as tmp:
        tmp = Path(tmp)
        pythons = {
            'without gmmoe': args.without_python or make_without(tmp / 'without'),
            'with gmmoe': args.with_python,
        }
        rows, regressions = [], []
        if args.basicsr_tests is not None:
            tests = args.basicsr_tests.resolve()
            suite = {
                side: run_suite(python, tests, tmp / f'{i}.xml', env, args.timeout)
                for i, (side, python) in enumerate(pythons.items())
            }
            without, with_ = suite['without gmmoe'], suite['with gmmoe']
            for outcome in ('passed', 'failed', 'skipped'):
                rows.append((f'BasicSR tests {outcome}', count(without, outcome), count(with_, outcome)))
            regressions += [
                f'{t}: {o} without, {with_.get(t, "absent")} with'
                for t, o in without.items()
                if o == 'passed' and with_.get(t) != 'passed'
            ]
            gained = sum(1 for t, o in with_.items() if o == 'passed' and without.get(t) != 'passed')
            rows.append(('BasicSR tests passing only with gmmoe', '-', gained))
        for module in filter(None, args.imports.split(',')):
            result = {side: try_import(python, module, env) for side, python in pythons.items()}
            rows.append((f'`import {module}`', result['without gmmoe'], result['with gmmoe']))
            if result['without gmmoe'] == 'ok' and result['with gmmoe'] != 'ok':
                regressions.append(f'import {module}: {result["with gmmoe"]}')
    print('| check | without gmmoe | with gmmoe |\n|---|---|---|')
    for row in rows:
        print('| ' + ' | '.join(str(cell) for cell in row) + ' |')
    print(f'\nregressions (worked without gmmoe, not with it): {len(regressions)}')
    for line in regressions:
        print(f'- {line}')
    return 1 if regressions else 0


if __name__ == '__main__':
    sys.exit(main())
