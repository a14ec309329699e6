"""Image bytes in and out for the paired datasets and the LMDB packer (no registration here).

Stored forms of one image inside an LMDB value:

* ``png``: PNG bytes, what ``basicsr.utils.lmdb_util`` writes (also any other format OpenCV decodes).
* ``raw``: a 22-byte header ``RAW_MAGIC``, dtype code (``u1``/``u2``), ``h, w, c`` and the CRC-32 of
  the first 18 header bytes and the pixels (little-endian uint32), then the pixels as stored by
  OpenCV: ``(h, w, c)`` BGR, uint8 or uint16. Decoding is a ``np.frombuffer``; no decompression.
  The checksum is checked on request (``verify_checksum``), so reading stays a memory copy.
  Entries of the first raw form (``LEGACY_RAW_MAGIC``, 18-byte header without checksum) stay readable.

:func:`decode` tells the forms apart by their first bytes, so readers need not know how a database
was packed, and it is the one decoder of the packer and the dataset: truncated files and images of
more than ``MAX_PIXELS`` pixels (decompression bombs) are refused by both. All arrays here are
OpenCV-style ``(h, w)`` or ``(h, w, c)`` BGR(A), uint8 or uint16.

Every problem with the data raises :class:`DataError` (a ``ValueError``) whose message names the
file or key, what is wrong and what to do.
"""

import io
import os
import struct
import warnings
import zlib

import cv2
import lmdb
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
#: largest image accepted (pixels): 128 Mpx, e.g. 16384 x 8192; larger headers are refused unread
MAX_PIXELS = 2**27
RAW_MAGIC = b'GMRC'
LEGACY_RAW_MAGIC = b'GMRW'
_RAW_HEADER = struct.Struct('<4s2sIIII')
_LEGACY_HEADER = struct.Struct('<4s2sIII')
_DTYPES = {b'u1': np.uint8, b'u2': np.uint16}
_CODES = {np.dtype(np.uint8): b'u1', np.dtype(np.uint16): b'u2'}
_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_ENVS = {}


class DataError(ValueError):
    """Bad or missing training/test data: the message names the file, key or option and what to do."""


class MissingDataError(DataError, FileNotFoundError):
    """A data folder, file or LMDB named by an option does not exist."""


def shape3(img):
    """``(h, w, c)`` of an OpenCV array, with ``c = 1`` for a 2-D grayscale array."""
    return (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])


def encode_raw(img):
    """Pack a uint8/uint16 ``(h, w[, c])`` array as header + pixel bytes (the ``raw`` form, with CRC-32)."""
    if img.dtype not in _CODES:
        raise DataError(f'raw form stores uint8 or uint16 images, got {img.dtype}')
    h, w, c = shape3(img)
    pixels = np.ascontiguousarray(img)
    head = _LEGACY_HEADER.pack(RAW_MAGIC, _CODES[img.dtype], h, w, c)
    crc = zlib.crc32(pixels, zlib.crc32(head))
    return head + struct.pack('<I', crc) + pixels.tobytes()


def is_raw(buf):
    """True for an entry in the raw form (either header)."""
    return buf[:4] in (RAW_MAGIC, LEGACY_RAW_MAGIC)


def has_checksum(buf):
    """True for a raw entry that carries a CRC-32 (PNG bytes carry their own chunk CRCs)."""
    return buf[:4] == RAW_MAGIC


def _decode_raw(buf, name, verify_checksum):
    header = _RAW_HEADER if buf[:4] == RAW_MAGIC else _LEGACY_HEADER
    if len(buf) < header.size:
        raise DataError(f'{name}: truncated raw header; the entry is damaged, re-pack the LMDB')
    _, code, h, w, c, *crc = header.unpack_from(buf)
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise DataError(f'{name}: unknown raw dtype code {code!r}; the entry is damaged, re-pack the LMDB')
    expected = h * w * c * np.dtype(dtype).itemsize
    if len(buf) - header.size != expected:
        raise DataError(
            f'{name}: raw entry holds {len(buf) - header.size} bytes, its header ({h},{w},{c}) '
            f'{np.dtype(dtype).name} needs {expected}; the entry is damaged, re-pack the LMDB'
        )
    if verify_checksum and crc:
        view = memoryview(buf)
        actual = zlib.crc32(view[header.size :], zlib.crc32(view[: _LEGACY_HEADER.size]))
        if actual != crc[0]:
            raise DataError(
                f'{name}: checksum mismatch (stored crc32 {crc[0]:08x}, computed {actual:08x}): the '
                'entry is damaged; re-pack the LMDB with `datasets_lmdb pack --overwrite`'
            )
    img = np.frombuffer(buf, dtype, offset=header.size).reshape(h, w, c)
    return img[:, :, 0] if c == 1 else img


def _too_large(name, pixels):
    return DataError(
        f'{name}: image of {pixels} pixels exceeds the limit of {MAX_PIXELS} pixels '
        '(a decompression bomb or a damaged header); remove the file or shrink the image'
    )


def _header_size(source, name):
    """``(h, w)`` from an image header through Pillow, ``None`` when Pillow cannot parse it.

    Raises :class:`DataError` for more than ``MAX_PIXELS`` pixels without decoding anything.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
    except Image.DecompressionBombError as err:  # above Pillow's own limit, which is above ours
        raise DataError(f'{name}: {err}; remove the file or shrink the image') from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error):
        return None
    if h * w > MAX_PIXELS:
        raise _too_large(name, h * w)
    return h, w


def _jpeg_truncated(buf):
    """True when a JPEG has no end-of-image marker after its first scan (the file was cut off).

    Marker segments are skipped by their lengths (an EXIF thumbnail's own markers sit inside one), and
    inside scans 0xFF bytes are stuffed, so an ``FF D9`` after the first start-of-scan is the end marker.
    """
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            return False  # not a marker: damaged in another way, the decoder decides
        marker = buf[pos + 1]
        if marker == 0xFF:
            pos += 1
        elif marker == 0xDA:
            return buf.find(b'\xff\xd9', pos) < 0
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
        else:
            pos += 2 + int.from_bytes(buf[pos + 2 : pos + 4], 'big')
    return True


def check_truncated(buf, name):
    """Refuse a truncated JPEG, which libjpeg only warns about ("Premature end of JPEG file") and decodes
    with its missing rows grey. The one truncation check of packing, training and ``gmmoe enhance``."""
    if buf[:2] == b'\xff\xd8' and _jpeg_truncated(buf):
        raise DataError(f'{name}: truncated JPEG (no end-of-image marker); copy or export the file again')


def check_encoded(buf, name):
    """Refuse encoded image bytes that are truncated JPEGs or declare more than ``MAX_PIXELS`` pixels.

    Reads headers only; OpenCV's decoder then refuses other truncated or damaged files (PNG, TIFF, BMP).
    """
    _header_size(io.BytesIO(buf), name)
    check_truncated(buf, name)


def decode(buf, name, verify_checksum=False):
    """Decode stored bytes (``raw`` form or any OpenCV-readable file) to ``(h, w[, c])`` uint8/uint16.

    ``name`` (a path or LMDB key) is only used in error messages. ``verify_checksum`` checks a raw
    entry's CRC-32 (about 0.5 ms per 600x400 RGB image). Raises :class:`DataError` when the bytes are
    missing, truncated, damaged, too large or not an image.
    """
    if buf is None:
        raise DataError(f'{name}: no such entry')
    if is_raw(buf):
        return _decode_raw(buf, name, verify_checksum)
    check_encoded(buf, name)
    try:
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise DataError(f'{name}: not a decodable image (empty, truncated, damaged or unsupported format)')
    if img.dtype not in _SCALE:
        raise DataError(f'{name}: unsupported pixel type {img.dtype} (use 8- or 16-bit images)')
    return img


def read_image_file(path):
    """Read and :func:`decode` one image file; ``DataError`` naming it when it cannot be read."""
    try:
        with open(path, 'rb') as f:
            buf = f.read()
    except FileNotFoundError:
        raise MissingDataError(f'{path}: file not found (moved or deleted after the dataset was built?)') from None
    except OSError as err:
        raise DataError(f'{path}: cannot be read ({err.strerror or err})') from None
    return decode(buf, path)


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
    """``(h, w)`` of an image file from its header (decodes the file only if Pillow cannot parse it).

    Raises :class:`DataError` naming the file when it is not a readable image or has more than
    ``MAX_PIXELS`` pixels.
    """
    size = _header_size(path, path)
    if size is not None:
        return size
    img = read_image_file(path)
    return img.shape[0], img.shape[1]


def _data_file(path):
    return os.path.join(path, 'data.mdb') if os.path.isdir(path) else path


def _file_ids(lmdb_dir):
    ids = []
    for name in ('data.mdb', 'lock.mdb'):
        try:
            st = os.stat(os.path.join(lmdb_dir, name))
            ids.append((st.st_dev, st.st_ino, st.st_size))
        except OSError:
            ids.append(None)
    return tuple(ids)


def check_complete(env, path):
    """Raise :class:`DataError` when ``data.mdb`` is shorter than the pages its header says are in use.

    Reading such a file through the memory map would kill the process with SIGBUS.
    """
    need = (env.info()['last_pgno'] + 1) * env.stat()['psize']
    have = os.path.getsize(_data_file(path))
    if have < need:
        raise DataError(
            f'{path}: data.mdb is truncated ({have} bytes, its header says {need}): an incomplete '
            'copy or download; copy it again or re-pack with `datasets_lmdb pack --overwrite`'
        )


def open_lmdb(path, **kwargs):
    """Open an LMDB read-only (``kwargs`` go to ``lmdb.open``) and check it is complete.

    Raises :class:`MissingDataError`/:class:`DataError` with a one-line message for a missing,
    damaged (bad header) or truncated database, never a traceback from lmdb or a SIGBUS.
    """
    if not os.path.exists(_data_file(path)):
        raise MissingDataError(f'{path}: not an LMDB (no data.mdb); pack it with `datasets_lmdb pack`')
    options = dict(readonly=True, lock=False, readahead=False)
    options.update(kwargs)
    try:
        env = lmdb.open(path, **options)
    except lmdb.Error as err:
        raise DataError(
            f'{path}: not a readable LMDB ({str(err).replace(path + ": ", "")}): its header is '
            'damaged; copy it again or re-pack with `datasets_lmdb pack --overwrite`'
        ) from None
    try:
        check_complete(env, path)
    except (DataError, lmdb.Error) as err:
        env.close()
        raise DataError(str(err)) from None
    return env


def lmdb_env(path, **kwargs):
    """Read-only LMDB environment of ``path``, opened once per process and shared by all readers.

    LMDB allows one environment per database files and process, and none may be used across a
    fork. The cache is keyed by process and by the files' inodes and sizes: an environment inherited
    from the parent (e.g. by DataLoader workers) or one whose files were replaced or resized (a
    re-pack) is closed, which only releases this process's copy, and opened afresh (and checked, see
    :func:`open_lmdb`). ``kwargs`` go to ``lmdb.open``.
    """
    real = os.path.realpath(path)
    ident = (os.getpid(), _file_ids(real))
    cached = _ENVS.get(real)
    if cached is not None and cached[0] == ident:
        return cached[1]
    if cached is not None:
        cached[1].close()
        del _ENVS[real]
    env = open_lmdb(path, **kwargs)
    _ENVS[real] = ident, env
    return env


def read_lmdb_entry(root, key, verify_checksum=False, **kwargs):
    """:func:`decode` the entry ``key`` of the LMDB at ``root`` (``kwargs`` go to :func:`lmdb_env`); a missing
    entry or a damaged database is a ``DataError`` naming both."""
    try:
        with lmdb_env(root, **kwargs).begin(write=False) as txn:
            buf = txn.get(key.encode('ascii'))
    except lmdb.Error as err:
        raise DataError(
            f'{root}: key {key}: damaged database ({type(err).__name__}: {err}); re-pack with '
            '`datasets_lmdb pack --overwrite`'
        ) from None
    return decode(buf, f'{root}: key {key}', verify_checksum)
