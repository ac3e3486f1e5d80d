"""Images from clients: data URLs in, validated JPEG bytes out; limits read from the
header before any pixel is decoded; decoding on a bounded pool off the event loop."""

import asyncio
import base64
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest

import vision.images as images
from seetalk.errors import BadImage, InvalidEvent
from vision.images import (
    check_image_header,
    decode_data_url,
    decode_data_url_async,
    decode_image,
    decode_image_async,
    run_decoder,
)


def _url(data: bytes, kind="jpeg") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def test_jpeg_passes_through(coffee_bgr):
    jpeg = cv2.imencode(".jpg", coffee_bgr)[1].tobytes()
    assert decode_data_url(_url(jpeg)) == jpeg


def test_png_becomes_jpeg(coffee_bgr):
    png = cv2.imencode(".png", coffee_bgr)[1].tobytes()
    out = decode_data_url(_url(png, "png"))
    assert out[:3] == b"\xff\xd8\xff"
    assert np.abs(decode_image(out).astype(int) - coffee_bgr).mean() < 6


def test_large_images_are_fitted():
    big = np.zeros((3000, 4000, 3), np.uint8)
    out = decode_data_url(_url(cv2.imencode(".jpg", big)[1].tobytes()))
    assert max(decode_image(out).shape[:2]) == 2048


@pytest.mark.parametrize(
    "url, words",
    [
        (None, "string"),
        (42, "string"),
        ("https://example.com/cat.jpg", "data URL"),
        ("data:text/plain;base64,aGVsbG8=", "data URL"),
        ("data:image/jpeg;base64,@@@not-base64@@@", "base64"),
        ("data:image/jpeg;base64,", "empty"),
        (_url(b"GIF89a this is not really an image"), "not a PNG, JPEG or WebP"),
        (_url(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"), "truncated"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, words):
    with pytest.raises(BadImage, match=words) as info:
        decode_data_url(url)
    assert info.value.code == "invalid_image"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few dozen bytes: a valid IHDR
    and one tiny IDAT (a decoder would allocate for the declared size first)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF0 marker rewritten to declare ``width`` x ``height``."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]


@pytest.fixture
def no_decoding(monkeypatch):
    """Any pixel decoding during the test fails it."""

    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called for an image over the limits")

    monkeypatch.setattr(images.cv2, "imdecode", refuse)


def test_small_png_jpeg_and_webp_pass():
    bgr = np.full((100, 100, 3), 127, np.uint8)
    for ext in (".png", ".jpg", ".webp"):
        data = cv2.imencode(ext, bgr)[1].tobytes()
        assert check_image_header(data) == (100, 100), ext
        assert decode_image(data).shape == (100, 100, 3), ext


def test_header_gives_width_then_height():
    data = cv2.imencode(".jpg", np.zeros((30, 70, 3), np.uint8))[1].tobytes()
    assert check_image_header(data) == (70, 30)
    assert check_image_header(cv2.imencode(".png", np.zeros((30, 70), np.uint8))[1].tobytes()) == (
        70,
        30,
    )


def test_png_bomb_is_refused_from_its_header(no_decoding):
    bomb = _png_header(30000, 30000)
    assert len(bomb) < 200
    for decode in (check_image_header, decode_image, lambda d: decode_data_url(_url(d, "png"))):
        with pytest.raises(BadImage, match="8192 px") as info:
            decode(bomb)
        assert info.value.code == "invalid_image"


@pytest.mark.parametrize(
    "size, words", [((9000, 10), "8192 px"), ((8000, 8000), "40000000 pixels"), ((0, 10), "empty")]
)
def test_png_limits(no_decoding, size, words):
    with pytest.raises(BadImage, match=words):
        check_image_header(_png_header(*size))


def test_jpeg_bomb_is_refused_from_its_sof_marker(no_decoding):
    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    assert check_image_header(_jpeg_with_size(jpeg, 16, 16)) == (16, 16)
    with pytest.raises(BadImage, match="pixels"):
        check_image_header(_jpeg_with_size(jpeg, 8000, 8000))


def test_too_many_bytes_is_refused(no_decoding):
    data = _png_header(100, 100) + b"\x00" * images.MAX_IMAGE_BYTES
    with pytest.raises(BadImage, match="bytes"):
        check_image_header(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # IHDR cut short
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT" + b"\x00" * 16,  # no IHDR first
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",  # APP0 cut short, no frame
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00",  # SOF cut short
        b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 8,  # scan before any frame header
        b"\xff\xd8\xff\xe0\x00\x00",  # a segment length under 2
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",  # WebP cut short
    ],
)
def test_truncated_or_malformed_headers_are_refused(no_decoding, data):
    with pytest.raises(BadImage, match="truncated or malformed"):
        check_image_header(data)


def test_other_formats_are_refused(no_decoding):
    for data in (b"GIF89a\x10\x00\x10\x00", b"BM" + b"\x00" * 60, b"\x00"):
        with pytest.raises(BadImage, match="not a PNG, JPEG or WebP"):
            check_image_header(data)


def test_a_header_that_lies_about_a_damaged_body_is_refused():
    with pytest.raises(BadImage, match="could not be decoded"):
        decode_image(_png_header(100, 100))


def test_big_jpeg_decodes_reduced_when_it_will_be_fitted():
    big = cv2.imencode(".jpg", np.zeros((4800, 8000, 3), np.uint8))[1].tobytes()
    assert decode_image(big, max_side=2048).shape == (2400, 4000, 3)  # 1/2 scale
    assert decode_image(big, max_side=1500).shape == (1200, 2000, 3)  # 1/4 scale
    assert max(decode_image(decode_data_url(_url(big))).shape[:2]) == 2048


async def test_async_decoders_match_the_sync_ones(coffee_bgr):
    png = cv2.imencode(".png", coffee_bgr)[1].tobytes()
    assert np.array_equal(await decode_image_async(png), decode_image(png))
    assert await decode_data_url_async(_url(png, "png")) == decode_data_url(_url(png, "png"))
    with pytest.raises(BadImage, match="8192 px"):
        await decode_image_async(_png_header(30000, 30000))
    with pytest.raises(BadImage, match="data URL"):
        await decode_data_url_async("https://example.com/cat.jpg")


async def test_decoding_runs_off_the_event_loop():
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    seen: list[str] = []

    def decode(data):
        seen.append(threading.current_thread().name)
        return decode_image(data)

    await run_decoder(decode, png)
    assert seen and seen[0].startswith("seetalk-image")


async def test_pool_refuses_work_over_its_bound_and_frees_cancelled_slots():
    release = threading.Event()
    bound = images.DECODE_THREADS + images.DECODE_WAITING

    def blocked() -> str:
        release.wait(60)  # a guard against a hung test, not a timing check
        return "done"

    tasks = [asyncio.create_task(run_decoder(blocked)) for _ in range(bound)]
    await asyncio.sleep(0)  # every task takes its slot before its first await
    try:
        with pytest.raises(InvalidEvent) as info:
            await run_decoder(blocked)
        assert info.value.code == "rate_limit_exceeded"

        tasks[-1].cancel()  # still waiting for a thread: its slot comes back at once
        with pytest.raises(asyncio.CancelledError):
            await tasks[-1]
        tasks[-1] = asyncio.create_task(run_decoder(blocked))
        await asyncio.sleep(0)
        with pytest.raises(InvalidEvent):
            await run_decoder(blocked)
    finally:
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results == ["done"] * bound
    assert await run_decoder(len, b"abc") == 3
