"""Resumption of a dropped WebRTC peer (server/webrtc.py, server/app.py, conversation/resume.py).

The aiortc example client vanishes mid-reply (no media, no DTLS close: to the server the
network went away), the server parks the session, and a new client offering with the token
of ``session.created`` (``POST /offer?resume=<token>``) gets the same session: id,
conversation, settings, with the cut reply truncated and its audio not replayed. A second
use, an expired token, another credential and a missing one are refused with a clear HTTP
status; a parked session holds its slot; nothing leaks.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from conversation.replay import ReplayEngine, tone
from seetalk.config import ServerConfig

RATE = 48_000
FAST_DROP = {"media_timeout_s": 1.0}  # a vanished client is noticed after 1 s


def burst(seconds: float, level: float = 6000.0) -> np.ndarray:
    """Loud noise: 'speech' for the replay engine's energy detector."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal(int(seconds * RATE)) * level).clip(-32000, 32000).astype(np.int16)


async def wait_until(pred, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def vanish(srv, client) -> None:
    """Once media flows, the client stops sending any (no DTLS close); wait until the
    server has parked its session."""
    peer = srv.state.peers[client.session_id]
    await wait_until(lambda: peer.stats().get("audio_frames_in", 0) > 0, 10)
    client.vanish()
    await wait_until(lambda: parked(srv, client.session_id), 8)


def parked(srv, session_id: str) -> bool:
    peer = srv.state.peers.get(session_id)
    return peer is not None and peer.stats()["parked"]


async def offer_status(url: str, token: str, key: str | None = None) -> tuple[int, dict]:
    """POST a resuming offer (a real one, from a throwaway peer) and return status and body."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(base_url=url, timeout=15) as http:
            r = await http.post(
                "/offer",
                params={"resume": token},
                headers=headers,
                json={"sdp": pc.localDescription.sdp, "type": "offer"},
            )
        return r.status_code, r.json()
    finally:
        await pc.close()


async def test_a_vanished_peer_resumes_mid_reply_without_replaying_its_audio(
    seetalk_server, webrtc_client_module
):
    engine = ReplayEngine(tone(8.0))  # a long reply, so the drop is mid-reply
    srv = await seetalk_server(engine, peer_options=FAST_DROP)
    Client = webrtc_client_module.Client
    a = Client(srv.url)
    await a.connect()
    b = None
    try:
        await a.wait_for("session.created", 5)
        token = a.resume_token
        assert token and token.startswith("rsm_")
        a.mic.say(burst(0.4))
        started = await a.wait_for("output_audio_buffer.started", 10)
        await vanish(srv, a)
        assert len(srv.state.peers) == 1  # parked, still holding its slot
        assert engine.sessions[0].closed is False

        b = Client(srv.url, resume=token)
        await b.connect()
        assert b.session_id == a.session_id
        created = await b.wait_for("session.created", 5)
        assert created["session"]["seetalk"]["resumed"] is True
        assert b.events[0]["type"] == "session.created"  # first, then what was missed
        new_token = b.resume_token
        assert new_token and new_token != token
        # the reply playing at the drop was cut where it was heard, never replayed
        done = await b.wait_for("response.done", 5)
        assert done["response"]["id"] == started["response_id"]
        assert done["response"]["status"] == "cancelled"
        truncated = await b.wait_for("conversation.item.truncated", 5)
        assert truncated["audio_end_ms"] < 8000
        await asyncio.sleep(1.5)
        assert b.recorder.first_loud_after(0.0) is None  # nothing of the old reply arrives
        # the session goes on, on the new connection: a new turn is answered and heard
        t0 = time.monotonic()
        b.mic.say(burst(0.4))
        await b.wait_for("output_audio_buffer.started", 10, since=t0)
        await wait_until(lambda: b.recorder.first_loud_after(t0) is not None, 10)
        assert len(engine.sessions) == 1 and srv.state.peers[a.session_id].stats()["resumed"] == 1

        status, body = await offer_status(srv.url, token)  # a token works once
        assert status == 404 and body["error"]["code"] == "resume_token_invalid"
    finally:
        await a.close()
        if b is not None:
            await b.close()
    await wait_until(lambda: not srv.state.peers, 10)  # b's close is a hang-up: it ends
    assert engine.closed_sessions == 1
    assert srv.state.metrics.session_end_reasons["peer_closed"] == 1
    assert len(srv.state.resumes) == 0


async def test_the_real_session_comes_back_with_its_history_and_settings(
    seetalk_server, engine, webrtc_client_module
):
    srv = await seetalk_server(engine, peer_options=FAST_DROP)
    Client = webrtc_client_module.Client
    a = Client(srv.url)
    await a.connect()
    b = None
    try:
        await a.wait_for("session.created", 30)
        a.send(
            {
                "type": "session.update",
                "session": {"instructions": "Answer in five words.", "max_output_tokens": 16},
            }
        )
        await a.wait_for("session.updated", 10)
        a.say_text("Remember the word pineapple.")
        user = await a.wait_for(
            "conversation.item.added", 30, where=lambda e: e["item"]["role"] == "user"
        )
        done = await a.wait_for("response.done", 90)
        assert done["response"]["status"] == "completed"
        token = a.resume_token
        await vanish(srv, a)

        b = Client(srv.url, resume=token)
        await b.connect()
        created = await b.wait_for("session.created", 10)
        assert created["session"]["instructions"] == "Answer in five words."
        assert created["session"]["max_output_tokens"] == 16
        b.send({"type": "conversation.item.retrieve", "item_id": user["item"]["id"]})
        got = await b.wait_for("conversation.item.retrieved", 10)
        assert "pineapple" in got["item"]["content"][0]["text"]
        assert b.session_id == a.session_id
        assert not b.of_type("error")  # the drop cancelled nothing that was not playing
    finally:
        await a.close()
        if b is not None:
            await b.close()
    await wait_until(lambda: not srv.state.peers, 10)


async def test_expired_foreign_and_missing_credentials_are_refused(
    seetalk_server, webrtc_client_module
):
    engine = ReplayEngine()
    srv = await seetalk_server(
        engine, ServerConfig(api_key="k1"), peer_options=FAST_DROP, resume_window_s=4.0
    )
    Client = webrtc_client_module.Client
    a = Client(srv.url, key="k1")
    await a.connect()
    try:
        await a.wait_for("session.created", 5)
        token = a.resume_token
        await vanish(srv, a)
        status, body = await offer_status(srv.url, token)  # no credential
        assert status == 401
        async with httpx.AsyncClient(base_url=srv.url) as http:
            minted = (
                await http.post("/session-token", headers={"Authorization": "Bearer k1"})
            ).json()["token"]
        status, body = await offer_status(srv.url, token, key=minted)  # another credential
        assert status == 403 and body["error"]["code"] == "resume_token_forbidden"
        assert "another credential" in body["error"]["message"]
        await wait_until(lambda: not srv.state.peers, 12)  # the window passes: it ends
        assert srv.state.metrics.session_end_reasons["resume_expired"] == 1
        status, body = await offer_status(srv.url, token, key="k1")
        assert status in (404, 410) and body["error"]["code"].startswith("resume_token_")
    finally:
        await a.close()
    assert engine.closed_sessions == 1


async def test_a_parked_session_holds_its_slot_and_a_hang_up_is_not_parked(
    seetalk_server, webrtc_client_module
):
    engine = ReplayEngine()
    srv = await seetalk_server(engine, ServerConfig(max_sessions=1), peer_options=FAST_DROP)
    Client = webrtc_client_module.Client
    a = Client(srv.url)
    await a.connect()
    c = None
    try:
        await a.wait_for("session.created", 5)
        token = a.resume_token
        await vanish(srv, a)
        c = Client(srv.url)
        try:
            await c.connect()
            raise AssertionError("a new session was admitted while the parked one holds the slot")
        except ConnectionError as exc:
            assert "503" in str(exc)
        await c.close()
        c = Client(srv.url, resume=token)
        await c.connect()  # the session's own slot
        assert c.session_id == a.session_id
        await c.close()  # a DTLS close: the client hung up, nothing waits for it
        await wait_until(lambda: not srv.state.peers, 8)
        assert srv.state.metrics.session_end_reasons["peer_closed"] == 1
    finally:
        await a.close()
        if c is not None:
            await c.close()
    assert engine.closed_sessions == 1


async def test_a_resume_while_the_old_connection_looks_alive_takes_over(
    seetalk_server, webrtc_client_module
):
    engine = ReplayEngine()
    srv = await seetalk_server(engine)
    Client = webrtc_client_module.Client
    a = Client(srv.url)
    await a.connect()
    b = None
    try:
        await a.wait_for("session.created", 5)
        old_pc = srv.state.peers[a.session_id].pc
        b = Client(srv.url, resume=a.resume_token)  # the client noticed the drop first
        await b.connect()
        assert b.session_id == a.session_id and len(srv.state.peers) == 1
        assert old_pc.connectionState == "closed"  # the server let go of the old one
        await wait_until(lambda: a.pc.connectionState in ("closed", "failed"), 10)
        b.say_text("hello")
        await b.wait_for("response.created", 5)
        assert not a.of_type("response.created")  # nothing goes to the old connection
    finally:
        await a.close()
        if b is not None:
            await b.close()
    await wait_until(lambda: not srv.state.peers, 10)
    assert engine.closed_sessions == 1
