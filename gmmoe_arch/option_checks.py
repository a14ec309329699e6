"""Checks of an option file's sections before ``basicsr train`` / ``basicsr test`` builds anything.

BasicSR reads its options where it uses them, so a wrong type or a missing key fails deep inside (a
``TypeError`` from a scheduler's arithmetic, ``KeyError: 'print_freq'``, ``'str' object has no attribute
'items'``), often after the experiment folders were made. :func:`check_sections` checks what every run
reads (types, ranges, the keys BasicSR requires, the options of the scheduler) and
:func:`check_registered` the names that must be registered and the options their classes take.
Each raises :class:`OptionError` whose message starts with the key (``train.scheduler.periods[0]: ...``);
the ``basicsr`` command puts the option file's path in front. Keys it does not know are left to BasicSR
and the plug-ins, except in the sections whose keys become keyword arguments (scheduler, losses, network).
"""

import inspect
import math

from .options import is_integer, is_number

SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')
DATASET_PHASES = ('train', 'val', 'test')
TRAIN_LOSSES = ('pixel_opt', 'perceptual_opt')


class OptionError(ValueError):
    """A wrong option: the message names the key."""


def _is_finite_number(value):
    return is_number(value) and math.isfinite(value)


def integer(key, value, minimum, maximum=None):
    """``value`` as an int; YAML floats such as ``!!float 5e3`` count when integral."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_integer(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
        raise OptionError(f'{key} must be an integer {bound}, got {value!r}')
    return value


def number(key, value, minimum=None, positive=False, maximum=None):
    if not _is_finite_number(value):
        raise OptionError(f'{key} must be a finite number, got {value!r}')
    if positive and not value > 0:
        raise OptionError(f'{key} must be > 0, got {value!r}')
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise OptionError(f'{key} must be in [{minimum}, {maximum if maximum is not None else "inf"}], got {value!r}')
    return value


def mapping(key, value, example=''):
    if not isinstance(value, dict):
        raise OptionError(f'{key} must be a mapping of options{example}, got {value!r}')
    return value


def typed(key, value, example):
    """A mapping with a string ``type``."""
    mapping(key, value, f', e.g. {example}')
    if not isinstance(value.get('type'), str) or not value['type']:
        raise OptionError(f'{key}.type: missing or not a name (e.g. {example}), got {value.get("type")!r}')
    return value


def _flag(key, value):
    if not isinstance(value, bool):
        raise OptionError(f'{key} must be true or false, got {value!r}')


def _text(key, value, optional=False):
    if not (isinstance(value, str) and value) and not (optional and value is None):
        raise OptionError(f'{key} must be a non-empty string{" or null" if optional else ""}, got {value!r}')


def _list(key, value, each):
    if not isinstance(value, (list, tuple)) or not value:
        raise OptionError(f'{key} must be a non-empty list, got {value!r}')
    return [each(f'{key}[{i}]', v) for i, v in enumerate(value)]


def _required(section, value, keys):
    missing = [k for k in keys if k not in value]
    if missing:
        raise OptionError(f'{section}: missing key(s) {", ".join(missing)}')


def check_top(opt):
    name = opt['name']
    _text('name', name)
    if name in ('.', '..') or set(name) & set('/\\\x00'):
        raise OptionError(f'name is the folder name under experiments/: no /, \\ or NUL, not . or .., got {name!r}')
    _text('model_type', opt['model_type'])
    seed = opt.get('manual_seed')
    if seed is not None and not (is_integer(seed) and 0 <= seed < 2**32):  # numpy's seed takes no float
        raise OptionError(f'manual_seed must be an integer in [0, 4294967295], got {seed!r}')
    if 'scale' in opt:
        integer('scale', opt['scale'], 1)


def check_path(opt):
    paths = mapping('path', opt['path'])
    for key, value in paths.items():
        where = f'path.{key}'
        if key.startswith('strict_load'):
            _flag(where, value)
        elif key == 'ignore_resume_networks':
            if value is not None:
                _list(where, value, _text)
        elif key.startswith(('pretrain_network', 'resume_state')):
            _text(where, value, optional=True)


def check_datasets(opt, phase):
    for name, dataset in opt['datasets'].items():
        where = f'datasets.{name}'
        if not isinstance(name, str) or name.split('_')[0] not in DATASET_PHASES:
            raise OptionError(f'{where}: unknown phase; phases are train, val, val_N, test_N (test for basicsr test)')
        typed(where, dataset, '{type: LLIEPairedDataset, ...}')
        _text(f'{where}.name', dataset.get('name'))
        if 'io_backend' in dataset:
            typed(f'{where}.io_backend', dataset['io_backend'], '{type: disk}')
        for key in ('use_hflip', 'use_rot', 'use_flip'):
            if key in dataset:
                _flag(f'{where}.{key}', dataset[key])
        for key, value in dataset.items():
            if isinstance(key, str) and key.startswith(('dataroot_', 'meta_info')):
                _text(f'{where}.{key}', value, optional=key.startswith('meta_info'))
        if name == 'train' and phase == 'train':
            _required(where, dataset, ('batch_size_per_gpu', 'num_worker_per_gpu'))
            integer(f'{where}.batch_size_per_gpu', dataset['batch_size_per_gpu'], 1)  # null too
            integer(f'{where}.num_worker_per_gpu', dataset['num_worker_per_gpu'], 0)


def _scheduler(opt):
    where = 'train.scheduler'
    sched = typed(where, opt, '{type: CosineAnnealingRestartLR, periods: [...]}')
    if sched['type'] not in SCHEDULERS:
        raise OptionError(f'{where}.type: unknown scheduler "{sched["type"]}"; BasicSR has {", ".join(SCHEDULERS)}')
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR

    cls = CosineAnnealingRestartLR if sched['type'] == 'CosineAnnealingRestartLR' else MultiStepRestartLR
    bind(where, cls, {k: v for k, v in sched.items() if k != 'type'}, skip=('optimizer', 'last_epoch'))
    weights = _list(f'{where}.restart_weights', sched.get('restart_weights', [1]), lambda k, v: number(k, v, 0))
    if cls is MultiStepRestartLR:
        _list(f'{where}.milestones', sched['milestones'], lambda k, v: integer(k, v, 0))
        number(f'{where}.gamma', sched.get('gamma', 0.1), positive=True)
        restarts = _list(f'{where}.restarts', sched.get('restarts', [0]), lambda k, v: integer(k, v, 0))
        if len(restarts) != len(weights):
            raise OptionError(f'{where}: restarts and restart_weights must have the same length')
    else:
        periods = _list(f'{where}.periods', sched['periods'], lambda k, v: integer(k, v, 1))
        number(f'{where}.eta_min', sched.get('eta_min', 0), 0)
        if len(periods) != len(weights):
            raise OptionError(f'{where}: periods and restart_weights must have the same length')
        return sum(periods)
    return None


def check_train(opt):
    train = mapping('train', opt['train'])
    _required('train', train, ('optim_g', 'scheduler', 'total_iter'))
    optim = typed('train.optim_g', train['optim_g'], '{type: AdamW, lr: 1.0e-3}')
    _required('train.optim_g', optim, ('lr',))
    number('train.optim_g.lr', optim['lr'], positive=True)
    reach = _scheduler(train['scheduler'])
    total = integer('train.total_iter', train['total_iter'], 1)
    if reach is not None and total - 1 > reach:  # BasicSR steps the scheduler total_iter - 1 times
        raise OptionError(
            f'train.scheduler.periods: their sum {reach} does not reach train.total_iter {total} '
            f'(CosineAnnealingRestartLR fails past it); make them sum to at least {total - 1}'
        )
    if train.get('warmup_iter') is not None:
        integer('train.warmup_iter', train['warmup_iter'], -1)
    if train.get('ema_decay') is not None:
        number('train.ema_decay', train['ema_decay'], 0, maximum=1)
    losses = [k for k in TRAIN_LOSSES if train.get(k) is not None]
    if not losses:
        raise OptionError('train: needs pixel_opt or perceptual_opt (e.g. pixel_opt: {type: L1Loss, loss_weight: 1.0})')
    for key in losses:
        typed(f'train.{key}', train[key], '{type: L1Loss, loss_weight: 1.0}')


def check_val(opt):
    val = mapping('val', opt['val'])
    if 'save_img' in val:
        _flag('val.save_img', val['save_img'])
    metrics = val.get('metrics')
    if metrics is not None:
        for name, metric in mapping('val.metrics', metrics).items():
            typed(f'val.metrics.{name}', metric, '{type: calculate_psnr, crop_border: 0}')


def check_logger(opt):
    logger = mapping('logger', opt['logger'])
    _required('logger', logger, ('print_freq', 'save_checkpoint_freq'))
    if 'use_tb_logger' in logger:
        _flag('logger.use_tb_logger', logger['use_tb_logger'])
    if logger.get('wandb') is not None:
        mapping('logger.wandb', logger['wandb'])


def check_sections(opt, phase):
    """Check the sections a ``phase`` (train or test) run reads; see the module docstring."""
    check_top(opt)
    check_path(opt)
    check_datasets(opt, phase)
    typed('network_g', opt['network_g'], '{type: GMMoE}')
    if phase == 'train':
        if 'train' not in opt['datasets']:
            raise OptionError('datasets: missing key train (the training set of basicsr train)')
        check_train(opt)
        check_logger(opt)
        if opt.get('val') is not None:
            _required('val', mapping('val', opt['val']), ('val_freq',))
    if opt.get('val') is not None or phase == 'test':
        check_val(opt)


def bind(key, target, options, skip=()):
    """Raise :class:`OptionError` unless ``target(**options)`` (less the ``skip`` arguments) matches its
    signature: unknown or missing options, named."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = [p for name, p in signature.parameters.items() if name not in skip and name != 'self']
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in known]
    if unknown and not takes_any:
        raise OptionError(
            f'{key}: unknown option(s) {", ".join(map(str, unknown))} of {target.__name__} '
            f'(it takes: {", ".join(known)})'
        )
    missing = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [name for name in missing if name not in options]
    if missing:
        raise OptionError(f'{key}: missing option(s) {", ".join(missing)} of {target.__name__}')


def _registered(key, registry, name):
    if name not in registry:
        raise OptionError(f'{key}: "{name}" is not registered with BasicSR (nor by any installed plug-in)')
    return registry.get(name)


def check_registered(opt, phase):
    """Names that must be in BasicSR's registries (after the plug-ins are loaded), and the options of the
    network and the losses against their classes' signatures."""
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

    _registered('model_type', MODEL_REGISTRY, opt['model_type'])
    for name, dataset in opt['datasets'].items():
        _registered(f'datasets.{name}.type', DATASET_REGISTRY, dataset['type'])
    for key in [k for k in opt if isinstance(k, str) and k.startswith('network_')]:
        net = opt[key]
        if isinstance(net, dict) and isinstance(net.get('type'), str):
            cls = _registered(f'{key}.type', ARCH_REGISTRY, net['type'])
            bind(key, cls, {k: v for k, v in net.items() if k != 'type'})
    if phase == 'train':
        for key in TRAIN_LOSSES:
            loss = opt['train'].get(key)
            if loss is not None:
                cls = _registered(f'train.{key}.type', LOSS_REGISTRY, loss['type'])
                bind(f'train.{key}', cls, {k: v for k, v in loss.items() if k != 'type'})
    metrics = (opt.get('val') or {}).get('metrics') or {}
    for name, metric in metrics.items():
        _registered(f'val.metrics.{name}.type', METRIC_REGISTRY, metric['type'])
