"""gmmoe_arch.data.degradations: one table feeds synthesis, the CLI, gate statistics' order, the evaluation's
baselines and ``baselines.BASELINES``; a degradation registered with one call gets all of them."""

import json

import cv2
import numpy as np
import pytest
import torch

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches, fills the registries)
from datasets_lmdb import synth
from datasets_lmdb.__main__ import main
from gmmoe_arch import baselines
from gmmoe_arch import evaluation as ev
from gmmoe_arch.data import degradations
from gmmoe_arch.data.image_io import DataError
from gmmoe_arch.models.gate_stats import GateStats


def veil_params(rng, **_options):
    return {'strength': round(float(rng.uniform(0.2, 0.5)), 4)}


def add_veil(img, params, rng):
    """A grey veil plus a little noise: ``(1 - s) img + s * 0.5``."""
    veiled = (1 - params['strength']) * img / 255.0 + params['strength'] * 0.5 + rng.normal(0, 0.01, img.shape)
    return np.round(np.clip(veiled, 0, 1) * 255).astype(np.uint8)


def unveil(img):
    """The veil's baseline: stretch the contrast back to the full range."""
    x = img.astype(np.float64)
    return np.round((x - x.min()) / max(x.max() - x.min(), 1) * 255).astype(np.uint8)


@pytest.fixture
def veil():
    """``veil`` registered for one test; the table restored afterwards."""
    saved = dict(degradations.TABLE)
    degradations.register_degradation('veil', veil_params, add_veil, {'contrast stretch': unveil}, 'grey veil')
    yield
    degradations.TABLE.clear()
    degradations.TABLE.update(saved)


def photos(n=2):
    rng = np.random.default_rng(0)
    return [(f'p{i}', rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for i in range(n)]


def test_everything_reads_the_table():
    assert synth.DEGRADATIONS == degradations.names() == ('lowlight', 'rain', 'haze')  # what mixed sets draw
    assert degradations.all_names() == (*degradations.names(), 'haze_bright')  # a variant, for comparison
    assert synth.KINDS == (*degradations.all_names(), 'mixed', 'regions')
    assert degradations.label_indices() == {'lowlight': 0, 'rain': 1, 'haze': 2, 'haze_bright': 3}
    assert baselines.BASELINES == {name: dict(d.baselines) for name, d in degradations.TABLE.items()}
    assert ev.choose_baselines(['haze', 'snow']) == {'haze': baselines.BASELINES['haze'], 'snow': {}}


def test_a_registered_degradation_gets_synthesis_labels_and_mixed_turns(veil, tmp_path):
    record = synth.synthesize_images(photos(), str(tmp_path / 'veil'), 'veil', seed=2, progress=False)
    assert record['counts'] == {'veil': 2} and 0.2 <= record['pairs'][0]['params']['strength'] <= 0.5
    assert (tmp_path / 'veil' / 'meta_info.txt').read_text().splitlines()[0] == 'p0.png (20,24,3) label=veil'
    again = synth.synthesize_images(photos(), str(tmp_path / 'again'), 'veil', seed=2, progress=False)
    assert again['pairs'] == record['pairs']  # seeded like the built-in ones
    mixed = synth.synthesize_images(photos(), str(tmp_path / 'mixed'), 'mixed', per_image=4, progress=False)
    assert mixed['counts'] == {'lowlight': 2, 'rain': 2, 'haze': 2, 'veil': 2}


def test_a_registered_degradation_is_a_cli_choice(veil, tmp_path, capsys):
    src = tmp_path / 'src'
    src.mkdir()
    for name, img in photos(1):
        cv2.imwrite(str(src / f'{name}.png'), img)
    out = tmp_path / 'out'
    assert main(['synth', '--degradation', 'veil', '--src', str(src), '--out', str(out), '--no-progress']) == 0
    assert json.loads((out / 'synth.json').read_text())['counts'] == {'veil': 1}
    with pytest.raises(SystemExit):
        main(['synth', '--help'])
    assert 'veil: grey veil' in capsys.readouterr().out


def test_a_registered_degradation_is_ordered_evaluated_and_has_its_baseline_row(veil, tmp_path):
    stats = GateStats()
    stats.add({'enc': torch.full((4, 3), 1 / 3)}, ['aaa', 'veil', 'rain', 'veil'])
    assert stats.labels == ['rain', 'veil', 'aaa']  # table order first, unknown labels after
    assert baselines.BASELINES['veil'] == {'contrast stretch': unveil}
    synth.synthesize_images(photos(), str(tmp_path / 'veil'), 'veil', progress=False)
    report = ev.reference_report(ev.load_pairs(str(tmp_path / 'veil')))
    assert list(report['baselines']) == ['veil'] and list(report['baselines']['veil']) == ['contrast stretch']
    assert '| contrast stretch |' in ev.markdown(report)


def test_register_refuses_names_that_cannot_be_labels():
    for kind in ('mixed', 'regions'):
        with pytest.raises(ValueError, match=f'register_degradation: "{kind}" is a kind that combines'):
            degradations.register_degradation(kind, veil_params, add_veil)
    for name in ('two words', '', 'a/b', None):
        with pytest.raises(DataError, match=f'register_degradation: bad label {name!r}'):
            degradations.register_degradation(name, veil_params, add_veil)
    assert degradations.names() == ('lowlight', 'rain', 'haze')
