"""Images in and out: camera arrays to BGR ``uint8``, fitting, JPEG, and data URLs.

Everything a client can get wrong (an empty frame, an odd pixel format, a data URL that is
not an image) raises :class:`~seetalk.errors.BadImage` with a message that says what was
wrong; nothing here crashes on bad input.
"""

from __future__ import annotations

import base64
import binascii
import re

import cv2
import numpy as np

from seetalk.errors import BadImage

MAX_SIDE = 8192  # larger frames are refused (a 4K frame is 3840 px)
MAX_DATA_URL_CHARS = 16 * 1024 * 1024  # about 12 MB of image
_DATA_URL = re.compile(r"data:image/(jpeg|jpg|png|webp|bmp|gif);base64,", re.IGNORECASE)


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


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) to BGR ``uint8``, or :class:`BadImage`."""
    if not data:
        raise BadImage("empty image")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise BadImage("the image data could not be decoded (not a JPEG/PNG/WebP/BMP/GIF image)")
    return img


def decode_data_url(url: object, *, max_side: int = 2048, quality: int = 85) -> bytes:
    """JPEG bytes of the image in a ``data:image/...;base64,`` URL.

    A JPEG that decodes and fits ``max_side`` is passed through; anything else that decodes
    (PNG, WebP, a large JPEG) is re-encoded as JPEG fitted to ``max_side``. Not a string, not
    a data URL, not base64, too large, or not an image: :class:`BadImage` saying which.
    """
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
            f"image_url must be a base64 data URL of a JPEG or PNG image, got {shown!r}",
            param="image_url",
        )
    try:
        data = base64.b64decode(url[m.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage(f"image data URL is not valid base64: {exc}", param="image_url") from exc
    img = decode_image(data)
    if data[:3] == b"\xff\xd8\xff" and max(img.shape[:2]) <= max_side:
        return data
    return encode_jpeg(fit(img, max_side), quality)
