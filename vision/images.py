"""Images in and out: camera arrays to BGR ``uint8``, fitting, JPEG, and data URLs.

Everything a client can get wrong (an empty frame, an odd pixel format, a data URL that is
not an image) raises :class:`~seetalk.errors.BadImage` with a message that says what was
wrong; nothing here crashes on bad input. Encoded images are checked from their header
(:func:`check_image_header`: bytes, sides, pixels) before a pixel is decoded, and decoding
from the event loop goes through one small bounded pool (:func:`decode_image_async`,
:func:`decode_data_url_async`) that refuses work beyond its bound instead of queueing it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np

from seetalk.errors import BadImage, InvalidEvent

T = TypeVar("T")

MAX_SIDE = 8192  # larger frames are refused (a 4K frame is 3840 px)
MAX_SIDE_IN = 8192  # encoded images from clients: the longest side allowed
MAX_PIXELS = 40_000_000  # ... and the most pixels (120 MB as BGR)
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # ... and the most encoded bytes
MAX_DATA_URL_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4 + 64  # base64 of MAX_IMAGE_BYTES + prefix
DECODE_THREADS = 2  # decoding threads shared by every session
DECODE_WAITING = 8  # decodes that may wait for a thread; more are refused (rate_limit_exceeded)
_DATA_URL = re.compile(r"data:image/(jpeg|jpg|png|webp);base64,", re.IGNORECASE)
_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0..SOF15 without DHT C4, JPG C8 and DAC CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length


def check_image_header(data: bytes, *, param: str | None = None) -> tuple[int, int]:
    """``(width, height)`` read from a PNG IHDR, a JPEG SOFn marker or a WebP header,
    without decoding a pixel; :class:`BadImage` when the bytes, a side or the pixel count
    is over its limit (``MAX_IMAGE_BYTES``, ``MAX_SIDE_IN``, ``MAX_PIXELS``), or the header
    is truncated or not one of those formats. Run it before every decode: a 100 KB PNG can
    declare 30000x30000 pixels and take gigabytes and seconds to decode."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadImage(f"image data must be bytes, not {type(data).__name__}", param=param)
    n = len(data)
    if n == 0:
        raise BadImage("empty image", param=param)
    if n > MAX_IMAGE_BYTES:
        raise BadImage(f"image is over {MAX_IMAGE_BYTES} bytes", param=param)
    if data[:8] == _PNG:
        size = _png_size(data)
    elif data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp_size(data)
    else:
        raise BadImage("the image is not a PNG, JPEG or WebP image", param=param)
    if size is None:
        raise BadImage("the image header is truncated or malformed", param=param)
    w, h = size
    if w < 1 or h < 1:
        raise BadImage(f"the image declares an empty size {w}x{h}", param=param)
    if max(w, h) > MAX_SIDE_IN:
        raise BadImage(f"image {w}x{h} is over {MAX_SIDE_IN} px on a side", param=param)
    if w * h > MAX_PIXELS:
        raise BadImage(f"image {w}x{h} is over {MAX_PIXELS} pixels", param=param)
    return w, h


def _png_size(d: bytes) -> tuple[int, int] | None:
    if len(d) < 24 or d[12:16] != b"IHDR" or int.from_bytes(d[8:12], "big") != 13:
        return None
    return int.from_bytes(d[16:20], "big"), int.from_bytes(d[20:24], "big")


def _jpeg_size(d: bytes) -> tuple[int, int] | None:
    """Walk the markers after SOI to the first SOFn; ``None`` if SOS, EOI or the end of
    the data comes first, or a marker is malformed."""
    i, n = 2, len(d)
    while i < n:
        if d[i] != 0xFF:
            return None
        while i < n and d[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = d[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA) or i + 2 > n:  # SOI again, EOI, SOS before a frame
            return None
        length = int.from_bytes(d[i : i + 2], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if length < 7 or i + 7 > n:
                return None
            return int.from_bytes(d[i + 5 : i + 7], "big"), int.from_bytes(d[i + 3 : i + 5], "big")
        i += length
    return None


def _webp_size(d: bytes) -> tuple[int, int] | None:
    if len(d) < 30:
        return None
    chunk = d[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(d[24:27], "little") + 1, int.from_bytes(d[27:30], "little") + 1
    if chunk == b"VP8L" and d[20] == 0x2F:
        bits = int.from_bytes(d[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and d[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(d[26:28], "little") & 0x3FFF,
            int.from_bytes(d[28:30], "little") & 0x3FFF,
        )
    return None


def check_frame(frame: object) -> np.ndarray:
    """The frame as an array if its shape and type can become a BGR image, else
    :class:`BadImage`. Cheap (no pixel is touched): run it on every camera frame."""
    if not isinstance(frame, np.ndarray):
        raise BadImage(f"a camera frame must be a numpy array, not {type(frame).__name__}")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise BadImage(
            f"a camera frame must be HxW, HxWx3 (BGR) or HxWx4 (BGRA), not {frame.shape}"
        )
    if frame.size == 0 or min(frame.shape[:2]) < 2:
        raise BadImage(f"empty camera frame {frame.shape}")
    if max(frame.shape[:2]) > MAX_SIDE:
        raise BadImage(f"camera frame {frame.shape[1]}x{frame.shape[0]} is over {MAX_SIDE} px")
    if frame.dtype.kind not in "buif":
        raise BadImage(f"unsupported camera pixel type {frame.dtype}")
    return frame


def to_bgr(frame: object) -> np.ndarray:
    """A contiguous BGR ``uint8`` copy-or-view of ``frame``: gray and BGRA are converted,
    floats in 0..1 (or 0..255) scaled, 16-bit shifted; anything else is :class:`BadImage`."""
    a = check_frame(frame)
    if a.dtype != np.uint8:
        if a.dtype.kind == "f":
            if not np.isfinite(a).all():
                raise BadImage("camera frame has NaN or infinite pixels")
            scale = 255.0 if a.size and float(a.max()) <= 1.0 else 1.0
            a = np.clip(a * scale, 0, 255).astype(np.uint8)
        elif a.dtype == np.uint16:
            a = (a >> 8).astype(np.uint8)
        else:  # bool, other integers
            a = np.clip(a.astype(np.int64) * (255 if a.dtype == np.bool_ else 1), 0, 255).astype(
                np.uint8
            )
    if a.ndim == 2 or a.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(a.reshape(a.shape[:2])), cv2.COLOR_GRAY2BGR)
    if a.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(a)


def fit(bgr: np.ndarray, max_side: int) -> np.ndarray:
    """``bgr`` scaled down (never up) so its long side is at most ``max_side``."""
    h, w = bgr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return bgr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(bgr: np.ndarray, quality: int = 75) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise BadImage("the image could not be JPEG-encoded")
    return buf.tobytes()


def decode_image(data: bytes, *, param: str | None = None, max_side: int = 0) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP) to BGR ``uint8``, or :class:`BadImage`.

    The header is checked first (:func:`check_image_header`), so nothing over the limits is
    decoded. With ``max_side``, a JPEG much larger than that is decoded at 1/2, 1/4 or 1/8
    scale by the JPEG decoder itself (less memory and time; the caller still fits it).
    Blocking: on the event loop use :func:`decode_image_async`."""
    w, h = check_image_header(data, param=param)
    flags = cv2.IMREAD_COLOR
    if max_side and data[:3] == b"\xff\xd8\xff":
        for factor, reduced in (
            (8, cv2.IMREAD_REDUCED_COLOR_8),
            (4, cv2.IMREAD_REDUCED_COLOR_4),
            (2, cv2.IMREAD_REDUCED_COLOR_2),
        ):
            if max(w, h) // factor >= max_side:
                flags = reduced
                break
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise BadImage("the image data could not be decoded (a damaged image)", param=param)
    return img


def _data_url_payload(url: object) -> str:
    """The base64 part of a ``data:image/...;base64,`` URL (cheap checks only: type, length,
    prefix), or :class:`BadImage` saying what is wrong."""
    if not isinstance(url, str):
        raise BadImage(
            "image_url must be a string data URL (data:image/jpeg;base64,...)", param="image_url"
        )
    if len(url) > MAX_DATA_URL_CHARS:
        raise BadImage(f"image data URL is over {MAX_DATA_URL_CHARS} characters", param="image_url")
    m = _DATA_URL.match(url)
    if m is None:
        shown = url[:40] + ("..." if len(url) > 40 else "")
        raise BadImage(
            f"image_url must be a base64 data URL of a JPEG, PNG or WebP image, got {shown!r}",
            param="image_url",
        )
    return url[m.end() :]


def _payload_to_jpeg(payload: str, max_side: int, quality: int) -> bytes:
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage(f"image data URL is not valid base64: {exc}", param="image_url") from exc
    w, h = check_image_header(data, param="image_url")
    img = decode_image(data, param="image_url", max_side=max_side)
    if data[:3] == b"\xff\xd8\xff" and max(w, h) <= max_side:
        return data
    return encode_jpeg(fit(img, max_side), quality)


def decode_data_url(url: object, *, max_side: int = 2048, quality: int = 85) -> bytes:
    """JPEG bytes of the image in a ``data:image/...;base64,`` URL.

    A JPEG that decodes and fits ``max_side`` is passed through; anything else that decodes
    (PNG, WebP, a large JPEG) is re-encoded as JPEG fitted to ``max_side``. Not a string, not
    a data URL, not base64, over the limits of :func:`check_image_header`, or not an image:
    :class:`BadImage` saying which. Blocking: on the event loop use
    :func:`decode_data_url_async`.
    """
    return _payload_to_jpeg(_data_url_payload(url), max_side, quality)


# --- the decoding pool: image decoding never runs on the event loop ---

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_slots = threading.BoundedSemaphore(DECODE_THREADS + DECODE_WAITING)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="seetalk-image")
        return _pool


async def run_decoder(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the shared image-decoding threads (``DECODE_THREADS``).

    Bounded: at most ``DECODE_THREADS + DECODE_WAITING`` calls are running or waiting,
    across every session; one more is refused at once with ``rate_limit_exceeded`` (an
    :class:`~seetalk.errors.InvalidEvent`) rather than queued. Cancel-safe: cancelling the
    caller drops work that has not started; work already running finishes in its thread
    and keeps its slot until then, so the bound counts what the threads really hold."""
    if not _slots.acquire(blocking=False):
        raise InvalidEvent(
            f"too many images are being decoded ({DECODE_THREADS + DECODE_WAITING}): slow down",
            code="rate_limit_exceeded",
        )
    try:
        fut: Future[T] = _executor().submit(fn, *args)
    except BaseException:
        _slots.release()
        raise
    fut.add_done_callback(lambda _f: _slots.release())
    return await asyncio.wrap_future(fut)


async def decode_image_async(data: bytes) -> np.ndarray:
    """:func:`decode_image` off the event loop: the header is checked here (cheap), the
    pixels are decoded on the bounded pool (see :func:`run_decoder`)."""
    check_image_header(data)
    return await run_decoder(decode_image, data)


async def decode_data_url_async(url: object, *, max_side: int = 2048, quality: int = 85) -> bytes:
    """:func:`decode_data_url` on the bounded pool (base64, header check, decode, JPEG)."""
    payload = _data_url_payload(url)  # the cheap checks answer without a thread
    return await run_decoder(_payload_to_jpeg, payload, max_side, quality)
