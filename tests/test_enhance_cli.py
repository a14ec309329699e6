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


@pytest.mark.slow
def test_subprocess_run_writes_outputs_gates_and_fails_on_a_corrupt_file(photos, reference_dir, tmp_path):
    (photos / 'night' / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff garbage')
    out, gates = tmp_path / 'out', tmp_path / 'gates.json'
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'gmmoe_arch.enhance_cli',
            'enhance',
            str(photos),
            '-o',
            str(out),
            '--weights',
            str(reference_dir / 'gmmoe_w8_net_g.pth'),
            '--gates',
            str(gates),
            '--no-progress',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert 'corrupt.jpg' in proc.stderr and 'corrupt.jpg: truncated JPEG' in proc.stderr
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
    code = main(
        [
            'enhance',
            str(photos / 'a.png'),
            '-o',
            str(tmp_path / 'out'),
            '--suffix',
            '_gm',
            '--gates',
            str(gates),
            '--weights',
            str(reference_dir / 'gmmoe_w8_net_g.pth'),
            '--max-pixels',
            '100',
            '--tile',
            '64',
            '--overlap',
            '16',
        ]
    )
    assert code == 0
    assert (tmp_path / 'out' / 'a_gm.png').is_file()
    rows = list(csv.reader(gates.open()))
    assert rows[0] == ['image', 'block', 'ColourExpert', 'DetailExpert', 'FeatureExpert']
    assert len(rows) == 1 + 9 and rows[1][:2] == ['a.png', 'encoders.0.0']
    assert '1 image(s) written' in capsys.readouterr().out


@pytest.mark.parametrize(
    'extra, message',
    [
        ([], 'no --weights given'),
        (['--weights', 'missing.pth'], 'checkpoint missing.pth: no such file'),
        (['--weights', '{ref}', '--preset', 'paper'], 'holds a width-8 network'),
        (['--random-weights', '--gates', 'g.txt'], '--gates g.txt: the file name must end in .json or .csv'),
        (['--random-weights', '--overlap', '600'], '--overlap 600: must be under half the tile side (512 px)'),
        (['--random-weights', '--device', 'cpu', '--precision', 'fp16'], 'fp16 needs a CUDA device'),
        (['--random-weights', '--max-image-pixels', '0'], '--max-image-pixels 0: must be positive'),
    ],
)
def test_usage_errors_come_before_any_work(photos, reference_dir, tmp_path, capsys, extra, message):
    extra = [e.format(ref=reference_dir / 'gmmoe_w8_net_g.pth') for e in extra]
    out = tmp_path / 'out'
    assert main(['enhance', str(photos), '-o', str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err
    assert not out.exists()


def test_usage_errors_and_help_import_neither_torch_nor_basicsr():
    """The console entry point (``gmmoe_console.main``) parses before importing the package: a usage error
    and --help of ``gmmoe enhance`` need no torch, basicsr or gmmoe_arch (``gmmoe export``'s options come
    from the package)."""
    script = (
        'import contextlib, io, sys\n'
        'import gmmoe_console\n'
        'codes = []\n'
        'for argv in (["enhance"], ["enhance", "--help"], ["enhance", "x.png", "-o", "out", "--tile", "big"]):\n'
        '    try:\n'
        '        with contextlib.redirect_stdout(io.StringIO()):\n'
        '            gmmoe_console.main(argv)\n'
        '    except SystemExit as exit:\n'
        '        codes.append(exit.code)\n'
        'print(codes, sorted(m for m in ("torch", "basicsr", "cv2", "gmmoe_arch") if m in sys.modules))\n'
    )
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout.strip() == '[2, 0, 2] []', done.stdout + done.stderr
    assert 'the following arguments are required: INPUT, -o/--output' in done.stderr
    assert "argument --tile: invalid int value: 'big'" in done.stderr


def test_each_check_runs_once_per_run_and_each_image_is_planned_once(photos, tmp_path, monkeypatch):
    """Options, device, inputs and writability are checked once, before the network is loaded; each image is
    planned once."""
    from collections import Counter

    from gmmoe_arch import enhance
    from gmmoe_arch.inference import loading

    counts, order = Counter(), []

    def count(owner, name):
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[name] += 1
            order.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    for owner, name in [
        (enhance.Tiling, '__post_init__'),
        (enhance.Tiling, 'plan'),
        (enhance, 'check_writable'),
        (enhance, 'collect_jobs'),
        (enhance, 'resolve_device'),
        (loading, 'resolve_device'),
        (enhance, 'load_network'),
    ]:
        count(owner, name)
    code = main(
        [
            'enhance',
            str(photos),
            '-o',
            str(tmp_path / 'out'),
            '--random-weights',
            '--device',
            'cpu',
            '--tile',
            '64',
            '--overlap',
            '8',
            '--no-progress',
            '--gates',
            str(tmp_path / 'g.json'),
        ]
    )
    assert code == 0
    assert counts == {
        '__post_init__': 1,
        'resolve_device': 1,
        'collect_jobs': 1,
        'check_writable': 2,
        'load_network': 1,
        'plan': 2,
    }
    assert order.index('load_network') > max(i for i, name in enumerate(order) if name == 'check_writable')


def test_parser_defaults_and_choices_match_the_library():
    from gmmoe_arch import PRESETS, enhance, enhance_cli

    assert set(enhance_cli.PRECISION_NAMES) == set(enhance.PRECISIONS)
    assert set(enhance_cli.PRESET_NAMES) == set(PRESETS)
    for name in ('DEFAULT_MAX_PIXELS', 'DEFAULT_MAX_IMAGE_PIXELS', 'DEFAULT_OVERLAP', 'DEFAULT_STAT_PASSES'):
        assert getattr(enhance_cli, name) == getattr(enhance, name), name


def test_export_subcommand_shares_the_network_options_and_dispatches(monkeypatch, capsys):
    """``gmmoe export`` gets enhance's network options plus gmmoe_arch.export's own, and runs its command;
    ``gmmoe enhance`` never imports gmmoe_arch.export."""
    import types

    calls = []
    fake = types.ModuleType('gmmoe_arch.export')
    fake.add_export_arguments = lambda parser: parser.add_argument('-o', '--output', required=True)
    fake.export_command = lambda args: calls.append(args) or 7
    monkeypatch.setitem(sys.modules, 'gmmoe_arch.export', fake)
    assert main(['export', '--weights', 'w.pth', '--preset', 'paper', '-o', 'm.onnx']) == 7
    args = calls[0]
    assert (args.weights, args.preset, args.opt, args.random_weights, args.output) == (
        'w.pth',
        'paper',
        None,
        False,
        'm.onnx',
    )
    with pytest.raises(SystemExit):
        main(['export', '--weights', 'w.pth', '-o', 'm.onnx', '--tile', '64'])
    assert 'unrecognized arguments: --tile 64' in capsys.readouterr().err

    fake.add_export_arguments = None  # enhance must not touch the export module at all
    with pytest.raises(SystemExit):
        main(['enhance', '--help'])
    help_text = capsys.readouterr().out
    assert '--weights' in help_text and '--max-image-pixels' in help_text


def test_gates_json_of_a_spatial_gate_network_holds_per_image_mean_weights(photos, tmp_path):
    """A SpatialGate checkpoint loads without --opt (the gate is read off its keys) and ``--gates`` writes each
    image's per-block weights averaged over the pixels: n numbers per block that sum to one."""
    import torch

    from gmmoe_arch import GMMoE, record_gates

    torch.manual_seed(0)
    net = GMMoE(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1], gate={'type': 'SpatialGate'})
    torch.save({'params': net.state_dict()}, tmp_path / 'spatial.pth')
    gates = tmp_path / 'g.json'
    image = photos / 'a.png'
    args = ['enhance', str(image), '-o', str(tmp_path / 'out'), '--gates', str(gates), '--no-progress']
    assert main(args + ['--weights', str(tmp_path / 'spatial.pth')]) == 0
    data = json.loads(gates.read_text())
    blocks = data['images']['a.png']
    assert data['experts'] == ['ColourExpert', 'DetailExpert', 'FeatureExpert'] and len(blocks) == 5
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad(), record_gates(net.eval()) as recorded:
        net(x)
    for path, weights in blocks.items():
        assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-6
        np.testing.assert_allclose(weights, recorded[path].mean((2, 3))[0].numpy(), atol=1e-5)
