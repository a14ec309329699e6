"""scripts/gpu_check.py (gmmoe_arch.bench.gpu): its CPU dry run goes through every part and writes every section of
the JSON; its budget guard skips what does not fit and still writes the results; without a GPU it refuses in one
line."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gmmoe_arch.bench.gpu import cli, inference, training

from helpers import REPO

SCRIPT = REPO / 'scripts' / 'gpu_check.py'
SECTIONS = (
    'meta',
    'reference',
    'inference',
    'training',
    'released',
    'training_compiled',
    'loader',
    'inference_compiled',
    'summary',
)


def run_script(args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(SCRIPT)] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def entries(results):
    """``(section, key, entry)`` for every measurement (not meta or summary)."""
    return [(s, k, e) for s, rows in results.items() if s not in ('meta', 'summary') for k, e in rows.items()]


@pytest.mark.slow
def test_cpu_dry_run_measures_every_part(tmp_path):
    done = run_script(['--cpu-dry-run', '--out', str(tmp_path), '--tmp-dir', str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert set(SECTIONS) <= set(results), sorted(results)
    failed = [
        (s, k, e.get('error') or e.get('skipped')) for s, k, e in entries(results) if 'error' in e or 'skipped' in e
    ]
    assert not failed
    assert results['meta']['dry_run'] and results['meta']['compile_backend'] == 'eager'

    inference = results['inference']
    for shape in ('64x48 b1', '64x64 b2'):
        for variant in (
            'plain fp32',
            'fast fp32',
            'plain bf16',
            'fast bf16',
            'channels-last fp32',
            'channels-last bf16',
        ):
            assert inference[f'{shape} {variant}']['img_s'] > 0
        assert inference[f'{shape} plain fp32']['max_abs_diff'] == 0
        assert inference[f'{shape} fast fp32']['max_abs_diff'] < 1e-4
        assert 30 < inference[f'{shape} plain bf16']['psnr_db'] < 120
    compiled = results['inference_compiled']['64x48 b1 compile reduce-overhead fp32']
    assert compiled['graphs'] >= 1 and compiled['max_abs_diff'] < 1e-4

    training = {**results['training'], **results['training_compiled']}
    assert len(training) == 9
    for name, entry in training.items():
        assert entry['it_s'] > 0 and entry['loss_finite'], name
    assert abs(training['plain fp32 checkpoint block']['first_loss_vs_plain']) < 1e-4
    released = results['released']
    assert {e['params'] for e in released.values()} == {released['batch 1 x 32^2 fp32']['params']}

    loader = results['loader']
    assert loader['setup']['pairs'] == 6
    for source in ('png', 'lmdb'):
        for workers in (0, 2):
            row = loader[f'{source} {workers} workers']
            assert row['it_s'] > 0 and 0 < row['gpu_busy'] <= 1.0 and row['loader_only_batches_s'] > 0
    assert not list(tmp_path.glob('gmmoe_gpu_check_*')), 'synthetic pairs left behind'

    summary = results['summary']
    assert summary['training']['plain_it_s'] == results['training']['plain fp32']['it_s']
    assert 'inference 64x48 b1' in summary and 'loader lmdb 2 workers' in summary
    assert '[summary] training' in done.stdout


@pytest.mark.slow
def test_budget_guard_skips_what_does_not_fit_and_writes_the_json(tmp_path):
    done = run_script(['--cpu-dry-run', '--out', str(tmp_path), '--budget-s', '0.001', '--parts', 'inference,training'])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / 'gpu_check.json').read_text())
    rows = entries(results)
    assert {s for s, _, _ in rows} == {'inference', 'training'}
    assert rows and all('skipped' in e for _, _, e in rows)
    assert results['summary'] == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason='a GPU is here: the script would run for minutes')
def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    done = run_script(['--out', str(tmp_path)], timeout=120)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith('no CUDA device here: run it on a GPU machine, or pass --cpu-dry-run to test the script on the CPU')
    )
    assert 'Traceback' not in done.stderr
    assert not (tmp_path / 'gpu_check.json').exists()


@pytest.fixture
def gpu_check():
    """The command's module (``main`` runs in this process); restores the thread count its dry run sets."""
    threads = torch.get_num_threads()
    yield cli
    torch.set_num_threads(threads)


def test_a_failing_measurement_or_part_is_recorded_and_the_run_goes_on(gpu_check, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise FloatingPointError('injected')

    monkeypatch.setattr(inference, 'infer_entry', broken)
    monkeypatch.setattr(training, 'part_released', broken)
    gpu_check.main(['--cpu-dry-run', '--parts', 'inference,released,reference', '--out', str(tmp_path)])
    results = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert len(results['inference']) == 12
    assert {e['error'] for e in results['inference'].values()} == {'FloatingPointError: injected'}
    assert 'infer_entry' in results['inference']['64x48 b1 plain fp32']['traceback']
    assert results['released']['FAILED']['error'] == 'FloatingPointError: injected'
    assert results['reference']['float64']['max_abs_diff'] < 1e-10
    assert set(results['meta']['part_seconds']) == {'inference', 'released', 'reference'}
    assert results['summary'] == {}


@pytest.mark.parametrize(
    'args, message',
    [
        (['--parts', 'inference,bogus'], '--parts: unknown bogus'),
        (['--compile-modes', 'fastest'], '--compile-modes: choose from default, reduce-overhead'),
        (['--compile-dtypes', 'fp16'], '--compile-dtypes: choose from fp32, bf16, got fp16'),
        (['--tmp-dir', '/no/such/folder'], '--tmp-dir /no/such/folder: not a folder'),
        (['--budget-s', '0'], '--budget-s must be > 0'),
    ],
)
def test_option_mistakes_are_one_line_errors(gpu_check, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(['--cpu-dry-run'] + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_profile_part_records_wall_time_and_kernel_counts(gpu_check, tmp_path):
    gpu_check.main(['--cpu-dry-run', '--parts', 'profile', '--out', str(tmp_path)])
    profile = json.loads((tmp_path / 'gpu_check.json').read_text())['profile']
    assert set(profile) == {'inference 64x48 b1 plain fp32', 'training b2 plain fp32'}
    for entry in profile.values():
        assert entry['wall_ms'] > 0
        # on the CPU no device kernels run: the counts are zero and the top list empty, not made up
        assert entry['kernels'] == 0 and entry['top'] == [] and entry['kernel_ms'] == 0
