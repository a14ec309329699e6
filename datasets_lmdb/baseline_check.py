"""Classical baselines on synthesized held-out pairs: how much a synthesis gives away to the methods built on
its own cue (the dark channel prior on a haze whose depth follows brightness, for one).

``python -m datasets_lmdb.baseline_check [--kinds haze haze_bright] [--side 320] [--per-image 5] [--seed 0]``
degrades the demos' held-out photographs (:data:`datasets_lmdb.demo.VAL_PHOTOS`, which no demo trains on) with
each kind, in memory, exactly as ``datasets_lmdb synth`` would (:func:`datasets_lmdb.synth.synthesized_pairs`),
and prints the mean PSNR/SSIM (:mod:`gmmoe_arch.evaluation.scores`) of the input and of each baseline as a
Markdown table. The default baselines are the two forms of the dark channel prior; docs/data.md has the
table it printed.
"""

import argparse
import sys

from gmmoe_arch import baselines
from gmmoe_arch.evaluation.scores import OURS, score

from .demo import VAL_PHOTOS, load_photo
from .synth import kinds, synthesized_pairs

#: the haze baselines compared: the dark channel prior with its coarse and its guided-filter-refined transmission
HAZE_BASELINES = {
    'DCP, coarse transmission': baselines.dark_channel_prior_coarse,
    'DCP + guided filter': baselines.dark_channel_prior,
}
INPUT = 'input'


def baseline_table(
    syntheses=('haze', 'haze_bright'), methods=None, photos=VAL_PHOTOS, side=320, per_image=5, seed=0, metrics=OURS
):
    """``{kind: {'input' | baseline name: {metric: mean}}}`` over the pairs of ``photos`` (at ``side`` pixels,
    ``per_image`` variants each) synthesized with each of ``syntheses``; ``methods`` default :data:`HAZE_BASELINES`."""
    methods = HAZE_BASELINES if methods is None else methods
    images = [(name, load_photo(name, side)) for name in photos]
    table = {}
    for kind in syntheses:
        pairs = [(p['lq'], p['gt']) for p in synthesized_pairs(images, kind, seed=seed, per_image=per_image)]
        table[kind] = {INPUT: score(pairs, metrics)}
        for name, fn in methods.items():
            table[kind][name] = score([(fn(lq), gt) for lq, gt in pairs], metrics)
    return table


def markdown(table, metrics=OURS):
    """The table as Markdown: a row per kind and method, a column per metric (PSNR in dB)."""
    lines = ['| synthesis | method | ' + ' | '.join(metrics) + ' |', '|---|---|' + '---:|' * len(metrics)]
    for kind, rows in table.items():
        for name, values in rows.items():
            cells = ' | '.join(f'{values[m]:.2f}' if m.startswith('psnr') else f'{values[m]:.3f}' for m in metrics)
            lines.append(f'| `{kind}` | {name} | {cells} |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m datasets_lmdb.baseline_check', description=__doc__.split('\n')[0])
    parser.add_argument('--kinds', nargs='+', default=['haze', 'haze_bright'], choices=kinds(), help='syntheses')
    parser.add_argument('--side', type=int, default=320, help='longest side of the photographs (default 320)')
    parser.add_argument('--per-image', type=int, default=5, help='variants per photograph (default 5)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthesis (default 0)')
    args = parser.parse_args(argv)
    if args.side < 8 or args.per_image < 1:
        parser.error('--side must be >= 8 and --per-image >= 1')
    table = baseline_table(args.kinds, side=args.side, per_image=args.per_image, seed=args.seed)
    print(f'{len(VAL_PHOTOS)} held-out photographs ({", ".join(VAL_PHOTOS)}) x {args.per_image}, {args.side} px')
    print(markdown(table))
    return 0


if __name__ == '__main__':
    sys.exit(main())
