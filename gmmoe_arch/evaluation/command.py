"""``gmmoe evaluate``: score a checkpoint per degradation label on a paired folder or LMDB pair.

``gmmoe evaluate --weights net_g.pth [--opt train.yml] --data DIR [--label L | --labels L...] [--baselines B...]
[--metrics M...] [--gate-ablation] [--routing-maps DIR] [--json F] [--markdown F] [--target-* ...]`` prints the
Markdown tables of :func:`gmmoe_arch.evaluation.markdown`, writes the report as JSON and Markdown when asked,
and exits with 0, with 1 when a ``--target-*`` is missed, and with 2 (one line naming the file or option) for
bad input. The routing
accuracy needs the label -> expert mapping: ``--mapping``, else ``train.gate_opt.experts`` of ``--opt``.
``--gate-ablation`` adds the network with every gate frozen to its mean weights over the pairs
(:mod:`.ablation`; the report's ``gate_ablation``); ``--routing-maps DIR`` writes each pair's routing map
(:mod:`.routing_map`: which expert wins where) as ``DIR/<name>.png``.
"""

import os
import sys

from . import report as rep
from . import targets as tg
from .ablation import ablation_markdown, gate_ablation
from .data import load_pairs
from .errors import EvaluationError
from .network import expert_list
from .scores import ALL_METRICS, OURS, all_baselines, check_metrics, choose_baselines

PROG = 'gmmoe evaluate'
NETWORK_KEY = 'net'


def add_evaluate_arguments(parser):
    """The options of ``gmmoe evaluate`` besides the network options (``--weights``, ``--opt``, ...)."""
    data = parser.add_argument_group('data')
    data.add_argument(
        '--data',
        required=True,
        metavar='DIR',
        help='a folder with lq/ and gt/ (or low/ and high/), or lq.lmdb and gt.lmdb',
    )
    data.add_argument('--label', metavar='NAME', help='the degradation label of every pair (overrides stored labels)')
    data.add_argument('--labels', nargs='+', metavar='NAME', help='evaluate only the pairs with these labels')
    run = parser.add_argument_group('evaluation')
    run.add_argument(
        '--baselines',
        nargs='+',
        metavar='NAME',
        help=f'classical baselines for every label ({", ".join(all_baselines())}; none: no baseline); '
        "default: each label's own",
    )
    run.add_argument(
        '--metrics',
        nargs='+',
        default=list(ALL_METRICS),
        metavar='NAME',
        help='psnr, ssim: ours; *_released: the released protocol (default: all four)',
    )
    run.add_argument(
        '--mapping',
        nargs='+',
        metavar='LABEL=EXPERT',
        help='label -> expert for the routing accuracy (default: train.gate_opt.experts of --opt)',
    )
    run.add_argument(
        '--gate-ablation',
        action='store_true',
        help="also score the network with each block's gate frozen to its mean weights over the pairs",
    )
    run.add_argument('--title', default='GM-MoE', help='the network row in the tables (default: GM-MoE)')
    run.add_argument('--device', default='auto', help='auto (CUDA if present), cpu, cuda or cuda:N')
    run.add_argument('--max-pixels', type=int, metavar='N', help='tile images with more pixels (default: whole images)')
    out = parser.add_argument_group('output and targets')
    out.add_argument('--json', metavar='FILE', help='write the report as JSON')
    out.add_argument('--markdown', metavar='FILE', help='write the tables as Markdown')
    out.add_argument(
        '--routing-maps',
        metavar='DIR',
        help="write each pair's routing map (the winning expert per pixel over the input) as DIR/<name>.png",
    )
    out.add_argument(
        '--target-over-input', type=float, metavar='DB', help='exit 1 unless PSNR gains this over the input'
    )
    out.add_argument(
        '--target-over-baseline', type=float, metavar='DB', help='exit 1 unless PSNR gains this over the best baseline'
    )
    out.add_argument('--target-routing', type=float, metavar='FRACTION', help='exit 1 unless routing reaches this')


def parse_mapping(items, option_file):
    """``{label: expert}`` from ``--mapping LABEL=EXPERT ...``, else ``train.gate_opt.experts`` of ``option_file``."""
    if items:
        bad = [item for item in items if item.count('=') != 1 or not all(item.split('='))]
        if bad:
            raise EvaluationError(f'--mapping {bad[0]}: expected LABEL=EXPERT, e.g. rain=RainExpert')
        return dict(item.split('=') for item in items)
    if option_file is None:
        return None
    import yaml

    with open(option_file, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    experts = ((opt.get('train') or {}).get('gate_opt') or {}).get('experts')
    return dict(experts) if isinstance(experts, dict) else None


def check_mapping(mapping, experts):
    """``mapping`` when the network has each expert it names; :class:`EvaluationError` otherwise."""
    missing = [e for e in dict.fromkeys(expert_list(mapping or {})) if e not in experts]
    if missing:
        raise EvaluationError(
            f'--mapping: the network has no {", ".join(missing)} (its experts: {", ".join(experts) or "none"})'
        )
    return mapping


def _targets(args, report):
    targets = []
    if args.target_over_input is not None:
        targets += tg.gain_over_input(report, NETWORK_KEY, args.target_over_input)
    if args.target_over_baseline is not None:
        targets += tg.gain_over_best_baseline(report, NETWORK_KEY, args.target_over_baseline)
    if args.target_routing is not None:
        targets += tg.routing_at_least(report, NETWORK_KEY, args.target_routing)
    return rep.set_targets(report, targets)


def _check(args):
    """Options no run could use, before the data or the network are read: ``(metrics, baseline names)``."""
    from ..enhance import check_writable

    metrics = check_metrics(args.metrics)
    names = None if args.baselines is None else [n for n in args.baselines if n != 'none']
    if names:
        choose_baselines([], names)
    if args.max_pixels is not None and args.max_pixels < 1:
        raise EvaluationError(f'--max-pixels {args.max_pixels}: must be positive')
    for option, path in (('--json', args.json), ('--markdown', args.markdown)):
        if path is not None:
            if os.path.isdir(path):
                raise EvaluationError(f'{option} {path}: is a folder, not a file')
            check_writable([os.path.dirname(os.path.abspath(path))], f'{option} {path}: folder')
    if args.routing_maps is not None:
        if os.path.exists(args.routing_maps) and not os.path.isdir(args.routing_maps):
            raise EvaluationError(f'--routing-maps {args.routing_maps}: is a file, not a folder')
        os.makedirs(args.routing_maps, exist_ok=True)
        check_writable([args.routing_maps], f'--routing-maps {args.routing_maps}: folder')
    return metrics, names


def _run(args):
    from ..archs.gmmoe_arch import expert_names
    from ..data.image_io import DataError
    from ..enhance import load_network

    metrics, names = _check(args)
    try:
        pairs = load_pairs(args.data, args.label, args.labels)
    except DataError as exc:
        raise EvaluationError(str(exc)) from exc
    net = load_network(args.weights, args.preset, args.opt, args.device, args.random_weights, args.trust_checkpoint)
    mapping = check_mapping(parse_mapping(args.mapping, args.opt), expert_names(net))
    labels = list(dict.fromkeys(p.label for p in pairs))
    print(
        f'{PROG}: {len(pairs)} pair(s) ({", ".join(labels)}), network on {next(net.parameters()).device}',
        file=sys.stderr,
    )
    report = rep.reference_report(pairs, None if names is None else choose_baselines(labels, names), metrics)
    rep.add_network(report, NETWORK_KEY, args.title, net, pairs, mapping, args.max_pixels)
    targets = _targets(args, report)
    text = rep.markdown(report)
    if args.gate_ablation:
        report['gate_ablation'] = gate_ablation(net, pairs, [m for m in metrics if m in OURS] or OURS)
        text += '\n\nGates frozen to their mean weights over these pairs:\n\n' + ablation_markdown(
            report['gate_ablation']
        )
    if args.routing_maps:
        _write_routing_maps(net, pairs, args.routing_maps)
    if args.json:
        rep.write_json(report, args.json)
    if args.markdown:
        rep.write_markdown(text, args.markdown)
    print(text)
    met, line = tg.verdict(targets)
    if targets:
        print(f'\n{line}')
    return 0 if met else 1


def _write_routing_maps(net, pairs, folder):
    from ..archs.gmmoe_arch import expert_names
    from .routing_map import pixel_weights, save_routing_map

    names = expert_names(net)
    for pair in pairs:
        save_routing_map(os.path.join(folder, f'{pair.name}.png'), pair.lq, pixel_weights(net, pair.lq), names)
    print(f'{PROG}: {len(pairs)} routing map(s) in {folder}', file=sys.stderr)


def evaluate_command(args):
    """Run ``gmmoe evaluate``; return the exit status (2 with one line on stderr for bad input)."""
    from ..enhance import EnhanceError

    try:
        return _run(args)
    except (EvaluationError, EnhanceError) as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2
