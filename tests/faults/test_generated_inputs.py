"""Bad input by the thousand (issue 26): generated option files, image files and checkpoints.

Each generated case must end in one clear error of the package naming the file (and key): ``UserError``
(``basicsr train``'s option check), ``DataError`` (the image reader of pack, training and enhance) or
``EnhanceError`` (the network loading of enhance); or in a correct result. Never another exception type
(a traceback), never a success with damaged output: a refusal where the input was fine fails too.

Sized for CI by default (fixed seed, 1,470 cases in all, about 30 s on 2 cores); ``GMMOE_HYPOTHESIS_EXAMPLES=N`` runs
N cases per test with a random seed (the long run in docs/reliability.md).
"""

import copy
import io
import math
import os
import tempfile

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import gmmoe_arch
from gmmoe_arch import cli
from gmmoe_arch.data.image_io import MAX_PIXELS, DataError, read_image_file

from helpers import tiny_gmmoe_options

LONG = os.environ.get('GMMOE_HYPOTHESIS_EXAMPLES')


def sized(ci_examples, **extra):
    """Hypothesis settings: ``ci_examples`` derandomized cases, or the long run's count with a random seed."""
    return settings(
        max_examples=int(LONG) if LONG else ci_examples,
        derandomize=not LONG,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **extra,
    )


def one_line(message, *names):
    assert '\n' not in message and 'Traceback' not in message, message
    for name in names:
        assert str(name) in message, (name, message)


# ---- (a) option files, through the check `basicsr train` runs before it builds anything ----

JUNK = st.one_of(
    st.text(st.characters(blacklist_categories=('Cs',)), max_size=8),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.sampled_from(['type', 'x']), st.integers(-3, 3), max_size=2),
)


# What a training run needs, independent of the checker: (section, key) -> (required, valid value strategy or
# None when any value of the right kind is fine, a predicate telling a valid value).
def _real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def IS_INT(lo, hi=None):  # noqa: N802  (read as a constant of the table)
    return lambda v: _real(v) and float(v).is_integer() and v >= lo and (hi is None or v <= hi)


def IS_INT_LIST(lo):  # noqa: N802
    return lambda v: isinstance(v, list) and bool(v) and all(IS_INT(lo)(x) for x in v)


def IS_POS(v):  # noqa: N802
    return _real(v) and v > 0


def IS_BOOL(v):  # noqa: N802
    return isinstance(v, bool)


def IS_NAME(v):  # noqa: N802
    return isinstance(v, str) and bool(v)


def IS_FOLDER_NAME(v):  # noqa: N802
    return IS_NAME(v) and v not in ('.', '..') and not set(v) & set('/\\\x00')


def IS_SEED(v):  # noqa: N802
    return v is None or isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32


def IS_UNIT(v):  # noqa: N802
    return _real(v) and 0 <= v <= 1


SPEC = {
    (): {'name': (True, IS_FOLDER_NAME), 'model_type': (True, None), 'manual_seed': (False, IS_SEED)},
    ('datasets', 'train'): {
        'type': (True, None),
        'name': (True, IS_NAME),
        'batch_size_per_gpu': (True, IS_INT(1)),
        'num_worker_per_gpu': (True, IS_INT(0)),
        'gt_size': (False, lambda v: v is None or IS_INT(1)(v)),  # null: no crop
        'use_hflip': (False, IS_BOOL),
        'io_backend': (False, None),
        'dataroot_lq': (False, IS_NAME),
    },
    ('datasets', 'val'): {'type': (True, None), 'name': (True, IS_NAME), 'io_backend': (False, None)},
    ('network_g',): {
        'type': (True, None),
        'width': (False, lambda v: v is None or IS_INT(1)(v)),  # null: the preset's
        'middle_blk_num': (False, lambda v: v is None or IS_INT(0)(v)),
        'enc_blk_nums': (False, None),
    },
    ('path',): {'strict_load_g': (False, IS_BOOL), 'pretrain_network_g': (False, lambda v: v is None or IS_NAME(v))},
    ('train',): {
        'total_iter': (True, lambda v: IS_INT(1)(v) and v <= 5),  # the cosine periods [4] reach iteration 5
        'optim_g': (True, None),
        'scheduler': (True, None),
        'warmup_iter': (False, lambda v: v is None or IS_INT(-1)(v)),
        'ema_decay': (False, lambda v: v is None or IS_UNIT(v)),
    },
    ('train', 'optim_g'): {'type': (True, None), 'lr': (True, IS_POS)},
    # one period (restart_weights defaults to one weight) that covers total_iter 4
    ('train', 'scheduler'): {
        'type': (True, None),
        'periods': (True, lambda v: IS_INT_LIST(1)(v) and len(v) == 1 and v[0] >= 3),
        'eta_min': (False, None),
    },
    ('train', 'pixel_opt'): {'type': (True, None), 'loss_weight': (False, None)},
    ('val',): {'val_freq': (True, IS_INT(1)), 'save_img': (False, IS_BOOL), 'metrics': (False, None)},
    ('logger',): {
        'print_freq': (True, IS_INT(1)),
        'save_checkpoint_freq': (True, IS_INT(1)),
        'use_tb_logger': (False, IS_BOOL),
    },
}
# sections whose keys become keyword arguments: an unknown key there cannot work
CLOSED = {('network_g',), ('train', 'scheduler'), ('train', 'pixel_opt')}
BASE = tiny_gmmoe_options(__import__('pathlib').Path('/nonexistent-data'), 'generated', total_iter=4, checkpoint_freq=2)


def _section(opt, where):
    for key in where:
        opt = opt[key]
    return opt


@st.composite
def option_edits(draw):
    """``(options, expectation)``: one edit of the base options; expectation ``'refuse'``, ``'accept'`` or
    ``'either'`` (a value whose validity the table above does not decide)."""
    opt = copy.deepcopy(BASE)
    where = draw(st.sampled_from(sorted(SPEC)))
    spec = SPEC[where]
    section = _section(opt, where)
    kind = draw(st.sampled_from(['delete', 'value', 'unknown']))
    if kind == 'unknown':
        section[draw(st.sampled_from(['colour', 'lr_x', 'periodz', 'Type']))] = draw(JUNK)
        return opt, ('refuse' if where in CLOSED else 'accept'), where
    key = draw(st.sampled_from(sorted(spec)))
    required, valid = spec[key]
    if kind == 'delete':
        section.pop(key, None)
        return opt, ('refuse' if required else 'accept'), (*where, key)
    value = draw(JUNK)
    section[key] = value
    if valid is None:
        return opt, 'either', (*where, key)
    return opt, ('accept' if valid(value) else 'refuse'), (*where, key)


@sized(500)
@given(option_edits())
def test_generated_option_files_are_refused_in_one_line_or_accepted(case):
    opt, expect, where = case
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'generated.yml')
        with open(path, 'w') as f:
            yaml.safe_dump(opt, f)
        try:
            cli.validate_option_file(path, 'train')
        except cli.UserError as exc:
            one_line(str(exc), path)
            assert expect != 'accept', f'refused a good option file ({where}): {exc}'
            return
    assert expect != 'refuse', f'accepted an option file that cannot train ({where}: {_section(opt, where[:-1])})'


# ---- (b) image files, through the reader of pack, training and enhance ----

MODES = {
    'PNG': ['L', 'RGB', 'RGBA', 'I;16', 'P', '1', 'LA'],
    'JPEG': ['L', 'RGB', 'CMYK'],
    'BMP': ['L', 'RGB', 'P', '1'],
    'TIFF': ['L', 'RGB', 'RGBA', 'I;16', 'CMYK', 'F', '1'],
    'WEBP': ['RGB', 'RGBA'],
}
LOSSLESS_EXACT = {('PNG', 'L'), ('PNG', 'RGB'), ('PNG', 'RGBA'), ('PNG', 'I;16'), ('BMP', 'RGB'), ('TIFF', 'RGB')}
LOSSLESS_EXACT |= {('WEBP', 'RGB'), ('TIFF', 'L'), ('TIFF', 'I;16')}


def _encode(fmt, mode, rng, h, w):
    """An image of ``mode`` with random pixels, saved as ``fmt`` -> ``(bytes, the PIL image saved)``."""
    if mode == 'I;16':
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == 'F':
        img = Image.fromarray(rng.random((h, w), dtype=np.float32))
    elif mode in ('L', '1', 'LA'):
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert(mode)
    elif mode == 'RGBA':
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({'lossless': True} if fmt == 'WEBP' else {}))
    return buf.getvalue(), img


@st.composite
def image_files(draw):
    """``(bytes, how, format, mode, the encoded PIL image)``: an image file, intact or damaged."""
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    buf, img = _encode(fmt, mode, np.random.default_rng(draw(st.integers(0, 2**32 - 1))), h, w)
    how = draw(st.sampled_from(['intact', 'truncated', 'random body', 'flipped', 'huge header', 'empty after magic']))
    if how == 'truncated':
        buf = buf[: draw(st.integers(0, len(buf) - 1))]
    elif how == 'random body':
        cut = draw(st.integers(2, min(32, len(buf))))
        buf = buf[:cut] + draw(st.binary(min_size=0, max_size=4096))
    elif how == 'flipped':
        data = bytearray(buf)
        for pos in draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=4)):
            data[pos] ^= draw(st.integers(1, 255))
        buf = bytes(data)
    elif how == 'huge header':
        buf = _huge_header(fmt, buf, draw(st.sampled_from([0, 1, 65535, 2**31 - 1, 2**32 - 1])))
    elif how == 'empty after magic':
        buf = buf[:4]
    return buf, how, fmt, mode, img


def _huge_header(fmt, buf, size):
    """``buf`` with its width and height fields set to ``size`` (where the format keeps them at fixed places)."""
    data = bytearray(buf)
    if fmt == 'PNG':  # IHDR: width, height big-endian at 16 and 20 (its CRC then fails: also a case)
        data[16:24] = (size & 0xFFFFFFFF).to_bytes(4, 'big') * 2
    elif fmt == 'BMP':  # BITMAPINFOHEADER: signed width, height little-endian at 18 and 22
        data[18:26] = (size & 0xFFFFFFFF).to_bytes(4, 'little') * 2
    elif fmt == 'JPEG':  # the first SOF0/SOF2: height, width big-endian 16-bit
        for marker in (b'\xff\xc0', b'\xff\xc2'):
            pos = buf.find(marker)
            if pos > 0:
                data[pos + 5 : pos + 9] = (size & 0xFFFF).to_bytes(2, 'big') * 2
                break
    elif fmt == 'WEBP':  # VP8L: 14-bit width-1, height-1 after the signature byte at 21
        if buf[12:16] == b'VP8L':
            bits = ((size - 1) & 0x3FFF) | (((size - 1) & 0x3FFF) << 14)
            data[21:25] = (bits | (int.from_bytes(buf[21:25], 'little') & ~0xFFFFFFF)).to_bytes(4, 'little')
    else:  # TIFF: the first IFD's ImageWidth / ImageLength values, wherever they are
        data = bytearray(_tiff_size(buf, size))
    return bytes(data)


def _tiff_size(buf, size):
    order = 'little' if buf[:2] == b'II' else 'big'
    data = bytearray(buf)
    ifd = int.from_bytes(buf[4:8], order)
    if ifd + 2 > len(buf):
        return buf
    for i in range(int.from_bytes(buf[ifd : ifd + 2], order)):
        entry = ifd + 2 + 12 * i
        tag = int.from_bytes(buf[entry : entry + 2], order)
        kind = int.from_bytes(buf[entry + 2 : entry + 4], order)
        if tag in (256, 257):
            width = 2 if kind == 3 else 4
            data[entry + 8 : entry + 8 + width] = (size & (2 ** (8 * width) - 1)).to_bytes(width, order)
    return bytes(data)


def _expected_pixels(img, mode):
    """What OpenCV should give for an intact lossless image: BGR(A) order, 16-bit kept."""
    arr = np.asarray(img)
    if mode == 'I;16':
        return arr.astype(np.uint16)
    if arr.ndim == 3:
        return arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    return arr


@sized(800)
@given(image_files())
def test_generated_image_files_are_refused_in_one_line_or_read_correctly(case):
    buf, how, fmt, mode, img = case
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f'generated.{fmt.lower()}')
        with open(path, 'wb') as f:
            f.write(buf)
        try:
            out = read_image_file(path)
        except DataError as exc:
            one_line(str(exc), path)
            assert how != 'intact' or mode == 'F', f'refused an intact {fmt} {mode} image: {exc}'
            return
    assert out.dtype in (np.uint8, np.uint16) and out.ndim in (2, 3) and out.size > 0
    assert out.ndim == 2 or out.shape[2] in (1, 3, 4)
    assert out.shape[0] * out.shape[1] <= MAX_PIXELS
    if how == 'intact':
        assert out.shape[:2] == (img.height, img.width)
        if (fmt, mode) in LOSSLESS_EXACT:
            np.testing.assert_array_equal(out, _expected_pixels(img, mode))
    elif how in ('truncated', 'empty after magic') and (fmt, mode) in LOSSLESS_EXACT:
        # a cut file may only decode when what was cut held no pixels (e.g. PNG's IEND chunk)
        np.testing.assert_array_equal(out, _expected_pixels(img, mode))


# ---- (c) checkpoints, through the network loading of enhance ----

TINY = {'type': 'GMMoE', 'width': 4, 'enc_blk_nums': [1], 'middle_blk_num': 1, 'dec_blk_nums': [1]}


def _reference():
    from basicsr.archs import build_network

    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_network(dict(TINY)).state_dict().items()}


REFERENCE = _reference()
KEYS = sorted(REFERENCE)
FLOAT_KEYS = [k for k in KEYS if REFERENCE[k].is_floating_point() and REFERENCE[k].numel() > 0]


HOWS = ['intact', 'params_ema', 'module prefix', 'missing key', 'extra key', 'wrong shape', 'non-tensor']
HOWS += ['other dtype', 'not a dict', 'empty', 'truncated file']


@st.composite
def checkpoints(draw, hows):
    """``(object to save, how, the key concerned)``; ``how`` names the damage or the harmless wrapping."""
    sd = {k: v.clone() for k, v in REFERENCE.items()}
    how = draw(st.sampled_from(hows))
    key = draw(st.sampled_from(FLOAT_KEYS))
    if how == 'missing key':
        del sd[key]
    elif how == 'extra key':
        key = draw(st.sampled_from(['intro.weight_extra', 'encoders.0.9.beta', 'gate.x']))
        sd[key] = torch.zeros(2)
    elif how == 'wrong shape':
        shape = list(sd[key].shape) or [1]
        change = draw(st.sampled_from(['grow', 'flatten', 'add a dimension', 'scalar']))
        if change == 'flatten' and sd[key].ndim <= 1:  # flat already: flattening would change nothing
            change = 'add a dimension'
        if change == 'grow':
            shape[draw(st.integers(0, len(shape) - 1))] += draw(st.integers(1, 3))
        sd[key] = {'grow': torch.zeros(shape), 'flatten': sd[key].reshape(-1), 'scalar': torch.tensor(0.5)}.get(
            change, sd[key][None]
        )
    elif how == 'non-tensor':
        sd[key] = draw(st.one_of(st.integers(), st.text(max_size=4), st.none(), st.lists(st.floats(), max_size=3)))
    elif how == 'non-finite':
        flat = sd[key].view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif how == 'other dtype':
        sd[key] = sd[key].to(draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16])))
    if how == 'params_ema':
        return {'params_ema': sd, 'params': {}}, how, key
    if how == 'module prefix':
        return {'params': {f'module.{k}': v for k, v in sd.items()}}, how, key
    if how == 'not a dict':
        return draw(st.sampled_from([[1, 2], torch.zeros(3), 7, 'weights'])), how, key
    if how == 'empty':
        return draw(st.sampled_from([{}, {'params': {}}])), how, key
    return {'params': sd}, how, key


def _check_checkpoint(case):
    obj, how, key = case
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'generated.pth')
        torch.save(obj, path)
        if how == 'truncated file':
            with open(path, 'r+b') as f:
                f.truncate(os.path.getsize(path) // 2)
        try:
            net = gmmoe_arch.load_network(path, option_file=None, device='cpu')
        except gmmoe_arch.EnhanceError as exc:
            one_line(str(exc), path)
            assert how not in ('intact', 'params_ema', 'module prefix', 'other dtype'), f'refused a good one: {exc}'
            if how in ('missing key', 'extra key') and 'holds a' not in str(exc):  # a size mismatch says the size
                assert key in str(exc)
            return
    assert how in ('intact', 'params_ema', 'module prefix', 'other dtype'), f'{how} ({key}) was loaded'
    expected = {k: v.float() for k, v in REFERENCE.items()}
    if how == 'other dtype':
        expected[key] = obj['params'][key].float()
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


@sized(150)
@given(checkpoints(HOWS))
def test_generated_checkpoints_are_refused_in_one_line_or_loaded_exactly(case):
    _check_checkpoint(case)


@sized(20)
@given(checkpoints(['non-finite']))
def test_generated_checkpoints_with_a_non_finite_value_are_refused(case):
    """A NaN or inf anywhere in the weights: refused in one line naming the file (check_finite_state_dict)."""
    _check_checkpoint(case)


@pytest.mark.parametrize(
    'key, damage',
    [
        ('middle_blks.0.GateNetwork.0.weight', None),  # a KeyError from infer_experts before
        ('intro.weight', lambda t: t.reshape(-1)),  # an IndexError from infer_config before
        ('middle_blks.0.GateNetwork.0.weight', lambda t: t.reshape(-1)),
    ],
)
def test_found_by_generation_a_damaged_gate_or_intro_is_one_line(tmp_path, key, damage):
    sd = {k: v.clone() for k, v in REFERENCE.items()}
    if damage is None:
        del sd[key]
    else:
        sd[key] = damage(sd[key])
    path = tmp_path / 'damaged.pth'
    torch.save({'params': sd}, path)
    with pytest.raises(gmmoe_arch.EnhanceError) as caught:
        gmmoe_arch.load_network(str(path), device='cpu')
    one_line(str(caught.value), path, key)
