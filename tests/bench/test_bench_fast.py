"""gmmoe_arch.bench.fast (scripts/bench_fast.py's parts) at tiny sizes: every inference mode and training
configuration gets a row with medians, paired ratios and agreement with the straightforward path, and a fresh
process reports the peak memory of one configuration."""

import argparse
import subprocess
import sys

import pytest
import torch

from gmmoe_arch.bench.fast import common, inference, memory, training

from helpers import REPO


@pytest.fixture
def args():
    return argparse.Namespace(
        seed=0,
        runs=2,
        warmup=1,
        plain_bf16=False,
        compile=False,
        compile_modes=['default'],
        memory=False,
        train_runs=1,
        train_batch=1,
        train_crop=32,
        device='cpu',
    )


@pytest.mark.slow  # an end-to-end bench of the paper preset
def test_inference_rows_rank_every_mode_against_plain(args):
    common.setup_allocator()
    rows = inference.bench_inference('paper', (32, 48), args, torch.device('cpu'))
    assert set(rows) >= {'plain fp32', 'fast fp32', 'fast bf16'}
    assert rows['plain fp32']['max_abs_diff'] == 0 and rows['fast fp32']['max_abs_diff'] < 1e-4
    assert 30 < rows['fast bf16']['psnr_db'] < 120
    assert rows['fast fp32']['vs plain fp32']['paired_ratio'] > 0 and rows['fast fp32']['min_s'] > 0


@pytest.mark.slow  # an end-to-end bench: five paper-preset models
def test_training_rows_time_model_steps_and_compare_gradients(args):
    rows = training.bench_train('paper', args, torch.device('cpu'))
    assert set(rows) >= {'plain', 'fast', 'fast+ckpt', 'fast+ckpt:exp'}
    for name in ('fast', 'fast+ckpt', 'fast+ckpt:exp'):
        assert rows[name]['global_rel'] < 1e-4 and rows[name]['vs plain']['paired_ratio'] > 0
    assert rows['plain']['global_rel'] == 0


@pytest.mark.slow
def test_memory_of_one_configuration_in_a_fresh_process(args):
    peak = memory.child_peak(args, 'infer', 'paper', (32, 32), 'fast fp32', True)
    assert peak['peak_rss_mb'] >= peak['base_rss_mb'] > 0


@pytest.mark.slow
def test_option_mistakes_are_one_line_errors():
    cmd = [sys.executable, str(REPO / 'scripts' / 'bench_fast.py'), '--parts', 'infer,bogus']
    done = subprocess.run(cmd, capture_output=True, text=True, env={'PYTHONPATH': str(REPO), 'PATH': '/usr/bin:/bin'})
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith('--parts: unknown bogus; choose from infer, train, released')
