"""gmmoe_arch.evaluation.allinone, scripts/allinone.py's pieces (the evaluation is gmmoe_arch.evaluation's,
tests/test_evaluation.py): the
data it builds (tiny sizes), the held-out pairs, the derived option files of the bench variants and how they are
loaded, the timing paragraph of the table and the targets it checks."""

import json
import os

import numpy as np
import pytest
import torch

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from gmmoe_arch import GMMoE
from gmmoe_arch.archs.experts import RELEASED_EXPERTS
from gmmoe_arch.data.pairing import read_lmdb_labels
from gmmoe_arch.evaluation import Pair, allinone
from gmmoe_arch.evaluation.command import parse_mapping

from helpers import REPO

DEMO_OPT = str(REPO / 'options' / 'train_gmmoe_allinone_demo.yml')
MAPPING = parse_mapping(None, DEMO_OPT)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp('allinone') / 'datasets' / 'allinone')
    sizes = dict(per_image=3, test_per_image=1, train_side=40, test_side=32)
    return data_dir, sizes, allinone.make_data(data_dir, progress=False, **sizes)


def synth_record(folder):
    with open(os.path.join(folder, 'synth.json'), encoding='utf-8') as f:
        return json.load(f)


def test_data_are_labelled_and_held_out(tiny_data):
    data_dir, _, record = tiny_data
    train = synth_record(os.path.join(data_dir, 'train'))
    assert record['counts']['train'] == {label: 13 for label in ('lowlight', 'rain', 'haze')}
    train_photos = {pair['image'] for pair in train['pairs']}
    labels = read_lmdb_labels(os.path.join(data_dir, 'train', 'lmdb', 'lq.lmdb'), 'dataroot_lq')
    assert labels == {pair['name']: pair['label'] for pair in train['pairs']}
    for label in ('lowlight', 'rain', 'haze'):
        test = synth_record(os.path.join(data_dir, f'test_{label}'))
        assert {pair['label'] for pair in test['pairs']} == {label}
        assert not train_photos & {pair['image'] for pair in test['pairs']}  # photos training never sees


def test_data_are_reused_when_the_settings_match(tiny_data):
    data_dir, sizes, record = tiny_data
    lq = os.path.join(data_dir, 'test_rain', 'lq', 'astronaut.png')
    before = os.stat(lq).st_mtime_ns
    assert allinone.make_data(data_dir, progress=False, **sizes) == record
    assert os.stat(lq).st_mtime_ns == before


def test_held_out_pairs_per_degradation(tiny_data):
    data_dir, _, _ = tiny_data
    pairs = allinone.load_test_sets(data_dir)
    assert [p.label for p in pairs] == ['lowlight'] * 3 + ['rain'] * 3 + ['haze'] * 3
    assert pairs[0].lq.dtype == np.uint8 and pairs[0].lq.shape == pairs[0].gt.shape
    assert MAPPING == {'lowlight': 'ColourExpert', 'rain': 'RainExpert', 'haze': 'HazeExpert'}


def test_a_variant_is_evaluated_with_its_own_network_options(tmp_path):
    """``load_net`` writes the evaluated options (here (c): (b) with ``gate_top_k: 1``) and loads the checkpoint
    through the package's ``load_network``, which prefers ``params_ema``."""
    base = allinone.load_options(DEMO_OPT)
    opt = dict(allinone.variant_options(base, 'b', iters=7), name='GMMoE_allinone_b_c')
    opt['network_g'] = dict(opt['network_g'], width=4, enc_blk_nums=[1], dec_blk_nums=[1], gate_top_k=1)
    torch.manual_seed(0)
    sizes = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    ema, plain = GMMoE(**sizes), GMMoE(**sizes)
    torch.save({'params': plain.state_dict(), 'params_ema': ema.state_dict()}, tmp_path / 'net.pth')
    net = allinone.load_net(opt, str(tmp_path / 'net.pth'), str(tmp_path / 'options'))
    assert (tmp_path / 'options' / 'test_GMMoE_allinone_b_c.yml').is_file() and net.gate_top_k == 1
    assert torch.equal(net.state_dict()['intro.weight'], ema.state_dict()['intro.weight'])


def test_bench_variants_differ_only_where_they_should():
    base = allinone.load_options(DEMO_OPT)
    a, b, d, f = (allinone.variant_options(base, key, iters=7) for key in 'abdf')
    assert a['network_g']['experts'] == list(RELEASED_EXPERTS) and 'gate_opt' not in a['train']
    assert b['network_g'] == base['network_g'] and 'gate_opt' not in b['train']
    assert d['train']['gate_opt'] == base['train']['gate_opt'] and d['network_g'] == base['network_g']
    assert f['train']['gate_opt'] == base['train']['gate_opt'] and f['network_g']['gate_top_k'] == 1
    assert {k: v for k, v in f['network_g'].items() if k != 'gate_top_k'} == base['network_g']
    for opt in (a, b, d, f):
        assert opt['train']['total_iter'] == 7 and opt['train']['scheduler']['periods'] == [7]
        assert opt['val'] == base['val'] and opt['logger']['save_checkpoint_freq'] == 7
        assert {k: v for k, v in opt['datasets'].items()} == dict(base['datasets'])
    assert len({a['name'], b['name'], d['name'], f['name']}) == 4


def test_a_seed_changes_the_seed_and_the_name_only():
    """``--seed``: another seed trains under another name, so ``--reuse`` never takes its checkpoint."""
    base = allinone.load_options(DEMO_OPT)
    plain, seeded = allinone.variant_options(base, 'd', iters=7), allinone.variant_options(base, 'd', iters=7, seed=11)
    assert seeded['manual_seed'] == 11 != plain['manual_seed'] and seeded['name'] == plain['name'] + '_seed11'
    assert {k: v for k, v in seeded.items() if k not in ('manual_seed', 'name')} == {
        k: v for k, v in plain.items() if k not in ('manual_seed', 'name')
    }
    assert allinone.with_seed(base, 3)['name'] == 'GMMoE_allinone_demo_seed3' and base['manual_seed'] == 10


def fake_results(gain_over_baseline, routing):
    labels = ('lowlight', 'rain', 'haze')
    network = {
        'title': '(d) supervised',
        'scores': {lb: {'psnr': 15.0 + gain_over_baseline, 'ssim': 0.8} for lb in labels},
        'routing_accuracy': routing,
        'gates': {lb: {'ColourExpert': 0.5, 'RainExpert': 0.25, 'HazeExpert': 0.25} for lb in labels},
    }
    return {
        'metrics': ['psnr', 'ssim'],
        'input': {lb: {'psnr': 10.0, 'ssim': 0.3} for lb in labels},
        'baselines': {
            lb: {'weak': {'psnr': 12.0, 'ssim': 0.4}, 'strong': {'psnr': 15.0, 'ssim': 0.5}} for lb in labels
        },
        'networks': {'d': network},
        'targets': [],
    }


def test_table_adds_the_timing_to_the_evaluation_tables():
    results = fake_results(3.5, 0.9)
    change = {'lowlight': -0.25, 'rain': 0.0, 'haze': -1.5}
    results['timing'] = dict(
        size=[400, 600],
        threads=1,
        repeats=3,
        dense_s=0.2,
        top1_s=0.1,
        ratio=0.5,
        ratio_per_label={'lowlight': 0.4, 'rain': 0.5, 'haze': 0.6},
        psnr_change=change,
    )
    text = allinone.results_table(results)
    assert '| (d) supervised | 18.50 / 0.8000 | 18.50 / 0.8000 | 18.50 / 0.8000 | 90% |' in text
    assert '| (d) supervised | +8.50 / +3.50 | +8.50 / +3.50 | +8.50 / +3.50 |' in text
    assert 'lowlight: strong' in text and '| (d) supervised | rain | 0.500 | 0.250 | 0.250 |' in text
    assert 'ratio (c)/(b) 0.50 (lowlight 0.40, rain 0.50, haze 0.60)' in text
    assert '600x400' in text and 'haze -1.50 dB' in text


@pytest.mark.parametrize(
    'gain,routing,met', [(3.5, 0.9, True), (2.5, 0.95, False), (3.5, 0.8, False), (3.5, None, False)]
)
def test_targets(gain, routing, met):
    assert all(t.met for t in allinone.targets(fake_results(gain, routing), 'd', ('d',), MAPPING)) is met


def test_targets_want_the_dense_gate_to_prefer_each_degradations_expert():
    results = fake_results(3.5, 0.9)
    missed = [t.name for t in allinone.targets(results, 'd', ('d',), MAPPING, dense_key='d') if not t.met]
    assert missed == ['(d) supervised: RainExpert preferred by rain', '(d) supervised: HazeExpert preferred by haze']
    gates = results['networks']['d']['gates']
    gates['rain']['RainExpert'], gates['haze']['HazeExpert'] = 0.3, 0.3
    assert all(t.met for t in allinone.targets(results, 'd', ('d',), MAPPING, dense_key='d'))


def test_timing_inputs_and_median_times_per_degradation():
    sets = [Pair('a', lb, np.full((30, 40, 3), i * 60, np.uint8), None) for i, lb in enumerate(('x', 'y'))]
    inputs = allinone.timing_inputs(sets, size=(16, 24))
    assert {lb: tuple(t.shape) for lb, t in inputs.items()} == {'x': (1, 3, 16, 24), 'y': (1, 3, 16, 24)}
    assert inputs['y'].mean().item() == pytest.approx(60 / 255)
    calls = []
    nets = {k: (lambda x, k=k: calls.append(k)) for k in 'bc'}
    times = allinone.median_times(nets, inputs, repeats=3)
    assert set(times) == {'b', 'c'} and set(times['b']) == {'x', 'y'}
    # one warm-up pass per network and input, then every repeat runs each network once on each input
    assert calls.count('b') == calls.count('c') == 2 + 2 * 3 and len(calls) == 16
    assert all(sorted(calls[i : i + 4]) == ['b', 'b', 'c', 'c'] for i in range(0, 16, 4))
