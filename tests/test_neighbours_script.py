"""scripts/neighbours.py: a test that passes without gmmoe's hook and fails with it is a regression (exit 1);
imports are classified as ok, not installed or failing; a test passing only with gmmoe is counted, not blamed."""

import subprocess
import sys

import pytest

from helpers import REPO

SCRIPT = REPO / 'scripts' / 'neighbours.py'

SUITE = """
import sys


def test_everywhere():
    pass


def test_only_without_the_hook():
    assert not any(type(f).__name__ == 'BasicsrHookFinder' for f in sys.meta_path)


def test_only_with_the_hook():
    assert any(type(f).__name__ == 'BasicsrHookFinder' for f in sys.meta_path)
"""


@pytest.mark.slow  # two venvs' pytest runs in subprocesses
def test_a_test_that_only_fails_with_gmmoe_is_a_regression(tmp_path):
    (tmp_path / 'checkout' / 'tests').mkdir(parents=True)
    (tmp_path / 'checkout' / 'tests' / 'test_fake.py').write_text(SUITE)
    (tmp_path / 'broken_module.py').write_text('raise RuntimeError("broken on import")\n')
    done = subprocess.run(
        [sys.executable, str(SCRIPT), '--basicsr-tests', str(tmp_path / 'checkout' / 'tests')]
        + ['--imports', 'json,no_such_module_xyz,broken_module', '--extra-path', str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    cells = [[c.strip() for c in line.strip('|').split('|')] for line in done.stdout.splitlines() if '|' in line]
    rows = {row[0]: row[1:] for row in cells}
    assert rows['BasicSR tests passed'] == ['2', '2']
    assert rows['BasicSR tests failed'] == ['1', '1']
    assert rows['BasicSR tests passing only with gmmoe'] == ['-', '1']
    assert rows['`import json`'] == ['ok', 'ok']
    assert rows['`import no_such_module_xyz`'] == ['not installed', 'not installed']
    assert rows['`import broken_module`'][0] == 'fails: RuntimeError: broken on import'
    assert 'regressions (worked without gmmoe, not with it): 1' in done.stdout
    assert 'test_fake::test_only_without_the_hook: passed without, failed with' in done.stdout
