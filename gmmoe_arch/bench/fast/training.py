"""Training rows of the fast-path benchmark: steps of real :class:`~gmmoe_arch.models.gmmoe_model.GMMoEModel`
models (AdamW, the released PSNR loss) on the straightforward path, the fast path and the fast path with
activation checkpointing and, with ``--compile``, an inductor-compiled straightforward net; gradient agreement,
peak CUDA memory or, on the CPU, the memory of each configuration in a fresh process."""

import functools

import torch

from ...losses.psnr_loss import PSNRLoss
from ..nets import bench_model, grad_agreement, random_batch, train_step
from ..timing import interleaved, timed
from .common import TUNED, report, set_allocator, two_baselines
from .memory import child_peak

psnr_loss = PSNRLoss()  # the released loss: 10/ln10 * mean_over_images(log(mse_per_image + 1e-8))


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


def tuned_step(model, lq, gt, tuned):
    """One model step under the allocator setting ``tuned``."""
    set_allocator(tuned)
    return train_step(model, lq, gt)


def compiled_model(preset, args, device, lq, gt):
    """``(model, compile seconds, None)``: a model whose straightforward net ``train.compile`` compiled (by a
    first forward and backward here), or ``(None, None, error)`` where inductor fails (an inductor bug on this
    torch: reported as a row, the eager rows still run)."""
    model = bench_model(dict(preset=preset, fast=False), device, args.seed, train={'compile': {'dynamic': False}})
    try:
        compile_s = timed(lambda: psnr_loss(model.net_g(lq), gt).backward(), device).wall_s
    except Exception as exc:
        error = f'{type(exc).__name__}: {str(exc).splitlines()[0][:300]}'
        print(f'    inductor       training step failed to compile or run: {error}', flush=True)
        return None, None, error
    print(f'    inductor       forward + backward compiled in {compile_s:.1f} s (first call)', flush=True)
    return model, compile_s, None


def bench_train(preset, args, device):
    """Time a training step of every configuration, interleaved; print and return the rows."""
    configs = train_configs(device)
    models = {name: bench_model(dict(preset=preset, **kw), device, args.seed) for name, (kw, _) in configs.items()}
    lq, gt = random_batch(args.train_batch, args.train_crop, args.seed + 2, device)
    compile_s = compile_error = None
    if args.compile:
        model, compile_s, compile_error = compiled_model(preset, args, device, lq, gt)
        if model is not None:
            configs['inductor'], models['inductor'] = (dict(fast=False), True), model
    print(
        f'\n[training] preset {preset}, batch {args.train_batch} x {args.train_crop}^2, AdamW + PSNR loss, '
        f'{args.train_runs} steps after 1 warm-up step (GMMoEModel.optimize_parameters)'
    )
    agreement = grad_agreement({n: m.net_g for n, m in models.items()}, psnr_loss, lq, gt)
    for name in configs:
        if not name.startswith('plain'):
            a = agreement[name]
            print(
                f'    {name:14s} gradients vs plain: max per-parameter relative {a["max_param_rel"]:.2e}, '
                f'global relative {a["global_rel"]:.2e}'
            )
    steps = {name: functools.partial(tuned_step, models[name], lq, gt, configs[name][1]) for name in configs}
    runs = interleaved(steps, args.train_runs, 1, device)
    set_allocator(True)
    bases = [c for c in configs if c.startswith('plain')] + (['fast'] if 'inductor' in configs else [])
    rows = report('time per training step', runs, bases)
    for name in configs:
        rows[name].update(agreement[name])
    if compile_s is not None:
        rows['inductor']['compile_s'] = compile_s
    if compile_error is not None:
        rows['inductor'] = {'error': compile_error}
    if device.type == 'cuda':
        for name in configs:
            torch.cuda.reset_peak_memory_stats(device)
            train_step(models[name], lq, gt)
            rows[name]['peak_cuda_mb'] = torch.cuda.max_memory_allocated(device) / 2**20
            print(
                f'    {name:14s} peak CUDA memory {rows[name]["peak_cuda_mb"]:8.0f} MB, '
                f'{rows[name]["peak_cuda_mb"] / rows["plain"]["peak_cuda_mb"]:.2f}x plain'
            )
    del models
    if args.memory and device.type == 'cpu':
        memory_rows(rows, [n for n in configs if n not in ('plain+malloc', 'inductor')], args, preset)
    return rows


def memory_rows(rows, names, args, preset):
    """Every eager configuration's training memory under both allocator settings (ratios compare like with like),
    each in a fresh process; printed and added to ``rows``."""
    settings = [False, True] if TUNED['on'] else [False]
    for name in names:
        rows[name]['memory'] = {
            ('tuned' if t else 'plain'): child_peak(args, 'train', preset, None, name, t) for t in settings
        }
    for key, what in (
        ('peak_rss_mb', 'peak RSS of the process'),
        (
            'train_mb',
            'training memory (peak RSS - RSS after imports: weights, gradients, optimiser state, activations)',
        ),
    ):
        print(f'    {what}, one training step in a fresh process, MB (ratio to plain, to fast):')
        for setting in rows['plain']['memory']:
            mb = {n: rows[n]['memory'][setting][key] for n in names}
            print(
                f'      allocator {setting:5s}: '
                + ', '.join(f'{n} {v:.0f} ({v / mb["plain"]:.2f}x, {v / mb["fast"]:.2f}x)' for n, v in mb.items())
            )
