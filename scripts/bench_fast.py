"""Benchmark GM-MoE's fast path against the straightforward path (a measurement, not a test).

In one process, on the same weights (random, with non-zero ``beta``/``gamma`` so every branch
matters), it times the straightforward path (``fast=False``) in fp32 against the fast path in fp32
and under ``torch.autocast(<device>, bfloat16)``: medians of ``--runs`` runs after a warm-up, the
order rotated every run, ratios paired run by run.

Two baselines on CPU. ``plain`` is the straightforward path as a plain Python process runs it, with
glibc's allocator settings (restored for its runs by :func:`gmmoe_arch.runtime.restore_allocator`,
which is at least as generous as a warmed-up plain process): what a user without this project gets.
``plain+malloc`` is the same path with the allocator tuning that the fast path runs under (the
``basicsr``/``gmmoe`` commands apply it), so ``fast`` vs ``plain+malloc`` isolates the rewrites. It
prints max |diff| and PSNR of each path's output against the straightforward fp32 output, and a
training-step comparison (AdamW, the released PSNR loss) with and without activation checkpointing,
including gradient agreement. ``--compile`` adds ``torch.compile`` (inductor) of the straightforward path
(fp32 and bf16, static and dynamic shapes, with and without inductor's weight freezing, ``--compile-modes``)
to the same rotation, its compilation time printed apart, and a compiled training step.
Peak resident memory of each configuration is measured in a fresh child process each (the peak
only grows within a process). Examples::

    python scripts/bench_fast.py                       # everything (tens of minutes on 2 cores)
    python scripts/bench_fast.py --quick               # a smoke run in a minute or two
    python scripts/bench_fast.py --parts infer --sizes 600x400 --runs 5 --no-memory
    GMMOE_MALLOC=off python scripts/bench_fast.py ...  # without the allocator tuning

Sizes are ``WIDTHxHEIGHT``. ``--device cuda`` measures on a GPU (fp16 autocast added there, cuDNN
autotuning on, peak CUDA memory instead of RSS).
"""

import argparse
import copy
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gmmoe_arch.runtime import configure_allocator, restore_allocator  # noqa: E402

MALLOC_TUNED = configure_allocator()

from gmmoe_arch import GMMoE  # noqa: E402
from gmmoe_arch.archs.gmmoe_arch import activate_branches  # noqa: E402
from gmmoe_arch.archs.torch_private import ADAPTERS  # noqa: E402
from gmmoe_arch.losses.psnr_loss import PSNRLoss  # noqa: E402

psnr_loss = PSNRLoss()  # the released loss: 10/ln10 * mean_over_images(log(mse_per_image + 1e-8))


def parse_size(text):
    """``'600x400'`` -> ``(400, 600)`` (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 600x400 (width x height), got "{text}"') from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f'size must be positive, got "{text}"')
    return h, w


def make_net(preset, seed, **kwargs):
    """A GMMoE of ``preset`` with seeded random weights, ``beta``/``gamma`` ~ N(0, 0.5^2), LayerNorms jittered."""
    torch.manual_seed(seed)
    return activate_branches(GMMoE(preset=preset, **kwargs), norm_jitter=0.1)


def psnr(x, ref):
    mse = (x.double() - ref.double()).pow(2).mean().item()
    return float('inf') if mse == 0 else 10 * math.log10(1 / mse)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def rotated(items, r):
    k = r % len(items)
    return items[k:] + items[:k]


def set_allocator(tuned):
    """Switch glibc's allocator between the project's tuning and plain settings (no-op when untuned)."""
    if MALLOC_TUNED:
        configure_allocator(True) if tuned else restore_allocator()


def report(title, names, walls, cpus, bases):
    """Print medians and ratios against each of ``bases`` (paired run by run); return a dict of them."""
    print(f'  {title}')
    rows = {}
    for name in names:
        rows[name] = r = dict(median_s=statistics.median(walls[name]), min_s=min(walls[name]))
        print(f'    {name:14s} median {r["median_s"]:8.3f} s  min {r["min_s"]:8.3f} s')
        for base in bases:
            if base == name:
                continue
            paired = [b / t for b, t in zip(walls[base], walls[name])]
            paired_cpu = [b / t for b, t in zip(cpus[base], cpus[name])]
            r[f'vs {base}'] = v = dict(
                paired_ratio=statistics.median(paired),
                ratio_of_medians=statistics.median(walls[base]) / statistics.median(walls[name]),
                cpu_paired_ratio=statistics.median(paired_cpu),
            )
            print(
                f'    {"":14s}   speed-up vs {base:14s} paired {v["paired_ratio"]:5.2f}x  of medians '
                f'{v["ratio_of_medians"]:5.2f}x  (cpu time {v["cpu_paired_ratio"]:5.2f}x)'
            )
    return rows


def two_baselines(device):
    """Whether a separate ``plain+malloc`` baseline exists (CPU with the allocator tuning available)."""
    return MALLOC_TUNED and device.type == 'cpu'


def inference_modes(device, with_plain_low):
    """``name -> (fast, autocast dtype or None, allocator tuned)``; the first is the baseline."""
    modes = {'plain fp32': (False, None, False)}
    if two_baselines(device):
        modes['plain+malloc'] = (False, None, True)
    modes.update({'fast fp32': (True, None, True), 'fast bf16': (True, torch.bfloat16, True)})
    if device.type == 'cuda':
        modes['fast fp16'] = (True, torch.float16, True)
    if with_plain_low:
        modes['plain bf16'] = (False, torch.bfloat16, True)
    return modes


def run_inference(net, x, fast, dtype, tuned):
    set_allocator(tuned)
    net.set_fast(fast)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return net(x)


def compile_variants(modes):
    """``name -> (torch.compile kwargs, autocast dtype)`` of the compiled rows, per mode.

    Inductor options go in ``options`` (never a global config patch): dynamo reuses a compiled frame for
    another instance of the same module class when the backends compare equal, and only differing
    options make them differ.
    """
    variants = {}
    for mode in modes:
        tag = '' if mode == 'default' else f' {mode}'
        options = {} if mode == 'default' else dict(torch._inductor.list_mode_options(mode))
        variants[f'inductor{tag} fp32'] = (dict(dynamic=False, options=options), None)
        frozen = dict(options, freezing=True)
        variants[f'inductor{tag}+frz fp32'] = (dict(dynamic=False, options=frozen), None)
        variants[f'inductor{tag}+frz bf16'] = (dict(dynamic=False, options=frozen), torch.bfloat16)
        if mode == 'default':
            variants['inductor dyn fp32'] = (dict(dynamic=True, options=options), None)
    return variants


def run_compiled(compiled, x, dtype):
    """One call of a compiled straightforward net (the first one compiles)."""
    set_allocator(True)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return compiled(x)


def compiled_runners(net, x, args, device):
    """``name -> no-argument call`` of each compiled variant on a copy of ``net`` (straightforward path),
    each compiled by a first call here; returns it and the compilation seconds per name."""
    runners, compile_s = {}, {}
    for name, (kw, dtype) in compile_variants(args.compile_modes).items():
        compiled = torch.compile(copy.deepcopy(net).set_fast(False), **kw)
        runners[name] = functools.partial(run_compiled, compiled, x, dtype)
        _, compile_s[name], _ = timed(runners[name], device)
        print(f'    {name:14s} compiled in {compile_s[name]:.1f} s (first call)', flush=True)
    return runners, compile_s


def bench_inference(preset, size, args, device):
    h, w = size
    net = make_net(preset, args.seed).to(device).eval()
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    modes = inference_modes(device, args.plain_bf16)
    print(f'\n[inference] preset {preset}, {w}x{h}, {args.runs} runs after {args.warmup} warm-up', flush=True)
    runners = {name: functools.partial(run_inference, net, x, *mode) for name, mode in modes.items()}
    compile_s = {}
    if args.compile:
        compiled, compile_s = compiled_runners(net, x, args, device)
        runners.update(compiled)
    for _ in range(args.warmup):
        for run in runners.values():
            run()
    walls, cpus, outputs = {n: [] for n in runners}, {n: [] for n in runners}, {}
    for r in range(args.runs):
        for name in rotated(list(runners), r):
            out, wall, cpu = timed(runners[name], device)
            outputs[name] = out.float()
            walls[name].append(wall)
            cpus[name].append(cpu)
    set_allocator(True)
    bases = [m for m in modes if m.startswith('plain') and 'bf16' not in m]
    if args.compile:
        bases.append('fast fp32')
    rows = report('time per image', list(runners), walls, cpus, bases)
    for name, seconds in compile_s.items():
        rows[name]['compile_s'] = seconds
    ref = outputs['plain fp32']
    for name in runners:
        rows[name]['max_abs_diff'] = (outputs[name] - ref).abs().max().item()
        rows[name]['psnr_db'] = psnr(outputs[name], ref)
        if name != 'plain fp32':
            print(
                f'    {name:14s} vs plain fp32: max |diff| {rows[name]["max_abs_diff"]:.2e}  '
                f'PSNR {rows[name]["psnr_db"]:.1f} dB'
            )
    if args.memory and device.type == 'cpu':
        for name in modes:  # the eager paths (a compiled one's peak would be the compiler's)
            rows[name]['peak_rss_mb'] = child_peak(args, 'infer', preset, size, name, modes[name][2])['peak_rss_mb']
            print(f'    {name:14s} peak RSS {rows[name]["peak_rss_mb"]:8.0f} MB (fresh process)')
    return rows


def train_configs(device):
    """``name -> (GMMoE kwargs, allocator tuned)``; the first is the baseline."""
    configs = {'plain': (dict(fast=False), False)}
    if two_baselines(device):
        configs['plain+malloc'] = (dict(fast=False), True)
    configs.update(
        {
            'fast': (dict(fast=True), True),
            'fast+ckpt': (dict(fast=True, checkpoint='block'), True),
            'fast+ckpt:exp': (dict(fast=True, checkpoint='expert'), True),
        }
    )
    return configs


def make_batch(args, device):
    g = torch.Generator().manual_seed(args.seed + 2)
    lq = torch.rand(args.train_batch, 3, args.train_crop, args.train_crop, generator=g)
    return lq.to(device), (lq * 2.5).clamp(0, 1).to(device)


def train_step(net, opt, lq, gt, tuned=True):
    set_allocator(tuned)
    opt.zero_grad(set_to_none=True)
    loss = psnr_loss(net(lq), gt)
    loss.backward()
    opt.step()
    return loss.item()


def grad_agreement(nets, lq, gt):
    """Max over parameters of ``|g - g_plain| / |g_plain|`` (norms) for each net, and the global one."""
    grads = {}
    for name, net in nets.items():
        net.zero_grad(set_to_none=True)
        psnr_loss(net(lq), gt).backward()
        bare = getattr(net, '_orig_mod', net)  # a compiled net's parameters under the module's own names
        grads[name] = {k: p.grad.detach().clone() for k, p in bare.named_parameters()}
        net.zero_grad(set_to_none=True)
    ref = grads['plain']
    out = {}
    for name, g in grads.items():
        per = [((g[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-30)).item() for k in ref]
        num = sum((g[k] - ref[k]).pow(2).sum() for k in ref)
        den = sum(ref[k].pow(2).sum() for k in ref)
        out[name] = dict(max_param_rel=max(per), global_rel=(num / den).sqrt().item())
    return out


def compiled_trainer(preset, args, device, lq, gt, configs, nets):
    """Add the compiled straightforward net to ``configs``/``nets`` as ``inductor`` once its first forward and
    backward (the compilation) ran; returns ``(compile seconds, None)``, or ``(None, error)`` where inductor
    fails (an inductor bug on this torch: reported as a row, the eager rows still run)."""
    compiled = torch.compile(make_net(preset, args.seed, fast=False).to(device).train(), dynamic=False)
    try:
        _, compile_s, _ = timed(lambda: psnr_loss(compiled(lq), gt).backward(), device)
    except Exception as exc:
        error = f'{type(exc).__name__}: {str(exc).splitlines()[0][:300]}'
        print(f'    inductor       training step failed to compile or run: {error}', flush=True)
        return None, error
    configs['inductor'] = (dict(fast=False), True)
    nets['inductor'] = compiled
    print(f'    inductor       forward + backward compiled in {compile_s:.1f} s (first call)', flush=True)
    return compile_s, None


def bench_train(preset, args, device):
    configs = train_configs(device)
    nets = {name: make_net(preset, args.seed, **kw).to(device).train() for name, (kw, _) in configs.items()}
    lq, gt = make_batch(args, device)
    compile_s, compile_error = (
        compiled_trainer(preset, args, device, lq, gt, configs, nets) if args.compile else (None, None)
    )
    opts = {name: torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.9)) for name, net in nets.items()}
    print(
        f'\n[training] preset {preset}, batch {args.train_batch} x {args.train_crop}^2, AdamW + PSNR loss, '
        f'{args.train_runs} steps after 1 warm-up step'
    )
    agreement = grad_agreement(nets, lq, gt)
    for name in configs:
        if not name.startswith('plain'):
            a = agreement[name]
            print(
                f'    {name:14s} gradients vs plain: max per-parameter relative {a["max_param_rel"]:.2e}, '
                f'global relative {a["global_rel"]:.2e}'
            )
    for name in configs:
        train_step(nets[name], opts[name], lq, gt, configs[name][1])
    walls, cpus = {n: [] for n in configs}, {n: [] for n in configs}
    for r in range(args.train_runs):
        for name in rotated(list(configs), r):
            step = functools.partial(train_step, nets[name], opts[name], lq, gt, configs[name][1])
            _, wall, cpu = timed(step, device)
            walls[name].append(wall)
            cpus[name].append(cpu)
    set_allocator(True)
    bases = [c for c in configs if c.startswith('plain')] + (['fast'] if 'inductor' in configs else [])
    rows = report('time per training step', list(configs), walls, cpus, bases)
    for name in configs:
        rows[name].update(agreement[name])
    if compile_s is not None:
        rows['inductor']['compile_s'] = compile_s
    if compile_error is not None:
        rows['inductor'] = {'error': compile_error}
    if device.type == 'cuda':
        for name in configs:
            torch.cuda.reset_peak_memory_stats(device)
            train_step(nets[name], opts[name], lq, gt)
            rows[name]['peak_cuda_mb'] = torch.cuda.max_memory_allocated(device) / 2**20
            print(
                f'    {name:14s} peak CUDA memory {rows[name]["peak_cuda_mb"]:8.0f} MB, '
                f'{rows[name]["peak_cuda_mb"] / rows["plain"]["peak_cuda_mb"]:.2f}x plain'
            )
    del nets, opts
    if args.memory and device.type == 'cpu':
        # Every eager configuration under both allocator settings: ratios compare like with like.
        names = [n for n in configs if n not in ('plain+malloc', 'inductor')]
        settings = [False, True] if MALLOC_TUNED else [False]
        for name in names:
            rows[name]['memory'] = {
                ('tuned' if t else 'plain'): child_peak(args, 'train', preset, None, name, t) for t in settings
            }
        for key, what in (
            ('peak_rss_mb', 'peak RSS of the process'),
            (
                'train_mb',
                'training memory (peak RSS - RSS after imports: weights, gradients, optimizer state, activations)',
            ),
        ):
            print(f'    {what}, one training step in a fresh process, MB (ratio to plain, to fast):')
            for setting in rows['plain']['memory']:
                mb = {n: rows[n]['memory'][setting][key] for n in names}
                print(
                    f'      allocator {setting:5s}: '
                    + ', '.join(f'{n} {v:.0f} ({v / mb["plain"]:.2f}x, {v / mb["fast"]:.2f}x)' for n, v in mb.items())
                )
    return rows


def child_peak(args, part, preset, size, name, tuned):
    """Peak RSS (MB) of a fresh process that runs one configuration once, allocator tuned or not."""
    env = dict(os.environ, GMMOE_MALLOC='on' if tuned else 'off')
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        '--child',
        json.dumps([part, preset, size, name]),
        '--seed',
        str(args.seed),
        '--train-batch',
        str(args.train_batch),
        '--train-crop',
        str(args.train_crop),
        '--device',
        args.device,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f'memory child {part}/{name} failed:\n{done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(spec, args, device):
    base = rss_mb('VmRSS')
    part, preset, size, name = json.loads(spec)
    if part == 'infer':
        h, w = size
        net = make_net(preset, args.seed).to(device).eval()
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
        fast, dtype, _ = inference_modes(device, True)[name]
        run_inference(net, x, fast, dtype, MALLOC_TUNED)
    else:
        net = make_net(preset, args.seed, **train_configs(device)[name][0]).to(device).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.9))
        train_step(net, opt, *make_batch(args, device), MALLOC_TUNED)
    peak = rss_mb('VmHWM')
    print(json.dumps({'peak_rss_mb': peak, 'base_rss_mb': base, 'train_mb': peak - base}))


def rss_mb(field):
    """This process's ``VmHWM`` (peak; ``ru_maxrss`` would include a parent's from before exec) or ``VmRSS``, MB."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':')) / 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument(
        '--parts',
        default='infer,train,released',
        help='comma-separated: infer (paper preset), train (paper preset), released (released preset, '
        'inference at --released-size)',
    )
    p.add_argument('--sizes', default='600x400,1024x1024', help='paper-preset inference sizes, WIDTHxHEIGHT,...')
    p.add_argument('--released-size', type=parse_size, default=(256, 256))
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--train-runs', type=int, default=3)
    p.add_argument('--train-batch', type=int, default=4)
    p.add_argument('--train-crop', type=int, default=256)
    p.add_argument('--plain-bf16', action='store_true', help='also time the straightforward path under bf16')
    p.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-RSS child processes')
    p.add_argument('--compile', action='store_true', help='add torch.compile (inductor) rows: inference and training')
    p.add_argument(
        '--compile-modes',
        default='default',
        help='with --compile: inductor modes, comma-separated (default, max-autotune, ...); minutes each on 2 cores',
    )
    p.add_argument('--quick', action='store_true', help='tiny sizes and few runs (a smoke run)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', help='also write the results to this file')
    p.add_argument('--child', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.runs, args.train_runs, args.train_batch, args.train_crop = '192x128', 3, 2, 2, 64
        args.parts = 'infer,train'
    parts = [s.strip() for s in args.parts.split(',') if s.strip()]
    unknown = sorted(set(parts) - {'infer', 'train', 'released'})
    if unknown:
        p.error(f'--parts: unknown {", ".join(unknown)}; choose from infer, train, released')
    args.parts = parts
    args.sizes = [parse_size(s) for s in args.sizes.split(',') if s.strip()]
    args.compile_modes = [m.strip() for m in args.compile_modes.split(',') if m.strip()]
    known_modes = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
    if set(args.compile_modes) - set(known_modes) or not args.compile_modes:
        p.error(f'--compile-modes: choose from {", ".join(known_modes)}, got "{",".join(args.compile_modes)}"')
    if min(args.runs, args.train_runs, args.train_batch, args.train_crop) < 1 or args.warmup < 0:
        p.error('--runs, --train-runs, --train-batch and --train-crop must be >= 1, --warmup >= 0')
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    if args.child:
        return run_child(args.child, args, device)
    cpu = (
        next(
            (line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
            'unknown',
        )
        if os.path.exists('/proc/cpuinfo')
        else 'unknown'
    )
    print(
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu}, device: {device}'
        + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else '')
        + f', allocator tuned: {MALLOC_TUNED}, load average at start: {os.getloadavg()[0]:.1f}'
    )
    # a private torch API that failed its self-check makes the fast path slower: say which ones are in use
    print(
        'private torch APIs: ' + ', '.join(f'{a.name} {"in use" if a.uses_private else "FALLBACK"}' for a in ADAPTERS)
    )
    results = dict(torch=torch.__version__, cpu=cpu, malloc_tuned=MALLOC_TUNED, args=vars(args).copy())
    results['args']['sizes'] = [list(s) for s in args.sizes]
    if 'infer' in args.parts:
        for size in args.sizes:
            results[f'infer paper {size[1]}x{size[0]}'] = bench_inference('paper', size, args, device)
    if 'train' in args.parts:
        results['train paper'] = bench_train('paper', args, device)
    if 'released' in args.parts:
        h, w = args.released_size
        results[f'infer released {w}x{h}'] = bench_inference('released', args.released_size, args, device)
    print(f'\npeak RSS of this process: {rss_mb("VmHWM"):.0f} MB; load average at end: {os.getloadavg()[0]:.1f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
