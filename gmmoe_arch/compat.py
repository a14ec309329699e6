"""Compatibility layer: makes upstream basicsr 1.4.2 run on torch 2.x, torchvision 0.2x and numpy 2.x.

This is the only place in the project that changes basicsr's behaviour. basicsr itself is neither
edited nor vendored: each patch below replaces one upstream function at import time, names the
upstream symptom it fixes, and is applied only when the installed basicsr still shows that symptom
(checked on the upstream source, so a fixed basicsr release is left alone).

Patches (see each function's docstring):

* ``functional_tensor``: ``torchvision.transforms.functional_tensor`` was removed in torchvision
  0.17; ``basicsr.data.degradations`` imports ``rgb_to_grayscale`` from it, so ``import basicsr``
  fails with ``ModuleNotFoundError``. The stand-in lives in the start-up hook ``gmmoe_basicsr_hook``
  (installed with this package, it supplies the module while basicsr imports, and only then); this
  patch imports basicsr within the hook's ``FunctionalTensorForBasicsr`` for interpreters without the hook.
* ``load_resume_state``: ``basicsr.train.load_resume_state`` maps the state onto
  ``torch.cuda.current_device()`` (fails on CPU-only machines) and unpickles it with torch's default
  ``weights_only=True``, which rejects the ``collections.Counter`` that ``MultiStepRestartLR`` keeps.
  ``--auto_resume`` also takes the newest *intact* state + network pair instead of a damaged newest one.
* ``atomic checkpoints``: ``BaseModel.save_network`` / ``save_training_state`` write in place and, when
  the write fails (a full disk), log "Just ignore it" and go on, so training reports success with zero-byte
  checkpoints. Here they write to a temporary file, fsync and rename, and raise :class:`CheckpointWriteError`.
* ``load_network weights_only``: ``BaseModel.load_network`` calls ``torch.load`` without ``weights_only``, so
  under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (or torch < 2.6) a hostile checkpoint runs code. Here it goes
  through :func:`gmmoe_arch.checkpoint_trust.load_checkpoint` (numpy values allowed, other globals only in
  files the user trusts via the option ``trusted_checkpoints`` or ``GMMOE_TRUSTED_CHECKPOINTS``).
* ``build_dataloader full batches``: ``train_pipeline`` plans ``ceil(samples / batch)`` iterations per
  epoch but the loader drops the last partial batch, so training ends short of ``total_iter`` (a
  2,000,000-iteration recipe near 1,983,800). The training sampler is padded to whole batches
  (:class:`FullBatchSampler`), and a dataset smaller than one batch is an error naming both numbers.
* ``safe Counter``: ``collections.Counter`` (kept by ``MultiStepRestartLR``) is added to torch's safe
  globals, so even upstream's own resume (``python -m basicsr.train``, which no patch reaches) reads it.
* ``init_dist``: ``basicsr.utils.dist_util.init_dist`` hard-codes the NCCL backend and
  ``torch.cuda.set_device``, so distributed runs without GPUs cannot start.
* ``model_to_device``: ``BaseModel.model_to_device`` wraps DDP with a CUDA ``device_ids``, which
  fails for CPU (gloo) runs.
* ``local-rank``: ``python -m torch.distributed.launch`` (torch >= 2.0) passes ``--local-rank=N``;
  basicsr's ``parse_options`` only knows ``--local_rank`` and exits with an argparse error.
* ``message logger eta``: ``MessageLogger`` estimates the time left as ``avg * (max_iters - iter - 1)``, one
  iteration too few, so the log line of the last iteration (and of any iteration past ``total_iter``, e.g.
  after resuming with a smaller one) reads ``eta: -1 day, 23:59:56``. Here the count left is
  ``max(max_iters - iter, 0)``: the last line reads ``eta: 0:00:00``.

* ``jpeg quality int``: ``basicsr.data.degradations.add_jpg_compression`` passes its quality (a float from
  ``random_add_jpg_compression``'s ``np.random.uniform``) to ``cv2.imencode``, which current opencv-python
  rejects (``Can't parse 'params'``; measured with 4.6.0, 4.14.0 and 5.1.0), so GFPGAN-style degradation
  pipelines fail at their first sample. Applied where this opencv refuses a float quality.

The experiment folders: basicsr's own ``train.py`` puts ``experiments/`` next to its package
(inside site-packages once installed). That is not patched here; the ``basicsr`` command of this
project passes the current working directory as ``root_path`` to the unchanged pipelines.

``apply()`` is idempotent and is called by ``import gmmoe_arch`` and, at ``import basicsr``, by the start-up
hook, which loads this module without the rest of the package (so nothing is registered): this module must
import nothing of ``gmmoe_arch``. ``APPLIED`` lists what it did.
"""

import collections
import contextlib
import errno
import inspect
import os
import sys
import tempfile
import zipfile
from collections import OrderedDict

APPLIED = []


def _source(obj):
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ''


def _patch_functional_tensor():
    """A context manager within which ``torchvision.transforms.functional_tensor`` imports, and only there.

    ``with`` gives True when torchvision lacks the module and the stand-in was supplied for the block (see
    ``gmmoe_basicsr_hook.FunctionalTensorForBasicsr``); afterwards the module is gone again.
    """
    import gmmoe_basicsr_hook

    return gmmoe_basicsr_hook.FunctionalTensorForBasicsr()


def resume_map_location(storage, loc):
    """Map a resume state onto this process's device: its GPU when it has one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return storage.cuda(torch.cuda.current_device())
    return storage


def checkpoint_is_intact(path):
    """True when ``path`` is a complete torch zip checkpoint (every member's CRC checks), without unpickling.

    A run killed while writing, or a disk that filled up, leaves a file that fails here; reading the
    members is far cheaper than loading the tensors.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _resume_weights(opt, resume_iter):
    """The ``net_<name>_<iter>.pth`` files that resuming at ``resume_iter`` loads (as ``check_resume`` sets them)."""
    ignored = opt['path'].get('ignore_resume_networks') or []
    return [
        os.path.join(opt['path']['models'], f'net_{key[len("network_") :]}_{resume_iter}.pth')
        for key in opt
        if key.startswith('network_') and key not in ignored
    ]


def load_resume_state(opt):
    """``basicsr.train.load_resume_state`` that works on CPU and with torch's safe unpickler.

    Same semantics as upstream: with ``auto_resume`` the newest ``<iter>.state`` in
    ``training_states`` wins, otherwise ``path.resume_state``; ``check_resume`` then points the
    networks at the matching checkpoints. Unlike upstream, ``auto_resume`` takes the newest state
    whose state file and network checkpoints are all intact (a run killed while saving, or a full
    disk, leaves a damaged newest pair) and says which it skipped. The state is loaded with
    ``weights_only=True`` whatever torch's default, allowing only ``collections.Counter`` besides tensors.
    """
    import torch
    from basicsr.utils import check_resume

    if opt['auto_resume']:
        folder = opt['path'].get('training_states', os.path.join('experiments', opt['name'], 'training_states'))
        iters = []
        if os.path.isdir(folder):
            iters = sorted(
                (
                    int(f[: -len('.state')])
                    for f in os.listdir(folder)
                    if f.endswith('.state') and f[: -len('.state')].isdigit()
                ),
                reverse=True,
            )
        candidates = [(os.path.join(folder, f'{it}.state'), it) for it in iters]
    elif opt['path'].get('resume_state'):
        candidates = [(opt['path']['resume_state'], None)]
        if not os.path.isfile(candidates[0][0]):
            raise FileNotFoundError(f'path.resume_state: no such file: {candidates[0][0]}')
    else:
        candidates = []
    state = None
    for state_path, it in candidates:
        damaged = [
            f
            for f in ([state_path] + (_resume_weights(opt, it) if it is not None else []))
            if not checkpoint_is_intact(f)
        ]
        if damaged and opt['auto_resume']:
            print(
                f'auto_resume: skipping iteration {it}: {", ".join(damaged)} missing or damaged; trying an older one',
                flush=True,
            )
            continue
        try:
            with torch.serialization.safe_globals([collections.Counter]):
                state = torch.load(state_path, map_location=resume_map_location, weights_only=True)
            break
        except Exception as exc:  # damaged in a way the zip check cannot see, or not a state at all
            if not opt['auto_resume']:
                raise ValueError(f'path.resume_state: cannot read {state_path}: {exc}') from exc
            print(
                f'auto_resume: skipping unreadable {state_path} ({type(exc).__name__}); trying an older one', flush=True
            )
    if state is None:
        if candidates:
            raise ValueError(f'--auto_resume: no intact state + network pair in {os.path.dirname(candidates[0][0])}')
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
        raise ValueError(f'--launcher {launcher}: unsupported here (use "pytorch", i.e. torchrun; slurm needs GPUs)')


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


class CheckpointWriteError(OSError):
    """A network or training-state checkpoint could not be written; training must not go on as if it had."""


# Errors that waiting cannot cure: fail at once instead of retrying as upstream does.
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def _os_error_in_chain(exc):
    """The first ``OSError`` among ``exc``'s causes and contexts, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_torch_save(obj, path):
    """``torch.save(obj, path)`` through a temporary file in the same folder, flushed, fsynced and renamed.

    Readers see the old file or the complete new one, never a partial write. Raises ``OSError`` (the
    temporary file removed) when writing fails, e.g. on a full disk.
    """
    import torch

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, RuntimeError):  # torch's zip writer reports a failed write as "unexpected pos"
            cause = _os_error_in_chain(exc)
            raise OSError(
                cause.errno if cause else errno.EIO, cause.strerror if cause else f'torch.save failed: {exc}'
            ) from exc
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(obj, path, what, retries=3):
    """Write a checkpoint atomically, retrying transient errors; raise :class:`CheckpointWriteError`."""
    import time

    for attempt in range(1, retries + 1):
        try:
            atomic_torch_save(obj, path)
            return
        except OSError as exc:
            if exc.errno in _PERMANENT_ERRNOS or attempt == retries:
                raise CheckpointWriteError(exc.errno, f'cannot write {what} {path}: {exc.strerror or exc}') from exc
            time.sleep(1)


def save_network(self, net, net_label, current_iter, param_key='params'):
    """``BaseModel.save_network`` that writes atomically and raises when the write fails.

    Upstream retries three times, logs a warning and carries on, so a full disk ends in "End of
    training" with zero-byte checkpoints.
    """
    label = 'latest' if current_iter == -1 else current_iter
    path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
    nets = net if isinstance(net, list) else [net]
    keys = param_key if isinstance(param_key, list) else [param_key]
    if len(nets) != len(keys):
        raise ValueError(f'save_network: {len(nets)} network(s) but {len(keys)} param key(s)')
    save_dict = {}
    for net_, key in zip(nets, keys):
        state = self.get_bare_model(net_).state_dict()
        save_dict[key] = {(k[len('module.') :] if k.startswith('module.') else k): v.cpu() for k, v in state.items()}
    save_checkpoint(save_dict, path, 'network checkpoint')


def save_training_state(self, epoch, current_iter):
    """``BaseModel.save_training_state`` that writes atomically and raises when the write fails."""
    if current_iter == -1:
        return
    state = {
        'epoch': epoch,
        'iter': current_iter,
        'optimizers': [o.state_dict() for o in self.optimizers],
        'schedulers': [s.state_dict() for s in self.schedulers],
    }
    save_checkpoint(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'), 'training state')


TRUSTED_OPTION = 'trusted_checkpoints'


def trusted_checkpoints(opt):
    """The files and folders an option file trusts: top-level ``trusted_checkpoints`` (a path or a list of paths).

    Not under ``path``: BasicSR's ``make_exp_dirs`` creates a folder for every ``path`` key it does not know,
    and ``parse_options`` expands the value of every key naming ``pretrain_network`` as one path.
    """
    listed = opt.get(TRUSTED_OPTION) or []
    return [listed] if isinstance(listed, str) else list(listed)


def load_network(self, net, load_path, strict=True, param_key='params'):
    """``BaseModel.load_network`` that unpickles with ``weights_only=True`` whatever torch's default.

    Upstream calls ``torch.load`` without ``weights_only``: under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
    or torch < 2.6 a hostile checkpoint runs code. Errors name the file. Numpy scalars, dtypes and arrays
    are accepted; a file holding other objects loads only when trusted (the option ``trusted_checkpoints`` or
    ``GMMOE_TRUSTED_CHECKPOINTS``, see :mod:`gmmoe_arch.checkpoint_trust`), else one error names the
    file, the refused global and both ways to trust it. A checkpoint with a NaN or inf
    weight is refused before it is loaded (``gmmoe_arch.inference.loading.check_finite_state_dict``).
    """
    from basicsr.utils import get_root_logger

    from .checkpoint_trust import UntrustedCheckpointError, load_checkpoint

    logger = get_root_logger()
    net = self.get_bare_model(net)
    if not os.path.isfile(load_path):
        raise FileNotFoundError(f'network checkpoint not found: {load_path}')
    try:
        loaded = load_checkpoint(
            load_path,
            trusted=trusted_checkpoints(self.opt),
            what='cannot load network checkpoint',
            opt_in=f'list it in {TRUSTED_OPTION} of the option file',
        )
    except UntrustedCheckpointError:
        raise
    except Exception as exc:
        raise ValueError(
            f'cannot load network checkpoint {load_path} (damaged, or holds more than tensors; '
            f'only weights are accepted): {type(exc).__name__}: {str(exc).splitlines()[0]}'
        ) from exc
    if param_key is not None:
        if isinstance(loaded, dict) and param_key not in loaded and 'params' in loaded:
            logger.info('Loading: params_ema does not exist, use params.')
            param_key = 'params'
        if not isinstance(loaded, dict) or param_key not in loaded:
            raise ValueError(f'network checkpoint {load_path} has no "{param_key}" entry')
        loaded = loaded[param_key]
    logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
    loaded = OrderedDict((k[len('module.') :] if k.startswith('module.') else k, v) for k, v in loaded.items())
    from gmmoe_arch.inference.loading import check_finite_state_dict

    check_finite_state_dict(loaded, load_path)  # EnhanceError naming the file and the first non-finite tensor
    self._print_different_keys_loading(net, loaded, strict)
    net.load_state_dict(loaded, strict=strict)


class FullBatchSampler:
    """A training sampler padded to whole batches, so the loader yields the iterations BasicSR planned.

    ``train_pipeline`` plans ``ceil(len(sampler) / batch_size_per_gpu)`` iterations per epoch, but its
    loader drops the last partial batch, so training ends short of ``total_iter``. Each epoch this yields
    the wrapped sampler's order and then repeats its start until ``num_batches`` batches of
    ``batch_size`` are full. ``set_epoch`` reaches the wrapped sampler, which train.py holds directly.
    """

    def __init__(self, sampler, batch_size, num_batches):
        self.sampler, self.batch_size, self.num_batches = sampler, batch_size, num_batches

    def __iter__(self):
        order = list(self.sampler)
        need = self.batch_size * self.num_batches
        return iter((order * -(-need // len(order)))[:need])

    def __len__(self):
        return self.batch_size * self.num_batches


def _wrap_build_dataloader(build_dataloader):

    def build_dataloader_compat(dataset, dataset_opt, num_gpu=1, dist=False, sampler=None, seed=None):
        if dataset_opt.get('phase') != 'train' or sampler is None:
            return build_dataloader(dataset, dataset_opt, num_gpu=num_gpu, dist=dist, sampler=sampler, seed=seed)
        per_gpu = dataset_opt['batch_size_per_gpu']
        batch = per_gpu if dist else per_gpu * max(1, num_gpu)
        ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
        if len(sampler) < per_gpu:
            replicas = getattr(sampler, 'num_replicas', 1)
            raise ValueError(
                f'datasets.train: {len(dataset)} training sample(s) x dataset_enlarge_ratio {ratio} over '
                f'{replicas} process(es) give {len(sampler)} per process, fewer than one batch '
                f'(batch_size_per_gpu: {per_gpu}); lower batch_size_per_gpu or add data'
            )
        padded = FullBatchSampler(sampler, batch, -(-len(sampler) // per_gpu))
        return build_dataloader(dataset, dataset_opt, num_gpu=num_gpu, dist=dist, sampler=padded, seed=seed)

    build_dataloader_compat.__wrapped__ = build_dataloader
    build_dataloader_compat.__doc__ = (
        'basicsr build_dataloader whose training loader yields exactly the '
        'planned iterations (see FullBatchSampler). ' + (build_dataloader.__doc__ or '')
    )
    return build_dataloader_compat


def normalise_local_rank(argv):
    """Rewrite ``--local-rank`` (torch.distributed.launch >= 2.0) to basicsr's ``--local_rank``."""
    out = []
    for arg in argv:
        if arg == '--local-rank' or arg.startswith('--local-rank='):
            arg = '--local_rank' + arg[len('--local-rank') :]
        out.append(arg)
    return out


def _wrap_parse_options(parse_options):

    def parse_options_compat(root_path, is_train=True):
        sys.argv[:] = normalise_local_rank(sys.argv)
        return parse_options(root_path, is_train=is_train)

    parse_options_compat.__wrapped__ = parse_options
    parse_options_compat.__doc__ = 'basicsr parse_options that also accepts --local-rank. ' + (
        parse_options.__doc__ or ''
    )
    return parse_options_compat


def jpeg_rejects_float_quality():
    """True when this opencv's ``cv2.imencode`` refuses a float ``IMWRITE_JPEG_QUALITY``."""
    import cv2
    import numpy as np

    try:
        cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8), [int(cv2.IMWRITE_JPEG_QUALITY), 95.0])
    except cv2.error:
        return True
    return False


def add_jpg_compression(img, quality=90):
    """``basicsr.data.degradations.add_jpg_compression`` that gives opencv an integer quality.

    ``quality`` is truncated (``int``), so ``random_add_jpg_compression(img, (30, 95))`` draws 30 to 94. The
    image goes to the encoder as uint8, rounded to nearest (even): the bytes opencv itself encodes from the
    float image, without its "Unsupported depth image ... fallbacked to CV_8U" warning on every call.
    ``img``: ``(h, w, c)`` float in [0, 1]; returns the decoded image, float32 in [0, 1], as upstream.
    """
    import cv2
    import numpy as np

    img = np.clip(img, 0, 1)
    pixels = np.rint(img * 255.0).astype(np.uint8)
    _, encoded = cv2.imencode('.jpg', pixels, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    return np.float32(cv2.imdecode(encoded, 1)) / 255.0


def _patch_jpeg_quality():
    """Install :func:`add_jpg_compression` where upstream passes a float quality and opencv refuses it."""
    from basicsr.data import degradations

    if 'int(quality)' in _source(degradations.add_jpg_compression) or not jpeg_rejects_float_quality():
        return False
    degradations.add_jpg_compression = add_jpg_compression
    return True


def _wrap_message_logger_call(call):

    def message_logger_call(self, log_vars):
        left = max(self.max_iters - log_vars['iter'], 0)
        total = self.max_iters
        self.max_iters = log_vars['iter'] + 1 + left  # upstream's ETA counts max_iters - iter - 1 iterations left
        try:
            return call(self, log_vars)
        finally:
            self.max_iters = total

    message_logger_call.__wrapped__ = call
    message_logger_call.__doc__ = 'basicsr MessageLogger.__call__ whose ETA is never negative. ' + (call.__doc__ or '')
    return message_logger_call


def _eta_goes_negative(message_logger_cls):
    """True when ``MessageLogger`` still counts ``max_iters - current_iter - 1`` iterations left, unclamped
    (and is not wrapped here already: ``inspect`` reads the source through ``__wrapped__``)."""
    call = message_logger_cls.__call__
    source = _source(call)
    return (
        call.__name__ != 'message_logger_call'
        and 'self.max_iters - current_iter - 1' in source
        and 'max(' not in source
    )


def apply():
    """Apply every patch whose upstream symptom is present. Safe to call more than once."""
    if APPLIED:
        return list(APPLIED)
    done = []
    with _patch_functional_tensor() as supplied:
        import basicsr.test
        import basicsr.train
    if supplied:
        done.append('functional_tensor')
    import torch

    # MultiStepRestartLR keeps a Counter in its state: allowing it lets upstream's own loader (the copy
    # that `python -m basicsr.train` runs, which no patch reaches) read a resume state under weights_only.
    if collections.Counter not in torch.serialization.get_safe_globals():
        torch.serialization.add_safe_globals([collections.Counter])
        done.append('safe Counter')
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

    model_cls = base_model.BaseModel
    if 'ignore it' in _source(model_cls.save_network) or 'ignore it' in _source(model_cls.save_training_state):
        model_cls.save_network = dist_util.master_only(save_network)
        model_cls.save_training_state = dist_util.master_only(save_training_state)
        done.append('atomic checkpoints')

    if 'weights_only' not in _source(model_cls.load_network):
        model_cls.load_network = load_network
        done.append('load_network weights_only')

    import basicsr.data

    if 'drop_last=True' in _source(basicsr.data.build_dataloader) and 'ceil' in _source(basicsr.train):
        wrapped = _wrap_build_dataloader(basicsr.data.build_dataloader)
        for module in (basicsr.data, basicsr.train):
            module.build_dataloader = wrapped
        done.append('build_dataloader full batches')

    if _patch_jpeg_quality():
        done.append('jpeg quality int')

    from basicsr.utils import logger

    if _eta_goes_negative(logger.MessageLogger):
        logger.MessageLogger.__call__ = _wrap_message_logger_call(logger.MessageLogger.__call__)
        done.append('message logger eta')

    APPLIED.extend(done or ['none needed'])
    return list(APPLIED)
