"""Every OpenAI-named event seetalk emits parses as the openai package's own type."""

from __future__ import annotations

import pytest
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from conversation import events as ev
from seetalk.errors import InvalidEvent

ADAPTER: TypeAdapter = TypeAdapter(RealtimeServerEvent)

SAMPLES = [
    ev.session_created({"type": "realtime", "model": "seetalk"}),
    ev.session_updated({"type": "realtime", "instructions": "hi"}),
    ev.error(InvalidEvent("bad", param="x", event_id="e1").to_event_error()),
    ev.speech_started("item_1", 1200),
    ev.speech_stopped("item_1", 2400),
    ev.input_committed("item_1", None),
    ev.input_cleared(),
    ev.transcription_delta("item_1", " there", "hello there"),
    ev.transcription_completed("item_1", "hello there", 1.2),
    ev.transcription_failed("item_1", {"type": "server_error", "message": "x"}),
    ev.item_added(ev.user_item("item_1", transcript="hello"), None),
    ev.item_done(ev.user_item("item_2", text="typed", images=1), "item_1"),
    ev.item_added(ev.assistant_item("item_3", None), "item_2"),
    ev.item_done(ev.assistant_item("item_3", "Hi.", status="completed"), "item_2"),
    ev.item_truncated("item_3", 800, "Hi"),
    ev.item_deleted("item_3"),
    ev.response_created("resp_1"),
    ev.output_item_added("resp_1", ev.assistant_item("item_3", None)),
    ev.output_item_done("resp_1", ev.assistant_item("item_3", "Hi.", status="completed")),
    ev.content_part_added("resp_1", "item_3"),
    ev.content_part_done("resp_1", "item_3", "Hi."),
    ev.audio_transcript_delta("resp_1", "item_3", "Hi. "),
    ev.audio_transcript_done("resp_1", "item_3", "Hi."),
    ev.audio_delta("resp_1", "item_3", "AAAA"),
    ev.audio_done("resp_1", "item_3"),
    ev.response_done("resp_1", "completed", [ev.assistant_item("item_3", "Hi.", "completed")]),
    ev.response_done("resp_1", "cancelled", [], reason="turn_detected"),
    ev.response_done(
        "resp_1", "failed", [], err={"type": "server_error", "code": "x", "message": "y"}
    ),
    ev.output_audio_started("resp_1"),
    ev.output_audio_stopped("resp_1"),
    ev.output_audio_cleared("resp_1"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e["type"])
def test_event_matches_the_openai_type(event: dict) -> None:
    parsed = ADAPTER.validate_python(event)
    assert parsed.type == event["type"]
    dumped = parsed.model_dump(exclude_none=True)
    for key, value in event.items():
        if key in dumped and not isinstance(value, dict | list):
            assert dumped[key] == value


def test_extension_events_are_namespaced() -> None:
    for event in (
        ev.turn_metrics("resp_1", {"voice_to_voice_ms": 900.0}),
        ev.reply_paused("resp_1", 100),
        ev.reply_resumed("resp_1", 100),
        ev.barge_in("resp_1", 1000, 1100),
        ev.frames_selected("item_1", []),
        ev.images_dropped("item_1", "text-only model"),
    ):
        assert event["type"].startswith("seetalk.")
        assert event["event_id"].startswith("event_")


def test_ids_are_unique() -> None:
    ids = {ev.new_id("item") for _ in range(10_000)}
    assert len(ids) == 10_000
