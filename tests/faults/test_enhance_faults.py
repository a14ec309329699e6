"""Faults around ``gmmoe enhance``: hard-linked outputs, full disks, kills mid-write, running out of memory,
unwritable outputs, symlink loops, decompression-bomb headers."""

import glob
import os
import signal
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager

import cv2
import numpy as np
import pytest
import torch

from gmmoe_arch import GMMoE, enhance
from gmmoe_arch.enhance import EnhanceError, collect_jobs, enhance_paths, read_image
from gmmoe_arch.enhance_cli import main
from gmmoe_arch.inference import jobs

from helpers import REPO, activate_branches, enospc_writes


@pytest.fixture(scope='module')
def tiny_net():
    torch.manual_seed(0)
    return activate_branches(GMMoE(width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])).eval()


def noisy(h, w, seed=0):
    """An incompressible ``h x w x 3`` uint8 image: its PNG is about ``3 h w`` bytes."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_only(path, width, height):
    """A PNG whose header declares ``width x height`` RGB pixels, followed by a few bytes of data."""

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    path.write_bytes(
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(b'\0' * 1000))
        + chunk(b'IEND', b'')
    )


@contextmanager
def deadline(seconds):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""

    def fail(*_):
        raise AssertionError(f'still running after {seconds} s (a symlink loop followed?)')

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def no_network(*args, **kwargs):
    raise AssertionError('the network was loaded: the error should have come before any work')


# ---------------------------------------------------------------- outputs that are inputs


def test_output_hard_linked_to_an_input_is_refused_and_inputs_kept(tmp_path, monkeypatch, capsys):
    src, out = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    cv2.imwrite(str(src / 'a.png'), noisy(20, 30))
    cv2.imwrite(str(src / 'b.png'), noisy(20, 30, seed=1))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out.mkdir()
    for name in before:  # cp -al in out
        os.link(src / name, out / name)
    monkeypatch.setattr(enhance, 'load_network', no_network)
    assert main(['enhance', str(src), '-o', str(out), '--random-weights', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert f'output {out / "a.png"} would overwrite the input {src / "a.png"}' in err and 'hard link' in err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_output_reached_through_a_symlinked_folder_is_refused(tmp_path):
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), noisy(8, 8))
    os.symlink(tmp_path / 'in', tmp_path / 'out')
    with pytest.raises(EnhanceError, match='would overwrite the input'):
        collect_jobs([str(tmp_path / 'in' / 'a.png')], str(tmp_path / 'out'))


# ---------------------------------------------------------------- full disk, kill during a write


def test_disk_full_on_a_small_tmpfs_fails_that_image_only_and_leaves_nothing_half_written(
    small_disk, tmp_path, reference_dir, capsys
):
    disk = small_disk(64 * 1024)
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'big.png'), noisy(200, 200))  # ~120 KB as PNG: does not fit
    cv2.imwrite(str(src / 'small.png'), noisy(16, 16))
    (disk / 'big.png').write_bytes(b'the previous output')
    code = main(
        ['enhance', str(src), '-o', str(disk), '--weights', str(reference_dir / 'gmmoe_w8_net_g.pth'), '--no-progress']
    )
    captured = capsys.readouterr()
    assert code == 1
    assert f'{disk / "big.png"}: cannot be written (No space left on device)' in captured.err
    assert '1 image(s) written' in captured.out and '1 failed' in captured.out
    assert sorted(os.listdir(disk)) == ['big.png', 'small.png']  # no temporary file left behind
    assert (disk / 'big.png').read_bytes() == b'the previous output'
    assert cv2.imread(str(disk / 'small.png')).shape == (16, 16, 3)


def test_disk_full_in_process_fails_that_image_only(tmp_path, tiny_net):
    src, out = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    out.mkdir()
    cv2.imwrite(str(src / 'a.png'), noisy(40, 40))
    cv2.imwrite(str(src / 'b.png'), noisy(40, 40, seed=1))
    with enospc_writes(out, limit=6000):  # room for the first image (~4.9 KB), not the second
        summary = enhance_paths([str(src)], str(out), tiny_net)
    assert [name for name, _ in summary.failed] == ['b.png'] and 'No space left' in summary.failed[0][1]
    assert os.listdir(out) == ['a.png']


def test_gates_file_on_a_full_disk_is_reported_and_the_images_kept(small_disk, tmp_path, reference_dir, capsys):
    disk = small_disk(64 * 1024)
    with open(disk / 'filler', 'wb', buffering=0) as f:  # fill the disk to the last page
        with pytest.raises(OSError, match='No space left'):
            while True:
                f.write(b'\0' * 4096)
    cv2.imwrite(str(tmp_path / 'a.png'), noisy(24, 24))
    gates = disk / 'gates.json'
    code = main(
        [
            'enhance',
            str(tmp_path / 'a.png'),
            '-o',
            str(tmp_path / 'out'),
            '--gates',
            str(gates),
            '--weights',
            str(reference_dir / 'gmmoe_w8_net_g.pth'),
            '--no-progress',
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and f'failed: gate weights: {gates}: cannot be written (No space left' in captured.err
    assert os.listdir(disk) == ['filler'] and 'gate weights in' not in captured.out
    assert (tmp_path / 'out' / 'a.png').is_file() and '1 image(s) written' in captured.out


KILL_MID_WRITE = """
import os, signal, sys
import numpy as np
from gmmoe_arch import enhance
real_write = os.write
def write_half_then_die(fd, data):
    real_write(fd, bytes(memoryview(data)[:len(data) // 2]))
    os.kill(os.getpid(), signal.SIGKILL)
os.write = write_half_then_die
enhance.write_image(sys.argv[1], np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
"""


def test_kill_during_a_write_leaves_the_previous_file_under_the_final_name(tmp_path):
    dst = tmp_path / 'out.png'
    dst.write_bytes(b'the previous output')
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    done = subprocess.run([sys.executable, '-c', KILL_MID_WRITE, str(dst)], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert dst.read_bytes() == b'the previous output'
    leftovers = [p.name for p in tmp_path.iterdir() if p != dst]
    assert len(leftovers) == 1 and leftovers[0].startswith('.out.png.') and leftovers[0].endswith('.partial')


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize(
    'error',
    [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")],
)
def test_running_out_of_memory_on_one_image_does_not_abort_the_batch(tmp_path, tiny_net, monkeypatch, error):
    src = tmp_path / 'in'
    src.mkdir()
    for name, size in [('a.png', 20), ('huge.png', 48), ('c.png', 24)]:
        cv2.imwrite(str(src / name), noisy(size, size))
    real = jobs.run_image

    def fails_on_the_large_one(net, img, *args, **kwargs):
        if img.shape[0] == 48:
            raise error
        return real(net, img, *args, **kwargs)

    monkeypatch.setattr(jobs, 'run_image', fails_on_the_large_one)
    summary = enhance_paths([str(src)], str(tmp_path / 'out'), tiny_net)
    assert [name for name, _ in summary.failed] == ['huge.png']
    message = summary.failed[0][1]
    assert str(src / 'huge.png') in message and '--max-pixels' in message and '--max-image-pixels' in message
    assert sorted(os.listdir(tmp_path / 'out')) == ['a.png', 'c.png']


def test_an_image_above_max_image_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / 'wide.png'
    cv2.imwrite(str(path), noisy(200, 300))
    assert read_image(str(path), max_image_pixels=60000).shape == (200, 300, 3)

    def no_decoding(*args):
        raise AssertionError('decoded although the header is over the limit')

    monkeypatch.setattr(cv2, 'imread', no_decoding)
    monkeypatch.setattr(cv2, 'imdecode', no_decoding)
    with pytest.raises(EnhanceError) as err:
        read_image(str(path), max_image_pixels=59999)
    assert str(err.value) == (
        f'{path}: its header declares 300x200 = 60,000 pixels, more than --max-image-pixels '
        '59,999 (memory grows with the image: about 9 bytes per pixel for 8-bit RGB); raise '
        '--max-image-pixels to enhance it anyway'
    )


def test_bomb_header_gives_one_line_naming_the_file(tmp_path, reference_dir, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    png_header_only(src / 'bomb.png', 100000, 100000)
    cv2.imwrite(str(src / 'fine.png'), noisy(16, 16))
    code = main(
        [
            'enhance',
            str(src),
            '-o',
            str(tmp_path / 'out'),
            '--weights',
            str(reference_dir / 'gmmoe_w8_net_g.pth'),
            '--no-progress',
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err and 'DecompressionBomb' not in err
    lines = [line for line in err.splitlines() if 'bomb.png' in line]
    assert lines == [
        f'gmmoe enhance: failed: {src / "bomb.png"}: its header declares 100000x100000 = '
        '10,000,000,000 pixels, more than --max-image-pixels 150,000,000 (memory grows with the image: '
        'about 9 bytes per pixel for 8-bit RGB); raise --max-image-pixels to enhance it anyway'
    ]
    assert os.listdir(tmp_path / 'out') == ['fine.png']


# ---------------------------------------------------------------- unwritable outputs


@pytest.mark.parametrize('where', ['output', 'gates'])
def test_unwritable_output_or_gates_path_is_found_before_any_work(tmp_path, monkeypatch, capsys, where):
    cv2.imwrite(str(tmp_path / 'a.png'), noisy(8, 8))
    blocker = tmp_path / 'a_file'
    blocker.write_text('a file where a folder should be')
    out = blocker / 'out' if where == 'output' else tmp_path / 'out'
    gates = blocker / 'g.json' if where == 'gates' else tmp_path / 'g.json'
    monkeypatch.setattr(enhance, 'load_network', no_network)
    assert main(['enhance', str(tmp_path / 'a.png'), '-o', str(out), '--gates', str(gates), '--random-weights']) == 2
    err = capsys.readouterr().err
    assert f'{blocker} is not a folder' in err and 'Traceback' not in err
    assert not (tmp_path / 'out').exists()


def test_read_only_output_folder_is_found_before_any_work(small_disk, tmp_path, monkeypatch, capsys):
    disk = small_disk(64 * 1024)
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    cv2.imwrite(str(tmp_path / 'a.png'), noisy(8, 8))
    monkeypatch.setattr(enhance, 'load_network', no_network)
    assert main(['enhance', str(tmp_path / 'a.png'), '-o', str(disk / 'sub'), '--random-weights']) == 2
    assert f'output folder {disk / "sub"}: cannot write in {disk} (Read-only file system)' in capsys.readouterr().err


# ---------------------------------------------------------------- symlink loops


@pytest.fixture()
def looped_tree(tmp_path):
    root = tmp_path / 'tree'
    (root / 'sub' / 'deeper').mkdir(parents=True)
    for rel in ['a.png', 'sub/b.png', 'sub/deeper/c.jpg', 'sub/notes.txt']:
        cv2.imwrite(str(root / rel), noisy(4, 4)) if not rel.endswith('.txt') else (root / rel).write_text('x')
    os.symlink('..', root / 'sub' / 'deeper' / 'up')  # loop back to sub
    os.symlink(str(root), root / 'sub' / 'home')  # loop back to the top
    os.symlink('.', root / 'self')
    return root


def test_folder_walking_and_globs_end_on_symlink_loops(looped_tree, tmp_path):
    with deadline(30):
        walked = collect_jobs([str(looped_tree)], str(tmp_path / 'out'))
        globbed = collect_jobs([str(looped_tree / '**' / '*.png')], str(tmp_path / 'out2'))
    assert [job.name for job in walked] == ['a.png', 'sub/b.png', 'sub/deeper/c.jpg']
    assert [job.src for job in globbed] == [str(looped_tree / 'a.png'), str(looped_tree / 'sub' / 'b.png')]


def test_globs_match_what_glob_matches_on_a_tree_without_loops(tmp_path, monkeypatch):
    for rel in [
        'a.png',
        'b.jpg',
        '.hidden.png',
        'x1.png',
        'sub/c.png',
        'sub/.h/d.png',
        'sub/deep/e.png',
        'other/f.png',
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b'x')
    os.symlink(tmp_path / 'other', tmp_path / 'sub' / 'link')
    monkeypatch.chdir(tmp_path)
    patterns = [
        '*.png',
        '**/*.png',
        'sub/**/*.png',
        '*/*.png',
        'x?.png',
        '[ab].*',
        '.*.png',
        'sub/**',
        '**/deep/*',
        str(tmp_path / '**' / '*.png'),
        str(tmp_path / 's*' / '*.png'),
        'sub/.h/*.png',
        'missing/*.png',
    ]
    for pattern in patterns:
        expected = sorted(f for f in glob.glob(pattern, recursive=True))
        assert jobs._glob(pattern) == [p for p in expected if not p.endswith(os.sep)], pattern


# ---------------------------------------------------------------- damaged inputs, non-finite outputs


def test_truncated_jpeg_and_png_among_good_images_fail_by_name_and_the_good_ones_are_written(
    tmp_path, reference_dir, capsys
):
    src = tmp_path / 'in'
    src.mkdir()
    photo = cv2.resize(noisy(12, 16), (160, 120))
    for ext in ('.jpg', '.png'):
        cv2.imwrite(str(src / f'good{ext}'), photo)
        whole = cv2.imencode(ext, photo)[1].tobytes()
        (src / f'cut{ext}').write_bytes(whole[: len(whole) // 2])
    assert cv2.imread(str(src / 'cut.jpg')) is not None  # libjpeg only warns ("Premature end of JPEG file")
    out = tmp_path / 'out'
    code = main(['enhance', str(src), '-o', str(out), '--weights', str(reference_dir / 'gmmoe_w8_net_g.pth')])
    captured = capsys.readouterr()
    assert code == 1
    failed = [line for line in captured.err.splitlines() if line.startswith('gmmoe enhance: failed:')]
    assert failed == [
        f'gmmoe enhance: failed: {src / "cut.jpg"}: truncated JPEG (no end-of-image marker); copy or export the '
        'file again',
        f'gmmoe enhance: failed: {src / "cut.png"}: not a readable image (empty, truncated or unsupported format)',
    ]
    assert '2 image(s) written' in captured.out and '2 failed' in captured.out
    assert sorted(os.listdir(out)) == ['good.jpg', 'good.png']


def test_enhance_uses_the_truncation_check_of_packing_and_training(tmp_path, monkeypatch):
    from gmmoe_arch.inference import image_files

    path = tmp_path / 'a.png'
    cv2.imwrite(str(path), noisy(8, 8))
    seen = []
    monkeypatch.setattr(image_files, 'check_truncated', lambda buf, name: seen.append((bytes(buf), name)))
    read_image(str(path))
    assert seen == [(path.read_bytes(), str(path))]


class NaNOnBright(torch.nn.Module):
    """The identity, except that a bright image's output holds NaNs in its top left corner."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        y = x * self.scale
        if x.mean() > 0.5:
            y[..., :2, :3] = float('nan')
        return y


def test_an_image_whose_output_is_not_finite_fails_by_name_and_is_not_written(tmp_path, monkeypatch, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'dark.png'), np.full((10, 12, 3), 30, np.uint8))
    cv2.imwrite(str(src / 'bright.png'), np.full((10, 12, 3), 220, np.uint8))
    monkeypatch.setattr(enhance, 'load_network', lambda *args, **kwargs: NaNOnBright().eval())
    out = tmp_path / 'out'
    code = main(['enhance', str(src), '-o', str(out), '--random-weights', '--no-progress'])
    captured = capsys.readouterr()
    assert code == 1
    assert (
        f'gmmoe enhance: failed: {src / "bright.png"}: the network output holds 18 non-finite value(s) (NaN or '
        'inf) of 360: its weights or this image overflow it'
    ) in captured.err.splitlines()
    assert '1 image(s) written' in captured.out and '1 failed' in captured.out
    assert os.listdir(out) == ['dark.png']


# ---------------------------------------------------------------- folder scans, several frames


def frames(n, seed=0):
    from PIL import Image

    return [Image.fromarray(noisy(12, 16, seed + i)) for i in range(n)]


def test_a_folder_scan_takes_every_format_the_reader_decodes_and_names_what_it_passes_over(
    tmp_path, reference_dir, capsys
):
    src = tmp_path / 'in'
    (src / 'sub').mkdir(parents=True)
    images = ['a.png', 'b.JPG', 'c.bmp', 'd.tif', 'e.webp', 'sub/f.gif', 'sub/g.ppm', 'sub/h.jp2']
    for name in images:
        ok, buf = cv2.imencode(os.path.splitext(name)[1].lower(), noisy(40, 48))
        assert ok, name
        (src / name).write_bytes(buf.tobytes())
    for name in ['notes.txt', 'sub/more.txt', 'README', 'sub/meta.json']:
        (src / name).write_text('not an image')
    out = tmp_path / 'out'
    code = main(['enhance', str(src), '-o', str(out), '--weights', str(reference_dir / 'gmmoe_w8_net_g.pth')])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()) == sorted(images)
    assert captured.out.rstrip().endswith(
        '; 4 other file(s) in the folders passed over (2 .txt, 1 .json, 1 without an extension)'
    )
    assert '8 image(s) written' in captured.out


@pytest.mark.parametrize('fmt', ['TIFF', 'GIF', 'WEBP', 'PNG'])
def test_an_image_of_several_frames_is_refused_not_cut_to_one(tmp_path, tiny_net, fmt):
    ext = {'TIFF': '.tif', 'GIF': '.gif', 'WEBP': '.webp', 'PNG': '.png'}[fmt]
    first, *rest = frames(3)
    first.save(tmp_path / f'anim{ext}', format=fmt, save_all=True, append_images=rest)
    assert cv2.imread(str(tmp_path / f'anim{ext}')) is not None  # OpenCV alone would give the first frame
    first.save(tmp_path / f'single{ext}', format=fmt)
    summary = enhance_paths(
        [str(tmp_path / f'anim{ext}'), str(tmp_path / f'single{ext}')], str(tmp_path / 'out'), tiny_net
    )
    assert summary.failed == [
        (
            f'anim{ext}',
            f'{tmp_path / f"anim{ext}"}: holds 3 frames (an animation or a multi-page file); only single images '
            'are enhanced, and keeping one frame would lose the others silently: save each frame as a file first',
        )
    ]
    assert os.listdir(tmp_path / 'out') == [f'single{ext}']


def test_a_jpeg_with_mpo_previews_is_one_image(tmp_path, tiny_net):
    first, second = frames(2)
    first.save(tmp_path / 'camera.jpg', format='MPO', save_all=True, append_images=[second])
    summary = enhance_paths([str(tmp_path / 'camera.jpg')], str(tmp_path / 'out'), tiny_net)
    assert summary.failed == [] and os.listdir(tmp_path / 'out') == ['camera.jpg']
