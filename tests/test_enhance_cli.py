"""The ``gmmoe enhance`` command: exit codes, early errors, gate files, a real subprocess run."""
import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from gmmoe_arch.enhance_cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / 'photos'
    (folder / 'night').mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / 'a.png'), (rng.random((37, 53, 3)) * 60).astype(np.uint8))
    cv2.imwrite(str(folder / 'night' / 'b.tif'), (rng.random((30, 20)) * 9000).astype(np.uint16))
    return folder


def test_subprocess_run_writes_outputs_gates_and_fails_on_a_corrupt_file(photos, reference_dir, tmp_path):
    (photos / 'night' / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff garbage')
    out, gates = tmp_path / 'out', tmp_path / 'gates.json'
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-m', 'gmmoe_arch.enhance_cli', 'enhance', str(photos), '-o', str(out),
                           '--weights', str(reference_dir / 'gmmoe_w8_net_g.pth'), '--gates', str(gates),
                           '--no-progress'], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert 'corrupt.jpg' in proc.stderr and 'not a readable image' in proc.stderr
    assert '2 image(s) written' in proc.stdout and '1 failed' in proc.stdout
    a = cv2.imread(str(out / 'a.png'), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(out / 'night' / 'b.tif'), cv2.IMREAD_UNCHANGED)
    assert a.shape == (37, 53, 3) and a.dtype == np.uint8
    assert b.shape == (30, 20) and b.dtype == np.uint16
    data = json.loads(gates.read_text())
    assert data['experts'] == ['ColourExpert', 'DetailExpert', 'FeatureExpert']
    assert set(data['images']) == {'a.png', os.path.join('night', 'b.tif')}
    assert len(data['images']['a.png']) == 9 and abs(sum(data['images']['a.png']['middle_blks.0']) - 1) < 1e-6


def test_gates_csv_and_clean_exit(photos, reference_dir, tmp_path, capsys):
    gates = tmp_path / 'g.csv'
    code = main(['enhance', str(photos / 'a.png'), '-o', str(tmp_path / 'out'), '--suffix', '_gm', '--gates',
                 str(gates), '--weights', str(reference_dir / 'gmmoe_w8_net_g.pth'), '--max-pixels', '100',
                 '--tile', '64', '--overlap', '16'])
    assert code == 0
    assert (tmp_path / 'out' / 'a_gm.png').is_file()
    rows = list(csv.reader(gates.open()))
    assert rows[0] == ['image', 'block', 'ColourExpert', 'DetailExpert', 'FeatureExpert']
    assert len(rows) == 1 + 9 and rows[1][:2] == ['a.png', 'encoders.0.0']
    assert '1 image(s) written' in capsys.readouterr().out


@pytest.mark.parametrize('extra, message', [
    ([], 'no --weights given'),
    (['--weights', 'missing.pth'], 'checkpoint missing.pth: no such file'),
    (['--weights', '{ref}', '--preset', 'paper'], 'holds a width-8 network'),
    (['--random-weights', '--gates', 'g.txt'], '--gates g.txt: the file name must end in .json or .csv'),
    (['--random-weights', '--overlap', '600'], '--overlap 600: must be under half the tile side (512 px)'),
    (['--random-weights', '--device', 'cpu', '--precision', 'fp16'], 'fp16 needs a CUDA device'),
])
def test_usage_errors_come_before_any_work(photos, reference_dir, tmp_path, capsys, extra, message):
    extra = [e.format(ref=reference_dir / 'gmmoe_w8_net_g.pth') for e in extra]
    out = tmp_path / 'out'
    assert main(['enhance', str(photos), '-o', str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err
    assert not out.exists()
