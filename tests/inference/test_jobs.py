"""gmmoe_arch.inference.jobs: output names, refused outputs, a batch that goes on past a corrupt file."""

import cv2
import numpy as np
import pytest
from inference_helpers import random_image

from gmmoe_arch.inference import jobs
from gmmoe_arch.inference.errors import EnhanceError
from gmmoe_arch.inference.image_files import read_image
from gmmoe_arch.inference.jobs import collect_jobs, enhance_paths
from gmmoe_arch.inference.runner import RunOptions, enhance_image
from gmmoe_arch.inference.tiling import Tiling


def test_output_names_mirror_inputs_and_inputs_are_never_overwritten(tmp_path):
    (tmp_path / 'in' / 'sub').mkdir(parents=True)
    for rel in ['a.png', 'sub/b.jpg', 'sub/notes.txt']:
        (tmp_path / 'in' / rel).write_bytes(b'x')
    jobs = collect_jobs([str(tmp_path / 'in')], str(tmp_path / 'out'), suffix='_gm')
    assert [(j.name, j.dst) for j in jobs] == [
        ('a.png', str(tmp_path / 'out' / 'a_gm.png')),
        ('sub/b.jpg', str(tmp_path / 'out' / 'sub' / 'b_gm.jpg')),
    ]
    globbed = collect_jobs([str(tmp_path / 'in' / '**' / '*.jpg')], str(tmp_path / 'out'))
    assert [j.dst for j in globbed] == [str(tmp_path / 'out' / 'b.jpg')]
    with pytest.raises(EnhanceError, match='would overwrite the input'):
        collect_jobs([str(tmp_path / 'in')], str(tmp_path / 'in'))
    with pytest.raises(EnhanceError, match='no such file or folder'):
        collect_jobs([str(tmp_path / 'missing.png')], str(tmp_path / 'out'))


def test_same_basename_from_two_places_is_refused(tmp_path):
    for folder in ('x', 'y'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'a.png').write_bytes(b'x')
    with pytest.raises(EnhanceError, match='would both be written'):
        collect_jobs([str(tmp_path / 'x' / 'a.png'), str(tmp_path / 'y' / 'a.png')], str(tmp_path / 'out'))


def test_corrupt_file_in_folder_does_not_stop_the_others(tiny_net, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'good1.png'), random_image((20, 24, 3), np.uint8))
    cv2.imwrite(str(folder / 'good2.jpg'), random_image((37, 53, 3), np.uint8))
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    (folder / 'empty.jpg').write_bytes(b'')
    summary = enhance_paths([str(folder)], str(tmp_path / 'out'), tiny_net, record=True)
    assert sorted(name for name, _ in summary.failed) == ['broken.png', 'empty.jpg']
    assert all('not a readable image' in msg for _, msg in summary.failed)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['good1.png', 'good2.jpg']
    assert set(summary.gates) == {'good1.png', 'good2.jpg'}
    weights = summary.gates['good2.jpg']['encoders.0.0']
    assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-6
    written = read_image(str(tmp_path / 'out' / 'good1.png'))
    np.testing.assert_array_equal(written, enhance_image(tiny_net, read_image(str(folder / 'good1.png'))))


def test_the_python_api_reports_the_files_a_folder_scan_passed_over(tiny_net, tmp_path):
    folder = tmp_path / 'in'
    (folder / 'sub').mkdir(parents=True)
    cv2.imwrite(str(folder / 'a.webp'), random_image((20, 24, 3), np.uint8))
    for rel in ['notes.TXT', 'sub/b.txt', 'sub/raw.heic', 'Makefile']:
        (folder / rel).write_bytes(b'x')
    summary = enhance_paths([str(folder)], str(tmp_path / 'out'), tiny_net)
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['a.webp'] and summary.failed == []
    assert summary.skipped == {'.txt': 2, '.heic': 1, '': 1}
    assert jobs.describe_skipped(summary.skipped) == (
        '4 other file(s) in the folders passed over (2 .txt, 1 .heic, 1 without an extension)'
    )
    assert jobs.describe_skipped({}) == ''


def count_calls(monkeypatch, owner, name, counts):
    """Count the calls of ``owner.name`` in ``counts['Owner.name']``, calling through."""
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[f'{owner.__name__.split(".")[-1]}.{name}'] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def test_each_check_runs_once_per_run_and_each_image_is_planned_once(tiny_net, tmp_path, monkeypatch):
    from collections import Counter

    folder = tmp_path / 'in'
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f'{i}.png'), random_image((80, 70, 3), np.uint8, seed=i))
    counts = Counter()
    for owner, name in [
        (Tiling, '__post_init__'),
        (Tiling, 'plan'),
        (RunOptions, '__post_init__'),
        (jobs, 'check_writable'),
        (jobs, 'collect_jobs'),
    ]:
        count_calls(monkeypatch, owner, name, counts)
    summary = enhance_paths([str(folder)], str(tmp_path / 'out'), tiny_net, tile=64, overlap=16, stat_passes=0)
    assert len(summary.written) == 2 and summary.tiles == 2 * 4
    assert counts == {
        'Tiling.__post_init__': 1,
        'RunOptions.__post_init__': 1,
        'jobs.check_writable': 1,
        'jobs.collect_jobs': 1,
        'Tiling.plan': 2,
    }
