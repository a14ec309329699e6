"""GMMoEModel with gate supervision and load balancing: training on labelled batches, option errors, and the
per-label gate statistics of validation and testing (log table, TensorBoard, figure, JSON)."""

import io
import json
import logging
import math
import os
from contextlib import contextmanager

import cv2
import pytest
import torch
from basicsr.models import build_model
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from gmmoe_arch.archs.experts import EXPERT_REGISTRY
from gmmoe_arch.archs.gmmoe_arch import GMMoE
from gmmoe_arch.models import gmmoe_model

from helpers import registered

W8 = {'type': 'GMMoE', 'width': 8, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1]}
BLOCKS = ('encoders.0.0', 'encoders.1.0', 'middle_blks.0', 'decoders.0.0', 'decoders.1.0')
RELEASED = ('ColourExpert', 'DetailExpert', 'FeatureExpert')
LABELS = ('lowlight', 'rain', 'haze')


class StreakX(nn.Module):
    """A tiny test expert: a vertical 1x5 depthwise filter."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, (5, 1), padding=(2, 0), groups=channels)

    def forward(self, u):
        return self.conv(u)


class TopKTestNet(GMMoE):
    """GMMoE that takes (and ignores) ``gate_top_k``: the model's handling of the option, on its own."""

    def __init__(self, gate_top_k=None, **kwargs):
        super().__init__(**kwargs)


@contextmanager
def captured_log():
    logger, stream = get_root_logger(), io.StringIO()
    handler, level = logging.StreamHandler(stream), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def make_opt(tmp_path, network=None, is_train=True, **train):
    train_opt = {
        'optim_g': {'type': 'AdamW', 'lr': 2e-3, 'betas': [0.9, 0.9], 'weight_decay': 0},
        'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [100], 'eta_min': 1e-7},
        'pixel_opt': {'type': 'PSNRLoss', 'loss_weight': 1.0},
    }
    train_opt.update(train)
    if is_train:
        paths = {k: str(tmp_path / k) for k in ('models', 'training_states', 'visualization')}
    else:
        paths = {'results_root': str(tmp_path / 'results'), 'visualization': str(tmp_path / 'results' / 'vis')}
    return {
        'name': 'gates',
        'model_type': 'GMMoEModel',
        'num_gpu': 0,
        'is_train': is_train,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'network_g': dict(network or W8),
        'path': paths,
        'train': train_opt,
        'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}},
    }


def labelled_batch(labels, size=16, seed=0):
    """Images whose degradation is visible in their statistics: dark, striped or washed out."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(len(labels), 3, size, size, generator=g) * 0.6 + 0.2
    lq = gt.clone()
    for i, label in enumerate(labels):
        if label == 'lowlight':
            lq[i] = gt[i] * 0.15
        elif label == 'rain':
            lq[i, :, :, ::4] = 0.95
        else:
            lq[i] = gt[i] * 0.4 + 0.55
    return {'lq': lq, 'gt': gt, 'label': list(labels)}


GATE_OPT = {'type': 'GateRoutingLoss', 'loss_weight': 1.0, 'experts': dict(zip(LABELS, RELEASED))}


def grads(model):
    return {k: p.grad.clone() for k, p in model.net_g.named_parameters() if p.grad is not None}


def test_gate_loss_trains_on_labelled_batches(tmp_path):
    data = labelled_batch(LABELS)
    torch.manual_seed(0)
    plain = build_model(make_opt(tmp_path))
    torch.manual_seed(0)
    model = build_model(make_opt(tmp_path, gate_opt=GATE_OPT))
    for m in (plain, model):
        m.feed_data(data)
        m.optimize_parameters(1)
    assert 'l_gate' not in plain.log_dict
    assert model.log_dict['l_pix'] == plain.log_dict['l_pix']
    assert 1.0 < model.log_dict['l_gate'] < 1.2  # -log(1/3) = 1.0986: the untrained gates are near uniform
    with_gate, without = grads(model), grads(plain)
    # the gate loss reaches the gate MLP (and the experts before it), not what comes after the last gate
    assert not torch.equal(with_gate['middle_blks.0.gate.mlp.2.weight'], without['middle_blks.0.gate.mlp.2.weight'])
    assert not torch.equal(
        with_gate['encoders.1.0.experts.0.conv4.weight'], without['encoders.1.0.experts.0.conv4.weight']
    )
    for key in ('ending.weight', 'decoders.1.0.experts.2.conv1.weight'):
        assert torch.equal(with_gate[key], without[key]), key
    for it in (2, 3):
        model.optimize_parameters(it)
        assert set(model.log_dict) >= {'l_pix', 'l_gate'} and 'l_balance' not in model.log_dict
        assert torch.isfinite(torch.tensor(model.log_dict['l_gate']))


def test_gates_are_recorded_only_with_a_gate_loss(tmp_path, monkeypatch):
    calls = []
    real = gmmoe_model.record_gates

    def counting(net, keep_grad=False):
        calls.append(keep_grad)
        return real(net, keep_grad)

    monkeypatch.setattr(gmmoe_model, 'record_gates', counting)
    model = build_model(make_opt(tmp_path))
    model.feed_data(labelled_batch(LABELS))
    model.optimize_parameters(1)
    assert calls == [] and model.cri_gate is None and model.cri_balance == []
    model = build_model(make_opt(tmp_path, balance_opt={'type': 'GateBalanceLoss', 'loss_weight': 0.5}))
    model.feed_data(labelled_batch(LABELS))
    model.optimize_parameters(1)
    assert calls == [True] and model.log_dict['l_balance'] >= 0


def test_non_finite_gate_loss_stops_training(tmp_path):
    model = build_model(make_opt(tmp_path, gate_opt=dict(GATE_OPT, loss_weight=float('inf'))))
    model.feed_data(labelled_batch(LABELS))
    with pytest.raises(gmmoe_model.TrainingDivergedError, match='l_gate=inf'):
        model.optimize_parameters(1)


def test_gate_option_errors(tmp_path):
    bad = dict(GATE_OPT, experts={'lowlight': 'ColourExpert', 'rain': 'RainExpertZ'})
    with pytest.raises(ValueError, match=r'train\.gate_opt\.experts\.rain: .*RainExpertZ.*ColourExpert, DetailExpert'):
        build_model(make_opt(tmp_path, gate_opt=bad))
    with pytest.raises(ValueError, match=r'train\.gate_opt: expected'):
        build_model(make_opt(tmp_path, gate_opt='GateRoutingLoss'))
    with pytest.raises(ValueError, match=r'train\.balance_opt: expected'):
        build_model(make_opt(tmp_path, balance_opt=0.01))
    with pytest.raises(ValueError, match=r'train\.gate_opt\.type: unknown loss "GateRoutingLos"'):
        build_model(make_opt(tmp_path, gate_opt=dict(GATE_OPT, type='GateRoutingLos')))
    with pytest.raises(ValueError, match=r'train\.gate_opt\.type: GateBalanceLoss is not a GateRoutingLoss'):
        build_model(make_opt(tmp_path, gate_opt={'type': 'GateBalanceLoss'}))
    with pytest.raises(ValueError, match=r'train\.balance_opt\.type: PSNRLoss is not a GateBalanceLoss'):
        build_model(make_opt(tmp_path, balance_opt={'type': 'PSNRLoss'}))
    with pytest.raises(ValueError, match=r'train\.balance_opt: GateBalanceLoss rejected .*weight'):
        build_model(make_opt(tmp_path, balance_opt={'type': 'GateBalanceLoss', 'weight': 1}))
    opt = make_opt(tmp_path, gate_opt=GATE_OPT)
    opt['datasets'] = {'train': {'name': 'lol_train'}}
    model = build_model(opt)
    data = labelled_batch(LABELS)
    del data['label']
    model.feed_data(data)
    with pytest.raises(ValueError, match=r'train\.gate_opt needs degradation labels.*datasets\.train, "lol_train"'):
        model.optimize_parameters(1)


def test_top_k_turns_balancing_on_and_ddp_finds_unused_parameters(tmp_path, monkeypatch):
    with registered(ARCH_REGISTRY, TopKTestNet):
        net = dict(W8, type='TopKTestNet', gate_top_k=1)
        with captured_log() as log:
            model = build_model(make_opt(tmp_path, net))
        assert [loss.loss_weight for loss in model.cri_balance] == [0.01]
        assert 'Load balancing of the gates on by default' in log.getvalue()
        model.feed_data(labelled_batch(LABELS))
        model.optimize_parameters(1)
        assert model.log_dict['l_balance'] > 0
        assert build_model(make_opt(tmp_path, net, balance_opt=False)).cri_balance == []
        custom = build_model(make_opt(tmp_path, net, balance_opt={'type': 'GateBalanceLoss', 'loss_weight': 0.2}))
        assert [loss.loss_weight for loss in custom.cri_balance] == [0.2]

        seen = []
        monkeypatch.setattr(
            gmmoe_model.GMMoEModel,
            'model_to_device',
            lambda self, n: seen.append(self.opt.get('find_unused_parameters')) or n,
        )
        opt = make_opt(tmp_path, net)
        opt['dist'] = True
        with captured_log() as log:
            build_model(opt)
        assert seen == [True] and 'find_unused_parameters set to true' in log.getvalue()
        build_model(make_opt(tmp_path, W8))
        assert seen == [True, None]


class LabelledSet(torch.utils.data.Dataset):
    opt = {'name': 'mix_val'}

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        b = labelled_batch([self.labels[i]], seed=i)
        return {'lq': b['lq'][0], 'gt': b['gt'][0], 'lq_path': f'img{i}.png', 'label': self.labels[i]}


class Board:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = (value, step)


def expected_means(model, loader):
    per_label = {}
    with gmmoe_arch.record_gates(model.net_g) as gates:
        model.net_g.eval()
        for data in loader:
            with torch.no_grad():
                model.net_g(data['lq'])
            per_label.setdefault(data['label'][0], []).append({p: w[0] for p, w in gates.items()})
    return {label: {p: torch.stack([r[p] for r in rows]).mean(0) for p in rows[0]} for label, rows in per_label.items()}


def test_validation_logs_per_label_gates_with_a_test_expert(tmp_path):
    with registered(EXPERT_REGISTRY, StreakX):
        experts = ['ColourExpert', 'StreakX', 'FeatureExpert']
        gate_opt = dict(GATE_OPT, experts={'lowlight': 'ColourExpert', 'rain': 'StreakX'})
        model = build_model(make_opt(tmp_path, dict(W8, experts=experts), gate_opt=gate_opt))
        labels = ['rain', 'haze', 'lowlight', 'rain', 'haze']
        loader = torch.utils.data.DataLoader(LabelledSet(labels), batch_size=1)
        expected = expected_means(model, loader)
        board = Board()
        with captured_log() as log:
            model.validation(loader, 7, board, save_img=False)
    text = log.getvalue()
    assert 'Gate weights on mix_val, mean over 5 image(s); experts: ColourExpert, StreakX, FeatureExpert' in text
    for label, n in (('lowlight', 1), ('rain', 2), ('haze', 2)):
        assert f'Gate weights on mix_val, label {label}, mean over {n} image(s)' in text
        for path in BLOCKS:
            for i, name in enumerate(experts):
                value, step = board.scalars[f'gates/mix_val/{label}/{path}/{name}']
                assert value == pytest.approx(expected[label][path][i].item(), abs=1e-6) and step == 7
        overall = sum(board.scalars[f'gates/mix_val/{label}/all/{name}'][0] for name in experts)
        assert overall == pytest.approx(1.0, abs=1e-5)
    assert 'gates/mix_val/all/StreakX' in board.scalars  # the all-images table is kept
    assert 'Routing accuracy on mix_val (train.gate_opt.experts): ' in text and 'of 3 labelled image(s)' in text
    assert 0 <= board.scalars['gates/mix_val/routing_accuracy'][0] <= 1

    stem = tmp_path / 'visualization' / 'gates' / 'mix_val_7'
    img = cv2.imread(str(stem) + '.png')
    assert img is not None and img.shape[0] > 7 * 24 and img.shape[1] > 3 * 3 * 60 and img.std() > 20
    data = json.loads((tmp_path / 'visualization' / 'gates' / 'mix_val_7.json').read_text())
    assert data['dataset'] == 'mix_val' and data['iter'] == 7 and data['experts'] == experts
    assert list(data['labels']) == ['lowlight', 'rain', 'haze'] and data['labels']['rain']['count'] == 2
    assert data['labels']['haze']['blocks']['middle_blks.0'] == pytest.approx(
        expected['haze']['middle_blks.0'].tolist(), abs=1e-6
    )
    assert data['routing']['images'] == 3 and set(data['routing']['per_label']) == {'rain', 'lowlight'}
    assert f'Gate figure: {stem}.png' in text


def test_basicsr_test_writes_the_figure_to_results(tmp_path):
    model = build_model(make_opt(tmp_path, is_train=False))
    loader = torch.utils.data.DataLoader(LabelledSet(['rain', 'haze']), batch_size=1)
    model.validation(loader, 0, None, save_img=False)
    assert sorted(os.listdir(tmp_path / 'results')) == ['gates_mix_val.json', 'gates_mix_val.png']
    data = json.loads((tmp_path / 'results' / 'gates_mix_val.json').read_text())
    assert list(data['labels']) == ['rain', 'haze'] and 'routing' not in data


def test_unwritable_figure_folder_is_reported_and_validation_goes_on(tmp_path):
    model = build_model(make_opt(tmp_path))
    (tmp_path / 'visualization').write_text('a file where the folder should be')
    loader = torch.utils.data.DataLoader(LabelledSet(['rain']), batch_size=1)
    with captured_log() as log:
        model.validation(loader, 3, None, save_img=False)
    assert 'Gate figure and statistics not written to' in log.getvalue() and 'psnr' in model.metric_results


@pytest.mark.parametrize('checkpoint', ['block', 'expert'])
def test_gate_loss_gradient_through_activation_checkpointing(tmp_path, checkpoint):
    data = labelled_batch(LABELS)
    results = []
    for net in (W8, dict(W8, checkpoint=checkpoint)):
        torch.manual_seed(0)
        model = build_model(make_opt(tmp_path, net, gate_opt=GATE_OPT, balance_opt=True))
        model.feed_data(data)
        model.optimize_parameters(1)
        results.append((dict(model.log_dict), grads(model)))
    (plain_log, plain), (ckpt_log, ckpt) = results
    assert ckpt_log['l_gate'] == pytest.approx(plain_log['l_gate'], rel=1e-6)
    assert plain.keys() == ckpt.keys()
    for key in plain:
        assert torch.allclose(plain[key], ckpt[key], rtol=1e-4, atol=1e-6), key


def test_gate_losses_under_bf16_autocast(tmp_path):
    torch.manual_seed(0)
    model = build_model(make_opt(tmp_path, gate_opt=GATE_OPT, balance_opt=True, use_amp=True, amp_dtype='bf16'))
    model.feed_data(labelled_batch(LABELS))
    model.optimize_parameters(1)
    assert 1.0 < model.log_dict['l_gate'] < 1.2 and 0 <= model.log_dict['l_balance'] < 0.01
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())


def test_a_label_map_in_the_batch_supervises_a_spatial_gate_per_pixel(tmp_path):
    """``data['label_map']`` (degradation indices per pixel) is used instead of the per-image labels: a map
    that is one label everywhere gives the loss of that label per image; another map another loss; a size the
    network pads works (the map is padded with 'unlabelled')."""
    from gmmoe_arch.data.degradations import names

    network = dict(W8, gate={'type': 'SpatialGate'})
    data = labelled_batch(['lowlight', 'rain', 'haze'])
    index = torch.tensor([names().index(label) for label in data['label']])
    uniform = index[:, None, None].expand(3, 16, 16).clone()
    mixed = uniform.clone()
    mixed[:, :, :8] = names().index('rain')

    def l_gate(batch):
        torch.manual_seed(0)
        model = build_model(make_opt(tmp_path, network, gate_opt=GATE_OPT))
        model.feed_data(batch)
        model.optimize_parameters(1)
        return model.log_dict['l_gate'], model

    by_label, _ = l_gate(data)
    by_map, model = l_gate({**data, 'label_map': uniform})
    other, _ = l_gate({**data, 'label_map': mixed})
    assert by_map == pytest.approx(by_label, rel=1e-5) and abs(other - by_label) > 1e-4
    assert model.net_g.middle_blks[0].gate.context.weight.grad is not None
    odd = labelled_batch(['rain', 'haze'], size=14)
    unlabelled = {'lq': odd['lq'], 'gt': odd['gt'], 'label_map': torch.full((2, 14, 14), names().index('rain'))}
    value, _ = l_gate(unlabelled)
    assert math.isfinite(value) and value > 0


def test_validation_writes_routing_maps_for_a_per_pixel_gate_only(tmp_path):
    loader = torch.utils.data.DataLoader(LabelledSet(['rain', 'haze', 'lowlight', 'rain']), batch_size=1)
    spatial = build_model(make_opt(tmp_path, dict(W8, gate='SpatialGate')))
    with captured_log() as log:
        spatial.validation(loader, 5, None, save_img=False)
    folder = tmp_path / 'visualization' / 'gates' / 'mix_val_5_routing'
    assert sorted(os.listdir(folder)) == ['img0.png', 'img1.png', 'img2.png']  # ROUTING_MAPS images
    picture = cv2.imread(str(folder / 'img0.png'))
    lq = LabelledSet(['rain'])[0]['lq']
    assert picture.shape[0] > lq.shape[1] and picture.shape[1] > 3 * lq.shape[2]  # input, mean, blocks; legend
    assert f'Routing maps: {folder} (3 image(s))' in log.getvalue()
    per_image = build_model(make_opt(tmp_path / 'image', W8))
    per_image.validation(loader, 5, None, save_img=False)
    assert not (tmp_path / 'image' / 'visualization' / 'gates' / 'mix_val_5_routing').exists()


def test_unwritable_routing_map_folder_is_reported_and_validation_goes_on(tmp_path):
    model = build_model(make_opt(tmp_path, dict(W8, gate='SpatialGate')))
    (tmp_path / 'visualization').write_text('a file where the folder should be')
    loader = torch.utils.data.DataLoader(LabelledSet(['rain']), batch_size=1)
    with captured_log() as log:
        model.validation(loader, 3, None, save_img=False)
    assert 'Routing maps not written to' in log.getvalue() and 'psnr' in model.metric_results
