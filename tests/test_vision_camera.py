"""A file as the camera: a still image, and a short video made with ffmpeg."""

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from seetalk.errors import BadImage
from vision.camera import FileCamera


class Recorder:
    def __init__(self):
        self.frames = []

    def push_video(self, frame, t):
        self.frames.append((t, frame))


def _play(camera, seconds):
    rec = Recorder()
    for k in range(int(seconds / 0.02)):
        camera.feed(rec, k * 0.02)
    return rec.frames


def test_an_image_is_a_still_camera(tmp_path, coffee_bgr):
    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), coffee_bgr)
    camera = FileCamera.open(path)
    assert camera.is_still
    frames = _play(camera, 2.0)
    assert len(frames) == 10  # 5 fps
    assert np.array_equal(frames[0][1], coffee_bgr)


def test_a_video_plays_at_its_frame_rate(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    path = tmp_path / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
            "-t",
            "1",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    camera = FileCamera.open(path)
    assert not camera.is_still
    frames = _play(camera, 2.0)
    assert 9 <= len(frames) <= 10  # 10 fps for 1 s, then the camera is off
    assert frames[-1][0] <= 1.0
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for _, f in frames)
    assert not np.array_equal(frames[0][1], frames[-1][1])


@pytest.mark.parametrize("content", [b"", b"neither an image nor a video"])
def test_bad_files_are_bad_images(tmp_path, content):
    path = tmp_path / "camera.bin"
    path.write_bytes(content)
    with pytest.raises(BadImage, match="camera file"):
        FileCamera.open(path)
    with pytest.raises(BadImage, match="does not exist"):
        FileCamera.open(tmp_path / "missing.png")
