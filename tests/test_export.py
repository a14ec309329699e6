"""``gmmoe export``: ONNX models with dynamic batch/height/width that onnxruntime runs as PyTorch does.

One small network (2 levels, width 8, every expert branch active) is exported once through the
command's own entry point, from a checkpoint whose size is read off its keys as ``gmmoe enhance``
does; the size tests evaluate that one model.
"""

import argparse

import onnx
import pytest
import torch

from gmmoe_arch import GMMoE
from gmmoe_arch.archs import experts
from gmmoe_arch.enhance_cli import add_network_arguments
from gmmoe_arch.export import (
    FP32_TOLERANCE,
    MIN_OPSET,
    ExportError,
    add_export_arguments,
    check_onnx,
    export_command,
    parse_sizes,
)

from helpers import activate_branches

# (height, width). 1x1 and 37x53 take the colour expert's replicate-padded small-map path at their lowest
# levels, 240x320 and 600x400 the unpadded one (the 4-level network's threshold is 240 px, this one's 60 px).
SIZES = [(1, 1), (37, 53), (240, 320), (600, 400)]

pytestmark = pytest.mark.slow  # one ONNX export traced by torch.export (tens of seconds)


def small_net():
    torch.manual_seed(0)
    net = GMMoE(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
    return activate_branches(net, norm_jitter=0.1).eval()


def export_parser():
    """The network options ``gmmoe`` adds for ``enhance`` and ``export`` (the command's own), plus the export
    options."""
    parser = argparse.ArgumentParser(prog='gmmoe export')
    add_network_arguments(parser)
    return add_export_arguments(parser)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """``(net, model path, exit status)`` of ``gmmoe export --weights small.pth -o out/small.onnx --no-check``."""
    folder = tmp_path_factory.mktemp('export')
    net = small_net()
    torch.save({'params': net.state_dict()}, folder / 'small.pth')
    args = export_parser().parse_args(
        ['--weights', str(folder / 'small.pth'), '-o', str(folder / 'out' / 'small.onnx'), '--no-check']
    )
    status = export_command(args)
    return net, folder / 'out' / 'small.onnx', status


def test_export_writes_one_model_and_nothing_else(exported):
    _, path, status = exported
    assert status == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ['small.onnx']  # no staging folder left behind


def test_onnxruntime_matches_pytorch_at_every_size(exported):
    net, path, _ = exported
    net.set_fast('auto')
    diffs = check_onnx(net, str(path), SIZES)
    assert set(diffs) == set(SIZES)
    assert all(d <= FP32_TOLERANCE for d in diffs.values()), diffs
    assert net.fast == 'auto' and not net.training  # check_onnx runs the plain path and puts the setting back


def test_batch_is_dynamic(exported):
    net, path, _ = exported
    diffs = check_onnx(net, str(path), [(19, 23)], batch=3, seed=1)
    assert diffs[(19, 23)] <= FP32_TOLERANCE


def test_model_declares_named_dynamic_sizes_and_opset(exported):
    _, path, _ = exported
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')) >= MIN_OPSET
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize('size', [(1, 1), (5, 9), (37, 53), (64, 64)])
def test_exporting_formulation_of_small_map_padding_is_exact(monkeypatch, size):
    """While exporting, the colour expert always pads (by zero where no pad is needed); eager output is identical."""
    net = small_net().set_fast(False)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = net(x)
        monkeypatch.setattr(experts.torch.compiler, 'is_exporting', lambda: True)
        exporting = net(x)
    assert torch.equal(eager, exporting)


def run_export(argv, capsys):
    status = export_command(export_parser().parse_args(argv))
    return status, capsys.readouterr().err


def test_user_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / 'm.onnx'
    cases = [
        (['--random-weights', '-o', str(out), '--opset', '13'], '--opset 13'),
        (['--random-weights', '-o', str(out), '--check-sizes', '37by53'], '--check-sizes'),
        (['--random-weights', '-o', str(tmp_path)], 'is a folder'),
        (['--weights', str(tmp_path / 'missing.pth'), '-o', str(out)], 'missing.pth'),
        (['-o', str(out)], '--weights'),
    ]
    for argv, named in cases:
        status, err = run_export(argv, capsys)
        assert status == 2, argv
        assert err.count('\n') == 1 and err.startswith('gmmoe export: error:') and named in err, err
    assert list(tmp_path.iterdir()) == []


def test_failed_check_keeps_no_model(tmp_path, capsys, monkeypatch):
    """A model that disagrees with PyTorch is not moved onto the output name (nor is its staging folder left)."""
    from gmmoe_arch import enhance, export

    def fake_write(net, path, opset, fp16):
        with open(path, 'wb') as f:
            f.write(b'not a model')

    monkeypatch.setattr(enhance, 'load_network', lambda *args, **kwargs: small_net())
    monkeypatch.setattr(export, '_write_onnx', fake_write)
    monkeypatch.setattr(export, 'check_onnx', lambda net, path, sizes: {s: 1.0 for s in sizes})
    status, err = run_export(['--random-weights', '-o', str(tmp_path / 'm.onnx')], capsys)
    assert status == 1 and 'was not written' in err
    assert list(tmp_path.iterdir()) == []


def test_exporter_failure_is_reported_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from gmmoe_arch import enhance, export

    def half_written(net, path, opset, fp16):
        with open(path, 'wb') as f:
            f.write(b'half')
        raise RuntimeError('Unsupported FX nodes: custom_op\nlong trace')

    monkeypatch.setattr(enhance, 'load_network', lambda *args, **kwargs: small_net())
    monkeypatch.setattr(export, '_write_onnx', half_written)
    status, err = run_export(['--random-weights', '-o', str(tmp_path / 'm.onnx'), '--no-check'], capsys)
    error = err.splitlines()[-1]  # after the one progress line
    assert status == 1 and err.count('error') == 1 and 'Unsupported FX nodes: custom_op' in error
    assert list(tmp_path.iterdir()) == []


def test_sizes_parse():
    assert parse_sizes('1x1, 37X53') == [(1, 1), (53, 37)]  # WIDTHxHEIGHT -> (height, width)
    with pytest.raises(ExportError, match='0x5'):
        parse_sizes('0x5')


def no_network(*args, **kwargs):
    raise AssertionError('the network was loaded: the option error should have come before any work')


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--tolerance', '-1'], '--tolerance -1: must be a finite number >= 0 (a max |diff|)'),
        (['--tolerance', 'nan'], '--tolerance nan: must be a finite number >= 0 (a max |diff|)'),
        (['--no-check', '--tolerance', 'inf'], '--tolerance inf: must be a finite number >= 0 (a max |diff|)'),
        (['--no-check', '--check-sizes', '0x5'], '--check-sizes: "0x5": sides must be >= 1'),
    ],
)
def test_option_values_are_refused_before_loading_and_tracing(tmp_path, capsys, monkeypatch, extra, message):
    from gmmoe_arch import enhance
    from gmmoe_arch.enhance_cli import main

    monkeypatch.setattr(enhance, 'load_network', no_network)
    assert main(['export', '--random-weights', '-o', str(tmp_path / 'm.onnx'), *extra]) == 2
    assert capsys.readouterr().err == f'gmmoe export: error: {message}\n'
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused_before_loading_and_tracing(tmp_path, small_disk, capsys, monkeypatch):
    import subprocess

    from gmmoe_arch import enhance
    from gmmoe_arch.enhance_cli import main

    monkeypatch.setattr(enhance, 'load_network', no_network)
    blocker = tmp_path / 'a_file'
    blocker.write_text('a file where a folder should be')
    assert main(['export', '--random-weights', '-o', str(blocker / 'm.onnx')]) == 2
    assert capsys.readouterr().err == (
        f'gmmoe export: error: -o {blocker / "m.onnx"}: folder {blocker}: {blocker} is not a folder\n'
    )
    disk = small_disk(64 * 1024)
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    assert main(['export', '--random-weights', '-o', str(disk / 'm.onnx')]) == 2
    assert capsys.readouterr().err == (
        f'gmmoe export: error: -o {disk / "m.onnx"}: folder {disk}: cannot write in {disk} (Read-only file system)\n'
    )


def test_a_spatial_gate_network_exports_dense_and_matches_pytorch(tmp_path):
    """SpatialGate (per-pixel weights, LayerNorm'd global context, learnable temperature): the ONNX model
    onnxruntime runs gives PyTorch's output at small, odd and larger sizes."""
    from gmmoe_arch.export import export_onnx

    torch.manual_seed(0)
    net = GMMoE(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1], gate={'type': 'SpatialGate'})
    net = activate_branches(net, norm_jitter=0.1).eval()
    path = export_onnx(net, str(tmp_path / 'spatial.onnx'))
    diffs = check_onnx(net, path, [(1, 1), (37, 53), (96, 80)])
    assert all(d <= FP32_TOLERANCE for d in diffs.values()), diffs
