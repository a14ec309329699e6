"""Image files in and out: header size checks, EXIF orientation, bit depths and alpha, atomic writes.

:func:`read_image` refuses a file whose header declares more than ``max_image_pixels``, or more than one
frame, before decoding a pixel, refuses a truncated JPEG with the check packing and training use
(:func:`gmmoe_arch.data.image_io.check_truncated`), decodes with OpenCV (which keeps 16 bits and alpha) and
turns the image upright by its EXIF tag (read with Pillow). :data:`READABLE_EXTENSIONS` are the formats
OpenCV decodes, which folder scans pick up. :func:`write_image` encodes by the extension and writes through
:func:`write_file`, which never leaves a partial file under the final name (temporary name, fsync, rename).
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock
from typing import Optional

import cv2
import numpy as np

from ..data.image_io import DataError, check_truncated
from .errors import EnhanceError

# gmmoe_arch/enhance_cli.py holds a copy of this default (its parser imports no torch); a test keeps them equal.
DEFAULT_MAX_IMAGE_PIXELS = 150_000_000
EXIF_ORIENTATION = 0x0112
#: the extensions of the formats OpenCV's imread knows (those its build lacks fail by name, not by silence)
READABLE_EXTENSIONS = (
    '.png', '.apng', '.jpg', '.jpeg', '.jpe', '.jp2', '.bmp', '.dib', '.tif', '.tiff', '.webp', '.avif', '.gif',
    '.pbm', '.pgm', '.ppm', '.pnm', '.pxm', '.pfm', '.sr', '.ras', '.exr', '.hdr', '.pic',
)  # fmt: skip
WRITE_CHUNK = 16 * 2**20
_PILLOW_LIMIT = Lock()


@contextmanager
def _pillow_bomb_check_off() -> Iterator[None]:
    """Pillow's decompression-bomb check suspended: :func:`read_header` reads only the header and
    applies the caller's own limit right after. A lock keeps two of these from interleaving."""
    from PIL import Image

    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_header(path: str) -> tuple[Optional[tuple[int, int]], int, int]:
    """``((width, height), orientation, frames)`` from an image file's header, without decoding any pixel.

    ``(None, 1, 1)`` when Pillow cannot parse the header (OpenCV may still decode the file); the
    orientation is the EXIF tag (1-8), 1 when absent or unreadable; ``frames`` counts the frames of an
    animation or the pages of a multi-page file (a JPEG's MPO previews and depth maps are not frames).
    Raises :class:`EnhanceError` when the file cannot be opened at all.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with _pillow_bomb_check_off(), Image.open(path) as im:
            size = im.size
            try:
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            except Exception:  # a damaged EXIF block: no orientation, the pixels may still be fine
                orientation = 1
            try:
                frames = 1 if im.format == 'MPO' else int(getattr(im, 'n_frames', 1))
            except Exception:  # a damaged later frame: OpenCV decides on the first
                frames = 1
    except OSError as exc:
        if exc.errno is not None and not isinstance(exc, UnidentifiedImageError):  # missing, unreadable, a folder
            raise EnhanceError(f'{path}: cannot be read ({exc.strerror or exc})') from exc
        return None, 1, 1  # Pillow cannot parse this header (e.g. "Truncated File Read"); OpenCV decides
    except Exception:  # Pillow's parsers raise SyntaxError, struct.error, ... on damaged headers; OpenCV decides
        return None, 1, 1
    return size, orientation if orientation in range(1, 9) else 1, frames


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored ``H x W (x C)`` array upright, as ``PIL.ImageOps.exif_transpose`` does."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](img)) if orientation in ops else img


def read_image(path: str, max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as an upright RGB(A)/gray array of its own dtype (8/16-bit, float TIFF).

    The size declared in the header is checked against ``max_image_pixels`` (None: no limit), and a file of
    several frames is refused, before any pixel is decoded; so is a truncated JPEG. OpenCV decodes the pixels
    (``IMREAD_UNCHANGED`` keeps 16 bits and alpha but ignores EXIF); the EXIF orientation is read with
    Pillow and applied here.
    """
    size, orientation, frames = read_header(path)
    if size is not None and max_image_pixels is not None and size[0] * size[1] > max_image_pixels:
        raise EnhanceError(
            f'{path}: its header declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more '
            f'than --max-image-pixels {max_image_pixels:,} (memory grows with the image: about 9 '
            'bytes per pixel for 8-bit RGB); raise --max-image-pixels to enhance it anyway'
        )
    if frames > 1:
        raise EnhanceError(
            f'{path}: holds {frames} frames (an animation or a multi-page file); only single images are '
            'enhanced, and keeping one frame would lose the others silently: save each frame as a file first'
        )
    img = _decode(path)
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = np.stack([img[..., 0]] * 3 + [img[..., 1]], axis=2)
    if img.ndim == 3:
        _swap_red_blue(img)
    return _apply_orientation(img, orientation)


def _decode(path: str) -> np.ndarray:
    """The pixels of the file at ``path`` as OpenCV decodes them (``IMREAD_UNCHANGED``), after the truncation
    check of packing and training: OpenCV refuses other damaged files, but decodes a cut JPEG grey."""
    try:
        with open(path, 'rb') as f:
            buf = f.read()
        check_truncated(buf, path)
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    except OSError as exc:
        raise EnhanceError(f'{path}: cannot be read ({exc.strerror or exc})') from exc
    except DataError as exc:
        raise EnhanceError(str(exc)) from exc
    except cv2.error as exc:  # e.g. above OpenCV's own pixel limit, some truncated files
        raise EnhanceError(f'{path}: not a readable image ({str(exc).strip().splitlines()[-1]})') from exc
    if img is None:
        raise EnhanceError(f'{path}: not a readable image (empty, truncated or unsupported format)')
    return img


def _swap_red_blue(img: np.ndarray, rows: int = 256) -> None:
    """BGR(A) <-> RGB(A) in place, a band of rows at a time (no second copy of a large image)."""
    for r in range(0, img.shape[0], rows):
        band = img[r : r + rows]
        band[..., [0, 2]] = band[..., [2, 0]]


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` (bytes-like) to ``path`` so that ``path`` only ever holds a complete file.

    The bytes go to a hidden temporary file in the same folder (created if missing), which is
    flushed to disk (fsync) and then renamed over ``path``. On any failure (disk full, no
    permission, ...) the temporary file is removed, ``path`` is left as it was, and
    :class:`EnhanceError` names the file and the reason.
    """
    path = str(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}.partial')
    fd = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        view = memoryview(data).cast('B')
        while view:
            view = view[os.write(fd, view[:WRITE_CHUNK]) :]
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise EnhanceError(
            f'{path}: cannot be written ({exc.strerror or exc}); nothing was written under that name'
        ) from exc
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    """fsync a folder so that a rename in it survives a power cut (best effort: not every OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_image(path: str, img: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB(A)/gray array (uint8, uint16 or float32 for TIFF), atomically (:func:`write_file`);
    the format follows the extension, parent folders are created."""
    ext = os.path.splitext(str(path))[1]
    params = [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality] if ext.lower() in ('.jpg', '.jpeg') else []
    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3][: img.shape[2]]]
    try:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(img), params)
    except cv2.error as exc:  # a format that cannot hold the dtype or channels, an unknown extension
        raise EnhanceError(f'{path}: cannot be written ({str(exc).strip().splitlines()[-1]})') from exc
    if not ok:
        raise EnhanceError(f'{path}: cannot be written (OpenCV could not encode {img.dtype} as {ext})')
    del img
    write_file(path, encoded)
