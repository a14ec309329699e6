"""Fault injection for packing, verifying and reading LMDBs (issue 11): concurrent packs, SIGKILL between
steps, flipped bytes, truncated and damaged ``data.mdb``, truncated JPEGs, decompression bombs, a full disk.

Processes are forked from the test process (no interpreter start-up per case); a child that would die of
SIGBUS or SIGKILL is reported by its exit status instead of taking the test run with it.
"""

import os
import signal
import struct
import sys
import time
import traceback
import zlib

import cv2
import lmdb
import numpy as np
import pytest
from basicsr.data import build_dataset

from datasets_lmdb import pack_pairs, verify
from datasets_lmdb.__main__ import main
from datasets_lmdb.output import PackError
from gmmoe_arch.data.image_io import LEGACY_RAW_MAGIC, MAX_PIXELS, DataError, MissingDataError, decode

from helpers import enospc_writes, lmdb_value, write_pairs


def start(fn, *args):
    """Fork a child running ``fn(*args)`` with its output to a log -> ``(pid, log path)``; see :func:`finish`."""
    log = f'/tmp/gmmoe-fork-{os.getpid()}-{time.monotonic_ns()}.log'
    pid = os.fork()
    if pid == 0:
        rc = 99
        try:
            out = open(log, 'w', buffering=1)
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = out
            rc = fn(*args) or 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(rc)
    return pid, log


def finish(child):
    """Wait for a :func:`start` ed child -> ``(exit code or -signal, its stdout+stderr)``."""
    pid, log = child
    status = os.waitpid(pid, 0)[1]
    with open(log) as f:
        text = f.read()
    os.remove(log)
    return os.waitstatus_to_exitcode(status), text


def forked(fn, *args):
    """Run ``fn(*args)`` in a forked child -> ``(exit code or -signal, its stdout+stderr)``."""
    return finish(start(fn, *args))


def cli_pack(src, out, *extra):
    return main(
        [
            'pack',
            '--lq',
            str(src / 'lq'),
            '--gt',
            str(src / 'gt'),
            '--out',
            str(out),
            '--workers',
            '1',
            '--no-progress',
            *extra,
        ]
    )


def lmdb_options(out, **io):
    return {
        'name': 'faults',
        'type': 'LLIEPairedDataset',
        'phase': 'val',
        'dataroot_lq': str(out / 'lq.lmdb'),
        'dataroot_gt': str(out / 'gt.lmdb'),
        'io_backend': {'type': 'lmdb', **io},
    }


def data_error(fn):
    """The ``DataError`` message ``fn()`` raises (fails the test if it raises nothing or something else)."""
    with pytest.raises(DataError) as info:
        fn()
    assert '\n' not in str(info.value)
    return str(info.value)


def last_line_only(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in text, text
    return lines[0]


# ---- 1. two packs into one folder ----


def test_second_pack_into_a_busy_folder_fails_fast_naming_folder_and_holder(tmp_path):
    first, second = write_pairs(tmp_path / 'a', n=3), write_pairs(tmp_path / 'b', n=5, seed=1)
    out, go = tmp_path / 'out', tmp_path / 'go'

    def slow_pack():
        import datasets_lmdb.pack as pack_module

        store = pack_module._store

        def wait_then_store(*args):
            (tmp_path / 'holding').touch()
            while not go.exists():
                time.sleep(0.02)
            return store(*args)

        pack_module._store = wait_then_store
        return cli_pack(first, out)

    holder = start(slow_pack)
    while not (tmp_path / 'holding').exists():
        time.sleep(0.02)
    started = time.monotonic()
    rc, text = forked(cli_pack, second, out, '--overwrite')
    assert time.monotonic() - started < 5  # fails at once, does not wait for the holder
    assert rc == 2
    line = last_line_only(text)
    assert str(out) in line and f'pid {holder[0]}' in line and 'another `datasets_lmdb pack`' in line
    go.touch()
    assert finish(holder)[0] == 0
    assert verify(str(out), progress=False) == ({str(out / 'gt.lmdb'): 3, str(out / 'lq.lmdb'): 3}, [])
    assert sorted(os.listdir(out)) == ['gt.lmdb', 'lq.lmdb']  # the lock file is gone too


def test_racing_packs_never_both_succeed(tmp_path):
    sources = write_pairs(tmp_path / 'a', n=3), write_pairs(tmp_path / 'b', n=5, seed=1)
    for trial in range(4):
        out = tmp_path / f'out{trial}'
        children = [start(cli_pack, src, out) for src in sources]
        codes = [finish(child)[0] for child in children]
        assert sorted(codes) == [0, 2], codes
        winner = sources[codes.index(0)]
        n = len(os.listdir(winner / 'lq'))
        assert verify(str(out), progress=False) == ({str(out / 'gt.lmdb'): n, str(out / 'lq.lmdb'): n}, [])


# ---- 2. SIGKILL while lq/gt are replaced, and a pair mixed from two runs ----


def kill_at_rename(target, src, out):
    """Pack with ``--overwrite`` and SIGKILL this process just before it renames onto ``target``."""
    rename = os.rename

    def rename_or_die(a, b):
        if os.path.basename(b) == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return rename(a, b)

    os.rename = rename_or_die
    return cli_pack(src, out, '--overwrite')


@pytest.mark.parametrize('target, survivor', [('previous-gt.lmdb', 'gt.lmdb'), ('gt.lmdb', 'lq.lmdb')])
def test_kill_while_replacing_is_refused_by_verify_and_dataset(tmp_path, capsys, target, survivor):
    old, new = write_pairs(tmp_path / 'old', n=2), write_pairs(tmp_path / 'new', n=3, seed=1)
    out = tmp_path / 'out'
    assert cli_pack(old, out) == 0
    rc, _ = forked(kill_at_rename, target, new, out)
    assert rc == -signal.SIGKILL
    assert survivor in os.listdir(out)
    capsys.readouterr()
    assert main(['verify', str(out), '--no-progress']) == 1
    report = capsys.readouterr().out
    assert f'PROBLEM: {out / survivor}: no sibling' in report and 'interrupted' in report
    assert f'.lmdb of {out}, their only copy' in report and f'restore with `datasets_lmdb restore {out}`' in report
    assert 'FAILED' in report
    message = data_error(lambda: build_dataset(lmdb_options(out)))
    assert 'not found' in message and 'datasets_lmdb' in message
    assert cli_pack(new, out, '--overwrite') == 0
    assert verify(str(out), progress=False)[1] == []
    assert sorted(os.listdir(out)) == ['gt.lmdb', 'lq.lmdb']


def test_kill_with_both_old_databases_aside_never_loses_them(tmp_path, capsys):
    """Killed after moving both old databases into its partial folder: they are the only copy of the old pair."""
    old, new = write_pairs(tmp_path / 'old', n=2), write_pairs(tmp_path / 'new', n=3, seed=1)
    out = tmp_path / 'out'
    assert cli_pack(old, out) == 0
    before = [lmdb_value(out / f'{side}.lmdb', '001') for side in ('lq', 'gt')]
    assert forked(kill_at_rename, 'lq.lmdb', new, out)[0] == -signal.SIGKILL
    assert [n for n in os.listdir(out) if n.endswith('.lmdb')] == []
    (leftover,) = [out / n for n in os.listdir(out) if n.startswith('.partial-')]
    capsys.readouterr()
    assert main(['verify', str(out), '--no-progress']) == 2
    said = capsys.readouterr().err
    assert f'{leftover}: holds the previous lq.lmdb/gt.lmdb of {out}, their only copy' in said
    assert f'restore with `datasets_lmdb restore {out}`' in said
    # A plain pack restores them first, then refuses to replace them without --overwrite.
    assert cli_pack(new, out) == 2
    said = capsys.readouterr()
    assert f'restored the previous lq.lmdb/gt.lmdb of {out} from {leftover}' in said.out
    assert 'already exist' in said.err and '--overwrite' in said.err
    assert [lmdb_value(out / f'{side}.lmdb', '001') for side in ('lq', 'gt')] == before
    assert verify(str(out), progress=False)[1] == [] and sorted(os.listdir(out)) == ['gt.lmdb', 'lq.lmdb']


@pytest.mark.parametrize('target', ['previous-lq.lmdb', 'previous-gt.lmdb', 'lq.lmdb', 'gt.lmdb'])
def test_restore_after_a_kill_at_any_rename_brings_back_the_old_pair(tmp_path, capsys, target):
    old, new = write_pairs(tmp_path / 'old', n=2), write_pairs(tmp_path / 'new', n=3, seed=1)
    out = tmp_path / 'out'
    assert cli_pack(old, out) == 0
    before = [lmdb_value(out / f'{side}.lmdb', '001') for side in ('lq', 'gt')]
    assert forked(kill_at_rename, target, new, out)[0] == -signal.SIGKILL
    capsys.readouterr()
    assert main(['restore', str(out)]) == 0
    said = capsys.readouterr().out
    assert ('restored the previous' in said) == (target != 'previous-lq.lmdb')  # before the first rename: nothing moved
    assert [lmdb_value(out / f'{side}.lmdb', '001') for side in ('lq', 'gt')] == before
    assert verify(str(out), progress=False)[1] == [] and sorted(os.listdir(out)) == ['gt.lmdb', 'lq.lmdb']


def test_kill_while_removing_the_replaced_pair_keeps_it_and_says_so(tmp_path, capsys):
    old, new = write_pairs(tmp_path / 'old', n=2), write_pairs(tmp_path / 'new', n=3, seed=1)
    out = tmp_path / 'out'
    assert cli_pack(old, out) == 0

    def die_in_cleanup():
        import shutil

        rmtree = shutil.rmtree

        def rmtree_or_die(path, *args, **kwargs):
            if os.path.isdir(os.path.join(path, 'previous-lq.lmdb')):
                os.kill(os.getpid(), signal.SIGKILL)
            return rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree_or_die
        return cli_pack(new, out, '--overwrite')

    assert forked(die_in_cleanup)[0] == -signal.SIGKILL
    (leftover,) = [out / n for n in os.listdir(out) if n.startswith('.partial-')]
    capsys.readouterr()
    assert main(['verify', str(out), '--no-progress']) == 0  # the new pair is complete
    said = capsys.readouterr().out
    assert f'NOTE: {leftover}: holds the previous lq.lmdb/gt.lmdb of {out}, replaced by a pack' in said
    assert cli_pack(new, out, '--overwrite') == 0
    assert f'kept {leftover}: holds the previous' in capsys.readouterr().out
    assert sorted(os.listdir(leftover)) == ['previous-gt.lmdb', 'previous-lq.lmdb']


def test_lq_and_gt_from_different_runs_are_refused(tmp_path, capsys):
    """The state the issue found (a new lq.lmdb beside the old gt.lmdb), however it came about."""
    old, new = write_pairs(tmp_path / 'old', n=3), write_pairs(tmp_path / 'new', n=3, seed=1)
    assert cli_pack(old, tmp_path / 'out') == 0 and cli_pack(new, tmp_path / 'other') == 0
    os.rename(tmp_path / 'out' / 'lq.lmdb', tmp_path / 'stale-lq.lmdb')
    os.rename(tmp_path / 'other' / 'lq.lmdb', tmp_path / 'out' / 'lq.lmdb')
    capsys.readouterr()
    assert main(['verify', str(tmp_path / 'out'), '--no-progress']) == 1
    assert 'come from different pack runs' in capsys.readouterr().out
    message = data_error(lambda: build_dataset(lmdb_options(tmp_path / 'out')))
    assert 'different pack runs' in message and '--overwrite' in message


def test_kill_while_writing_keeps_the_old_pair_and_verify_names_the_leftover(tmp_path, capsys):
    old, new = write_pairs(tmp_path / 'old', n=2), write_pairs(tmp_path / 'new', n=3, seed=1)
    out = tmp_path / 'out'
    assert cli_pack(old, out) == 0
    before = lmdb_value(out / 'gt.lmdb', '001')

    def die_on_second_put():
        import datasets_lmdb.pack as pack_module

        put, calls = pack_module._Writer.put, []

        def put_or_die(self, *args):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return put(self, *args)

        pack_module._Writer.put = put_or_die
        return cli_pack(new, out, '--overwrite')

    assert forked(die_on_second_put)[0] == -signal.SIGKILL
    assert lmdb_value(out / 'gt.lmdb', '001') == before
    capsys.readouterr()
    assert main(['verify', str(out), '--no-progress']) == 0  # the databases are sound; the leftover is named
    report = capsys.readouterr().out
    assert 'NOTE:' in report and '.partial-' in report and 'leftover of an interrupted pack' in report
    assert report.rstrip().endswith('OK')
    assert len(build_dataset(lmdb_options(out))) == 2


# ---- 3. verify's blind spots ----


def test_flipped_byte_in_a_raw_entry_is_found_by_verify_and_on_request_by_the_dataset(tmp_path, capsys):
    out = tmp_path / 'out'
    assert cli_pack(write_pairs(tmp_path / 'src', n=3), out) == 0
    env = lmdb.open(str(out / 'gt.lmdb'))
    with env.begin(write=True) as txn:
        value = bytearray(txn.get(b'001'))
        value[len(value) // 2] ^= 0x10
        txn.put(b'001', bytes(value))
    env.close()
    capsys.readouterr()
    assert main(['verify', str(out), '--no-progress']) == 1
    assert 'gt.lmdb: key 001: checksum mismatch' in capsys.readouterr().out
    checked = build_dataset(lmdb_options(out, verify_checksum=True))
    message = data_error(lambda: checked[1])
    assert 'key 001' in message and 'checksum mismatch' in message and 'faults' in message
    assert checked[0]['gt'].shape == (3, 48, 40)  # intact entries still read
    build_dataset(lmdb_options(out))[1]  # without the option nothing is checked (no cost)


def test_legacy_raw_entries_without_checksum_stay_readable(tmp_path, capsys):
    out = tmp_path / 'out'
    assert cli_pack(write_pairs(tmp_path / 'src', n=2), out) == 0
    for side in ('lq', 'gt'):
        env = lmdb.open(str(out / f'{side}.lmdb'))
        with env.begin(write=True) as txn:
            for key in (b'000', b'001'):
                value = txn.get(key)  # the first raw form: 18-byte header, no CRC
                txn.put(key, LEGACY_RAW_MAGIC + value[4:18] + value[22:])
        env.close()
    fresh = build_dataset(lmdb_options(out, verify_checksum=True))[1]
    assert fresh['gt'].shape == (3, 48, 40)
    capsys.readouterr()
    assert main(['verify', str(out), '--no-progress']) == 0
    assert '2 raw entries carry no checksum' in capsys.readouterr().out


def verify_in_child(out):
    rc, text = forked(main, ['verify', str(out), '--no-progress'])
    return rc, text


def dataset_in_child(out):
    def build():
        try:
            build_dataset(lmdb_options(out))
        except DataError as err:
            print(f'DataError: {err}')
            return 5
        return 0

    return forked(build)


@pytest.mark.parametrize('damage', ['truncated', 'header'])
def test_damaged_data_mdb_is_a_one_line_problem_never_sigbus(tmp_path, damage):
    out = tmp_path / 'out'
    assert cli_pack(write_pairs(tmp_path / 'src', n=4, size=(96, 80)), out) == 0
    data = out / 'gt.lmdb' / 'data.mdb'
    if damage == 'truncated':
        os.truncate(data, os.path.getsize(data) // 2)
    else:
        with open(data, 'r+b') as f:
            for page in (0, 4096):
                f.seek(page + 16)
                f.write(b'\xa5' * 64)
    rc, text = verify_in_child(out)
    assert rc == 1, text  # not -SIGBUS, not a traceback
    problem = [line for line in text.splitlines() if line.startswith('PROBLEM:')]
    assert len(problem) == 1 and str(out / 'gt.lmdb') in problem[0] and 'Traceback' not in text
    assert ('truncated' if damage == 'truncated' else 'not a readable LMDB') in problem[0]
    rc, text = dataset_in_child(out)
    assert rc == 5, text
    assert 'dataroot_gt' in text and str(out / 'gt.lmdb') in text and 're-pack' in text


# ---- 4. truncated images and decompression bombs ----


def png_header(w, h):
    """A PNG declaring ``w x h`` RGB pixels with a tiny (wrong-size) image body."""

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(b'\0' * 64))
        + chunk(b'IEND', b'')
    )


def test_truncated_jpeg_is_refused_by_pack_and_dataset(tmp_path):
    src = write_pairs(tmp_path / 'src', n=2)
    rng = np.random.default_rng(3)
    jpeg = cv2.imencode('.jpg', rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))[1].tobytes()
    (src / 'gt' / '001.png').unlink()
    (src / 'gt' / '001.jpg').write_bytes(jpeg[: len(jpeg) * 2 // 3])
    message = data_error(
        lambda: pack_pairs(str(src / 'lq'), str(src / 'gt'), str(tmp_path / 'out'), workers=1, progress=False)
    )
    assert '001.jpg: truncated JPEG' in message
    assert os.listdir(tmp_path / 'out') == []
    dataset = build_dataset(
        {
            'name': 'disk',
            'type': 'LLIEPairedDataset',
            'phase': 'val',
            'dataroot_lq': str(src / 'lq'),
            'dataroot_gt': str(src / 'gt'),
        }
    )
    message = data_error(lambda: dataset[1])
    assert '001.jpg: truncated JPEG' in message
    assert decode(jpeg, 'whole').shape == (48, 40, 3)  # the complete file decodes


@pytest.mark.parametrize('side', [100000, 12000])  # beyond Pillow's own limit / beyond ours only
def test_decompression_bomb_is_refused_naming_the_file(tmp_path, side):
    assert side * side > MAX_PIXELS
    src = write_pairs(tmp_path / 'src', n=2)
    (src / 'lq' / '001.png').write_bytes(png_header(side, side))
    message = data_error(
        lambda: pack_pairs(str(src / 'lq'), str(src / 'gt'), str(tmp_path / 'out'), workers=1, progress=False)
    )
    assert str(src / 'lq' / '001.png') in message and 'pixels' in message
    message = data_error(
        lambda: build_dataset(
            {
                'name': 'disk',
                'type': 'LLIEPairedDataset',
                'phase': 'val',
                'dataroot_lq': str(src / 'lq'),
                'dataroot_gt': str(src / 'gt'),
            }
        )
    )
    assert str(src / 'lq' / '001.png') in message and 'pixels' in message
    assert 'pixels' in data_error(lambda: decode(png_header(side, side), 'entry'))


# ---- 5. a full disk ----


def test_full_disk_during_pack_is_one_line_and_keeps_the_old_pair(tmp_path, small_disk, capsys):
    disk = small_disk(1 << 20)
    out = disk / 'out'
    assert cli_pack(write_pairs(tmp_path / 'old', n=2), out) == 0
    before = lmdb_value(out / 'gt.lmdb', '001')
    big = write_pairs(tmp_path / 'big', n=12, size=(200, 160), seed=1)  # ~2.3 MB raw, on a 1 MB disk
    capsys.readouterr()
    assert cli_pack(big, out, '--overwrite') == 2
    line = last_line_only(capsys.readouterr().err)
    assert str(out) in line and 'the disk is full' in line and 'untouched' in line
    assert sorted(os.listdir(out)) == ['gt.lmdb', 'lq.lmdb']
    assert lmdb_value(out / 'gt.lmdb', '001') == before
    assert verify(str(out), progress=False) == ({str(out / 'gt.lmdb'): 2, str(out / 'lq.lmdb'): 2}, [])


def test_enospc_while_finishing_is_reported_as_a_full_disk(tmp_path):
    """The in-process stand-in for a full disk where no tmpfs can be mounted (Python-level writes fail)."""
    src = write_pairs(tmp_path / 'src', n=2)
    out = tmp_path / 'out'
    with enospc_writes(out, limit=0):
        with pytest.raises(PackError, match='the disk is full') as info:
            pack_pairs(str(src / 'lq'), str(src / 'gt'), str(out), workers=1, progress=False)
    assert str(out) in str(info.value) and 'nothing was written' in str(info.value)
    assert os.listdir(out) == []


# ---- 6. DataError for missing data ----


def test_missing_lmdb_points_to_presets_and_docs(tmp_path):
    with pytest.raises(MissingDataError) as info:
        build_dataset(lmdb_options(tmp_path / 'nowhere'))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and 'dataroot_lq' in message
    assert str(tmp_path / 'nowhere' / 'lq.lmdb') in message
    assert '`datasets_lmdb presets`' in message and 'docs/data.md' in message
