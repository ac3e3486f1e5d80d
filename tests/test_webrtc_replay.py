"""WebRTC sessions over loopback between the real server and the aiortc example client.

The engine is the recorded-reply replayer (server/replay.py): these tests are about the
transport (media both ways, events, barge-in as heard, cleanup), not about the models.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from seetalk.config import ServerConfig

RATE = 48_000


def burst(seconds: float, level: float = 6000.0, seed: int = 0) -> np.ndarray:
    """A loud noise burst: 'speech' for the replayer's energy detector."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * level).clip(-32000, 32000).astype(np.int16)


async def wait_until(pred, limit_s: float = 10.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + limit_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def test_conversation_media_both_ways(seetalk_server, replay_engine, webrtc_client_module):
    srv = await seetalk_server(replay_engine)
    client = webrtc_client_module.Client(srv.url, video=True)
    await client.connect()
    try:
        await client.wait_for("session.created", 5)
        client.mic.say(burst(0.6))
        started = await client.wait_for("input_audio_buffer.speech_started", 5)
        await client.wait_for("conversation.item.input_audio_transcription.completed", 5)
        await client.wait_for(
            "response.done", 10, where=lambda e: e["response"]["status"] == "completed"
        )
        # the reply was audible at the client, after the end of its speech
        loud = client.recorder.first_loud_after(started["_t"])
        assert loud is not None
        assert client.mic.speech_ended_at is not None and loud > client.mic.speech_ended_at
        # the camera reached the session, as BGR frames
        session = replay_engine.sessions[0]
        await wait_until(lambda: session.video_frames >= 3, 5)
        assert session.video_shape == (480, 640, 3)
        # the outgoing track keeps sending 20 ms frames (its rate: bench/webrtc.py)
        peer = srv.state.peers[client.session_id]
        frames0 = peer.audio_track.frames
        await wait_until(lambda: peer.audio_track.frames >= frames0 + 10, 10)
    finally:
        await client.close()
    await wait_until(lambda: not srv.state.peers, 10)
    assert replay_engine.closed_sessions == 1


async def test_barge_in_stops_audio_as_heard(seetalk_server, webrtc_client_module):
    from conversation.replay import ReplayEngine, tone

    engine = ReplayEngine(tone(6.0), reply_text="one two three four five six seven eight")
    srv = await seetalk_server(engine)
    async with webrtc_client_module.Client(srv.url) as client:
        client.mic.say(burst(0.5))
        await client.wait_for("output_audio_buffer.started", 5)
        # wait until the reply is audible, then talk over it
        await wait_until(lambda: client.recorder.level_now() > 1000, 5)
        await asyncio.sleep(0.5)
        client.mic.say(burst(0.5, seed=1))
        await wait_until(
            lambda: (
                client.mic.speech_started_at is not None
                and client.recorder.silent_from(client.mic.speech_started_at) is not None
            ),
            5,
        )
        stopped_at = client.recorder.silent_from(client.mic.speech_started_at)
        done = await client.wait_for(
            "response.done", 5, where=lambda e: e["response"]["status"] == "cancelled"
        )
        truncated = await client.wait_for("conversation.item.truncated", 5)
        await client.wait_for("seetalk.barge_in", 5)
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        assert 0 < truncated["audio_end_ms"] < 6000
        assert truncated["transcript"].startswith("one")
        # the reply audio stays quiet after the stop, until a newer reply starts (how fast
        # it stops is measured in bench/webrtc.py)
        await asyncio.sleep(0.3)
        newer = [e["_t"] for e in client.of_type("response.created") if e["_t"] > stopped_at]
        until = min(newer, default=time.monotonic())
        assert all(lv < 300 for t, lv in client.recorder.levels if stopped_at <= t < until)


async def test_client_events_and_typed_errors(seetalk_server, replay_engine, webrtc_client_module):
    srv = await seetalk_server(replay_engine)
    async with webrtc_client_module.Client(srv.url) as client:
        for raw, code in [
            ("{not json", "invalid_json"),
            ("[" * 100_000, "invalid_json"),  # too deep: a typed error, not a RecursionError
            ("[1, 2]", "invalid_event"),
            (b"\x00\x01", "invalid_json"),
        ]:
            t = time.monotonic()
            client.channel.send(raw)
            err = await client.wait_for("error", 5, since=t)
            assert err["error"]["code"] == code, err
        t = time.monotonic()
        client.send({"type": "no.such.event", "event_id": "evt_1"})
        err = await client.wait_for("error", 5, since=t)
        assert err["error"]["event_id"] == "evt_1" and err["error"]["param"] == "type"
        t = time.monotonic()
        client.send({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "a1"})
        err = await client.wait_for("error", 5, since=t)
        assert (err["error"]["code"], err["error"]["event_id"]) == ("unsupported", "a1")
        assert "media track" in err["error"]["message"]
        # a typed message gets a spoken reply; response.cancel stops it
        client.say_text("hello there")
        created = await client.wait_for("response.created", 5)
        await wait_until(lambda: client.recorder.level_now() > 1000, 5)
        client.send({"type": "response.cancel"})
        done = await client.wait_for("response.done", 5)
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        # the session goes on after errors
        client.send({"type": "session.update", "session": {"instructions": "be brief"}})
        await client.wait_for("session.updated", 5)
    metrics = srv.state.metrics.render()
    assert 'seetalk_errors_total{code="invalid_json"} 3' in metrics
    assert 'seetalk_errors_total{code="invalid_event"} 1' in metrics
    assert 'seetalk_responses_total{status="cancelled"} 1' in metrics


async def test_channels_are_bounded_and_events_go_to_one(
    seetalk_server, replay_engine, webrtc_client_module
):
    from server.webrtc import MAX_CHANNELS

    srv = await seetalk_server(replay_engine)
    async with webrtc_client_module.Client(srv.url) as client:
        await client.wait_for("session.created", 5)
        extra = [client.pc.createDataChannel(f"extra{i}") for i in range(MAX_CHANNELS)]
        got: dict[str, list[dict]] = {c.label: [] for c in extra}
        for c in extra:
            c.on("message", lambda m, label=c.label: got[label].append(json.loads(m)))
        peer = srv.state.peers[client.session_id]
        await wait_until(lambda: peer.counters["channels_refused"] == 1, 5)
        last = extra[-1]
        await wait_until(lambda: last.readyState == "closed" and got[last.label], 5)
        assert got[last.label][0]["error"]["code"] == "too_many_channels"
        assert len(peer.channels) == MAX_CHANNELS
        # the client speaks on one channel: the answers come on that one only
        speaker = extra[1]
        speaker.send(json.dumps({"type": "no.such.event", "event_id": "x1"}))
        await wait_until(lambda: bool(got[speaker.label]), 5)
        await asyncio.sleep(0.2)
        others = [c.label for c in extra[:-1] if c is not speaker and got[c.label]]
        assert got[speaker.label][0]["error"]["event_id"] == "x1" and not others
        assert not any(e.get("event_id") == "x1" for e in client.of_type("error"))


async def test_idle_and_media_timeouts_end_sessions(
    seetalk_server, replay_engine, webrtc_client_module
):
    cfg = ServerConfig(idle_timeout_s=1.0)
    srv = await seetalk_server(replay_engine, cfg)
    client = webrtc_client_module.Client(srv.url)
    await client.connect()
    try:
        assert len(srv.state.peers) == 1
        await wait_until(lambda: not srv.state.peers, 6)
        assert srv.state.metrics.session_end_reasons["idle_timeout"] == 1
    finally:
        await client.close()
    assert replay_engine.closed_sessions == 1


async def test_vanished_peer_is_freed(seetalk_server, replay_engine, webrtc_client_module):
    """A peer that stops sending without closing (network gone) is noticed by the media
    timeout and parked for its client to resume (docs/webrtc.md); nobody comes back, so it
    is freed when the resume window has passed."""
    srv = await seetalk_server(
        replay_engine, peer_options={"media_timeout_s": 1.0}, resume_window_s=1.0
    )
    client = webrtc_client_module.Client(srv.url)
    await client.connect()
    try:
        client.mic.say(burst(0.4))
        await client.wait_for("output_audio_buffer.started", 5)
        # vanish mid-reply: stop sending any media, without a DTLS close
        client.mic.stop()
        await wait_until(lambda: not srv.state.peers, 8)
        assert srv.state.metrics.session_end_reasons["resume_expired"] == 1
    finally:
        await client.close()


async def test_many_sessions_leave_nothing_behind(
    seetalk_server, replay_engine, webrtc_client_module
):
    srv = await seetalk_server(replay_engine, ServerConfig(max_sessions=3))
    before = {t for t in asyncio.all_tasks()}
    for _round in range(2):
        clients = [webrtc_client_module.Client(srv.url, video=True) for _ in range(3)]
        for c in clients:
            await c.connect()
        assert len(srv.state.peers) == 3
        for c in clients:
            await c.close()
        await wait_until(lambda: not srv.state.peers, 10)
    assert replay_engine.closed_sessions == 6
    await asyncio.sleep(0.5)
    leaked = [t for t in asyncio.all_tasks() - before if t.get_name().startswith("sess_")]
    assert not leaked, leaked
    body = srv.state.metrics.render()
    assert "seetalk_sessions_active 0" in body and "seetalk_sessions_total 6" in body


@pytest.mark.parametrize("size", [(3840, 2160), (641, 479), (2, 2)])
async def test_camera_sizes_are_bounded(seetalk_server, webrtc_client_module, size):
    from conversation.replay import ReplayEngine

    engine = ReplayEngine()
    srv = await seetalk_server(engine)
    client = webrtc_client_module.Client(srv.url)
    # Video encoded once, up front: the client then sends packets without encoding, so the
    # 4K encoder (which would starve this shared process) does not run while audio is measured.
    packets = webrtc_client_module.encode_camera(1.0, 10, size[0], size[1])
    client.camera = webrtc_client_module.PacketCamera(packets, fps=10)
    await client.connect()
    try:
        session = engine.sessions[0]
        await wait_until(lambda: session.video_frames >= 2, 20)
        h, w, c = session.video_shape
        assert c == 3 and max(h, w) <= 1024
        assert abs(w / h - size[0] / size[1]) < 0.1 * size[0] / size[1] + 0.5
        # the outgoing audio goes on while big frames are decoded and converted (whether it
        # keeps real time under load is measured in bench/webrtc.py, not here)
        peer = srv.state.peers[client.session_id]
        frames0 = peer.audio_track.frames
        await wait_until(lambda: peer.audio_track.frames >= frames0 + 20, 20)
    finally:
        await client.close()
