"""GMMoEModel: optimiser by name, gradient clipping, NaN stop, AMP, gate logging (in-process, tiny network)."""

import os

import pytest
import torch
from basicsr.models import build_model

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from gmmoe_arch.models.gmmoe_model import TrainingDivergedError

TINY = {'type': 'GMMoE', 'width': 4, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1]}


def make_opt(tmp_path, **train):
    train_opt = {
        'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.9], 'weight_decay': 0},
        'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [10], 'eta_min': 1e-7},
        'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
    }
    train_opt.update(train)
    paths = {k: str(tmp_path / k) for k in ('models', 'training_states')}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    return {
        'name': 'unit',
        'model_type': 'GMMoEModel',
        'num_gpu': 0,
        'is_train': True,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'network_g': dict(TINY),
        'path': paths,
        'train': train_opt,
        'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}},
    }


def batch(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 3, size, size, generator=g)
    return {'lq': gt * 0.2, 'gt': gt}


def params(model):
    return {k: v.detach().clone() for k, v in model.net_g.named_parameters()}


def test_adamw_by_name_and_steps(tmp_path):
    model = build_model(make_opt(tmp_path))
    assert type(model.optimizer_g) is torch.optim.AdamW
    assert model.optimizer_g.param_groups[0]['betas'] == (0.9, 0.9)
    before = params(model)
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert model.log_dict['l_pix'] < 0  # minus a PSNR
    assert any(not torch.equal(before[k], v) for k, v in params(model).items())


@pytest.mark.parametrize(
    'optim, match',
    [
        ({'type': 'AdamQ', 'lr': 1e-3}, 'train.optim_g.type: unknown optimiser "AdamQ"'),
        ({'type': 'AdamW'}, 'train.optim_g.lr'),
        ({'type': 'SGD', 'lr': 0.1, 'bogus': 1}, 'train.optim_g: SGD rejected'),
    ],
)
def test_bad_optimiser_options_are_named(tmp_path, optim, match):
    with pytest.raises(ValueError, match=match):
        build_model(make_opt(tmp_path, optim_g=optim))


def test_grad_clip_clips(tmp_path):
    model = build_model(make_opt(tmp_path, grad_clip={'max_norm': 1e-3}))
    model.feed_data(batch())
    model.optimize_parameters(1)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.net_g.parameters()]))
    assert model.log_dict['grad_norm'] > 1e-2  # the unclipped norm was far above the limit
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ValueError, match='train.grad_clip'):
        build_model(make_opt(tmp_path, grad_clip={'max_nrm': 1}))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    opt = make_opt(tmp_path)
    model = build_model(opt)
    bad = batch()
    bad['lq'][0, 0, 0, 0] = float('nan')
    model.feed_data(bad)
    with pytest.raises(TrainingDivergedError, match='No checkpoint had been saved yet'):
        model.optimize_parameters(1)
    model.feed_data(batch())
    model.optimize_parameters(1)
    model.save(0, 1)
    saved = {
        f: (tmp_path / d / f).read_bytes() for d in ('models', 'training_states') for f in os.listdir(tmp_path / d)
    }
    assert set(saved) == {'net_g_1.pth', '1.state'}
    before = params(model)
    model.feed_data(bad)
    with pytest.raises(
        TrainingDivergedError, match=r'not finite at iteration 2.*checkpoint is .*net_g_1\.pth.*1\.state'
    ):
        model.optimize_parameters(2)
    assert all(torch.equal(before[k], v) for k, v in params(model).items())
    after = {
        f: (tmp_path / d / f).read_bytes() for d in ('models', 'training_states') for f in os.listdir(tmp_path / d)
    }
    assert after == saved
    assert isinstance(TrainingDivergedError('x'), RuntimeError)


def test_bf16_autocast_on_cpu(tmp_path):
    model = build_model(make_opt(tmp_path, use_amp=True, amp_dtype='bf16'))
    assert model.amp_dtype == torch.bfloat16 and not model.grad_scaler.is_enabled()
    dtypes = []
    model.net_g.ending.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())
    assert torch.isfinite(torch.tensor(model.log_dict['l_pix']))
    with pytest.raises(ValueError, match='train.amp_dtype'):
        build_model(make_opt(tmp_path, use_amp=True, amp_dtype='fp8'))


def test_fp16_uses_loss_scaling(tmp_path):
    model = build_model(make_opt(tmp_path, use_amp=True, amp_dtype='fp16'))
    assert model.grad_scaler.is_enabled()
    before = params(model)
    scale = model.grad_scaler.get_scale()
    model.feed_data(batch())
    for it in range(1, 21):  # overflowing steps are skipped while the scale calibrates
        model.optimize_parameters(it)
        if any(not torch.equal(before[k], v) for k, v in params(model).items()):
            break
    else:
        pytest.fail('fp16 training never updated the weights in 20 steps')
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())
    assert model.grad_scaler.get_scale() < scale  # overflows were caught and skipped, not applied


class _Set(torch.utils.data.Dataset):
    opt = {'name': 'tiny_val'}

    def __len__(self):
        return 3

    def __getitem__(self, i):
        b = batch(1, 16, seed=i)
        return {'lq': b['lq'][0], 'gt': b['gt'][0], 'lq_path': f'img{i}.png'}


class _Board:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = (value, step)


def test_validation_logs_mean_gate_weights(tmp_path):
    model = build_model(make_opt(tmp_path))
    loader = torch.utils.data.DataLoader(_Set(), batch_size=1)
    seen = {}
    with gmmoe_arch.record_gates(model.net_g) as gates:
        for data in loader:
            model.net_g.eval()
            with torch.no_grad():
                model.net_g(data['lq'])
            for path, w in gates.items():
                seen.setdefault(path, []).append(w[0])
    board = _Board()
    model.validation(loader, 7, board, save_img=False)
    assert set(seen) == {'encoders.0.0', 'encoders.1.0', 'middle_blks.0', 'decoders.0.0', 'decoders.1.0'}
    for path, ws in seen.items():
        expected = torch.stack(ws).mean(0)
        for i, name in enumerate(('ColourExpert', 'DetailExpert', 'FeatureExpert')):
            value, step = board.scalars[f'gates/tiny_val/{path}/{name}']
            assert value == pytest.approx(expected[i].item(), abs=1e-6) and step == 7
    experts = ('ColourExpert', 'DetailExpert', 'FeatureExpert')
    overall = sum(board.scalars[f'gates/tiny_val/all/{n}'][0] for n in experts)
    assert overall == pytest.approx(1.0, abs=1e-5)
    assert 'psnr' in model.metric_results


def test_compile_is_opt_in(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, 'compile', lambda self, **kw: calls.append((type(self).__name__, kw)))
    build_model(make_opt(tmp_path))
    assert calls == []  # never on by default
    build_model(make_opt(tmp_path, compile=True))
    build_model(make_opt(tmp_path, compile={'mode': 'max-autotune'}))
    assert calls == [('GMMoE', {}), ('GMMoE', {'mode': 'max-autotune'})]  # in place: state-dict names kept
    with pytest.raises(ValueError, match='train.compile'):
        build_model(make_opt(tmp_path, compile='yes'))


def checkpoint_files(tmp_path):
    return {f: (tmp_path / d / f).read_bytes() for d in ('models', 'training_states') for f in os.listdir(tmp_path / d)}


def test_exploding_step_at_a_save_iteration_is_not_saved(tmp_path):
    # An lr of 1e9 leaves finite weights (~1e9) whose output is not finite: the loss of this step was
    # fine, so only a check at save time can keep the checkpoint from being written and named good.
    model = build_model(make_opt(tmp_path))
    model.feed_data(batch())
    model.optimize_parameters(1)
    model.save(0, 1)
    saved = checkpoint_files(tmp_path)
    for group in model.optimizer_g.param_groups:
        group['lr'] = 1e9
    model.optimize_parameters(2)
    assert all(torch.isfinite(p).all() for p in model.net_g.parameters())
    with pytest.raises(
        TrainingDivergedError, match=r'not finite at iteration 2 .*not written.*checkpoint is .*net_g_1\.pth'
    ):
        model.save(0, 2)
    with pytest.raises(TrainingDivergedError):
        model.save(-1, -1)
    assert checkpoint_files(tmp_path) == saved


def test_step_to_non_finite_weights_stops_at_once(tmp_path):
    model = build_model(make_opt(tmp_path))
    for group in model.optimizer_g.param_groups:
        group['lr'] = float('inf')
    model.feed_data(batch())
    with pytest.raises(TrainingDivergedError, match='weights are not finite at iteration 1 .after the optimiser step'):
        model.optimize_parameters(1)


def test_final_save_keeps_the_last_iteration(tmp_path):
    opt = make_opt(tmp_path)
    opt['logger'] = {'save_checkpoint_freq': 2}
    model = build_model(opt)
    model.feed_data(batch())
    for it in (1, 2, 3):
        model.optimize_parameters(it)
        if it % 2 == 0:
            model.save(0, it)
    model.save(-1, -1)
    assert set(checkpoint_files(tmp_path)) == {'net_g_2.pth', '2.state', 'net_g_3.pth', 'net_g_latest.pth'}
    last = torch.load(tmp_path / 'models' / 'net_g_3.pth', weights_only=True)['params']
    latest = torch.load(tmp_path / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert all(torch.equal(last[k], latest[k]) for k in latest)


def test_network_structure_goes_to_the_log_file_only(tmp_path):
    import io
    import logging

    from basicsr.utils import get_root_logger

    logger = get_root_logger()
    console = io.StringIO()
    handlers = [logging.FileHandler(tmp_path / 'train.log'), logging.StreamHandler(console)]
    level = logger.level
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        build_model(make_opt(tmp_path))
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
    text = (tmp_path / 'train.log').read_text()
    assert 'Network: GMMoE, with parameters:' in text and '(MSFEblock): SFEB(' in text
    assert 'Network: GMMoE, with parameters:' in console.getvalue() and 'MSFEblock' not in console.getvalue()
