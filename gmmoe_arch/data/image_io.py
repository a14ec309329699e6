"""Image bytes in and out for the paired datasets and the LMDB packer (no registration here).

Stored forms of one image inside an LMDB value:

* ``png``: PNG bytes, what ``basicsr.utils.lmdb_util`` writes (also any other format OpenCV decodes).
* ``raw``: an 18-byte header ``RAW_MAGIC``, dtype code (``u1``/``u2``), ``h, w, c`` (little-endian
  uint32), then the pixels as stored by OpenCV: ``(h, w, c)`` BGR, uint8 or uint16. Decoding is a
  ``np.frombuffer``; no decompression.

:func:`decode` tells the forms apart by their first bytes, so readers need not know how a database
was packed. All arrays here are OpenCV-style ``(h, w)`` or ``(h, w, c)`` BGR(A), uint8 or uint16.
"""
import os
import struct

import cv2
import lmdb
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
RAW_MAGIC = b'GMRW'
_RAW_HEADER = struct.Struct('<4s2sIII')
_DTYPES = {b'u1': np.uint8, b'u2': np.uint16}
_CODES = {np.dtype(np.uint8): b'u1', np.dtype(np.uint16): b'u2'}
_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_ENVS = {}


def shape3(img):
    """``(h, w, c)`` of an OpenCV array, with ``c = 1`` for a 2-D grayscale array."""
    return (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])


def encode_raw(img):
    """Pack a uint8/uint16 ``(h, w[, c])`` array as header + pixel bytes (the ``raw`` form)."""
    if img.dtype not in _CODES:
        raise ValueError(f'raw form stores uint8 or uint16 images, got {img.dtype}')
    h, w, c = shape3(img)
    return _RAW_HEADER.pack(RAW_MAGIC, _CODES[img.dtype], h, w, c) + np.ascontiguousarray(img).tobytes()


def decode(buf, name):
    """Decode stored bytes (``raw`` form or any OpenCV-readable file) to ``(h, w[, c])`` uint8/uint16.

    ``name`` (a path or LMDB key) is only used in error messages. Raises ``ValueError`` when the
    bytes are missing, truncated or not an image.
    """
    if buf is None:
        raise ValueError(f'{name}: no such entry')
    if buf[:4] == RAW_MAGIC:
        if len(buf) < _RAW_HEADER.size:
            raise ValueError(f'{name}: truncated raw header')
        _, code, h, w, c = _RAW_HEADER.unpack_from(buf)
        dtype = _DTYPES.get(code)
        if dtype is None:
            raise ValueError(f'{name}: unknown raw dtype code {code!r}')
        expected = h * w * c * np.dtype(dtype).itemsize
        if len(buf) - _RAW_HEADER.size != expected:
            raise ValueError(f'{name}: raw entry holds {len(buf) - _RAW_HEADER.size} bytes, '
                             f'its header ({h},{w},{c}) {np.dtype(dtype).name} needs {expected}')
        img = np.frombuffer(buf, dtype, offset=_RAW_HEADER.size).reshape(h, w, c)
        return img[:, :, 0] if c == 1 else img
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'{name}: not a decodable image')
    if img.dtype not in _SCALE:
        raise ValueError(f'{name}: unsupported pixel type {img.dtype} (use 8- or 16-bit images)')
    return img


def to_float_bgr(img):
    """``(h, w[, c])`` uint8/uint16 -> new writable float32 ``(h, w, 3)`` BGR in [0, 1].

    Grayscale is repeated to 3 channels, an alpha channel is dropped, 16-bit is scaled by 65535.
    """
    out = img.astype(np.float32) / np.float32(_SCALE[img.dtype])
    if out.ndim == 2:
        out = out[:, :, None]
    if out.shape[2] == 1:
        return np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])


def read_size(path):
    """``(h, w)`` of an image file from its header (decodes the file only if PIL cannot parse it).

    Raises ``ValueError`` naming the file when it is not a readable image.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'{path}: not a readable image')
    return img.shape[0], img.shape[1]


def _file_ids(lmdb_dir):
    ids = []
    for name in ('data.mdb', 'lock.mdb'):
        try:
            st = os.stat(os.path.join(lmdb_dir, name))
            ids.append((st.st_dev, st.st_ino))
        except OSError:
            ids.append(None)
    return tuple(ids)


def lmdb_env(path, **kwargs):
    """Read-only LMDB environment of ``path``, opened once per process and shared by all readers.

    LMDB allows one environment per database files and process, and none may be used across a
    fork. The cache is keyed by process and by the files' inodes: an environment inherited from
    the parent (e.g. by DataLoader workers) or one whose files were replaced (a re-pack) is closed,
    which only releases this process's copy, and opened afresh. ``kwargs`` go to ``lmdb.open``.
    """
    real = os.path.realpath(path)
    ident = (os.getpid(), _file_ids(real))
    cached = _ENVS.get(real)
    if cached is not None and cached[0] == ident:
        return cached[1]
    if cached is not None:
        cached[1].close()
    options = dict(readonly=True, lock=False, readahead=False)
    options.update(kwargs)
    env = lmdb.open(path, **options)
    _ENVS[real] = ident, env
    return env
