"""gmmoe_arch.bench.timing and .record: interleaved runs take turns in a rotated order, ratios are paired run by
run, a run sized to a time target stays within its bounds, and the JSON writer stamps the machine."""

import json
import time

import pytest

from gmmoe_arch.bench import record, timing


def test_interleaved_runs_rotate_the_order_and_keep_the_last_output():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or name.upper()) for name in 'abc'}
    runs = timing.interleaved(fns, runs=3, warmup=1)
    assert calls == list('abc') + list('abc') + list('bca') + list('cab')
    assert {k: len(v) for k, v in runs.walls.items()} == {'a': 3, 'b': 3, 'c': 3}
    assert runs.last == {'a': 'A', 'b': 'B', 'c': 'C'}
    calls.clear()
    timing.interleaved(fns, runs=2, rotate=False)
    assert calls == list('abcabc')


def test_ratios_are_paired_run_by_run():
    runs = timing.Runs(
        walls={'base': [2.0, 4.0, 9.0], 'new': [1.0, 4.0, 3.0]}, cpus={'base': [1, 1, 1], 'new': [2, 2, 2]}, last={}
    )
    ratios = runs.ratios('base', 'new')
    assert ratios['paired_ratio'] == 2.0  # median of 2, 1, 3
    assert ratios['ratio_of_medians'] == pytest.approx(4.0 / 3.0)
    assert ratios['cpu_paired_ratio'] == 0.5
    assert runs.summary('new') == {'median_s': 3.0, 'min_s': 1.0}
    assert runs.medians() == {'base': 4.0, 'new': 3.0}


def test_timed_measures_wall_and_cpu_time_and_returns_the_output():
    t = timing.timed(lambda: time.sleep(0.02) or 7)
    assert t.out == 7 and t.wall_s >= 0.02 and t.cpu_s < t.wall_s and t.gpu_s is None
    low, mid = timing.repeated(lambda: time.sleep(0.005), 3)
    assert 0.005 <= low <= mid


@pytest.mark.parametrize('max_runs, target_s, expected', [(3, 10.0, 3), (50, 0.0, 3), (8, 10.0, 8)])
def test_run_for_sizes_the_calls_to_the_target_within_bounds(max_runs, target_s, expected):
    count = []
    stats = timing.run_for(lambda: count.append(1) or len(count), None, 2, 3, max_runs, target_s)
    assert stats['calls'] == expected and stats['last'] == len(count)
    # two warm-up calls, one probe call when the count is sized, then the timed calls
    assert len(count) == 2 + (max_runs > 3) + expected
    assert stats['warmup_s'] >= stats['first_call_s'] >= 0 and stats['per_call_s'] >= 0


def test_write_json_stamps_the_machine_and_keeps_what_is_there(tmp_path):
    path = tmp_path / 'out.json'
    record.write_json(path, {'meta': {'torch': 'mine'}, 'rows': {'a': 1.5}})
    data = json.loads(path.read_text())
    assert data['rows'] == {'a': 1.5} and data['meta']['torch'] == 'mine'
    assert {'date', 'host', 'cpu', 'threads', 'python'} <= set(data['meta'])
    assert not list(tmp_path.glob('*.tmp'))
    assert record.rss_mb('VmHWM') >= record.rss_mb('VmRSS') > 0
