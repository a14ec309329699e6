"""datasets_lmdb: packing, stored forms, verify, re-runs and the command line."""

import os

import cv2
import lmdb
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset

from datasets_lmdb import pack_pairs, pack_preset, verify
from datasets_lmdb.__main__ import main
from gmmoe_arch.data.image_io import DataError, decode

from helpers import lmdb_value, write_pairs


def pack(src, out, **kwargs):
    kwargs = {'workers': 1, 'progress': False, **kwargs}
    return pack_pairs(str(src / 'lq'), str(src / 'gt'), str(out), **kwargs)


def put(db, key, value):
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(key.encode(), value)
    env.close()


@pytest.mark.parametrize('form, line', [('raw', '000.raw (48,40,3) uint8'), ('png', '000.png (48,40,3) 1')])
def test_pack_writes_shared_keys_meta_info_and_exact_pixels(tmp_path, form, line):
    src = write_pairs(tmp_path / 'src', n=3)
    assert pack(src, tmp_path / 'out', form=form) == 3
    for side in ('lq', 'gt'):
        meta = (tmp_path / 'out' / f'{side}.lmdb' / 'meta_info.txt').read_text().splitlines()
        assert meta[0] == line and len(meta) == 3
        for key in ('000', '001', '002'):
            expected = cv2.imread(str(src / side / f'{key}.png'), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(decode(lmdb_value(tmp_path / 'out' / f'{side}.lmdb', key), key), expected)
    assert verify(str(tmp_path / 'out'), progress=False)[1] == []


def test_png_form_is_readable_by_basicsr_paired_dataset(tmp_path):
    src = write_pairs(tmp_path / 'src', n=2)
    pack(src, tmp_path / 'out', form='png')
    opt = {
        'name': 'b',
        'type': 'PairedImageDataset',
        'phase': 'val',
        'scale': 1,
        'filename_tmpl': '{}',
        'io_backend': {'type': 'lmdb'},
        'dataroot_lq': str(tmp_path / 'out' / 'lq.lmdb'),
        'dataroot_gt': str(tmp_path / 'out' / 'gt.lmdb'),
    }
    ours = dict(opt, type='LLIEPairedDataset')
    assert torch.equal(build_dataset(opt)[1]['gt'], build_dataset(ours)[1]['gt'])


def test_reader_processes_store_the_same_bytes(tmp_path):
    src = write_pairs(tmp_path / 'src', n=5)
    pack(src, tmp_path / 'one', workers=1)
    pack(src, tmp_path / 'two', workers=2)
    for key in ('000', '004'):
        assert lmdb_value(tmp_path / 'one' / 'lq.lmdb', key) == lmdb_value(tmp_path / 'two' / 'lq.lmdb', key)
    assert (tmp_path / 'one' / 'gt.lmdb' / 'meta_info.txt').read_text() == (
        tmp_path / 'two' / 'gt.lmdb' / 'meta_info.txt'
    ).read_text()


def test_16_bit_and_grayscale_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    for side in ('lq', 'gt'):
        os.makedirs(tmp_path / side)
        cv2.imwrite(str(tmp_path / side / 'deep.png'), rng.integers(0, 65536, (8, 6, 3)).astype(np.uint16))
        cv2.imwrite(str(tmp_path / side / 'gray.png'), rng.integers(0, 256, (8, 6)).astype(np.uint8))
    pack(tmp_path, tmp_path / 'out')
    meta = (tmp_path / 'out' / 'gt.lmdb' / 'meta_info.txt').read_text().splitlines()
    assert meta == ['deep.raw (8,6,3) uint16', 'gray.raw (8,6,1) uint8']
    assert verify(str(tmp_path / 'out'), progress=False)[1] == []


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_verify_names_a_corrupted_entry(tmp_path, damage, capsys):
    src = write_pairs(tmp_path / 'src', n=3)
    pack(src, tmp_path / 'out')
    db = tmp_path / 'out' / 'gt.lmdb'
    put(db, '001', b'not an image' if damage == 'garbage' else lmdb_value(db, '001')[:-10])
    checked, problems = verify(str(tmp_path / 'out'), progress=False)
    assert checked == {str(tmp_path / 'out' / 'gt.lmdb'): 3, str(tmp_path / 'out' / 'lq.lmdb'): 3}
    assert len(problems) == 1 and 'gt.lmdb: key 001' in problems[0]
    assert main(['verify', str(tmp_path / 'out'), '--no-progress']) == 1
    out = capsys.readouterr().out
    assert 'key 001' in out and 'FAILED' in out


def test_verify_finds_meta_info_disagreements(tmp_path):
    src = write_pairs(tmp_path / 'src', n=3)
    pack(src, tmp_path / 'out')
    put(tmp_path / 'out' / 'lq.lmdb', 'stray', lmdb_value(tmp_path / 'out' / 'lq.lmdb', '000'))
    meta = tmp_path / 'out' / 'gt.lmdb' / 'meta_info.txt'
    meta.write_text(meta.read_text().replace('002.raw (48,40,3)', '002.raw (48,41,3)'))
    problems = verify(str(tmp_path / 'out'), progress=False)[1]
    assert any('key stray is stored but not listed' in p for p in problems)
    assert any('key 002 decodes to (48, 40, 3), meta_info.txt says (48, 41, 3)' in p for p in problems)
    assert any('key 002: lq (48, 40) and gt (48, 41) differ' in p for p in problems)


def test_rerun_refuses_then_overwrites(tmp_path):
    src = write_pairs(tmp_path / 'src', n=3)
    pack(src, tmp_path / 'out')
    assert verify(str(tmp_path / 'out'), progress=False)[1] == []  # keeps the environments open
    with pytest.raises(FileExistsError, match='lq.lmdb.*--overwrite'):
        pack(src, tmp_path / 'out')
    os.remove(src / 'lq' / '002.png')
    os.remove(src / 'gt' / '002.png')
    assert pack(src, tmp_path / 'out', overwrite=True) == 2
    assert verify(str(tmp_path / 'out'), progress=False) == (
        {str(tmp_path / 'out' / 'gt.lmdb'): 2, str(tmp_path / 'out' / 'lq.lmdb'): 2},
        [],
    )


def test_failed_pack_leaves_no_partial_database(tmp_path):
    src = write_pairs(tmp_path / 'src', n=4)
    pack(src, tmp_path / 'out')
    before = lmdb_value(tmp_path / 'out' / 'gt.lmdb', '003')
    png = (src / 'gt' / '003.png').read_bytes()
    (src / 'gt' / '003.png').write_bytes(png[: len(png) // 2])  # header intact, pixels cut off
    with pytest.raises(DataError, match=r'003\.png: not a decodable image'):
        pack(src, tmp_path / 'out', overwrite=True, workers=2)
    assert sorted(os.listdir(tmp_path / 'out')) == ['gt.lmdb', 'lq.lmdb']  # no .partial-* left
    assert lmdb_value(tmp_path / 'out' / 'gt.lmdb', '003') == before  # the old database is untouched
    with pytest.raises(ValueError):
        pack(src, tmp_path / 'fresh')
    assert os.listdir(tmp_path / 'fresh') == []


def test_leftover_of_a_killed_run_is_removed(tmp_path):
    src = write_pairs(tmp_path / 'src', n=1)
    dead = tmp_path / 'out' / f'.partial-{2**22 + 1}-x' / 'lq.lmdb'
    dead.mkdir(parents=True)
    pack(src, tmp_path / 'out')
    assert sorted(os.listdir(tmp_path / 'out')) == ['gt.lmdb', 'lq.lmdb']


def test_unpaired_and_non_ascii_names_are_refused(tmp_path):
    src = write_pairs(tmp_path / 'src', n=2)
    os.rename(src / 'gt' / '001.png', src / 'gt' / '009.png')
    with pytest.raises(ValueError, match=r'without a partner: 001.*without a partner: 009'):
        pack(src, tmp_path / 'out')
    assert pack(src, tmp_path / 'out', skip_unpaired=True) == 1
    os.rename(src / 'gt' / '009.png', src / 'gt' / 'é.png')
    os.rename(src / 'lq' / '001.png', src / 'lq' / 'é.png')
    with pytest.raises(ValueError, match='ASCII.*é'):
        pack(src, tmp_path / 'other')


def test_preset_with_wrong_root_shows_the_expected_tree(tmp_path, capsys):
    (tmp_path / 'our485' / 'low').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r'missing: .*our485/high.*Expected:\n  train: '):
        pack_preset('lol_v1', str(tmp_path), str(tmp_path / 'out'))
    assert main(['pack', '--preset', 'lol_v1', '--root', str(tmp_path), '--out', str(tmp_path / 'out')]) == 2
    assert 'eval15/low' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
    'rule',
    [r'rain-(.*)->norain-\1', '{"lq": "rain-(.*)", "gt": "norain-\\\\1"}', "{lq: 'rain-(.*)', gt: 'norain-\\1'}"],
)
def test_cli_generic_pack_with_regex_rule(tmp_path, capsys, rule):
    """The arrow form, the README's JSON form (as the shell passes it) and YAML's flow mapping."""
    rng = np.random.default_rng(1)
    for i in (1, 2):
        for folder, name in (('in', f'rain-{i}.jpg'), ('target', f'norain-{i}.jpg')):
            os.makedirs(tmp_path / folder, exist_ok=True)
            cv2.imwrite(str(tmp_path / folder / name), rng.integers(0, 256, (16, 12, 3)).astype(np.uint8))
    argv = [
        'pack',
        '--lq',
        str(tmp_path / 'in'),
        '--gt',
        str(tmp_path / 'target'),
        '--out',
        str(tmp_path / 'db'),
        '--pair-rule',
        rule,
        '--workers',
        '1',
        '--no-progress',
    ]
    assert main(argv) == 0
    assert '2 pairs' in capsys.readouterr().out
    assert (tmp_path / 'db' / 'lq.lmdb' / 'meta_info.txt').read_text().split()[0] == 'rain-1.raw'
    assert main(argv) == 2 and '--overwrite' in capsys.readouterr().err
    assert main(['verify', str(tmp_path / 'db'), '--no-progress']) == 0


def test_preset_checks_every_split_before_writing(tmp_path):
    rng = np.random.default_rng(2)
    for folder, name in (
        ('our485/low', '1.png'),
        ('our485/high', '1.png'),
        ('eval15/low', '5.png'),
        ('eval15/high', '6.png'),
    ):
        os.makedirs(tmp_path / folder)
        cv2.imwrite(str(tmp_path / folder / name), rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
    with pytest.raises(ValueError, match=r'eval15/low without a partner: 5'):
        pack_preset('lol_v1', str(tmp_path), str(tmp_path / 'out'), workers=1, progress=False)
    assert not (tmp_path / 'out').exists()


def test_cli_bad_json_pair_rule_is_one_line(tmp_path, capsys):
    write_pairs(tmp_path, n=1)
    argv = [
        'pack',
        '--lq',
        str(tmp_path / 'lq'),
        '--gt',
        str(tmp_path / 'gt'),
        '--out',
        str(tmp_path / 'db'),
        '--pair-rule',
        '{"lq": "rain-(.*)", "gt": "norain-\\1"',
        '--no-progress',
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'pair_rule' in err and 'JSON/YAML' in err
