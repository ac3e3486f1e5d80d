"""The embedded default: scene notes from real images, and the small text model answering
from them (SmolLM2-135M through the real backend, messages shaped as the session builds them)."""

import asyncio

import cv2
import numpy as np
import pytest

from seetalk.config import DEFAULT_INSTRUCTIONS
from seetalk.errors import BadImage
from vision.images import encode_jpeg
from vision.scene import colours

pytestmark = pytest.mark.models


def test_colour_of_the_cup(coffee_bgr):
    obj, _background, _scene = colours(coffee_bgr)
    assert obj == "red"


def test_colours_of_plain_scenes():
    ball = np.full((480, 640, 3), (128, 128, 128), np.uint8)
    cv2.circle(ball, (320, 240), 110, (200, 60, 20), -1)  # BGR: a blue disc on grey
    assert colours(ball)[:2] == ("blue", "grey")
    assert colours(np.full((240, 320, 3), (30, 160, 40), np.uint8)) == (None, None, "green")


def test_notes_on_the_coffee_photo(scene_describer, coffee_bgr):
    notes = scene_describer.describe([encode_jpeg(coffee_bgr)])
    assert notes.startswith("Camera view:")
    assert "centre is red" in notes
    assert "text" not in notes  # no OCR noise from the photo
    assert len(notes) < 120


@pytest.mark.parametrize("text", ["EXIT", "OPEN 9AM - 5PM"])
def test_notes_read_a_sign(scene_describer, render_sign, text):
    notes = scene_describer.describe([encode_jpeg(render_sign(text))])
    assert f'"{text}"' in notes


def test_only_the_newest_frame_is_described(scene_describer, render_sign):
    old, new = encode_jpeg(render_sign("CLOSED")), encode_jpeg(render_sign("EXIT"))
    notes = scene_describer.describe([old, new])
    assert "EXIT" in notes and "CLOSED" not in notes
    assert scene_describer.describe([]) == ""


def test_a_dark_view_is_said_to_be_dark(scene_describer, coffee_bgr):
    assert "very dark" in scene_describer.describe([encode_jpeg(coffee_bgr // 12)])


def test_bytes_that_are_not_an_image(scene_describer):
    with pytest.raises(BadImage):
        scene_describer.describe([b"not a jpeg"])


# --- answers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ask(smollm2_gguf):
    """``ask(notes, question) -> reply`` on SmolLM2 with the session's default instructions
    and a user message shaped as Conversation.messages builds it (notes, newline, words)."""
    from llm.backend import ChatMessage, GenerationSettings
    from llm.local import LlamaCppBackend

    backend = LlamaCppBackend(smollm2_gguf)
    loop = asyncio.new_event_loop()

    async def run(notes, question):
        messages = [
            ChatMessage("system", DEFAULT_INSTRUCTIONS),
            ChatMessage("user", f"{notes}\n{question}"),
        ]
        return "".join([d async for d in backend.stream(messages, GenerationSettings())])

    yield lambda notes, question: loop.run_until_complete(run(notes, question))
    loop.run_until_complete(backend.aclose())
    loop.close()


@pytest.mark.parametrize("question", ["What colour is the cup?", "What color is the cup?"])
def test_the_default_answers_the_colour_of_the_cup(ask, scene_describer, coffee_bgr, question):
    notes = scene_describer.describe([encode_jpeg(coffee_bgr)])
    assert "red" in ask(notes, question).lower()


@pytest.mark.parametrize("text", ["EXIT", "OPEN 9AM - 5PM"])
def test_the_default_reads_the_sign(ask, scene_describer, render_sign, text):
    notes = scene_describer.describe([encode_jpeg(render_sign(text))])
    assert text.lower() in ask(notes, "What does the sign say?").lower()


def test_the_answer_follows_what_the_camera_shows(ask, scene_describer):
    """A blue cup is blue: the answer comes from the notes, not from the model's guess."""
    mug = np.full((480, 640, 3), (235, 235, 235), np.uint8)
    cv2.rectangle(mug, (230, 140), (410, 380), (190, 70, 20), -1)  # BGR: blue
    notes = scene_describer.describe([encode_jpeg(mug)])
    answer = ask(notes, "What colour is the cup?").lower()
    assert "blue" in answer and "red" not in answer
