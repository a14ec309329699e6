"""The ``gmmoe`` console command: ``gmmoe enhance INPUT... -o OUTDIR --weights net_g.pth``.

A thin layer over :mod:`gmmoe_arch.enhance`: parses options, loads the network (every checkpoint
problem is reported before any image is touched), enhances files, folders and globs, optionally
writes the per-image gate weights, and prints a summary. Exit status: 0 when every image was
written, 1 when some failed (each is reported, the rest are processed), 2 for a usage error.

The allocator tuning of :func:`gmmoe_arch.runtime.configure_allocator` is applied at start;
``GMMOE_MALLOC=off`` switches it off.
"""
import argparse
import csv
import json
import os
import sys

PROG = 'gmmoe'


def build_parser():
    from gmmoe_arch.enhance import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, DEFAULT_STAT_PASSES, PRECISIONS

    parser = argparse.ArgumentParser(prog=PROG, description='GM-MoE low-light image enhancement.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='{enhance}')
    p = sub.add_parser('enhance', help='enhance image files, folders or globs',
                       description='Enhance PNG/JPEG/BMP/TIFF images (8/16-bit, gray, RGB, RGBA) with a '
                       'GM-MoE checkpoint. Folders are searched recursively and their structure is '
                       'kept under OUTDIR. Large images run as blended tiles, so memory stays bounded.',
                       epilog='Example: gmmoe enhance photos/ -o enhanced/ --weights net_g.pth --preset paper')
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image files, folders or glob patterns')
    p.add_argument('-o', '--output', required=True, metavar='OUTDIR', help='folder for the enhanced images')
    net = p.add_argument_group('network')
    net.add_argument('--weights', metavar='FILE',
                     help='checkpoint: released {"params": ...}, ours {"params_ema"/"params": ...} or a state dict')
    net.add_argument('--preset', choices=['paper', 'released'],
                     help='network size (default: read off the checkpoint)')
    net.add_argument('--opt', metavar='YAML', help='build the network_g of a BasicSR option file instead')
    net.add_argument('--random-weights', action='store_true',
                     help='run without --weights (random network: for smoke tests and benchmarks only)')
    run = p.add_argument_group('running')
    run.add_argument('--device', default='auto', help='auto (CUDA if present), cpu, cuda or cuda:N')
    run.add_argument('--precision', default='fp32', choices=list(PRECISIONS),
                     help='autocast precision; fp16 needs CUDA (default: fp32)')
    run.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS, metavar='N',
                     help=f'tile images with more pixels than this (default: {DEFAULT_MAX_PIXELS})')
    run.add_argument('--tile', type=int, metavar='PX', help='force square tiles of this side (>= 64)')
    run.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP, metavar='PX',
                     help=f'minimum overlap of neighbouring tiles (default: {DEFAULT_OVERLAP})')
    run.add_argument('--stat-passes', type=int, default=DEFAULT_STAT_PASSES, metavar='N',
                     help='extra passes over the tiles of a tiled image that estimate its whole-image '
                     f'statistics (gates, attention pools); 0 = each tile uses its own (default: {DEFAULT_STAT_PASSES})')
    out = p.add_argument_group('output')
    out.add_argument('--suffix', default='', help='added to each output name before the extension')
    out.add_argument('--gates', metavar='FILE.json|FILE.csv',
                     help='write each image\'s per-block expert weights (tiled images: mean over tiles, '
                     'weighted by the output pixels each tile accounts for)')
    out.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def write_gates(path, gates, experts):
    """``gates[image][block] = [w...]`` -> JSON (``{"experts", "images"}``) or CSV (a row per image and block)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if path.lower().endswith('.json'):
        with open(path, 'w', encoding='utf-8') as f:
            json.dump({'experts': experts, 'images': gates}, f, indent=1)
        return
    with open(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['image', 'block'] + experts)
        for image, blocks in gates.items():
            for block, weights in blocks.items():
                writer.writerow([image, block] + [f'{w:.6f}' for w in weights])


def enhance_command(args):
    """Run ``gmmoe enhance``; return the exit status."""
    from gmmoe_arch import enhance
    from gmmoe_arch.archs.gmmoe_arch import expert_names

    if args.gates and not args.gates.lower().endswith(('.json', '.csv')):
        raise enhance.EnhanceError(f'--gates {args.gates}: the file name must end in .json or .csv')
    if args.stat_passes < 0:
        raise enhance.EnhanceError(f'--stat-passes {args.stat_passes}: must be >= 0')
    enhance.check_tiling(args.tile, args.overlap, args.max_pixels)
    jobs = enhance.collect_jobs(args.inputs, args.output, args.suffix)
    enhance.autocast(enhance.resolve_device(args.device), args.precision)
    net = enhance.load_network(args.weights, args.preset, args.opt, args.device, args.random_weights)
    device = next(net.parameters()).device
    print(f'{PROG} enhance: network on {device}, {args.precision}', file=sys.stderr, flush=True)
    summary = enhance.enhance_jobs(jobs, net, tile=args.tile, overlap=args.overlap, max_pixels=args.max_pixels,
                                   precision=args.precision, stat_passes=args.stat_passes, record=bool(args.gates),
                                   progress=not args.no_progress)
    for name, message in summary.failed:
        print(f'{PROG} enhance: failed: {message}', file=sys.stderr)
    if args.gates:
        write_gates(args.gates, summary.gates, expert_names(net))
    done = len(summary.written)
    per = f', {summary.seconds / done:.2f} s/image' if done else ''
    print(f'{PROG} enhance: {done} image(s) written to {args.output}, {len(summary.failed)} failed; '
          f'{summary.tiles} tile(s), {summary.seconds:.1f} s{per}'
          + (f'; gate weights in {args.gates}' if args.gates else ''))
    return 1 if summary.failed else 0


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from gmmoe_arch import runtime
    from gmmoe_arch.enhance import EnhanceError

    runtime.configure_allocator()
    try:
        return enhance_command(args)
    except EnhanceError as exc:
        print(f'{PROG} {args.command}: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
