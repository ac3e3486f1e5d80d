"""A WebRTC session with a camera: the answer names what the camera shows."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.models


async def test_the_answer_names_what_the_camera_shows(
    seetalk_server, engine, espeak, webrtc_client_module, normalize_words, tmp_path
):
    import cv2
    from skimage import data

    photo = tmp_path / "coffee.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    srv = await seetalk_server(engine)
    async with webrtc_client_module.Client(srv.url, video=str(photo)) as client:
        await client.wait_for("session.created", 10)
        client.mic.say(np.zeros(24_000, np.int16))  # the camera runs a second first
        client.mic.say(
            webrtc_client_module.load_audio(str(espeak("What color is the cup?", wav=True)))
        )
        selected = await client.wait_for("seetalk.frames.selected", 60)
        assert selected["count"] >= 1
        frame = selected["frames"][0]
        assert max(frame["width"], frame["height"]) <= 1024 and frame["bytes"] > 1000
        done = await client.wait_for("response.done", 90)
        assert done["response"]["status"] == "completed"
        reply = "".join(
            e["delta"] for e in client.of_type("response.output_audio_transcript.delta")
        )
        assert "red" in normalize_words(reply), reply
