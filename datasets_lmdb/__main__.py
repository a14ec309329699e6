"""The datasets_lmdb command: pack paired datasets into LMDBs, verify them, show preset layouts, synthesize pairs.

Examples::

    datasets_lmdb pack --preset lol_v1 --root datasets/LOL --out datasets/LOL_lmdb
    datasets_lmdb pack --lq rain/input --gt rain/target --out rain_lmdb --pair-rule 'rain-(.*)->norain-\\1'
    datasets_lmdb pack --lq rain/input --gt rain/target --out rain_lmdb \\
        --pair-rule '{"lq": "rain-(.*)", "gt": "norain-\\\\1"}'
    datasets_lmdb verify datasets/LOL_lmdb
    datasets_lmdb restore datasets/LOL_lmdb
    datasets_lmdb presets
    datasets_lmdb synth --degradation mixed --src photos --out datasets/allinone --lmdb --seed 0 --per-image 2
    datasets_lmdb synth --degradation regions --src photos --out datasets/regions --lmdb
"""

import argparse
import os
import sys

from gmmoe_arch.data.degradations import TABLE, names

from .output import PackError, output_locks, settle_leftovers
from .pack import DEFAULT_FORM, FORMS, pack_pairs
from .presets import PRESETS, pack_preset, preset_tree
from .synth import RAIN_CHOICES, kinds, synthesize
from .verify import find_leftovers, verify


def _parser():
    parser = argparse.ArgumentParser(prog='datasets_lmdb', description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    pack = sub.add_parser('pack', help='pack a preset dataset tree or an lq/gt folder pair')
    source = pack.add_mutually_exclusive_group(required=True)
    source.add_argument('--preset', choices=sorted(PRESETS), help='known layout under --root')
    source.add_argument('--lq', help='folder of low-quality (input) images; needs --gt')
    pack.add_argument('--root', help='dataset root for --preset')
    pack.add_argument('--gt', help='folder of ground-truth images, paired with --lq')
    pack.add_argument(
        '--out', required=True, help='output folder: <out>/{lq,gt}.lmdb, or <out>/{train,val}/{lq,gt}.lmdb for presets'
    )
    pack.add_argument(
        '--pair-rule',
        default='identical',
        help="'identical' (same file stems), 'lol_v2_real' (lowN <-> normalN), "
        "'REGEX->TEMPLATE' on stems, e.g. 'rain-(.*)->norain-\\1', or the same as JSON: "
        '\'{"lq": "rain-(.*)", "gt": "norain-\\\\1"}\' (generic packing only)',
    )
    pack.add_argument(
        '--form',
        choices=FORMS,
        default=DEFAULT_FORM,
        help=f'stored form: raw arrays (fast to read) or PNG bytes like BasicSR (default {DEFAULT_FORM})',
    )
    pack.add_argument('--workers', type=int, default=None, help='reader processes (default: up to 4)')
    pack.add_argument('--overwrite', action='store_true', help='replace existing lq.lmdb/gt.lmdb')
    pack.add_argument('--skip-unpaired', action='store_true', help='ignore files without a partner')
    pack.add_argument('--no-progress', action='store_true', help='no progress bar')
    check = sub.add_parser('verify', help='decode every entry, check checksums, meta_info.txt and lq/gt pairs')
    check.add_argument('path', help='an *.lmdb folder or a folder holding some')
    check.add_argument('--no-progress', action='store_true', help='no progress bar')
    restore = sub.add_parser(
        'restore', help='put back the previous lq.lmdb/gt.lmdb that an interrupted pack --overwrite left aside'
    )
    restore.add_argument('out', help='the --out folder of the interrupted pack')
    sub.add_parser('presets', help='print the folder trees the presets expect')
    synth = sub.add_parser('synth', help='degrade a folder of clean images into a labelled paired set (docs/data.md)')
    described = ', '.join(f'{name}: {entry.title}' for name, entry in TABLE.items())
    drawn = ', '.join(names())
    synth.add_argument(
        '--degradation',
        required=True,
        choices=kinds(),
        help=f'{described}; mixed: each of {drawn} in turn, per pair; regions: several of them in regions of one '
        'image, with per-pixel label maps',
    )
    synth.add_argument('--src', required=True, help='folder of clean images')
    synth.add_argument('--out', required=True, help='output folder: <out>/{lq,gt}/*.png, meta_info.txt, synth.json')
    synth.add_argument('--lmdb', action='store_true', help='also pack <out>/lmdb/{lq,gt}.lmdb')
    synth.add_argument('--seed', type=int, default=0, help='seed of every draw (default 0)')
    synth.add_argument('--per-image', type=int, default=1, help='degraded variants per clean image (default 1)')
    synth.add_argument('--rain', choices=RAIN_CHOICES, default='both', help='rain streak setting (default both)')
    synth.add_argument('--max-side', type=int, default=None, help='downscale images to this longest side')
    synth.add_argument('--form', choices=FORMS, default=DEFAULT_FORM, help='stored form with --lmdb')
    synth.add_argument('--overwrite', action='store_true', help='replace an existing synthesized set')
    synth.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def _pack(args, parser):
    options = dict(
        form=args.form,
        workers=args.workers,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        skip_unpaired=args.skip_unpaired,
    )
    if args.preset:
        if not args.root or args.gt:
            parser.error('--preset needs --root (and no --gt)')
        if args.pair_rule != 'identical':
            parser.error('--pair-rule applies to --lq/--gt packing; presets know their rule')
        counts = pack_preset(args.preset, args.root, args.out, **options)
        print(', '.join(f'{split}: {n} pairs' for split, n in counts.items()) + f' -> {args.out}')
    else:
        if not args.gt or args.root:
            parser.error('--lq needs --gt (and no --root)')
        n = pack_pairs(args.lq, args.gt, args.out, pair_rule=args.pair_rule, **options)
        print(f'{n} pairs -> {args.out}')


def _synth(args):
    record = synthesize(
        args.src,
        args.out,
        args.degradation,
        seed=args.seed,
        per_image=args.per_image,
        lmdb=args.lmdb,
        max_side=args.max_side,
        rain=args.rain,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        form=args.form,
    )
    counts = ', '.join(f'{label}: {n}' for label, n in record['counts'].items())
    print(f'{len(record["pairs"])} pairs ({counts}) -> {args.out}')


def _verify(args):
    notes = []
    checked, problems = verify(args.path, progress=not args.no_progress, notes=notes)
    for db, n in checked.items():
        print(f'{db}: {n} entries')
    for note in notes + find_leftovers(args.path):
        print(f'NOTE: {note}')
    for problem in problems:
        print(f'PROBLEM: {problem}')
    print('FAILED' if problems else 'OK')
    return 1 if problems else 0


def _restore(args):
    """Settle the leftovers of ``args.out`` (as the next pack would) without packing anything."""
    if not os.path.isdir(args.out):
        raise FileNotFoundError(f'{args.out}: no such folder')
    with output_locks([args.out]):
        restored = settle_leftovers(args.out)
    if not restored:
        print(f'{args.out}: no previous lq.lmdb/gt.lmdb to restore')


def main(argv=None):
    """Entry point of ``datasets_lmdb`` / ``python -m datasets_lmdb``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == 'pack':
            _pack(args, parser)
        elif args.command == 'verify':
            return _verify(args)
        elif args.command == 'synth':
            _synth(args)
        elif args.command == 'restore':
            _restore(args)
        else:
            print('\n'.join(f'{name}:\n{preset_tree(name)}' for name in PRESETS))
    except (OSError, ValueError, PackError) as err:
        print(f'datasets_lmdb: error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
