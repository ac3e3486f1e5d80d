"""Images from clients: data URLs in, validated JPEG bytes out."""

import base64

import cv2
import numpy as np
import pytest

from seetalk.errors import BadImage
from vision.images import decode_data_url, decode_image


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
        (_url(b"GIF89a this is not really an image"), "decoded"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, words):
    with pytest.raises(BadImage, match=words) as info:
        decode_data_url(url)
    assert info.value.code == "invalid_image"
