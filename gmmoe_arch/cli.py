"""The ``basicsr`` console command: BasicSR's own train/test pipelines with plug-ins loaded.

``basicsr train -opt options/train_gmmoe_lol.yml`` loads ``gmmoe_arch`` (which applies
:mod:`gmmoe_arch.compat`) and every installed package that declares an entry point in the group
``basicsr.plugins``, then calls ``basicsr.train.train_pipeline`` (``basicsr.test.test_pipeline``
for ``test``) with the current working directory as root, so ``experiments/``, ``results/`` and
``tb_logger/`` are created where the command runs.

Distributed: ``torchrun --nproc_per_node=N -m gmmoe_arch.cli train -opt X.yml --launcher pytorch``.
"""

import argparse
import importlib.metadata
import os
import sys

from gmmoe_arch import compat, option_checks
from gmmoe_arch.data.image_io import DataError
from gmmoe_arch.inference.errors import EnhanceError
from gmmoe_arch.models.gmmoe_model import TrainingDivergedError
from gmmoe_arch.options import is_integer
from gmmoe_arch.registry import qualified

PLUGIN_GROUP = 'basicsr.plugins'


class UserError(Exception):
    """A mistake in the command line or an option file, reported without a traceback."""


def load_plugins():
    """Import ``gmmoe_arch`` and every ``basicsr.plugins`` entry point; return their names."""
    import gmmoe_arch  # noqa: F401  (fills the registries, applies the compat patches)

    loaded = ['gmmoe_arch']
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as exc:
            raise UserError(
                f'plug-in "{ep.name}" ({ep.value}, entry point group {PLUGIN_GROUP}) '
                f'failed to import: {type(exc).__name__}: {exc}'
            ) from exc
        loaded.append(ep.name)
    return loaded


REQUIRED_KEYS = {
    'train': ('name', 'model_type', 'num_gpu', 'datasets', 'network_g', 'path', 'train', 'logger'),
    'test': ('name', 'model_type', 'num_gpu', 'datasets', 'network_g', 'path', 'val'),
}


# Counts that BasicSR reads as integers, with their least valid value: (section, key) -> minimum.
INTEGER_OPTIONS = {
    ('logger', 'print_freq'): 1,
    ('logger', 'save_checkpoint_freq'): 1,
    ('train', 'total_iter'): 1,
    ('val', 'val_freq'): 1,
}
DATASET_INTEGERS = {'batch_size_per_gpu': 1, 'num_worker_per_gpu': 0, 'gt_size': 1, 'dataset_enlarge_ratio': 1}
GMMOE_INTEGERS = {'width': 1, 'middle_blk_num': 0, 'img_channel': 1}
GMMOE_TYPES = ('GMMoE', 'OURNet24', qualified('GMMoE'), qualified('OURNet24'))


def _check_integer(path, key, value, minimum):
    """``value`` must be an integer >= ``minimum``; YAML floats such as ``!!float 5e3`` count if integral."""
    if not is_integer(value, integral_float=True) or value < minimum:
        raise UserError(f'option file {path}: {key} must be an integer >= {minimum}, got {value!r}')


def check_option_types(path, opt):
    """One-line errors for the integer options BasicSR and GM-MoE would otherwise fail on deep inside."""
    for (section, key), minimum in INTEGER_OPTIONS.items():
        if isinstance(opt.get(section), dict) and key in opt[section]:
            _check_integer(path, f'{section}.{key}', opt[section][key], minimum)
    for phase, dataset in opt['datasets'].items():
        if not isinstance(dataset, dict):
            raise UserError(f'option file {path}: datasets.{phase} must be a mapping of dataset options')
        for key, minimum in DATASET_INTEGERS.items():
            if dataset.get(key) is not None:
                _check_integer(path, f'datasets.{phase}.{key}', dataset[key], minimum)
    net = opt['network_g']
    if not isinstance(net, dict) or 'type' not in net:
        raise UserError(f'option file {path}: network_g must be a mapping with a "type", e.g. {{type: GMMoE}}')
    if net['type'] in GMMOE_TYPES:
        for key, minimum in GMMOE_INTEGERS.items():
            if net.get(key) is not None:
                _check_integer(path, f'network_g.{key}', net[key], minimum)
        for key in ('enc_blk_nums', 'dec_blk_nums'):
            if net.get(key) is not None:
                if not isinstance(net[key], (list, tuple)):
                    raise UserError(
                        f'option file {path}: network_g.{key} must be a list of block counts, got {net[key]!r}'
                    )
                for i, value in enumerate(net[key]):
                    _check_integer(path, f'network_g.{key}[{i}]', value, 0)


def check_option_file(path, phase):
    """Read and sanity-check an option YAML; raise :class:`UserError` naming the file and key."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f'option file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise UserError(f'option file {path} is not valid YAML: {exc}') from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f'option file {path} cannot be read: {exc}') from exc
    if not isinstance(opt, dict):
        raise UserError(f'option file {path}: expected a mapping of options at the top level, got {type(opt).__name__}')
    missing = [k for k in REQUIRED_KEYS[phase] if k not in opt]
    if missing:
        raise UserError(f'option file {path}: missing key(s) {", ".join(missing)} (needed by basicsr {phase})')
    if not isinstance(opt['datasets'], dict) or not opt['datasets']:
        raise UserError(f'option file {path}: "datasets" must map phases (train, val, test_1, ...) to dataset options')
    num_gpu = opt['num_gpu']
    if num_gpu != 'auto':
        import torch

        if not is_integer(num_gpu) or num_gpu < 0:
            raise UserError(f'option file {path}: num_gpu must be "auto" or an integer >= 0, got {num_gpu!r}')
        if num_gpu > torch.cuda.device_count():
            raise UserError(
                f'option file {path}: num_gpu: {num_gpu} but this machine has '
                f'{torch.cuda.device_count()} CUDA device(s); use num_gpu: auto'
            )
    check_option_types(path, opt)
    try:
        option_checks.check_sections(opt, phase)
    except option_checks.OptionError as exc:
        raise UserError(f'option file {path}: {exc}') from None
    return opt


def check_registered(path, opt, phase):
    """:func:`gmmoe_arch.option_checks.check_registered` (after the plug-ins are loaded), as a :class:`UserError`."""
    try:
        option_checks.check_registered(opt, phase)
    except option_checks.OptionError as exc:
        raise UserError(f'option file {path}: {exc}') from None


def validate_option_file(path, phase):
    """Everything ``basicsr <phase>`` checks in an option file before it builds anything -> the options.

    Raises :class:`UserError` (one line naming the file and key); loads the plug-ins.
    """
    opt = check_option_file(path, phase)
    plugins = load_plugins()
    check_registered(path, opt, phase)
    return opt, plugins


def error_text(exc):
    """The message of an error from deep in BasicSR without its class name: a ``KeyError`` on a bare key
    (``opt['print_freq']``) says which key is missing."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        key = exc.args[0]
        return f'missing key {key}' if key.isidentifier() else key
    return str(exc)


def worker_message(exc):
    """The original message of an error re-raised from a DataLoader worker (which prepends a traceback)."""
    text = str(exc)
    if 'Original Traceback' not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(': ', 1)[1] if last.startswith(f'{type(exc).__module__}.{type(exc).__name__}: ') else last


def build_parser():
    parser = argparse.ArgumentParser(
        prog='basicsr',
        description='Run BasicSR training or testing from an option YAML, with gmmoe_arch and every '
        f'installed "{PLUGIN_GROUP}" plug-in registered. Output folders (experiments/, results/, '
        'tb_logger/) are created in the current directory.',
        epilog='Distributed: torchrun --nproc_per_node=N -m gmmoe_arch.cli train -opt X.yml --launcher pytorch',
    )
    sub = parser.add_subparsers(dest='phase', required=True, metavar='{train,test}')
    helps = {
        'train': 'train a model (basicsr.train.train_pipeline)',
        'test': 'test a model on the test datasets (basicsr.test.test_pipeline)',
    }
    for phase, text in helps.items():
        p = sub.add_parser(phase, help=text, description=text.capitalize() + '.')
        p.add_argument('-opt', required=True, metavar='FILE', help='path to the option YAML file')
        p.add_argument(
            '--launcher',
            choices=['none', 'pytorch', 'slurm'],
            default='none',
            help='job launcher: "pytorch" under torchrun (NCCL with GPUs, gloo without)',
        )
        p.add_argument(
            '--auto_resume',
            action='store_true',
            help='resume from the newest state in experiments/<name>/training_states',
        )
        p.add_argument('--debug', action='store_true', help="BasicSR's debug mode (name prefixed debug_)")
        p.add_argument(
            '--force_yml',
            nargs='+',
            default=None,
            metavar='KEY=VALUE',
            help='override options, e.g. train:total_iter=1000 (existing keys only)',
        )
        p.add_argument(
            '--local_rank',
            '--local-rank',
            type=int,
            default=0,
            help='set by torch.distributed.launch; torchrun uses LOCAL_RANK instead',
        )
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = compat.normalise_local_rank(argv)
    args = build_parser().parse_args(argv)
    try:
        _, plugins = validate_option_file(args.opt, args.phase)
        from gmmoe_arch import runtime

        runtime.configure_allocator()
        print(f'basicsr {args.phase}: plug-ins {", ".join(plugins)}; output under {os.getcwd()}', flush=True)
        sys.argv = [f'basicsr {args.phase}'] + argv[1:]
        if args.phase == 'train':
            from basicsr.train import train_pipeline as pipeline
        else:
            from basicsr.test import test_pipeline as pipeline
        try:
            pipeline(os.getcwd())
        finally:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    except UserError as exc:
        print(f'basicsr {args.phase}: error: {exc}', file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f'basicsr {args.phase}: stopped: {exc}', file=sys.stderr)
        return 3
    except compat.CheckpointWriteError as exc:
        print(
            f'basicsr {args.phase}: error: {exc.strerror}; training stopped (the checkpoints saved before '
            'are intact; free space, then resume with --auto_resume)',
            file=sys.stderr,
        )
        return 1
    except EnhanceError as exc:  # a checkpoint refused by compat.load_network (non-finite weights)
        print(f'basicsr {args.phase}: error: {exc}', file=sys.stderr)
        return 2
    except DataError as exc:
        if os.environ.get('GMMOE_TRACEBACK'):
            raise
        print(f'basicsr {args.phase}: data error: {worker_message(exc)}', file=sys.stderr)
        return 2
    except (KeyError, ValueError, FileNotFoundError, NotImplementedError) as exc:
        if os.environ.get('GMMOE_TRACEBACK'):
            raise
        print(
            f'basicsr {args.phase}: error in option file {args.opt}: {error_text(exc)} '
            '(GMMOE_TRACEBACK=1 shows the traceback)',
            file=sys.stderr,
        )
        return 2
    return 0


#: the lines of a training or test log that :func:`run_logged` echoes (progress, validation, gate weights, errors)
PROGRESS_LINES = ('] [eta', 'Validation', '# psnr', '# ssim', 'Gate weights', 'all blocks', 'Error', 'error:')


def run_logged(phase, opt_file, cwd, log_path, env, shown=PROGRESS_LINES):
    """Run ``basicsr <phase> -opt <opt_file>`` (this module, in a subprocess) in ``cwd`` with ``env``; echo the
    lines that hold one of ``shown``, keep the full log at ``log_path``; return the seconds it took.
    ``SystemExit`` naming the log when it fails (the demo drivers' way to stop)."""
    import subprocess
    import time

    cmd = [sys.executable, '-m', 'gmmoe_arch.cli', phase, '-opt', opt_file]
    print(f'$ basicsr {phase} -opt {os.path.relpath(opt_file)}  (in {cwd}; full log {log_path})', flush=True)
    start = time.monotonic()
    with open(log_path, 'w', encoding='utf-8') as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if any(key in line for key in shown):
                print('  ' + line.rstrip()[-150:], flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f'basicsr {phase} failed (exit code {code}); see {log_path}')
    return time.monotonic() - start


if __name__ == '__main__':
    sys.exit(main())
