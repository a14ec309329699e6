"""datasets_lmdb.baseline_check: the classical baselines scored on in-memory syntheses of the held-out photographs
are those of the same pairs written by synth and read back by the evaluation."""

import pytest

import gmmoe_arch  # noqa: F401,I001  (first: applies the basicsr compat patches)
from datasets_lmdb import baseline_check
from datasets_lmdb.demo import TRAIN_PHOTOS, VAL_PHOTOS, load_photo
from datasets_lmdb.synth import synthesize_images
from gmmoe_arch import evaluation as ev

SIDE = 40


def test_table_scores_the_pairs_synth_writes(tmp_path):
    table = baseline_check.baseline_table(('haze', 'haze_bright'), side=SIDE, per_image=2, seed=3)
    assert set(table) == {'haze', 'haze_bright'}
    assert list(table['haze']) == ['input', *baseline_check.HAZE_BASELINES]
    assert not set(VAL_PHOTOS) & set(TRAIN_PHOTOS)  # held out from every demo's training
    images = [(name, load_photo(name, SIDE)) for name in VAL_PHOTOS]
    for kind in table:
        synthesize_images(images, str(tmp_path / kind), kind, seed=3, per_image=2, progress=False)
        pairs = ev.load_pairs(str(tmp_path / kind))
        assert table[kind]['input'] == pytest.approx(ev.score([(p.lq, p.gt) for p in pairs]))
        for name, fn in baseline_check.HAZE_BASELINES.items():
            assert table[kind][name] == pytest.approx(ev.score([(fn(p.lq), p.gt) for p in pairs]))
        assert table[kind]['DCP + guided filter']['psnr'] > table[kind]['input']['psnr']
    text = baseline_check.markdown(table)
    assert text.count('\n') == 1 + 2 * 3 and f'| `haze` | input | {table["haze"]["input"]["psnr"]:.2f} |' in text


def test_command_prints_the_table(capsys):
    assert baseline_check.main(['--kinds', 'haze', '--side', '24', '--per-image', '1']) == 0
    out = capsys.readouterr().out
    assert out.startswith('3 held-out photographs (astronaut, chelsea, coffee) x 1, 24 px') and '| `haze` | DCP' in out
    with pytest.raises(SystemExit):
        baseline_check.main(['--side', '4'])
