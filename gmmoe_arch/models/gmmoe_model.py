"""GMMoEModel: BasicSR's ``SRModel`` plus what GM-MoE training needs and SRModel lacks.

Options added under ``train`` (everything else is SRModel's: EMA, schedulers, validation, save/resume):

* ``optim_g.type``: any optimiser class of ``torch.optim`` by name (``AdamW``, ``Adam``, ``SGD``, ...).
* ``grad_clip``: ``{max_norm: 0.5, norm_type: 2}`` (or just the max norm) clips the gradient norm.
* ``use_amp`` / ``amp_dtype``: autocast of the forward pass in ``bf16`` (CPU or CUDA) or ``fp16``
  (with a ``GradScaler``).
* ``compile``: ``true`` (or a dict of ``torch.compile`` arguments) compiles ``net_g`` in place.
  Never on by default: the first iterations then take minutes.

On resume, ``optim_g`` and ``scheduler`` settings of the option file (the lr, milestones, gamma, periods...)
that differ from the training state's take effect and are logged; see :mod:`.resume_options`.

A NaN or infinite loss stops training with :class:`TrainingDivergedError` before the broken step
reaches the weights; a step that leaves non-finite weights stops it right after. Before every save, the
weights and the network's output on the current batch are checked finite, so no checkpoint of a diverged
network is written or named good; the checkpoints saved before stay as they were.

BasicSR saves ``net_g_<iter>.pth`` every ``save_checkpoint_freq`` iterations and ``net_g_latest.pth`` at
the end; when ``total_iter`` is not a multiple of the frequency, the end also saves ``net_g_<total_iter>.pth``.
The network's structure (hundreds of lines) goes to the log file only; the console gets its one-line summary.

Routing options (see ``docs/training.md``):

* ``gate_opt``: ``{type: GateRoutingLoss, loss_weight: w, experts: {label: ExpertName or [names]}}`` adds
  ``l_gate``, gate supervision by the training batches' degradation labels (``data['label']``, one per
  image, or ``data['label_map']``, ``(B, H, W)`` degradation indices per pixel, used when present); off
  when absent. The training dataset must give labels.
* ``balance_opt``: a load-balancing loss on the gates, ``l_balance``, or a list of them (summed), each a
  ``GateBalanceLoss`` or subclass: ``GateLoadLoss`` (Shazeer's load), ``CostWeightedBalanceLoss``. With
  ``network_g.gate_top_k`` or ``gate_schedule`` set it defaults to ``{type: GateBalanceLoss, loss_weight: 0.01}``;
  ``false`` turns it off; given without top-k, it is used as given. With top-k under DDP,
  ``find_unused_parameters`` is set for the wrapper.
* ``gate_schedule``: ``{top_k: [k0, k1], temperature: [t0, t1], start_iter: s, end_iter: e}`` (either of
  ``top_k`` / ``temperature``), dense-to-sparse fine-tuning: before every iteration the network's
  ``gate_top_k`` and the released gate's temperature are set to the values at that iteration, linear from
  the first at ``start_iter`` to the second at ``end_iter`` and held after (``k`` rounded; ``k`` equal to
  the number of experts: dense). A function of the iteration only, so a resumed training picks it up; see
  :class:`GateSchedule`.

Both run the training forward under ``record_gates(net, keep_grad=True)`` (and ``record_loads`` for
``GateLoadLoss``); without them nothing is recorded.

Validation and testing also log each expert's gate weight averaged over the images, per expert
block and over all blocks (log file and TensorBoard ``gates/<dataset>/...``), the same per degradation
label when the dataset gives labels (``gates/<dataset>/<label>/...``), and write a figure
(``<visualization>/gates/<dataset>_<iter>.png`` in training, ``<results>/gates_<dataset>.png`` in
``basicsr test``; one panel per label) with its numbers as JSON beside it (see :mod:`.gate_stats`). With a
per-pixel gate (``SpatialGate``) they also write the routing maps of the first :data:`ROUTING_MAPS` images
(which expert wins where, :mod:`gmmoe_arch.evaluation.routing_map`) into ``<that stem>_routing/<image>.png``.
"""

import logging
import os
from collections import OrderedDict
from contextlib import nullcontext

import torch
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY

from ..archs.gmmoe_arch import expert_names, record_gates, record_loads
from ..archs.routing import pad_label_map
from ..losses.gate_losses import EXPERTS_OPTION, GateBalanceLoss, GateLoadLoss, GateRoutingLoss
from ..options import is_number
from ..registry import qualified, register
from .gate_schedule import GateSchedule
from .gate_stats import GateStats, save_gate_figure, save_gate_json
from .resume_options import resume_with_options

ROUTING_MAPS = 3  # validation images per dataset whose routing maps are written (per-pixel gates)

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
DEFAULT_BALANCE = {'type': qualified('GateBalanceLoss'), 'loss_weight': 0.01}  # ours, whoever holds the plain name
GATE_EXAMPLE = '{type: GateRoutingLoss, loss_weight: 0.1, experts: {rain: RainExpert, ...}}'
BALANCE_EXAMPLE = '{type: GateBalanceLoss, loss_weight: 0.01}, a list of such, true or false'


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; training stopped without saving that state."""


def torch_optimizers():
    """Names of the optimiser classes in ``torch.optim``."""
    base = torch.optim.Optimizer
    return sorted(
        name
        for name, obj in vars(torch.optim).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base
    )


def parse_grad_clip(value):
    """``train.grad_clip`` -> ``{'max_norm': float, 'norm_type': float}`` or None when unset."""
    if value is None or value is False:
        return None
    if is_number(value):
        value = {'max_norm': value}
    if not isinstance(value, dict) or 'max_norm' not in value:
        raise ValueError(f'train.grad_clip: expected a number or {{max_norm: ..., norm_type: 2}}, got {value!r}')
    unknown = set(value) - {'max_norm', 'norm_type'}
    if unknown:
        raise ValueError(f'train.grad_clip: unknown key(s) {", ".join(sorted(unknown))} (known: max_norm, norm_type)')
    try:
        clip = {'max_norm': float(value['max_norm']), 'norm_type': float(value.get('norm_type', 2.0))}
    except (TypeError, ValueError) as exc:
        raise ValueError(f'train.grad_clip: max_norm and norm_type must be numbers, got {value!r}') from exc
    if not clip['max_norm'] > 0:
        raise ValueError(f'train.grad_clip.max_norm must be > 0, got {clip["max_norm"]}')
    return clip


@register(MODEL_REGISTRY)
class GMMoEModel(SRModel):
    """``SRModel`` with any ``torch.optim`` optimiser, gradient clipping, AMP, opt-in compile, a NaN stop
    and gate-weight logging (see the module docstring for the options)."""

    def __init__(self, opt):
        self.trained_iter = None
        self.amp_dtype = None
        self.grad_clip = None
        self.cri_gate = None
        self.cri_balance = []
        self.gate_schedule = None
        self.labels = None
        self.label_map = None
        self._expert_names = None
        self._gate_stats = None
        self._routing = None
        self.lq_paths = None
        sparse = opt['network_g'].get('gate_top_k') is not None or (opt.get('train') or {}).get('gate_schedule')
        if sparse and opt.get('dist') and opt.get('is_train', True):
            # unselected experts get no gradient; BasicSR's model_to_device reads this before wrapping in DDP
            opt['find_unused_parameters'] = True
            get_root_logger().info('network_g.gate_top_k under DDP: find_unused_parameters set to true')
        super().__init__(opt)

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.grad_clip = parse_grad_clip(train_opt.get('grad_clip'))
        self._setup_amp(train_opt.get('use_amp', False), train_opt.get('amp_dtype', 'bf16'))
        self._setup_compile(train_opt.get('compile', False))
        self._setup_gate_losses(train_opt)
        if train_opt.get('gate_schedule') is not None:
            bare = self.get_bare_model(self.net_g)
            self.gate_schedule = GateSchedule.from_option(train_opt['gate_schedule'], len(self._expert_names))
            self.gate_schedule.apply(bare, 0)  # checks the network takes it before the first iteration
        super().init_training_settings()

    def _setup_gate_losses(self, train_opt):
        """``train.gate_opt`` -> ``cri_gate``, ``train.balance_opt`` (default on with top-k) -> ``cri_balance``."""
        self._expert_names = expert_names(self.get_bare_model(self.net_g))
        gate_opt = train_opt.get('gate_opt')
        if gate_opt:
            self.cri_gate = self._build_gate_loss('train.gate_opt', gate_opt, GATE_EXAMPLE, GateRoutingLoss)
            self.cri_gate.check(self._expert_names)
        balance_opt = train_opt.get('balance_opt')
        top_k = self.opt['network_g'].get('gate_top_k') is not None or train_opt.get('gate_schedule') is not None
        if balance_opt is True or (balance_opt is None and top_k):
            balance_opt = dict(DEFAULT_BALANCE)
            get_root_logger().info(f'Load balancing of the gates on by default: train.balance_opt {balance_opt}')
        if balance_opt:
            specs = balance_opt if isinstance(balance_opt, list) else [balance_opt]
            bare = self.get_bare_model(self.net_g)
            self.cri_balance = [
                self._build_gate_loss(
                    f'train.balance_opt[{i}]' if isinstance(balance_opt, list) else 'train.balance_opt',
                    spec,
                    BALANCE_EXAMPLE,
                    GateBalanceLoss,
                ).bind(bare)
                for i, spec in enumerate(specs)
            ]

    def _build_gate_loss(self, option, spec, example, kind):
        """A ``kind`` (or subclass) loss from ``LOSS_REGISTRY`` by its ``spec``; mistakes are ValueErrors naming
        ``option``."""
        if not isinstance(spec, dict) or 'type' not in spec:
            raise ValueError(f'{option}: expected {example}, got {spec!r}')
        if spec['type'] not in LOSS_REGISTRY:
            raise ValueError(f'{option}.type: unknown loss "{spec["type"]}"; expected e.g. {example}')
        cls = LOSS_REGISTRY.get(spec['type'])
        if not (isinstance(cls, type) and issubclass(cls, kind)):
            raise ValueError(
                f'{option}.type: {spec["type"]} is not a {kind.__name__} (or a subclass); expected {example}'
            )
        try:
            return build_loss(dict(spec)).to(self.device)
        except TypeError as exc:
            raise ValueError(f'{option}: {spec["type"]} rejected its options {spec!r}: {exc}') from exc

    def feed_data(self, data):
        """SRModel's, plus ``data['label']`` (one degradation label per image) kept as ``self.labels`` and
        ``data['label_map']`` (``(B, H, W)`` long degradation indices, the lq's size) as ``self.label_map``."""
        super().feed_data(data)
        labels = data.get('label')
        if isinstance(labels, str):
            labels = [labels]
        self.labels = None if labels is None else [str(x) for x in labels]
        label_map = data.get('label_map')
        self.label_map = None if label_map is None else label_map.to(self.device)
        self.lq_paths = data.get('lq_path')

    def _gate_targets(self):
        """What ``l_gate`` supervises with: the label map when the batch has one (padded as the network pads
        its input, so that each block's resolution sees it on its own grid), else the per-image labels."""
        if self.label_map is None:
            return self.labels
        return pad_label_map(self.label_map, getattr(self.get_bare_model(self.net_g), 'padder_size', 1))

    def _no_labels_error(self):
        name = self.opt.get('datasets', {}).get('train', {}).get('name', 'train')
        return ValueError(
            f'train.gate_opt needs degradation labels, but the training dataset (datasets.train, "{name}") gives '
            "none: its samples have no 'label' (nor 'label_map'). Label its pairs (datasets.train.label for a "
            'one-degradation set, "label=NAME" fields in its meta_info, as `datasets_lmdb synth --degradation mixed` '
            'writes them) or remove train.gate_opt'
        )

    def _setup_amp(self, use_amp, amp_dtype):
        if not isinstance(use_amp, bool):
            raise ValueError(f'train.use_amp must be true or false, got {use_amp!r}')
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f'train.amp_dtype: unknown {amp_dtype!r}; choose from {", ".join(AMP_DTYPES)}')
        self.amp_dtype = AMP_DTYPES[amp_dtype] if use_amp else None
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if use_amp:
            get_root_logger().info(
                f'Mixed precision: autocast {amp_dtype} on {self.device.type}'
                + (' with loss scaling' if self.grad_scaler.is_enabled() else '')
            )

    def _setup_compile(self, compile_opt):
        if compile_opt is False or compile_opt is None:
            return
        if compile_opt is True:
            compile_opt = {}
        if not isinstance(compile_opt, dict):
            raise ValueError(
                f'train.compile: expected true/false or a dict of torch.compile arguments, got {compile_opt!r}'
            )
        self.get_bare_model(self.net_g).compile(**compile_opt)
        get_root_logger().info(
            f'net_g compiled with torch.compile({compile_opt or ""}); the first iterations include the compilation'
        )

    def setup_optimizers(self):
        optim_opt = self.opt['train'].get('optim_g')
        if not isinstance(optim_opt, dict) or 'type' not in optim_opt:
            raise ValueError(
                'train.optim_g: expected a mapping with at least "type" and "lr", '
                f'e.g. {{type: AdamW, lr: 1.0e-3}}; got {optim_opt!r}'
            )
        super().setup_optimizers()

    def get_optimizer(self, optim_type, params, lr=None, **kwargs):
        """Build ``torch.optim.<optim_type>(params, lr=lr, **kwargs)``; errors name ``train.optim_g``."""
        cls = getattr(torch.optim, str(optim_type), None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
            raise ValueError(
                f'train.optim_g.type: unknown optimiser "{optim_type}"; torch.optim has {", ".join(torch_optimizers())}'
            )
        if lr is None:
            raise ValueError('train.optim_g.lr: missing learning rate')
        try:
            lr = float(lr)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'train.optim_g.lr: expected a number, got {lr!r}') from exc
        if 'betas' in kwargs:
            kwargs['betas'] = tuple(kwargs['betas'])
        try:
            return cls(params, lr=lr, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'train.optim_g: {optim_type} rejected lr={lr}, {kwargs}: {exc}') from exc

    def resume_training(self, resume_state):
        """BaseModel's, but the option file's learning rate, optimiser and scheduler settings take effect
        where they differ from the state's, each change logged in one line (see :mod:`.resume_options`)."""
        resume_with_options(self, resume_state, get_root_logger().info)

    def _losses(self):
        """The losses of ``self.output`` against ``self.gt`` (as SRModel sums them) -> (total, OrderedDict)."""
        l_total = 0
        loss_dict = OrderedDict()
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(self.output, self.gt)
            l_total = l_total + loss_dict['l_pix']
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    loss_dict[name] = value
                    l_total = l_total + value
        return l_total, loss_dict

    def _any_rank(self, bad):
        """``bad`` (a bool tensor) or'ed over the ranks, as a Python bool (one sync)."""
        bad = bad.float().reshape(1)
        if self.opt['dist']:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return bad.item() > 0

    def _diverged(self, what, current_iter, detail):
        return TrainingDivergedError(
            f'{what} at iteration {current_iter} ({detail}); nothing of it was saved. {self._last_checkpoint()} '
            'Lower train.optim_g.lr, set train.grad_clip or turn train.use_amp off, then resume with '
            '--auto_resume (or start again)'
        )

    def _check_finite(self, l_total, loss_dict, current_iter):
        """Raise :class:`TrainingDivergedError` on every rank when any rank's loss is NaN/Inf."""
        if self._any_rank(~torch.isfinite(l_total.detach())):
            values = ', '.join(f'{k}={v.item():.4g}' for k, v in loss_dict.items())
            raise self._diverged(
                'training loss is not finite',
                current_iter,
                f'{values or l_total.item()}; stopped before this step changed the weights',
            )

    @staticmethod
    def _nonfinite_weights(net):
        """A bool tensor: does any parameter of ``net`` hold a NaN or Inf? (sums propagate both)"""
        sums = [p.detach().sum(dtype=torch.float32) for p in net.parameters()]
        return ~torch.isfinite(torch.stack(sums).sum()) if sums else torch.tensor(False)

    def _check_weights(self, current_iter):
        if self._any_rank(self._nonfinite_weights(self.net_g)):
            raise self._diverged('the weights are not finite', current_iter, 'after the optimiser step')

    def _check_savable(self, current_iter):
        """Raise :class:`TrainingDivergedError` unless every network to be saved has finite weights and gives a
        finite output on (the first image of) the current batch."""
        nets = [self.net_g] + ([self.net_g_ema] if hasattr(self, 'net_g_ema') else [])
        bad = torch.tensor(False, device=self.device)
        for net in nets:
            bare = self.get_bare_model(net)
            bad = bad | self._nonfinite_weights(bare).to(self.device)
            if hasattr(self, 'lq'):
                was_training = bare.training
                bare.eval()
                amp = self.amp_dtype is not None
                with (
                    torch.no_grad(),
                    torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp),
                ):
                    bad = bad | ~torch.isfinite(bare(self.lq[:1])).all()
                bare.train(was_training)
        if self._any_rank(bad):
            raise self._diverged(
                'the network is not finite',
                current_iter,
                'its weights, or its output on the current batch; the checkpoint was not written',
            )

    def _last_checkpoint(self):
        """A sentence naming the newest ``net_g_<iter>.pth`` BasicSR saved, or saying there is none."""
        folder = self.opt['path'].get('models')
        iters = []
        if folder and os.path.isdir(folder):
            iters = [
                int(f[len('net_g_') : -len('.pth')])
                for f in os.listdir(folder)
                if f.startswith('net_g_') and f.endswith('.pth') and f[len('net_g_') : -len('.pth')].isdigit()
            ]
        if not iters:
            return 'No checkpoint had been saved yet.'
        return (
            f'The last good checkpoint is {os.path.join(folder, f"net_g_{max(iters)}.pth")} (training state '
            f'{os.path.join(self.opt["path"].get("training_states", ""), f"{max(iters)}.state")}).'
        )

    def _gate_losses(self, gates, loads, l_total, loss_dict):
        """Add ``l_gate`` / ``l_balance`` on the recorded gate weights (and loads) to the total and the loss dict."""
        if self.cri_gate is not None:
            loss_dict['l_gate'] = self.cri_gate(gates, self._expert_names, self._gate_targets())
            l_total = l_total + loss_dict['l_gate']
        if self.cri_balance:
            loss_dict['l_balance'] = sum(loss(gates, loads) for loss in self.cri_balance)
            l_total = l_total + loss_dict['l_balance']
        return l_total

    def optimize_parameters(self, current_iter):
        if self.cri_gate is not None and self.labels is None and self.label_map is None:
            raise self._no_labels_error()
        if self.gate_schedule is not None:
            self.gate_schedule.apply(self.get_bare_model(self.net_g), current_iter)
        self.optimizer_g.zero_grad(set_to_none=True)
        amp = self.amp_dtype is not None
        on_gates = self.cri_gate is not None or bool(self.cri_balance)
        on_loads = any(isinstance(loss, GateLoadLoss) for loss in self.cri_balance)
        with (
            record_gates(self.net_g, keep_grad=True) if on_gates else nullcontext({}) as gates,
            record_loads(self.net_g) if on_loads else nullcontext({}) as loads,
            torch.autocast(self.device.type, dtype=self.amp_dtype if amp else torch.float32, enabled=amp),
        ):
            self.output = self.net_g(self.lq)
        l_total, loss_dict = self._losses()
        if on_gates:
            l_total = self._gate_losses(gates, loads, l_total, loss_dict)
        self._check_finite(l_total, loss_dict, current_iter)
        self.grad_scaler.scale(l_total).backward()
        if self.grad_clip:
            self.grad_scaler.unscale_(self.optimizer_g)
            loss_dict['grad_norm'] = torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), **self.grad_clip)
        self.grad_scaler.step(self.optimizer_g)
        self.grad_scaler.update()
        self._check_weights(current_iter)
        self.trained_iter = current_iter
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def save(self, epoch, current_iter):
        """SRModel's save, refused for a diverged network; the final save also keeps ``net_g_<last iter>``."""
        self._check_savable(self.trained_iter if current_iter == -1 else current_iter)
        super().save(epoch, current_iter)
        freq = self.opt.get('logger', {}).get('save_checkpoint_freq')
        if current_iter == -1 and self.trained_iter and freq and self.trained_iter % freq:
            # The training state needs the loop's epoch, which the model does not see: weights only.
            nets = [self.net_g] + ([self.net_g_ema] if hasattr(self, 'net_g_ema') else [])
            self.save_network(nets, 'net_g', self.trained_iter, param_key=['params', 'params_ema'][: len(nets)])

    @master_only
    def print_network(self, net):
        """The one-line summary to every handler, the structure (~550 lines) to the log file only."""
        bare = self.get_bare_model(net)
        name = type(bare).__name__ if bare is net else f'{type(net).__name__} - {type(bare).__name__}'
        logger = get_root_logger()
        logger.info(
            f'Network: {name}, with parameters: {sum(p.numel() for p in bare.parameters()):,d} '
            '(structure in the log file)'
        )
        if not logger.isEnabledFor(logging.INFO):
            return
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, str(bare), None, None)
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        with record_gates(net) as gates:
            super().test()
        if self._gate_stats is not None:
            self._gate_stats.add(gates, self.labels)
            self._keep_routing_map(gates, net)

    def _keep_routing_map(self, gates, net):
        """Keep the batch's first image and its full-resolution routing weights for a routing map, while
        fewer than :data:`ROUTING_MAPS` are kept and the gate is a per-pixel one."""
        from ..evaluation.data import to_uint8
        from ..evaluation.routing_map import at_image_size, full_resolution

        if len(self._routing) >= ROUTING_MAPS or not any(g.dim() == 4 for g in gates.values()):
            return
        paths = self.lq_paths
        name = os.path.splitext(os.path.basename(paths[0] if isinstance(paths, list) else paths or ''))[0]
        img = to_uint8(self.lq[0].detach().float().cpu())
        multiple = getattr(self.get_bare_model(net), 'padder_size', 1)
        weights = at_image_size(gates, img.shape[:2], multiple, full_resolution(gates))
        self._routing.append((name or f'image{len(self._routing)}', img, weights))

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._gate_stats, self._routing = GateStats(), []
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
            self._log_gates(dataloader.dataset.opt['name'], current_iter, tb_logger)
        finally:
            self._gate_stats, self._routing = None, None

    def gate_means(self, label=None):
        """Mean gate weights of the running validation, over all images or those with ``label``:
        ``{block path: (n_experts,) tensor}``."""
        return self._gate_stats.means(label)

    def _gate_table(self, title, label, experts):
        means = self.gate_means(label)
        lines = [
            f'{title}, mean over {self._gate_stats.label_count(label)} image(s); experts: {", ".join(experts)}',
            f'\t{"all blocks":<16}' + ' '.join(f'{v:.4f}' for v in self._gate_stats.overall(label).tolist()),
        ]
        return lines + [f'\t{path:<16}' + ' '.join(f'{v:.4f}' for v in m.tolist()) for path, m in means.items()]

    def _gate_files(self, dataset_name, current_iter):
        """Stem (no extension) of the gate figure and JSON, or None without the output folder in ``path``."""
        paths = self.opt['path']
        if self.opt['is_train'] and paths.get('visualization'):
            return os.path.join(paths['visualization'], 'gates', f'{dataset_name}_{current_iter}')
        if not self.opt['is_train'] and paths.get('results_root'):
            return os.path.join(paths['results_root'], f'gates_{dataset_name}')
        return None

    def _save_routing_maps(self, folder, experts):
        """Write the kept routing maps into ``folder``; the log line saying where (or why not)."""
        from ..evaluation.routing_map import save_routing_map
        from ..inference.errors import EnhanceError

        try:
            os.makedirs(folder, exist_ok=True)
            for name, img, weights in self._routing:
                save_routing_map(os.path.join(folder, f'{name}.png'), img, weights, experts)
        except (OSError, EnhanceError) as exc:  # a diagnostic, as the gate figure
            return f'Routing maps not written to {folder}: {exc}'
        return f'Routing maps: {folder} ({len(self._routing)} image(s))'

    def _log_gates(self, dataset_name, current_iter, tb_logger):
        stats = self._gate_stats
        if not stats.count:
            return
        bare = self.get_bare_model(self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g)
        experts = expert_names(bare)
        lines = self._gate_table(f'Gate weights on {dataset_name}', None, experts)
        for label in stats.labels:
            lines += self._gate_table(f'Gate weights on {dataset_name}, label {label}', label, experts)
        mapping = (self.opt.get('train') or {}).get('gate_opt') or {}
        mapping = mapping.get('experts') if isinstance(mapping, dict) else None
        summary = stats.to_dict(experts, mapping if stats.labels else None)
        if 'routing' in summary:
            routing = summary['routing']
            per_label = ', '.join(f'{k} {v:.1%}' for k, v in routing['per_label'].items())
            lines.append(
                f'Routing accuracy on {dataset_name} ({EXPERTS_OPTION}): {routing["accuracy"]:.1%} of '
                f'{routing["images"]} labelled image(s) ({per_label})'
            )
        stem = self._gate_files(dataset_name, current_iter)
        if stem:
            extra = {'dataset': dataset_name, 'iter': current_iter}
            try:
                save_gate_figure(stats, stem + '.png', experts)
                save_gate_json(stats, stem + '.json', experts, mapping if stats.labels else None, **extra)
                lines.append(f'Gate figure: {stem}.png (numbers in {stem}.json)')
            except OSError as exc:  # a diagnostic: training goes on without it
                lines.append(f'Gate figure and statistics not written to {stem}.png/.json: {exc}')
            if self._routing:
                lines.append(self._save_routing_maps(stem + '_routing', experts))
        get_root_logger().info('\n'.join(lines))
        if tb_logger:
            for label in [None] + stats.labels:
                tag = f'gates/{dataset_name}' if label is None else f'gates/{dataset_name}/{label}'
                overall, means = stats.overall(label), self.gate_means(label)
                for i, name in enumerate(experts):
                    tb_logger.add_scalar(f'{tag}/all/{name}', overall[i].item(), current_iter)
                    for path, m in means.items():
                        tb_logger.add_scalar(f'{tag}/{path}/{name}', m[i].item(), current_iter)
            if 'routing' in summary:
                accuracy = summary['routing']['accuracy']
                tb_logger.add_scalar(f'gates/{dataset_name}/routing_accuracy', accuracy, current_iter)
