"""A spoken question about a picture, end to end through the engine: espeak-ng asks, the
file camera shows the photo, the default (scene notes + SmolLM2) answers."""

import cv2
import pytest

from conversation.filesession import run_session
from vision.camera import FileCamera

pytestmark = pytest.mark.models


async def test_spoken_question_about_the_cup(engine, timeline, coffee_bgr, tmp_path):
    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), coffee_bgr)
    audio = timeline([(0.5, "What color is the cup?")], 5.0)
    run = await run_session(engine, audio, 16_000, fast=True, camera=FileCamera.open(path))
    [selected] = run.of_type("seetalk.frames.selected")
    assert selected["count"] >= 1
    assert all(f["width"] == 600 and f["height"] == 400 for f in selected["frames"])
    assert selected["frames"][-1]["reason"] == "sharpest_at_end"
    users = [h for h in run.history if h["role"] == "user"]
    replies = [h for h in run.history if h["role"] == "assistant"]
    assert users and "cup" in users[0]["text"].lower()
    assert replies and "red" in replies[-1]["text"].lower()
    assert run.leaked_tasks == 0


async def test_without_a_camera_nothing_is_selected(engine, timeline):
    audio = timeline([(0.5, "Hello there.")], 3.5)
    run = await run_session(engine, audio, 16_000, fast=True)
    assert run.of_type("seetalk.frames.selected") == []
