"""HTTP surface of the server: signalling forms, bad input, access control, health, metrics."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from conversation.replay import ReplayEngine
from seetalk.config import ServerConfig
from server.webrtc import close_peer_connection


async def make_offer(audio: bool = True, video: bool = False) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    if video:
        pc.addTransceiver("video", direction="sendonly")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    return body["error"]


async def test_json_and_sdp_offer_forms(seetalk_server, replay_engine):
    # the first peer never connects: the connect timeout frees it
    srv = await seetalk_server(replay_engine, peer_options={"connect_timeout_s": 1.0})
    async with httpx.AsyncClient(base_url=srv.url) as http:
        pc, sdp = await make_offer()
        r = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert r.status_code == 200
        body = r.json()
        assert body["type"] == "answer" and body["sdp"].startswith("v=0")
        assert body["session_id"] in srv.state.peers
        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], "answer"))
        await close_peer_connection(pc)

        for path in ("/offer", "/v1/realtime/calls"):
            pc, sdp = await make_offer()
            r = await http.post(path, content=sdp, headers={"Content-Type": "application/sdp"})
            assert r.status_code == 201, r.text
            assert r.headers["content-type"].startswith("application/sdp")
            session_id = r.headers["x-session-id"]
            assert r.headers["location"] == f"/sessions/{session_id}"
            await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
            # hang up the way WHIP clients do: DELETE the Location
            r = await http.delete(r.headers["location"])
            assert r.status_code == 204
            assert session_id not in srv.state.peers
            await close_peer_connection(pc)
        r = await http.delete("/sessions/nope")
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    for _ in range(100):
        if not srv.state.peers:
            break
        await asyncio.sleep(0.05)
    assert not srv.state.peers
    assert srv.state.metrics.session_end_reasons == {"connect_timeout": 1, "hangup": 2}


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": "", "headers": {"Content-Type": "application/sdp"}}, 400, "invalid_sdp"),
        ({"content": "hello", "headers": {"Content-Type": "application/sdp"}}, 400, "invalid_sdp"),
        ({"json": {"sdp": "", "type": "offer"}}, 400, "invalid_sdp"),
        ({"json": {"type": "offer"}}, 400, "invalid_sdp"),
        ({"json": {"sdp": "v=0\r\n", "type": "answer"}}, 400, "invalid_sdp"),
        ({"json": ["v=0"]}, 400, "invalid_json"),
        (
            {"content": "{nope", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            {"content": "v=0", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"content": "v=0"}, 415, "unsupported_media_type"),
        (
            {"content": b"v=0\xff\xfe", "headers": {"Content-Type": "application/sdp"}},
            400,
            "invalid_sdp",
        ),
    ],
)
async def test_bad_offers_get_clear_errors(seetalk_server, replay_engine, kwargs, status, code):
    srv = await seetalk_server(replay_engine)
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.post("/offer", **kwargs)
    assert r.status_code == status, r.text
    assert error_of(r)["code"] == code
    assert not srv.state.peers and not replay_engine.sessions


async def test_offer_without_audio_and_garbled_sdp(seetalk_server, replay_engine):
    srv = await seetalk_server(replay_engine)
    async with httpx.AsyncClient(base_url=srv.url) as http:
        pc, sdp = await make_offer(audio=False, video=True)
        r = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
        await close_peer_connection(pc)
        assert r.status_code == 400 and error_of(r)["code"] == "no_audio"
        # looks like SDP, has audio, but no fingerprint or ICE credentials: refused before a
        # session is made (tests/test_security.py has every malformed form)
        garbled = (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        )
        r = await http.post("/offer", content=garbled, headers={"Content-Type": "application/sdp"})
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_sdp"
        r = await http.post("/v1/realtime/calls", json={"sdp": sdp, "type": "offer"})
        assert r.status_code == 415
    assert not srv.state.peers
    assert replay_engine.closed_sessions == len(replay_engine.sessions)


async def test_api_key_and_session_tokens(seetalk_server, replay_engine):
    srv = await seetalk_server(replay_engine, ServerConfig(api_key="s3cret"))
    async with httpx.AsyncClient(base_url=srv.url) as http:
        assert (await http.get("/config")).json()["auth_required"] is True
        pc, sdp = await make_offer()
        offer = {"sdp": sdp, "type": "offer"}
        r = await http.post("/offer", json=offer)
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        r = await http.post("/offer", json=offer, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "wrong" in error_of(r)["message"]
        r = await http.post("/offer", json=offer, headers={"Authorization": "Basic s3cret"})
        assert r.status_code == 401
        # tokens need the key, and are single use
        assert (await http.post("/session-token")).status_code == 401
        r = await http.post("/session-token", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        token = r.json()["token"]
        assert 0 < r.json()["expires_in"] <= 60
        r = await http.post("/offer", json=offer, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        await close_peer_connection(pc)
        pc, sdp = await make_offer()
        r = await http.post(
            "/offer",
            json={"sdp": sdp, "type": "offer"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 401 and "already used" in error_of(r)["message"]
        r = await http.post(
            "/offer",
            json={"sdp": sdp, "type": "offer"},
            headers={"Authorization": f"Bearer {token[:-2]}xx"},
        )
        assert r.status_code == 401 and "invalid" in error_of(r)["message"]
        r = await http.post(
            "/offer", json={"sdp": sdp, "type": "offer"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 200
        await close_peer_connection(pc)
        assert (await http.get("/sessions")).status_code == 401


def test_token_expiry_on_a_virtual_clock():
    from seetalk.errors import Unauthorized
    from server.auth import Authenticator

    auth = Authenticator("k", ttl_s=60)
    token, expires = auth.mint(now=1000.0)
    assert expires == 1060.0
    with pytest.raises(Unauthorized, match="expired"):
        auth.check_offer(token, now=1061.0)
    auth.check_offer(token, now=1059.0)
    Authenticator(None).check_offer(None, now=0.0)  # open server


async def test_session_limit_answers_503(seetalk_server, replay_engine):
    srv = await seetalk_server(replay_engine, ServerConfig(max_sessions=2))
    pcs = []
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for expected in (200, 200, 503):
            pc, sdp = await make_offer()
            pcs.append(pc)
            r = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
            assert r.status_code == expected, r.text
        err = error_of(r)
        assert err["code"] == "session_limit" and "maximum of 2 sessions" in err["message"]
        health = (await http.get("/healthz")).json()
        assert health["sessions"] == 2
        assert (
            'seetalk_sessions_rejected_total{reason="capacity"} 1'
            in (await http.get("/metrics")).text
        )
    for pc in pcs:
        await close_peer_connection(pc)


async def test_engine_loads_in_a_thread_and_healthz_says_so(seetalk_server):
    release = threading.Event()

    def load() -> ReplayEngine:
        release.wait(10)
        return ReplayEngine()

    srv = await seetalk_server(load)
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        pc, sdp = await make_offer()
        r = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert r.status_code == 503 and error_of(r)["code"] == "not_ready"
        release.set()
        for _ in range(100):
            if (await http.get("/healthz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await http.get("/healthz")).json()["status"] == "ready"
        r = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
        assert r.status_code == 200
        await close_peer_connection(pc)


async def test_failed_engine_load_is_reported(seetalk_server):
    def load() -> ReplayEngine:
        raise FileNotFoundError("no voice model at /nowhere")

    srv = await seetalk_server(load)
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for _ in range(100):
            body = (await http.get("/healthz")).json()
            if body["status"] != "loading":
                break
            await asyncio.sleep(0.02)
        assert body["status"] == "failed" and "/nowhere" in body["error"]


async def test_page_config_and_metrics(seetalk_server, replay_engine):
    ice = ({"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"},)
    srv = await seetalk_server(replay_engine, ServerConfig(ice_servers=ice))
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.get("/")
        assert r.status_code == 200 and "<title>seetalk</title>" in r.text
        for name in ("app.js", "style.css"):
            assert (await http.get(f"/static/{name}")).status_code == 200
        cfg = (await http.get("/config")).json()
        assert cfg["ice_servers"] == [dict(ice[0])] and cfg["auth_required"] is False
        r = await http.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    srv.state.metrics.observe_event(
        {"type": "seetalk.turn.metrics", "metrics": {"first_audio_ms": 420.0, "asr_ms": None}}
    )
    srv.state.metrics.observe_event(
        {"type": "seetalk.barge_in", "onset_ms": 1000, "stopped_ms": 1180}
    )
    text = srv.state.metrics.render()
    assert 'seetalk_turn_stage_latency_ms_bucket{stage="first_audio",le="500"} 1' in text
    assert 'seetalk_turn_stage_latency_ms_count{stage="first_audio"} 1' in text
    assert "seetalk_barge_ins_total 1" in text
    assert 'seetalk_barge_in_stop_ms_bucket{le="200"} 1' in text
    assert "seetalk_turns_total 1" in text
