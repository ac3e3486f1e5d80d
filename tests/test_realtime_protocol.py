"""The Realtime client-event parser (pure) and the session.update validator, the audio
codecs and the token bucket."""

from __future__ import annotations

import base64
import json
import warnings

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from conversation.protocol import (
    CLIENT_EVENT_TYPES,
    InputAudioAppend,
    ItemTruncate,
    SessionUpdate,
    TurnDetection,
    parse_client_event,
    parse_client_object,
)
from conversation.settings import describe_session, settings_for
from seetalk.config import SessionSettings
from seetalk.errors import BadAudio, ConfigError, InvalidEvent
from server.ratelimit import TokenBucket
from server.realtime_codec import (
    ALAW_DECODE,
    PCM16,
    PCMA,
    PCMU,
    ULAW_DECODE,
    AudioEncoder,
    decode_audio,
    encode_samples,
)

MAX = 1 << 20
PNG = (
    "data:image/png;base64,"
    + base64.b64encode(cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[1].tobytes()).decode()
)


def png_header(width: int, height: int) -> str:
    """A data URL whose PNG header declares ``width`` x ``height`` (no pixels follow)."""
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\0\0\0"
    data = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + b"\0" * 4
    return "data:image/png;base64," + base64.b64encode(data).decode()


AUDIO = base64.b64encode(b"\x01\x00\xff\x7f").decode()

VALID = [
    {
        "type": "session.update",
        "event_id": "e1",
        "session": {
            "type": "realtime",
            "instructions": "Be brief.",
            "max_output_tokens": 200,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.6,
                        "prefix_padding_ms": 200,
                        "silence_duration_ms": 700,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
            },
        },
    },
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcma"}}},
        },
    },
    {"type": "input_audio_buffer.append", "audio": AUDIO, "event_id": "a"},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "output_audio_buffer.clear"},
    {
        "type": "conversation.item.create",
        "previous_item_id": "item_1",
        "item": {
            "type": "message",
            "role": "user",
            "id": "item_2",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_audio", "audio": AUDIO, "transcript": "hi"},
                {"type": "input_image", "image_url": PNG, "detail": "low"},
            ],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "x"}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "earlier answer"}],
        },
    },
    {
        "type": "conversation.item.truncate",
        "item_id": "i",
        "content_index": 0,
        "audio_end_ms": 1500,
    },
    {"type": "conversation.item.delete", "item_id": "i"},
    {"type": "conversation.item.retrieve", "item_id": "i"},
    {"type": "response.create"},
    {
        "type": "response.create",
        "response": {
            "instructions": "Shout.",
            "max_output_tokens": "inf",
            "conversation": "auto",
            "metadata": {"k": "v"},
            "output_modalities": ["audio"],
            "input": [{"type": "item_reference", "id": "item_1"}],
        },
    },
    {"type": "response.cancel"},
    {"type": "response.cancel", "response_id": "resp_1"},
    {"type": "seetalk.input_image.append", "image_url": PNG},
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "seetalk": {
                "temperature": 0.7,
                "history_turns": 0,
                "camera_max_side": 640,
                "jpeg_quality": 90,
                "max_keyframes": 8,
                "max_output_tokens": 4096,
                "turn": {"min_speech_ms": 100, "preemptive": False, "mode": "server_vad"},
            },
        },
    },
]


@pytest.mark.parametrize("event", VALID, ids=lambda e: e["type"])
def test_valid_events_round_trip(event):
    parsed = parse_client_event(json.dumps(event), max_bytes=MAX)
    assert parsed.type == event["type"]
    assert parsed.to_dict() == event
    assert parse_client_event(json.dumps(parsed.to_dict()).encode(), max_bytes=MAX) == parsed


def test_every_protocol_client_event_is_covered():
    from typing import get_args

    from openai.types.realtime import RealtimeClientEvent

    union = get_args(get_args(RealtimeClientEvent)[0])
    types = {get_args(m.model_fields["type"].annotation)[0] for m in union}
    assert types <= set(CLIENT_EVENT_TYPES)


@pytest.mark.parametrize(
    "event",
    # (item references in response.input belong to the "with references" variant)
    [
        e
        for e in VALID
        if not e["type"].startswith("seetalk.")
        and "input" not in e.get("response", {})
        and "seetalk" not in e.get("session", {})
    ],
    ids=lambda e: e["type"],
)
def test_normalized_events_validate_as_openai_types(event):
    from openai.types.realtime import RealtimeClientEvent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TypeAdapter(RealtimeClientEvent).validate_python(
            parse_client_event(json.dumps(event), max_bytes=MAX).to_dict()
        )
    assert model.type == event["type"]


def test_parsed_fields():
    ev = parse_client_event(json.dumps(VALID[0]), max_bytes=MAX)
    assert isinstance(ev, SessionUpdate)
    assert ev.output_format == PCMU and ev.input_format == PCM16
    assert ev.turn_detection == TurnDetection("server_vad", 0.6, 200, 700, True, True)
    off = parse_client_event(json.dumps(VALID[1]), max_bytes=MAX)
    assert isinstance(off, SessionUpdate) and off.turn_detection is None
    app = parse_client_event(json.dumps(VALID[2]), max_bytes=MAX)
    assert isinstance(app, InputAudioAppend) and app.audio == b"\x01\x00\xff\x7f"
    tr = parse_client_event(json.dumps(VALID[9]), max_bytes=MAX)
    assert tr == ItemTruncate(item_id="i", content_index=0, audio_end_ms=1500)


def test_semantic_vad_maps_onto_the_end_of_turn_model():
    ev = parse_client_event(
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}
                    },
                },
            }
        ),
        max_bytes=MAX,
    )
    assert isinstance(ev, SessionUpdate)
    turn = settings_for(SessionSettings(), ev).turn
    assert (turn.mode, turn.eot, turn.eagerness) == ("server_vad", "smart_turn", "low")
    assert (turn.eot_incomplete_silence_ms, turn.silence_ms) == (8000, 1000)  # 1000: no model


def test_settings_for_maps_every_field():
    ev = parse_client_event(json.dumps(VALID[0]), max_bytes=MAX)
    assert isinstance(ev, SessionUpdate)
    s = settings_for(SessionSettings(), ev)
    assert (s.instructions, s.max_output_tokens, s.voice) == ("Be brief.", 200, "alloy")
    assert (s.input_format, s.output_format) == ("audio/pcm", "audio/pcmu")
    t = s.turn
    assert (t.vad_threshold, t.prefix_padding_ms, t.silence_ms, t.interrupt) == (
        0.6,
        200,
        700,
        True,
    )
    off = parse_client_event(json.dumps(VALID[1]), max_bytes=MAX)
    assert isinstance(off, SessionUpdate)
    manual = settings_for(s, off)
    assert manual.turn.mode == "none" and manual.input_format == "audio/pcma"
    assert manual.instructions == "Be brief."  # what the update does not name stays
    ext = parse_client_event(json.dumps(VALID[-1]), max_bytes=MAX)
    assert isinstance(ext, SessionUpdate)
    e = settings_for(SessionSettings(), ext)
    assert (e.temperature, e.history_turns, e.camera_max_side) == (0.7, 0, 640)
    assert (e.jpeg_quality, e.max_keyframes, e.max_output_tokens) == (90, 8, 4096)
    assert (e.turn.min_speech_ms, e.turn.preemptive) == (100, False)
    described = describe_session("sess_1", e)
    assert described["seetalk"]["temperature"] == 0.7
    assert described["seetalk"]["turn"]["min_speech_ms"] == 100
    inf = parse_client_object({"type": "session.update", "session": {"max_output_tokens": "inf"}})
    assert isinstance(inf, SessionUpdate)
    assert settings_for(SessionSettings(), inf).max_output_tokens == 4096


@pytest.mark.parametrize(
    "changes,param",
    [
        ({"temperature": 2.5}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"history_turns": 201}, "history_turns"),
        ({"camera_max_side": 10}, "camera_max_side"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"max_keyframes": 9}, "max_keyframes"),
        ({"output_rate": 44_100}, "output_rate"),
        ({"input_format": "audio/opus"}, "input_format"),
        ({"instructions": "x" * 100_001}, "instructions"),
        ({"history_turns": True}, "history_turns"),
    ],
)
def test_session_settings_check_their_ranges(changes, param):
    with pytest.raises(ConfigError) as info:
        SessionSettings(**changes)
    assert info.value.param == param


BAD = [
    (b"\xff\xfe", "invalid_json", None),
    ("{", "invalid_json", None),
    ('{"type": NaN}', "invalid_json", None),
    ("[" * 100_000, "invalid_json", None),
    ('"hello"', "invalid_event", None),
    ('{"type": 3}', "invalid_type", "type"),
    ("{}", "missing_required_parameter", "type"),
    ('{"type": "nope"}', "unknown_event_type", "type"),
    ('{"type": "input_audio_buffer.commit", "event_id": 5}', "invalid_type", "event_id"),
    ('{"type": "input_audio_buffer.commit", "extra": 1}', "unknown_parameter", "extra"),
    ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "YQ"}', "invalid_base64", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "a b="}', "invalid_base64", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "é"}', "invalid_base64", "audio"),
    (
        '{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, '
        '"audio_end_ms": true}',
        "invalid_type",
        "audio_end_ms",
    ),
    (
        '{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, '
        '"audio_end_ms": -1}',
        "invalid_value",
        "audio_end_ms",
    ),
    ('{"type": "conversation.item.delete", "item_id": ["x"]}', "invalid_type", "item_id"),
    (
        '{"type": "conversation.item.create", "item": {"type": "function_call"}}',
        "missing_required_parameter",
        "item.call_id",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
        '"content": [{"type": "output_text", "text": "x"}]}}',
        "invalid_value",
        "item.content[0].type",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
        '"content": []}}',
        "invalid_value",
        "item.content",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
        '"content": [{"type": "input_image", "image_url": "http://x/y.png"}]}}',
        "invalid_image",
        "item.content[0].image_url",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
        '{"format": {"type": "audio/pcm", "rate": 16000}}}}}',
        "unsupported",
        "session.audio.input.format.rate",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
        '{"format": {"type": "audio/opus"}}}}}',
        "invalid_value",
        "session.audio.input.format.type",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
        '{"turn_detection": {"type": "server_vad", "threshold": 1.5}}}}}',
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
        '{"turn_detection": {"type": "server_vad", "silence_duration_ms": 1.5}}}}}',
        "invalid_type",
        "session.audio.input.turn_detection.silence_duration_ms",
    ),
    (
        '{"type": "session.update", "session": {"prompt": {"id": "pmpt_123"}}}',
        "unsupported",
        "session.prompt",
    ),
    (
        '{"type": "response.create", "response": {"prompt": {"id": "pmpt_123"}}}',
        "unsupported",
        "response.prompt",
    ),
    (
        '{"type": "session.update", "session": {"truncation": {"type": "retention_ratio", '
        '"retention_ratio": 0.5, "token_limits": {"post_instructions": 100}}}}',
        "unsupported",
        "session.truncation.token_limits",
    ),
    (
        '{"type": "session.update", "session": {"type": "realtime", "tools": [{"type": "function"}]}}',
        "missing_required_parameter",
        "session.tools[0].name",
    ),
    (
        '{"type": "session.update", "session": {"type": "bogus"}}',
        "invalid_value",
        "session.type",
    ),
    (
        '{"type": "session.update", "session": {"audio": {"input": {"turn_detection": '
        '{"type": "server_vad", "create_response": 0}}}}}',
        "invalid_type",
        "session.audio.input.turn_detection.create_response",
    ),
    *[
        (
            json.dumps({"type": "session.update", "session": {"seetalk": ext}}),
            code,
            "session.seetalk." + param,
        )
        for ext, code, param in [
            ({"temperature": 5}, "invalid_value", "temperature"),
            ({"temperature": "hot"}, "invalid_type", "temperature"),
            ({"max_output_tokens": 0}, "invalid_value", "max_output_tokens"),
            ({"max_output_tokens": 10**9}, "invalid_value", "max_output_tokens"),
            ({"history_turns": -1}, "invalid_value", "history_turns"),
            ({"camera_max_side": 0}, "invalid_value", "camera_max_side"),
            ({"jpeg_quality": 1000}, "invalid_value", "jpeg_quality"),
            ({"max_keyframes": 9}, "invalid_value", "max_keyframes"),
            ({"max_keyframes": 1.5}, "invalid_type", "max_keyframes"),
            ({"instructions": "x" * 100_001}, "invalid_value", "instructions"),
            ({"voice": 3}, "invalid_type", "voice"),
            ({"output_rate": 0}, "unsupported", "output_rate"),
            ({"output_rate": 24000}, "unsupported", "output_rate"),
            ({"bogus": 1}, "unknown_parameter", "bogus"),
            ({"input_format": "audio/pcmu"}, "unknown_parameter", "input_format"),
            ({"turn": {"silence_ms": "slow"}}, "invalid_type", "turn.silence_ms"),
            ({"turn": {"silence_ms": 20_000}}, "invalid_value", "turn.silence_ms"),
            ({"turn": {"vad_threshold": 1.0}}, "invalid_value", "turn.vad_threshold"),
            ({"turn": {"mode": "push_to_talk"}}, "invalid_value", "turn.mode"),
            ({"turn": {"bogus": 1}}, "unknown_parameter", "turn.bogus"),
            ({"turn": []}, "invalid_type", "turn"),
        ]
    ],
    (
        '{"type": "session.update", "session": {"seetalk": 3}}',
        "invalid_type",
        "session.seetalk",
    ),
    (  # a decompression bomb: refused from its header, before anything decodes it
        json.dumps({"type": "seetalk.input_image.append", "image_url": png_header(30000, 30000)}),
        "invalid_image",
        "image_url",
    ),
    (
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": png_header(9000, 10)}],
                },
            }
        ),
        "invalid_image",
        "item.content[0].image_url",
    ),
    (
        '{"type": "response.create", "response": {"max_output_tokens": 0}}',
        "invalid_value",
        "response.max_output_tokens",
    ),
]


@pytest.mark.parametrize("raw,code,param", BAD)
def test_bad_events(raw, code, param):
    with pytest.raises(InvalidEvent) as info:
        parse_client_event(raw, max_bytes=MAX)
    err = info.value.to_event_error()
    assert (err["code"], err["param"]) == (code, param), err
    assert err["type"] == "invalid_request_error" and err["message"]


def test_bad_event_carries_its_event_id():
    raw = '{"type": "conversation.item.retrieve", "event_id": "ev_9"}'
    with pytest.raises(InvalidEvent) as info:
        parse_client_event(raw, max_bytes=MAX)
    assert info.value.event_id == "ev_9"


def test_size_limit():
    raw = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 2000})
    with pytest.raises(InvalidEvent) as info:
        parse_client_event(raw, max_bytes=1000)
    assert info.value.code == "message_too_large"
    assert parse_client_event(raw, max_bytes=len(raw)).type == "input_audio_buffer.append"


# --- property tests ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=20,
)
field_values = json_values | st.sampled_from(["", "YQ==", AUDIO, PNG, "x" * 300, -1, 0, 1e308])
keys = st.sampled_from(
    [
        "event_id",
        "audio",
        "item_id",
        "content_index",
        "audio_end_ms",
        "response_id",
        "item",
        "session",
        "response",
        "previous_item_id",
        "image_url",
        "bogus",
    ]
)


@st.composite
def event_like(draw):
    event = {"type": draw(st.sampled_from(CLIENT_EVENT_TYPES))}
    event.update(draw(st.dictionaries(keys, field_values, max_size=5)))
    return event


def _only_invalid_event(raw):
    try:
        ev = parse_client_event(raw, max_bytes=4096)
    except InvalidEvent as exc:
        err = exc.to_event_error()
        assert err["code"] and err["message"]
        assert err["event_id"] is None or isinstance(err["event_id"], str)
        return
    json.dumps(ev.to_dict())  # a parsed event is always serializable again


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_invalid_event(raw):
    _only_invalid_event(raw)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_invalid_event(value):
    _only_invalid_event(json.dumps(value))


@settings(max_examples=500, deadline=None)
@given(event_like())
def test_event_shaped_json_raises_only_invalid_event(event):
    _only_invalid_event(json.dumps(event))


ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
texts = st.text(max_size=50)
b64s = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
formats = st.sampled_from(
    [{"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"}, {"type": "audio/pcma"}]
)
server_vad = st.fixed_dictionaries(
    {"type": st.just("server_vad")},
    optional={
        "threshold": st.floats(0.01, 0.99),
        "prefix_padding_ms": st.integers(0, 10_000),
        "silence_duration_ms": st.integers(0, 10_000),
        "create_response": st.booleans(),
        "interrupt_response": st.booleans(),
    },
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": texts}),
    st.fixed_dictionaries(
        {"type": st.just("input_audio"), "audio": b64s}, optional={"transcript": texts}
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_image"), "image_url": st.just(PNG)},
        optional={"detail": st.sampled_from(["auto", "low", "high"])},
    ),
)
optional_id = {"event_id": ids}
valid_events = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("input_audio_buffer.append"), "audio": b64s}, optional=optional_id
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "input_audio_buffer.commit",
                    "input_audio_buffer.clear",
                    "output_audio_buffer.clear",
                    "response.cancel",
                    "response.create",
                ]
            )
        },
        optional=optional_id,
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["conversation.item.delete", "conversation.item.retrieve"]),
            "item_id": ids,
        },
        optional=optional_id,
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("conversation.item.truncate"),
            "item_id": ids,
            "content_index": st.integers(0, 3),
            "audio_end_ms": st.integers(0, 10**7),
        },
        optional=optional_id,
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("conversation.item.create"),
            "item": st.fixed_dictionaries(
                {
                    "type": st.just("message"),
                    "role": st.just("user"),
                    "content": st.lists(parts, min_size=1, max_size=3),
                },
                optional={"id": ids},
            ),
        },
        optional={**optional_id, "previous_item_id": ids},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("session.update"),
            "session": st.fixed_dictionaries(
                {"type": st.just("realtime")},
                optional={
                    "instructions": texts,
                    "max_output_tokens": st.integers(1, 4096),
                    "audio": st.fixed_dictionaries(
                        {},
                        optional={
                            "input": st.fixed_dictionaries(
                                {},
                                optional={
                                    "format": formats,
                                    "turn_detection": st.none() | server_vad,
                                },
                            ),
                            "output": st.fixed_dictionaries(
                                {}, optional={"format": formats, "voice": ids}
                            ),
                        },
                    ),
                },
            ),
        },
        optional=optional_id,
    ),
)


def _drop_empty(d):
    """Empty ``audio``/``input``/``output`` objects carry nothing; normalization drops them."""
    if isinstance(d, dict):
        return {
            k: _drop_empty(v)
            for k, v in d.items()
            if not (k in ("audio", "input", "output") and v == {})
        }
    if isinstance(d, list):
        return [_drop_empty(v) for v in d]
    return d


@settings(max_examples=400, deadline=None)
@given(valid_events)
def test_valid_events_round_trip_property(event):
    parsed = parse_client_event(json.dumps(event), max_bytes=MAX)
    assert parsed.to_dict() == _drop_empty(_drop_empty(event))
    assert parse_client_event(json.dumps(parsed.to_dict()), max_bytes=MAX) == parsed


# --- codecs --------------------------------------------------------------------------------


def test_g711_matches_audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    x = np.arange(-32768, 32768, dtype=np.int16)
    raw = x.astype("<i2").tobytes()
    assert encode_samples(x, PCMU) == audioop.lin2ulaw(raw, 2)
    assert encode_samples(x, PCMA) == audioop.lin2alaw(raw, 2)
    codes = bytes(range(256))
    assert np.array_equal(ULAW_DECODE, np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"))
    assert np.array_equal(ALAW_DECODE, np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"))


@given(st.binary(max_size=64))
def test_g711_decode_then_encode_is_identity_on_codes(data):
    for fmt in (PCMU, PCMA):
        decoded = decode_audio(data, fmt)
        again = encode_samples(decoded, fmt)
        assert decode_audio(again, fmt).tolist() == decoded.tolist()


def test_pcm16_decode_checks():
    assert decode_audio(b"\x01\x00\x00\x80", PCM16).tolist() == [1, -32768]
    with pytest.raises(BadAudio):
        decode_audio(b"\x01\x00\x00", PCM16)
    with pytest.raises(BadAudio):
        decode_audio(b"RIFF\x24\x00\x00\x00WAVEfmt ", PCM16)


def test_encoder_resamples_for_g711_and_flushes_its_tail():
    enc = AudioEncoder(PCMU)
    tone = (8000 * np.sin(np.arange(24000) / 7)).astype(np.int16)
    out = b"".join(enc.encode(c) for c in np.split(tone, 10)) + enc.flush()
    assert len(out) == 8000
    assert AudioEncoder(PCM16).encode(tone[:3]) == tone[:3].astype("<i2").tobytes()


def test_token_bucket():
    b = TokenBucket(rate=2.0, burst=4.0)
    assert b.take(4.0, now=0.0) and not b.take(0.5, now=0.1)
    assert b.take(1.0, now=0.6)  # 1.2 refilled
    assert not b.take(5.0, now=100.0)  # more than the burst, never
    assert b.available(100.0) == 4.0
