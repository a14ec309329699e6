"""ONNX export of GM-MoE: the library behind ``gmmoe export --weights CKPT -o model.onnx``.

One exported model takes any batch, height and width (``input``: ``(B, 3, H, W)`` float in [0, 1],
``output``: the same shape), as the PyTorch network does, including sizes under 240 px where the
colour expert replicate-pads its small maps. The graph is traced with ``torch.export`` on symbolic
sizes (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``), from the network's
straightforward path (the fast path's oneDNN calls have no ONNX form). :func:`check_onnx` runs the
written model in onnxruntime against PyTorch. A network with top-k routing (``network_g.gate_top_k``)
is refused: which experts run depends on the image, which no single static graph expresses.

Only :func:`add_export_arguments` is imported when the command line is parsed: torch and the ONNX
packages are imported when a model is exported.
"""

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch's exporter emits 18; converting down to 17 fails (onnx has no Pad adapter to 17)
DEFAULT_CHECK_SIZES = '1x1,37x53,240x320,600x400'
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2  # measured on a small network: 6e-4
TRACE_SHAPE = (2, 3, 35, 51)  # batch 2: torch.export would fix a traced batch of 1 as a constant
PROG = 'gmmoe export'


class ExportError(Exception):
    """A user-facing export failure (the message names the file, option or package).

    ``status``: the exit status of ``gmmoe export``: 2 for a usage or set-up error, 1 when exporting
    or checking the model failed.
    """

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def parse_sizes(text):
    """``'1x1,37x53'`` (WIDTHxHEIGHT, as the project's benchmarks write sizes) -> ``[(1, 1), (53, 37)]``
    as ``(height, width)``, each >= 1."""
    sizes = []
    for item in text.split(','):
        parts = item.strip().lower().split('x')
        try:
            w, h = (int(p) for p in parts)
        except ValueError:
            raise ExportError(f'--check-sizes: "{item.strip()}" is not WIDTHxHEIGHT (e.g. 600x400)') from None
        if h < 1 or w < 1:
            raise ExportError(f'--check-sizes: "{item.strip()}": sides must be >= 1')
        sizes.append((h, w))
    return sizes


def add_export_arguments(parser):
    """Add the export-specific options of ``gmmoe export`` to ``parser`` (the network options are the CLI's)."""
    parser.add_argument('-o', '--output', required=True, metavar='MODEL.onnx', help='the ONNX file to write')
    parser.add_argument(
        '--opset',
        type=int,
        default=DEFAULT_OPSET,
        metavar='N',
        help=f'ONNX opset, >= {MIN_OPSET} (default: {DEFAULT_OPSET})',
    )
    parser.add_argument(
        '--fp16', action='store_true', help='float16 weights, input and output (for GPU runtimes; default: float32)'
    )
    parser.add_argument(
        '--check',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='run the written model in onnxruntime against PyTorch before keeping it (default: on)',
    )
    parser.add_argument(
        '--check-sizes',
        default=DEFAULT_CHECK_SIZES,
        metavar='WxH,...',
        help=f'input sizes (width x height) the check runs (default: {DEFAULT_CHECK_SIZES})',
    )
    parser.add_argument(
        '--tolerance',
        type=float,
        metavar='T',
        help=f'largest max |diff| the check accepts (default: {FP32_TOLERANCE:g}, {FP16_TOLERANCE:g} with --fp16)',
    )
    return parser


def _check_opset(opset):
    if opset < MIN_OPSET:
        raise ExportError(f'--opset {opset}: torch exports GM-MoE at opset {MIN_OPSET} or later only')


def _require(module, purpose):
    """Import ``module`` or raise an :class:`ExportError` saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f'{purpose} needs the Python package {module} ({exc}); install it with: pip install {module}'
        ) from exc


def _export_module(net):
    """``net`` behind a zero pad of the input to a multiple of ``net.padder_size`` and a crop back.

    The network pads by ``(m - w % m) % m`` itself; the result here is the same tensor (its own pad is
    then zero), but the padded size traces as ``m * ceil(w / m)``, which keeps the symbolic shapes of
    every level simple: ``torch.export`` spends its time reasoning about them (half as long this way).
    """
    import torch.nn.functional as F
    from torch import nn

    class PaddedInput(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.net = inner

        def forward(self, x):
            h, w = x.shape[-2:]
            m = getattr(self.net, 'padder_size', 1)
            x = F.pad(x, (0, (w + m - 1) // m * m - w, 0, (h + m - 1) // m * m - h))
            return self.net(x)[..., :h, :w]

    return PaddedInput(net)


@contextmanager
def _plain_eval(net):
    """``net`` in eval mode on its straightforward path (restored afterwards)."""
    fast, training = getattr(net, 'fast', None), net.training
    if fast is not None:
        net.set_fast(False)
    net.eval()
    try:
        yield net
    finally:
        if fast is not None:
            net.set_fast(fast)
        net.train(training)


@contextmanager
def _staged(path):
    """Yield a path to write in a fresh folder beside ``path``; on success move what was written there
    (the model and any external-data file, the model last) onto the final names; on failure delete it."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.', dir=folder)
    try:
        staged = os.path.join(stage, os.path.basename(path))
        yield staged
        for name in sorted(os.listdir(stage), key=lambda n: n == os.path.basename(path)):
            os.replace(os.path.join(stage, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_onnx(net, path, opset, fp16):
    """Export ``net`` to ``path`` (not atomic); see :func:`export_onnx`."""
    import copy

    import torch

    _check_opset(opset)
    _require('onnxscript', 'ONNX export')
    device = next(net.parameters()).device
    with _plain_eval(net):
        model = copy.deepcopy(net).half() if fp16 else net
        example = torch.rand(TRACE_SHAPE, device=device, dtype=torch.float16 if fp16 else torch.float32)
        dim = torch.export.Dim.DYNAMIC
        with torch.no_grad():
            program = torch.onnx.export(
                _export_module(model).eval(),
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=['input'],
                output_names=['output'],
                verbose=False,
                dynamic_shapes=({0: dim, 2: dim, 3: dim},),
                optimize=True,
            )
    written = program.model.opset_imports.get('', None)
    if written != opset:
        raise ExportError(f'--opset {opset}: the exporter could only write opset {written}', status=1)
    _name_dims(program.model, {0: 'batch', 2: 'height', 3: 'width'})
    program.save(path)
    return path


def _name_dims(model, names):
    """Name the input's symbolic sizes (``batch``, ``height``, ``width``) and give the output the same shape,
    which it has (the exporter would declare the crop's size as an expression such as ``Min(s53, ...)``)."""
    source = model.graph.inputs[0]
    dims = [names.get(i, d) for i, d in enumerate(source.shape)]
    source.shape = type(source.shape)(dims)
    model.graph.outputs[0].shape = type(source.shape)(dims)


def export_onnx(net, path, opset=DEFAULT_OPSET, fp16=False):
    """Write ``net`` (a :class:`~gmmoe_arch.GMMoE`) to ``path`` as ONNX and return ``path``.

    The model maps ``input`` ``(B, C, H, W)`` to ``output`` of the same shape with B, H and W free
    (any H, W >= 1), float32 or, with ``fp16``, float16 weights and I/O. Exported from the
    straightforward path in eval mode (``net`` itself is left as it was). The file appears atomically:
    it is written under a temporary name beside ``path`` and moved onto ``path`` when complete
    (models over 2 GB keep their weights in a ``.data`` file beside it, moved first).

    Raises:
        ExportError: a network with ``gate_top_k`` (see :func:`check_dense`), an opset under 18, a missing
            ``onnxscript``, or an opset the exporter could not write.
    """
    check_dense(net)
    with _staged(path) as staged:
        _write_onnx(net, staged, opset, fp16)
    return path


def check_onnx(net, path, sizes, batch=1, seed=0):
    """Max |onnxruntime - PyTorch| of the model at ``path`` against ``net`` for inputs of each size.

    Args:
        net: the exported network (run on its straightforward path, in float32).
        path (str): the ONNX model (float32 or float16 I/O: its inputs are rounded to the model's type).
        sizes (list[tuple[int, int]]): ``(H, W)`` of each ``(batch, C, H, W)`` uniform [0, 1) input.

    Returns:
        dict: ``{(H, W): max abs difference}`` as Python floats.
    """
    import numpy as np
    import torch

    ort = _require('onnxruntime', 'checking the exported model')
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feed = session.get_inputs()[0]
    dtype = np.float16 if feed.type == 'tensor(float16)' else np.float32
    param = next(net.parameters())
    generator = torch.Generator().manual_seed(seed)
    channels = feed.shape[1] if isinstance(feed.shape[1], int) else 3
    diffs = {}
    with _plain_eval(net), torch.no_grad():
        for h, w in sizes:
            x = torch.rand(batch, channels, h, w, generator=generator).numpy().astype(dtype)
            expected = net(torch.from_numpy(x.astype(np.float32)).to(param.device, param.dtype)).float().cpu()
            got = session.run(None, {feed.name: x})[0].astype(np.float32)
            if got.shape != tuple(expected.shape):
                raise ExportError(
                    f'{path}: output shape {got.shape} for input {x.shape}, expected {tuple(expected.shape)}', status=1
                )
            diffs[(h, w)] = float(np.abs(got - expected.numpy()).max())
    return diffs


def check_dense(net):
    """Refuse a network with top-k routing: which experts run depends on each image, which one static
    ONNX graph cannot express."""
    k = getattr(net, 'gate_top_k', None)
    if k is not None:
        raise ExportError(
            f'network_g.gate_top_k: {k}: top-k routing picks the experts per image at run time, which one static '
            'ONNX graph cannot express; export the dense network (the same weights without gate_top_k)'
        )


def _network_description(net):
    return f'{type(net).__name__}, {sum(p.numel() for p in net.parameters()):,} parameters'


def _megabytes(path):
    """Size of the model at ``path`` with its external-data file, if any, in MiB."""
    data = path + '.data'
    return (os.path.getsize(path) + (os.path.getsize(data) if os.path.exists(data) else 0)) / 2**20


def check_export_options(args):
    """Every export option checked before any work (the trace takes tens of seconds): ``(sizes, tolerance)``.

    Raises :class:`ExportError` (or ``EnhanceError`` for ``-o``'s folder) naming the option: ``--check-sizes``
    and ``--tolerance`` (finite, >= 0) even with ``--no-check``, ``--opset``, ``-o`` (not a folder, its
    folder writable: a probe file is created there), the packages the run needs.
    """
    from gmmoe_arch import enhance

    sizes = parse_sizes(args.check_sizes)
    tolerance = args.tolerance if args.tolerance is not None else FP16_TOLERANCE if args.fp16 else FP32_TOLERANCE
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ExportError(f'--tolerance {tolerance:g}: must be a finite number >= 0 (a max |diff|)')
    _check_opset(args.opset)
    if os.path.isdir(args.output):
        raise ExportError(f'-o {args.output}: is a folder; give the .onnx file to write')
    enhance.check_writable([os.path.dirname(os.path.abspath(args.output))], f'-o {args.output}: folder')
    _require('onnxscript', 'ONNX export')
    if args.check:
        _require('onnxruntime', '--check (turn it off with --no-check)')
    return sizes if args.check else [], tolerance


def _export(args):
    """Body of :func:`export_command`: raises ExportError / EnhanceError for the user's mistakes."""
    from gmmoe_arch import enhance

    sizes, tolerance = check_export_options(args)
    net = enhance.load_network(
        args.weights,
        args.preset,
        args.opt,
        device='cpu',
        random_weights=args.random_weights,
        trust=args.trust_checkpoint,
    )
    check_dense(net)
    print(
        f'{PROG}: tracing {_network_description(net)} (opset {args.opset}, {"fp16" if args.fp16 else "fp32"}); '
        'this takes a minute or two',
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    with _staged(args.output) as staged:
        try:
            _write_onnx(net, staged, args.opset, args.fp16)
        except ExportError:
            raise
        except Exception as exc:  # an exporter failure (e.g. a custom expert ONNX cannot express)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
            raise ExportError(f'torch.onnx.export failed: {type(exc).__name__}: {first}', status=1) from exc
        seconds = time.perf_counter() - start
        if sizes:
            diffs = check_onnx(net, staged, sizes)
            report = ', '.join(f'{w}x{h} {d:.2e}' for (h, w), d in diffs.items())
            print(f'{PROG}: onnxruntime vs PyTorch max |diff|: {report} (tolerance {tolerance:g})', file=sys.stderr)
            worst = max(diffs.values())
            if not worst <= tolerance:
                raise ExportError(
                    f'the exported model differs from PyTorch by {worst:.3g} > {tolerance:g}; '
                    f'{args.output} was not written',
                    status=1,
                )
    print(f'{PROG}: wrote {args.output} ({_megabytes(args.output):.1f} MiB) in {seconds:.0f} s')


def export_command(args):
    """Run ``gmmoe export``: 0 on success, 2 for a usage or checkpoint error, 1 when export or its check fails.

    Uses the network options ``args.weights``, ``args.preset``, ``args.opt``, ``args.random_weights``
    and those of :func:`add_export_arguments`. Nothing is left under ``args.output`` unless the model
    was written completely (and passed the check, if on).
    """
    from gmmoe_arch.enhance import EnhanceError

    try:
        _export(args)
    except EnhanceError as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return exc.status
    except OSError as exc:
        print(f'{PROG}: error: cannot write {args.output}: {exc.strerror or exc}', file=sys.stderr)
        return 1
    return 0
