"""gmmoe_arch.evaluation: pairs from folders and LMDBs, scores per label, baselines, a network's gates and routing
accuracy, the report's JSON and Markdown, targets as data."""

import json

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from datasets_lmdb.synth import synthesize_images
from gmmoe_arch import GMMoE
from gmmoe_arch import evaluation as ev
from gmmoe_arch.baselines import BASELINES
from gmmoe_arch.data.image_io import DataError

EXPERTS = ['ColourExpert', 'DetailExpert', 'FeatureExpert', 'RainExpert', 'HazeExpert']
MAPPING = {'lowlight': 'ColourExpert', 'rain': 'RainExpert', 'haze': 'HazeExpert'}


def photos(n=2, size=(24, 32)):
    rng = np.random.default_rng(0)
    base = cv2.resize((rng.random((6, 8, 3)) * 255).astype(np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
    return [(f'p{i}', np.roll(base, 5 * i, axis=1)) for i in range(n)]


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
    """A labelled mixed set (6 pairs, 2 per degradation): ``out/{lq,gt}``, ``meta_info.txt``, ``out/lmdb``."""
    out = tmp_path_factory.mktemp('evaluation') / 'mixed'
    synthesize_images(photos(), str(out), 'mixed', seed=1, per_image=3, lmdb=True, progress=False)
    return out


@pytest.fixture(scope='module')
def tiny_net():
    torch.manual_seed(0)
    return GMMoE(width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1], experts=EXPERTS).eval()


def test_folder_and_lmdb_give_the_same_labelled_pairs(mixed):
    folder, packed = ev.load_pairs(str(mixed)), ev.load_pairs(str(mixed / 'lmdb'))
    assert [(p.name, p.label) for p in folder] == [(p.name, p.label) for p in packed]
    assert {lb: len(g) for lb, g in ev.by_label(folder).items()} == {'lowlight': 2, 'rain': 2, 'haze': 2}
    for a, b in zip(folder, packed):
        assert a.lq.dtype == np.uint8 and a.lq.shape == (24, 32, 3)
        np.testing.assert_array_equal(a.lq, b.lq)
        np.testing.assert_array_equal(a.gt, b.gt)
    on_disk = cv2.cvtColor(cv2.imread(str(mixed / 'lq' / f'{folder[0].name}.png')), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(folder[0].lq, on_disk)  # RGB, exact 8-bit values


def test_labels_filter_and_label_override(mixed):
    assert {p.label for p in ev.load_pairs(str(mixed), labels=['rain'])} == {'rain'}
    assert {p.label for p in ev.load_pairs(str(mixed), label='haze')} == {'haze'}
    with pytest.raises(ev.EvaluationError, match='--labels snow: no pair'):
        ev.load_pairs(str(mixed), labels=['snow'])


def test_unlabelled_low_high_folders(tmp_path):
    for side in ('low', 'high'):
        (tmp_path / side).mkdir()
        cv2.imwrite(str(tmp_path / side / 'a.png'), np.full((8, 8, 3), 40 if side == 'low' else 200, np.uint8))
    (pair,) = ev.load_pairs(str(tmp_path))
    assert pair.label == ev.UNLABELLED and pair.name == 'a' and pair.lq.max() == 40


def test_bad_data_is_one_line_naming_it(tmp_path):
    with pytest.raises(ev.EvaluationError, match=f'--data {tmp_path / "nope"}: no such folder'):
        ev.load_pairs(str(tmp_path / 'nope'))
    with pytest.raises(ev.EvaluationError, match='expected lq.lmdb and gt.lmdb, lq/ and gt/'):
        ev.load_pairs(str(tmp_path))
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'gt').mkdir()
    cv2.imwrite(str(tmp_path / 'lq' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match='--data .*dataroot_gt: no images'):
        ev.load_pairs(str(tmp_path))


def test_scores_are_basicsr_metrics_per_label(mixed):
    pairs = ev.load_pairs(str(mixed))
    inputs = ev.input_scores(pairs, ev.ALL_METRICS)
    rain = [p for p in pairs if p.label == 'rain']
    assert inputs['rain']['psnr'] == pytest.approx(np.mean([calculate_psnr(p.lq, p.gt, 0) for p in rain]))
    assert inputs['rain']['psnr_released'] != pytest.approx(inputs['rain']['psnr'])  # crop and offset differ
    baselines = ev.baseline_scores(pairs)
    assert {lb: set(t) for lb, t in baselines.items()} == {lb: set(BASELINES[lb]) for lb in baselines}
    chosen = ev.baseline_scores(pairs, ev.choose_baselines(['rain', 'haze', 'lowlight'], ['CLAHE']))
    assert all(set(t) == {'CLAHE'} for t in chosen.values())
    assert ev.best_baseline(baselines, 'lowlight')[0] in BASELINES['lowlight']
    with pytest.raises(ev.EvaluationError, match='--baselines snow: unknown'):
        ev.choose_baselines(['rain'], ['snow'])


def test_network_scores_gates_and_routing(mixed, tiny_net):
    pairs = ev.load_pairs(str(mixed))
    report, results = ev.evaluate(pairs, {'tiny': ('tiny GM-MoE', tiny_net)}, mapping=MAPPING)
    entry, result = report['networks']['tiny'], results['tiny']
    assert set(entry['scores']) == {'lowlight', 'rain', 'haze'} and result.experts == EXPERTS
    assert all(abs(sum(w.values()) - 1) < 1e-6 for w in entry['gates'].values())
    vectors, labels = result.stats.vectors()
    predicted = [max(MAPPING, key=lambda lb, v=v: v[EXPERTS.index(MAPPING[lb])]) for v in vectors.tolist()]
    assert entry['routing_accuracy'] == pytest.approx(np.mean([p == t for p, t in zip(predicted, labels)]))
    out = result.outputs['rain'][0]
    with torch.no_grad():
        direct = tiny_net(torch.from_numpy(pairs[1].lq.astype(np.float32) / 255).permute(2, 0, 1)[None])
    assert pairs[1].label == 'rain'
    np.testing.assert_array_equal(out, np.rint(direct[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255))
    assert entry['scores']['rain']['psnr'] == pytest.approx(
        np.mean([calculate_psnr(o, p.gt, 0) for o, p in zip(result.outputs['rain'], ev.by_label(pairs)['rain'])])
    )
    assert ev.run_network(tiny_net, pairs, {'rain': 'NoSuchExpert'}).routing_accuracy is None
    assert ev.run_network(tiny_net, pairs).routing_accuracy is None


def test_json_and_markdown_shape(mixed, tiny_net, tmp_path):
    pairs = ev.load_pairs(str(mixed))
    report, _ = ev.evaluate(pairs, {'tiny': ('tiny GM-MoE', tiny_net)}, metrics=ev.ALL_METRICS, mapping=MAPPING)
    ev.set_targets(report, ev.gain_over_input(report, 'tiny', 50.0))
    ev.write_json(report, tmp_path / 'r.json')
    loaded = json.loads((tmp_path / 'r.json').read_text())
    assert loaded['data']['pairs'] == {'lowlight': 2, 'rain': 2, 'haze': 2}
    assert set(loaded['input']['haze']) == set(ev.ALL_METRICS) and loaded['targets'][0]['met'] is False
    text = ev.markdown(loaded)
    assert text.count('| tiny GM-MoE |') == 3 + 3  # ours, released, gains; a gate row per label
    rain = loaded['networks']['tiny']['scores']['rain']
    assert f'{rain["psnr"]:.2f} / {rain["ssim"]:.4f}' in text and 'routing accuracy |' in text
    assert f'{rain["psnr_released"]:.2f} / {rain["ssim_released"]:.4f}' in text
    assert 'median 5x5' in text and 'MISSED: lowlight: PSNR over the input' in text


def test_single_label_table_has_a_column_per_metric(mixed):
    report = ev.reference_report(ev.load_pairs(str(mixed), label='lowlight'), metrics=('psnr', 'ssim'))
    lines = ev.markdown(report).splitlines()
    assert lines[0] == '| method | PSNR (dB) | SSIM |'
    assert [line.split(' | ')[0] for line in lines[2:]] == ['| input', '| gamma correction', '| CLAHE']


def fake_report(gain, routing):
    labels = ('lowlight', 'rain', 'haze')
    scores = {lb: {'psnr': 15.0 + gain, 'ssim': 0.8} for lb in labels}
    return {
        'input': {lb: {'psnr': 10.0, 'ssim': 0.3} for lb in labels},
        'baselines': {lb: {'weak': {'psnr': 12.0}, 'strong': {'psnr': 15.0}} for lb in labels},
        'networks': {
            'd': {
                'title': '(d)',
                'scores': scores,
                'routing_accuracy': routing,
                'gates': {lb: {'RainExpert': 0.2, 'HazeExpert': 0.2} for lb in labels},
            }
        },
    }


@pytest.mark.parametrize(
    'gain,routing,met', [(3.5, 0.9, True), (2.5, 0.95, False), (3.5, 0.8, False), (3.5, None, False)]
)
def test_targets_are_data(gain, routing, met):
    report = fake_report(gain, routing)
    targets = ev.gain_over_best_baseline(report, 'd', 3.0) + ev.routing_at_least(report, 'd', 0.9)
    assert [t.name for t in targets][:3] == [f'{lb}: PSNR over strong' for lb in ('lowlight', 'rain', 'haze')]
    assert targets[0].value == pytest.approx(gain) and targets[-1].threshold == 0.9
    assert ev.verdict(targets)[0] is met
    assert all(t.to_dict()['met'] is t.met for t in targets)


def test_expert_preference_and_strict_gain():
    report = fake_report(3.0, 0.9)
    assert not ev.expert_preferred(report, 'd', 'rain', 'RainExpert')[0].met  # equal weights everywhere
    report['networks']['d']['gates']['rain']['RainExpert'] = 0.3
    assert ev.expert_preferred(report, 'd', 'rain', 'RainExpert')[0].met
    assert ev.gain_over_best_baseline(report, 'd', 3.0)[0].met
    assert not ev.gain_over_best_baseline(report, 'd', 3.0, strict=True)[0].met
    met, text = ev.verdict(ev.gain_over_input(report, 'd', 9.0))
    assert not met and text.startswith('TARGETS MISSED: lowlight: PSNR over the input: +8.00 dB (target >= +9.00 dB)')
