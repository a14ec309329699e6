"""Compatibility layer: makes upstream basicsr 1.4.2 run on torch 2.x, torchvision 0.2x and numpy 2.x.

This is the only place in the project that changes basicsr's behaviour. basicsr itself is neither
edited nor vendored: each patch below replaces one upstream function at import time, names the
upstream symptom it fixes, and is applied only when the installed basicsr still shows that symptom
(checked on the upstream source, so a fixed basicsr release is left alone).

Patches (see each function's docstring):

* ``functional_tensor``: ``torchvision.transforms.functional_tensor`` was removed in torchvision
  0.17; ``basicsr.data.degradations`` imports ``rgb_to_grayscale`` from it, so ``import basicsr``
  fails with ``ModuleNotFoundError``.
* ``load_resume_state``: ``basicsr.train.load_resume_state`` maps the state onto
  ``torch.cuda.current_device()`` (fails on CPU-only machines) and unpickles it with torch's default
  ``weights_only=True``, which rejects the ``collections.Counter`` that ``MultiStepRestartLR`` keeps.
* ``init_dist``: ``basicsr.utils.dist_util.init_dist`` hard-codes the NCCL backend and
  ``torch.cuda.set_device``, so distributed runs without GPUs cannot start.
* ``model_to_device``: ``BaseModel.model_to_device`` wraps DDP with a CUDA ``device_ids``, which
  fails for CPU (gloo) runs.
* ``local-rank``: ``python -m torch.distributed.launch`` (torch >= 2.0) passes ``--local-rank=N``;
  basicsr's ``parse_options`` only knows ``--local_rank`` and exits with an argparse error.

The experiment folders: basicsr's own ``train.py`` puts ``experiments/`` next to its package
(inside site-packages once installed). That is not patched here; the ``basicsr`` command of this
project passes the current working directory as ``root_path`` to the unchanged pipelines.

``apply()`` is idempotent and is called by ``import gmmoe_arch``. ``APPLIED`` lists what it did.
"""
import collections
import importlib
import inspect
import os
import sys
import types

APPLIED = []


def _source(obj):
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ''


def _patch_functional_tensor():
    """Provide ``torchvision.transforms.functional_tensor`` where torchvision no longer has it."""
    try:
        importlib.import_module('torchvision.transforms.functional_tensor')
        return False
    except ImportError:
        pass
    from torchvision.transforms import functional

    shim = types.ModuleType('torchvision.transforms.functional_tensor')
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    shim.__doc__ = 'gmmoe_arch.compat: stand-in for the module removed in torchvision 0.17.'
    sys.modules[shim.__name__] = shim
    return True


def resume_map_location(storage, loc):
    """Map a resume state onto this process's device: its GPU when it has one, else the CPU."""
    import torch
    if torch.cuda.is_available():
        return storage.cuda(torch.cuda.current_device())
    return storage


def load_resume_state(opt):
    """``basicsr.train.load_resume_state`` that works on CPU and with torch's safe unpickler.

    Same semantics as upstream: with ``auto_resume`` the newest ``<iter>.state`` in
    ``training_states`` wins, otherwise ``path.resume_state``; ``check_resume`` then points the
    networks at the matching checkpoints. Unlike upstream, ``auto_resume`` skips a newest state that
    cannot be read (a run killed while saving it) and takes the previous one. The state is one this
    project wrote itself; it is still loaded with ``weights_only=True``, allowing only
    ``collections.Counter`` besides tensors.
    """
    import torch
    from basicsr.utils import check_resume

    if opt['auto_resume']:
        folder = opt['path'].get('training_states', os.path.join('experiments', opt['name'], 'training_states'))
        iters = []
        if os.path.isdir(folder):
            iters = sorted((int(f[:-len('.state')]) for f in os.listdir(folder)
                            if f.endswith('.state') and f[:-len('.state')].isdigit()), reverse=True)
        candidates = [os.path.join(folder, f'{it}.state') for it in iters]
    elif opt['path'].get('resume_state'):
        candidates = [opt['path']['resume_state']]
        if not os.path.isfile(candidates[0]):
            raise FileNotFoundError(f'path.resume_state: no such file: {candidates[0]}')
    else:
        candidates = []
    state = None
    for state_path in candidates:
        try:
            with torch.serialization.safe_globals([collections.Counter]):
                state = torch.load(state_path, map_location=resume_map_location, weights_only=True)
            break
        except Exception as exc:  # a run killed while saving leaves a truncated newest state
            if not opt['auto_resume']:
                raise ValueError(f'path.resume_state: cannot read {state_path}: {exc}') from exc
            print(f'auto_resume: skipping unreadable {state_path} ({type(exc).__name__}); trying an older one',
                  flush=True)
    if state is None:
        if candidates:
            raise ValueError(f'--auto_resume: none of the states in {os.path.dirname(candidates[0])} can be read')
        return None
    opt['path']['resume_state'] = state_path
    check_resume(opt, state['iter'])
    return state


def init_dist(launcher, backend=None, **kwargs):
    """``basicsr.utils.dist_util.init_dist`` choosing NCCL with GPUs and gloo without them.

    ``launcher='pytorch'`` reads torchrun's environment (``LOCAL_RANK`` picks the GPU, so multi-node
    runs are correct); ``'slurm'`` is delegated to upstream when GPUs exist.
    """
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from basicsr.utils import dist_util

    cuda = torch.cuda.is_available()
    backend = backend or ('nccl' if cuda else 'gloo')
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if launcher == 'pytorch':
        if cuda:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
        dist.init_process_group(backend=backend, **kwargs)
    elif launcher == 'slurm' and cuda:
        dist_util._init_dist_slurm(backend, **kwargs)
    else:
        raise ValueError(f'--launcher {launcher}: unsupported here (use "pytorch", i.e. torchrun; '
                         'slurm needs GPUs)')


def model_to_device(self, net):
    """``BaseModel.model_to_device`` that wraps DDP without ``device_ids`` on the CPU."""
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    net = net.to(self.device)
    if self.opt['dist']:
        find_unused = self.opt.get('find_unused_parameters', False)
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def normalise_local_rank(argv):
    """Rewrite ``--local-rank`` (torch.distributed.launch >= 2.0) to basicsr's ``--local_rank``."""
    out = []
    for arg in argv:
        if arg == '--local-rank' or arg.startswith('--local-rank='):
            arg = '--local_rank' + arg[len('--local-rank'):]
        out.append(arg)
    return out


def _wrap_parse_options(parse_options):

    def parse_options_compat(root_path, is_train=True):
        sys.argv[:] = normalise_local_rank(sys.argv)
        return parse_options(root_path, is_train=is_train)

    parse_options_compat.__wrapped__ = parse_options
    parse_options_compat.__doc__ = ('basicsr parse_options that also accepts --local-rank. '
                                    + (parse_options.__doc__ or ''))
    return parse_options_compat


def apply():
    """Apply every patch whose upstream symptom is present. Safe to call more than once."""
    if APPLIED:
        return list(APPLIED)
    done = []
    if _patch_functional_tensor():
        done.append('functional_tensor')

    import basicsr.test
    import basicsr.train
    from basicsr.models import base_model
    from basicsr.utils import dist_util, options

    upstream = basicsr.train.load_resume_state
    if 'current_device' in _source(upstream) or 'weights_only' not in _source(upstream):
        basicsr.train.load_resume_state = load_resume_state
        done.append('load_resume_state')

    if 'nccl' in _source(dist_util.init_dist) and 'is_available' not in _source(dist_util._init_dist_pytorch):
        dist_util.init_dist = init_dist
        options.init_dist = init_dist
        done.append('init_dist')

    if 'current_device' in _source(base_model.BaseModel.model_to_device):
        base_model.BaseModel.model_to_device = model_to_device
        done.append('model_to_device')

    if '--local-rank' not in _source(options.parse_options):
        wrapped = _wrap_parse_options(options.parse_options)
        for module in (options, basicsr.train, basicsr.test):
            module.parse_options = wrapped
        done.append('local-rank')

    APPLIED.extend(done or ['none needed'])
    return list(APPLIED)
