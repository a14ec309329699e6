"""The ``gmmoe`` console command: ``gmmoe enhance INPUT... -o OUTDIR --weights net_g.pth``, ``export``, ``evaluate``.

A thin layer over :mod:`gmmoe_arch.enhance`: parses options, checks them and that every output folder
and the gate file can be written (each check once per run), loads the network (every checkpoint problem
is reported before any image is touched), enhances files, folders and globs, optionally writes the
per-image gate weights, and prints a summary. Exit status: 0 when every image (and the gate file) was
written, 1 when some failed (each is reported, the rest are processed), 2 for a usage error.

Parsing imports neither torch nor basicsr (a usage error is printed at once): the defaults the
parser shows are copies of :mod:`gmmoe_arch.enhance`'s (a test keeps them equal), and nothing in
the package imports this module, so ``python -m gmmoe_arch.enhance_cli`` runs it cleanly.
``gmmoe export`` is dispatched to :mod:`gmmoe_arch.export` and ``gmmoe evaluate`` to
:mod:`gmmoe_arch.evaluation.command`, each imported only when its command runs.

The allocator tuning of :func:`gmmoe_arch.runtime.configure_allocator` is applied at start;
``GMMOE_MALLOC=off`` switches it off.
"""

import argparse
import csv
import io
import json
import os
import sys

PROG = 'gmmoe'
# copies of gmmoe_arch.enhance's defaults and choices (importing it would import torch)
DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_MAX_IMAGE_PIXELS = 150_000_000
DEFAULT_OVERLAP = 96
DEFAULT_STAT_PASSES = 1
PRECISION_NAMES = ('fp32', 'bf16', 'fp16')
PRESET_NAMES = ('paper', 'released')


def add_network_arguments(parser):
    """The options that choose and load the network, shared by ``enhance`` and ``export``:
    ``--weights``, ``--preset``, ``--opt``, ``--random-weights``, ``--trust-checkpoint``."""
    net = parser.add_argument_group('network')
    net.add_argument(
        '--weights',
        metavar='FILE',
        help='checkpoint: released {"params": ...}, ours {"params_ema"/"params": ...} or a state dict',
    )
    net.add_argument('--preset', choices=PRESET_NAMES, help='network size (default: read off the checkpoint)')
    net.add_argument('--opt', metavar='YAML', help='build the network_g of a BasicSR option file instead')
    net.add_argument(
        '--random-weights',
        action='store_true',
        help='run without --weights (random network: for smoke tests and benchmarks only)',
    )
    net.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='I trust the --weights file: load it even if it holds more than tensors and numpy values '
        '(unpickling it may run code; see also GMMOE_TRUSTED_CHECKPOINTS)',
    )


def add_enhance_arguments(p):
    """Inputs, output and running options of ``gmmoe enhance``."""
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image files, folders or glob patterns')
    p.add_argument('-o', '--output', required=True, metavar='OUTDIR', help='folder for the enhanced images')
    add_network_arguments(p)
    run = p.add_argument_group('running')
    run.add_argument('--device', default='auto', help='auto (CUDA if present), cpu, cuda or cuda:N')
    run.add_argument(
        '--precision',
        default='fp32',
        choices=PRECISION_NAMES,
        help='autocast precision; fp16 needs CUDA (default: fp32)',
    )
    run.add_argument(
        '--max-pixels',
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar='N',
        help=f'tile images with more pixels than this (default: {DEFAULT_MAX_PIXELS})',
    )
    run.add_argument(
        '--max-image-pixels',
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar='N',
        help='refuse, before decoding, images whose header declares more pixels than this; memory '
        f'grows with the image (default: {DEFAULT_MAX_IMAGE_PIXELS:,})',
    )
    run.add_argument('--tile', type=int, metavar='PX', help='force square tiles of this side (>= 64)')
    run.add_argument(
        '--overlap',
        type=int,
        default=DEFAULT_OVERLAP,
        metavar='PX',
        help=f'minimum overlap of neighbouring tiles (default: {DEFAULT_OVERLAP})',
    )
    run.add_argument(
        '--stat-passes',
        type=int,
        default=DEFAULT_STAT_PASSES,
        metavar='N',
        help='extra passes over the tiles of a tiled image that estimate its whole-image statistics '
        f'(gates, attention pools); 0 = each tile uses its own (default: {DEFAULT_STAT_PASSES})',
    )
    out = p.add_argument_group('output')
    out.add_argument('--suffix', default='', help='added to each output name before the extension')
    out.add_argument(
        '--gates',
        metavar='FILE.json|FILE.csv',
        help="write each image's per-block expert weights (tiled images: mean over tiles, "
        'weighted by the output pixels each tile accounts for)',
    )
    out.add_argument('--no-progress', action='store_true', help='no progress bar')


def build_parser(command=None):
    """The ``gmmoe`` parser. ``command='export'`` also adds the options of :mod:`gmmoe_arch.export`
    (imported only then, so that ``enhance`` never loads it)."""
    parser = argparse.ArgumentParser(prog=PROG, description='GM-MoE low-light image enhancement.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='{enhance,export,evaluate}')
    p = sub.add_parser(
        'enhance',
        help='enhance image files, folders or globs',
        description='Enhance PNG/JPEG/BMP/TIFF/WebP/GIF/... images (8/16-bit, gray, RGB, RGBA; every format '
        'OpenCV reads, one frame per file) with a GM-MoE checkpoint. Folders are searched recursively for '
        'all those formats and their structure is kept under OUTDIR; the other files they hold are counted '
        'in the summary. Large images run as blended tiles, so memory stays bounded.',
        epilog='Example: gmmoe enhance photos/ -o enhanced/ --weights net_g.pth --preset paper',
    )
    add_enhance_arguments(p)
    e = sub.add_parser(
        'export',
        help='export a checkpoint as an ONNX model',
        description='Export the network that gmmoe enhance would run (same network options) as an ONNX model.',
        epilog='Example: gmmoe export --weights net_g.pth -o gmmoe.onnx',
    )
    add_network_arguments(e)
    if command == 'export':
        from gmmoe_arch.export import add_export_arguments

        add_export_arguments(e)
    add_evaluate_parser(sub, command == 'evaluate')
    return parser


def add_evaluate_parser(sub, full):
    """``gmmoe evaluate``: the network options here; with ``full``, those of
    :mod:`gmmoe_arch.evaluation.command` too (imported only then, as ``export``'s)."""
    v = sub.add_parser(
        'evaluate',
        help='score a checkpoint per degradation on paired data',
        description='PSNR/SSIM per degradation label of the input, the classical baselines and the network; '
        'gate weights and routing accuracy; JSON and Markdown (docs/evaluate.md).',
        epilog='Example: gmmoe evaluate --weights net_g.pth --opt train.yml --data test_rain/lmdb --json eval.json',
    )
    add_network_arguments(v)
    if full:
        from gmmoe_arch.evaluation.command import add_evaluate_arguments

        add_evaluate_arguments(v)


def gates_text(path, gates, experts):
    """``gates[image][block] = [w...]`` (per-pixel gates: their means over the image) as the text of ``path``:
    JSON (``{"experts", "images"}``) for ``.json``, else CSV (a row per image and block)."""
    if path.lower().endswith('.json'):
        return json.dumps({'experts': experts, 'images': gates}, indent=1)
    text = io.StringIO(newline='')
    writer = csv.writer(text)
    writer.writerow(['image', 'block'] + experts)
    for image, blocks in gates.items():
        for block, weights in blocks.items():
            writer.writerow([image, block] + [f'{w:.6f}' for w in weights])
    return text.getvalue()


def check_options(args):
    """Option values no run could use: :class:`~gmmoe_arch.enhance.EnhanceError` before any work.

    Returns the checked ``(Tiling, RunOptions)`` the run uses (the device resolved once, here)."""
    from gmmoe_arch import enhance

    if args.gates and not args.gates.lower().endswith(('.json', '.csv')):
        raise enhance.EnhanceError(f'--gates {args.gates}: the file name must end in .json or .csv')
    if args.gates and os.path.isdir(args.gates):
        raise enhance.EnhanceError(f'--gates {args.gates}: is a folder, not a file')
    if args.max_image_pixels < 1:
        raise enhance.EnhanceError(f'--max-image-pixels {args.max_image_pixels}: must be positive')
    tiling = enhance.Tiling(args.tile, args.overlap, args.max_pixels)
    return tiling, enhance.RunOptions(enhance.resolve_device(args.device), args.precision, args.stat_passes)


def enhance_command(args):
    """Run ``gmmoe enhance``; return the exit status. Every check runs once, before the network is loaded."""
    from gmmoe_arch import enhance
    from gmmoe_arch.archs.gmmoe_arch import expert_names

    tiling, options = check_options(args)
    skipped = {}
    jobs = enhance.collect_jobs(args.inputs, args.output, args.suffix, skipped)
    enhance.check_writable({os.path.dirname(job.dst) for job in jobs}, 'output folder')
    if args.gates:
        enhance.check_writable([os.path.dirname(os.path.abspath(args.gates))], f'--gates {args.gates}: folder')
    net = enhance.load_network(
        args.weights, args.preset, args.opt, options.device, args.random_weights, trust=args.trust_checkpoint
    )
    device = next(net.parameters()).device
    print(f'{PROG} enhance: network on {device}, {args.precision}', file=sys.stderr, flush=True)
    summary = enhance.enhance_jobs(
        jobs, net, tiling, options, args.max_image_pixels, record=bool(args.gates), progress=not args.no_progress
    )
    for _, message in summary.failed:
        print(f'{PROG} enhance: failed: {message}', file=sys.stderr)
    gates_lost = False
    if args.gates:
        try:
            enhance.write_file(args.gates, gates_text(args.gates, summary.gates, expert_names(net)).encode())
        except enhance.EnhanceError as exc:
            print(f'{PROG} enhance: failed: gate weights: {exc}', file=sys.stderr)
            gates_lost = True
    done = len(summary.written)
    per = f', {summary.seconds / done:.2f} s/image' if done else ''
    print(
        f'{PROG} enhance: {done} image(s) written to {args.output}, {len(summary.failed)} failed; '
        f'{summary.tiles} tile(s), {summary.seconds:.1f} s{per}'
        + (f'; gate weights in {args.gates}' if args.gates and not gates_lost else '')
        + (f'; {enhance.describe_skipped(skipped)}' if skipped else '')
    )
    return 1 if summary.failed or gates_lost else 0


def export_command(args):
    """Run ``gmmoe export`` (:func:`gmmoe_arch.export.export_command`); return the exit status."""
    from gmmoe_arch.export import export_command as run

    return run(args)


def evaluate_command(args):
    """Run ``gmmoe evaluate`` (:func:`gmmoe_arch.evaluation.command.evaluate_command`); return the exit status."""
    from gmmoe_arch.evaluation.command import evaluate_command as run

    return run(args)


COMMANDS = {'enhance': enhance_command, 'export': export_command, 'evaluate': evaluate_command}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    from gmmoe_arch import runtime
    from gmmoe_arch.enhance import EnhanceError

    runtime.configure_allocator()
    try:
        return COMMANDS[args.command](args)
    except EnhanceError as exc:
        print(f'{PROG} {args.command}: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
