"""The server's edge under hostile input, over real HTTP and real WebSockets: origin, admin
routes, TURN credentials, malformed SDP, oversized bodies, odd credentials, admission.

After each hostile request the server must still answer ``/healthz`` and open a normal
session (:func:`assert_alive`). Pure helpers (SDP checks, origin policy, TURN credentials)
are also tested directly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
import websockets
from aiortc import RTCPeerConnection
from websockets.asyncio.client import connect

from seetalk.config import ServerConfig
from seetalk.errors import ConfigError
from server.auth import Authenticator, OriginPolicy, turn_credentials
from server.sdp import MAX_MEDIA_SECTIONS, SdpError, check_offer

FINGERPRINT = "sha-256 " + ":".join(["AB"] * 32)
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 96 0",
        "c=IN IP4 0.0.0.0",
        "a=sendrecv",
        "a=mid:0",
        "a=rtcp-mux",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "a=fmtp:96 minptime=10;useinbandfec=1",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        f"a=fingerprint:{FINGERPRINT}",
        "a=setup:actpass",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        f"a=fingerprint:{FINGERPRINT}",
        "a=setup:actpass",
        "",
    ]
)

# (name, how to spoil OFFER, words the 400's message must hold)
BAD_SDP = [
    ("bad setup", ("a=setup:actpass", "a=setup:sideways"), "a=setup"),
    ("payload type 72", ("96 0\r\n", "72 0\r\n"), "payload type 72"),
    ("payload type 300", ("96 0\r\n", "300 0\r\n"), "payload type 300"),
    ("m-line without formats", ("SAVPF 96 0", "SAVPF"), "m-line"),
    ("fmtp of an unknown payload type", ("a=fmtp:96", "a=fmtp:55"), "payload type '55'"),
    ("rtpmap without a rate", ("opus/48000/2", "opus"), "rtpmap"),
    ("short c= line", ("c=IN IP4 0.0.0.0\r\na=sendrecv", "c=IN IP4\r\na=sendrecv"), "c="),
    (
        "garbage candidate",
        ("a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host", "a=candidate:garbage"),
        "candidate",
    ),
    ("no fingerprint", (f"a=fingerprint:{FINGERPRINT}\r\n", ""), "fingerprint"),
]


def spoil(old: str, new: str) -> str:
    assert old in OFFER
    return OFFER.replace(old, new)


def many_m_lines(n: int) -> str:
    head, _, _ = OFFER.partition("m=audio")
    section = "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\n"
    return head + section * n


async def make_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    return dict(body["error"])


async def assert_alive(
    http: httpx.AsyncClient, credential: str | None = None, key: str | None = None
) -> None:
    """The server answers /healthz and opens (with ``credential``) and ends (with ``key``,
    default the same) a normal session."""
    assert (await http.get("/healthz")).status_code == 200
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    admin = {"Authorization": f"Bearer {key}"} if key else headers
    pc, sdp = await make_offer()
    try:
        r = await http.post("/offer", json={"sdp": sdp, "type": "offer"}, headers=headers)
        assert r.status_code == 200, r.text
        r = await http.delete(f"/sessions/{r.json()['session_id']}", headers=admin)
        assert r.status_code == 204
    finally:
        await pc.close()


# --- pure pieces -----------------------------------------------------------------------


def test_the_template_offer_passes_and_each_spoiled_one_is_refused():
    check_offer(OFFER)
    for name, (old, new), words in BAD_SDP:
        with pytest.raises(SdpError) as info:
            check_offer(spoil(old, new))
        assert words in info.value.message, (name, info.value.message)
    with pytest.raises(SdpError, match="media sections"):
        check_offer(many_m_lines(MAX_MEDIA_SECTIONS + 1))


def test_turn_credentials_follow_coturn_rest_api():
    secret, now = "coturn-shared-secret", 1_767_225_600.0
    ice = turn_credentials(secret, ("turn:turn.example.org:3478",), 3600, "sess_abc", now)
    assert ice["username"] == "1767229200:sess_abc"
    expected = base64.b64encode(
        hmac.new(b"coturn-shared-secret", b"1767229200:sess_abc", hashlib.sha1).digest()
    ).decode()
    assert ice["credential"] == expected
    assert ice["urls"] == ["turn:turn.example.org:3478"]


def test_origin_policy():
    policy = OriginPolicy(("https://app.example.org",))
    assert policy.permits(None, "127.0.0.1:8080", "http")  # not a browser page
    assert policy.permits("http://127.0.0.1:8080", "127.0.0.1:8080", "http")
    assert policy.permits("http://localhost", "localhost:80", "ws")
    assert policy.permits("https://seetalk.example.org", "seetalk.example.org", "http")  # TLS proxy
    assert policy.permits("https://app.example.org", "127.0.0.1:8080", "http")
    assert policy.listed("https://APP.example.org:443")
    for foreign in ("http://evil.example", "null", "http://127.0.0.1:9999", "garbage", ""):
        assert not policy.permits(foreign, "127.0.0.1:8080", "http"), foreign
    assert not policy.listed("http://evil.example")
    assert OriginPolicy(("*",)).permits("http://evil.example", "127.0.0.1:8080", "http")
    with pytest.raises(ConfigError, match="example.org"):
        OriginPolicy(("example.org",))  # no scheme: a mistake, said at start-up


def test_credentials_compare_safely_for_any_input():
    auth = Authenticator("kéy")
    assert auth.is_api_key("kéy") and not auth.is_api_key("tök") and not auth.is_api_key("")
    token, _ = auth.mint(0.0)
    for odd in ("stk_1.2.ö", "stk_١٢٣.n.sig", "stk_", "\udcff", token[:-1] + "é"):
        with pytest.raises(Exception) as info:
            auth.check_offer(odd, 0.0)
        assert info.value.__class__.__name__ == "Unauthorized"
    grant = auth.verify(token, 0.0)  # verifying spends nothing
    auth.verify(token, 0.0)
    auth.spend(grant, 0.0)
    with pytest.raises(Exception, match="already used"):
        auth.verify(token, 0.0)


# --- origin ------------------------------------------------------------------------------


async def test_foreign_origin_is_refused_on_the_offer(seetalk_server, replay_engine):
    cfg = ServerConfig(allow_origins=("https://app.example.org",))
    srv = await seetalk_server(replay_engine, cfg)
    own = srv.url
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for path, kind, body in (
            ("/offer", "application/json", json.dumps({"sdp": OFFER, "type": "offer"})),
            ("/v1/realtime/calls", "application/sdp", OFFER),
        ):
            for origin in ("http://evil.example", "null"):
                headers = {"Origin": origin, "Content-Type": kind}
                r = await http.post(path, content=body, headers=headers)
                assert r.status_code == 403, r.text
                err = error_of(r)
                assert err["code"] == "forbidden_origin" and "--allow-origin" in err["message"]
                assert "access-control-allow-origin" not in r.headers
        assert not srv.state.peers and not replay_engine.sessions
        # the page's own origin, an allow-listed one, and no Origin at all pass
        for origin in (own, "https://app.example.org", None):
            pc, sdp = await make_offer()
            headers = {"Origin": origin} if origin else {}
            r = await http.post("/offer", json={"sdp": sdp, "type": "offer"}, headers=headers)
            await pc.close()
            assert r.status_code == 200, (origin, r.text)
            cors = r.headers.get("access-control-allow-origin")
            assert cors == (
                "https://app.example.org" if origin == "https://app.example.org" else None
            )
            await http.delete(f"/sessions/{r.json()['session_id']}")
        # CORS preflight is answered for the allow-list only
        ask = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        r = await http.options("/offer", headers={"Origin": "https://app.example.org", **ask})
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "https://app.example.org"
        assert "Authorization" in r.headers["access-control-allow-headers"]
        r = await http.options("/offer", headers={"Origin": "http://evil.example", **ask})
        assert "access-control-allow-origin" not in r.headers
        await assert_alive(http)
    assert srv.state.metrics.sessions_rejected["origin"] == 4


async def test_foreign_origin_is_refused_on_the_websocket(realtime_server, realtime_fake_engine):
    server = await realtime_server(realtime_fake_engine)
    url = f"{server.ws}/realtime"
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(url, origin="http://evil.example")
    assert info.value.response.status_code == 403
    err = json.loads(info.value.response.body)["error"]
    assert err["code"] == "forbidden_origin" and "evil.example" in err["message"]
    assert not realtime_fake_engine.sessions
    for origin in (server.http, None):  # the page's own origin; a client without one
        kwargs = {"origin": origin} if origin else {}
        async with connect(url, **kwargs) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/healthz")).status_code == 200


# --- admin routes --------------------------------------------------------------------------


async def test_docs_are_off_unless_asked_for(seetalk_server, replay_engine):
    srv = await seetalk_server(replay_engine)
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 404, path
    srv = await seetalk_server(replay_engine, ServerConfig(docs=True))
    async with httpx.AsyncClient(base_url=srv.url) as http:
        assert (await http.get("/openapi.json")).status_code == 200
        assert (await http.get("/docs")).status_code == 200


async def test_admin_routes_need_the_key_and_healthz_lists_no_ids(seetalk_server, replay_engine):
    ice = ({"urls": ["stun:stun.example.org:3478"]},)
    cfg = ServerConfig(
        api_key="s3cret",
        ice_servers=ice,
        turn_urls=("turn:turn.example.org:3478",),
        turn_secret="shared",
    )
    srv = await seetalk_server(replay_engine, cfg)
    key = {"Authorization": "Bearer s3cret"}
    async with httpx.AsyncClient(base_url=srv.url) as http:
        pc, sdp = await make_offer()
        r = await http.post("/offer", json={"sdp": sdp, "type": "offer"}, headers=key)
        await pc.close()
        session_id = r.json()["session_id"]
        for path in ("/sessions", "/metrics"):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer tök".encode()},
            ):
                r = await http.get(path, headers=headers)
                assert r.status_code == 401, (path, r.text)
            assert (await http.get(path, headers=key)).status_code == 200
        assert session_id in (await http.get("/sessions", headers=key)).text
        health = await http.get("/healthz")
        assert health.json()["sessions"] == 1 and session_id not in health.text
        # /config: the public part for anyone; ICE servers for a key or a token
        public = (await http.get("/config")).json()
        assert public == {
            "auth_required": True,
            "token_url": "/session-token",
            "offer_url": "/offer",
        }
        assert (
            "ice_servers"
            not in (await http.get("/config", headers={"Authorization": "Bearer x"})).json()
        )
        full = (await http.get("/config", headers=key)).json()
        assert full["ice_servers"][0] == ice[0]
        turn = full["ice_servers"][1]
        assert turn["urls"] == ["turn:turn.example.org:3478"]
        digest = hmac.new(b"shared", turn["username"].encode(), hashlib.sha1).digest()
        assert turn["credential"] == base64.b64encode(digest).decode()
        minted = (await http.post("/session-token", headers=key)).json()
        assert minted["ice_servers"][1]["username"] != turn["username"]  # one per page
        token = {"Authorization": f"Bearer {minted['token']}"}
        assert "ice_servers" in (await http.get("/config", headers=token)).json()
        await http.delete(f"/sessions/{session_id}", headers=key)
        await assert_alive(http, minted["token"], "s3cret")  # reading /config spent nothing


async def test_the_servers_own_peer_gets_turn_credentials(
    seetalk_server, replay_engine, monkeypatch
):
    import server.webrtc

    seen: list[tuple[dict[str, Any], ...]] = []
    original = server.webrtc.ice_configuration
    monkeypatch.setattr(
        server.webrtc, "ice_configuration", lambda servers: seen.append(servers) or original(())
    )
    cfg = ServerConfig(turn_urls=("turn:127.0.0.1:3478",), turn_secret="shared", turn_ttl_s=60)
    srv = await seetalk_server(replay_engine, cfg)
    async with httpx.AsyncClient(base_url=srv.url) as http:
        pc, sdp = await make_offer()
        r = await http.post("/offer", json={"sdp": sdp, "type": "offer"})
        await pc.close()
        session_id = r.json()["session_id"]
        await http.delete(f"/sessions/{session_id}")
    (turn,) = seen[0]
    expiry, name = turn["username"].split(":")
    assert name == session_id and int(expiry) > 0
    digest = hmac.new(b"shared", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(digest).decode()


# --- SDP -----------------------------------------------------------------------------------


async def test_malformed_sdp_is_400_with_a_message(seetalk_server, replay_engine):
    srv = await seetalk_server(replay_engine)
    sdp_form = {"Content-Type": "application/sdp"}
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for name, (old, new), words in BAD_SDP:
            r = await http.post("/v1/realtime/calls", content=spoil(old, new), headers=sdp_form)
            assert r.status_code == 400, (name, r.text)
            err = error_of(r)
            assert err["code"] == "invalid_sdp" and words in err["message"], (name, err)
        r = await http.post("/offer", content=many_m_lines(600), headers=sdp_form)
        assert r.status_code == 400 and "media sections" in error_of(r)["message"]
        assert not replay_engine.sessions  # refused before a session was made
        # past the checks, whatever aiortc raises is a 400 too, and the session is freed
        r = await http.post(
            "/offer", content=spoil("a=mid:0", "a=mid:0\r\na=ssrc:x y"), headers=sdp_form
        )
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_sdp", r.text
        assert replay_engine.closed_sessions == len(replay_engine.sessions) == 1
        assert not srv.state.peers and srv.state.starting == 0
        await assert_alive(http)


# --- bodies --------------------------------------------------------------------------------


async def test_a_100_mb_body_is_refused_while_streaming(seetalk_server, replay_engine):
    import tracemalloc

    srv = await seetalk_server(replay_engine)  # in this process: its allocations are traced

    async def body():
        chunk = b"v=0\r\n" + b"a" * (64 * 1024 - 5)
        for _ in range(1600):  # 100 MiB
            yield chunk

    async with httpx.AsyncClient(base_url=srv.url) as http:
        for path in ("/v1/realtime/calls", "/offer"):
            tracemalloc.start()
            try:
                r = await http.post(
                    path, content=body(), headers={"Content-Type": "application/sdp"}
                )
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert r.status_code == 413, r.text
            err = error_of(r)
            assert err["code"] == "body_too_large" and "65536 bytes" in err["message"]
            assert peak < 16 * 1024 * 1024, peak  # never held whole
        await assert_alive(http)


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    seetalk_server, replay_engine
):
    srv = await seetalk_server(replay_engine)
    host, port = srv.url.removeprefix("http://").split(":")
    for framing in (b"Content-Length: 104857600\r\n", b"Transfer-Encoding: chunked\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /offer HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Content-Type: application/sdp\r\n" + framing + b"\r\n"
        )
        if b"chunked" in framing:  # 80 KiB of a body that never ends
            for _ in range(10):
                writer.write(b"2000\r\n" + b"a" * 0x2000 + b"\r\n")
        await writer.drain()
        status = await reader.readline()  # nothing more is sent: the server answers anyway
        writer.close()
        assert status.startswith(b"HTTP/1.1 413"), (framing, status)
    async with httpx.AsyncClient(base_url=srv.url) as http:
        await assert_alive(http)


# --- credentials and admission ----------------------------------------------------------------


async def test_non_ascii_credentials_are_401(seetalk_server, replay_engine):
    srv = await seetalk_server(replay_engine, ServerConfig(api_key="s3cret"))
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for value in ("Bearer tök".encode(), "Bearer stk_1.ö.é".encode(), b"Bearer \xff\xfe"):
            r = await http.post(
                "/offer",
                content=OFFER,
                headers={"Authorization": value, "Content-Type": "application/sdp"},
            )
            assert r.status_code == 401, r.text
            assert error_of(r)["code"] == "unauthorized"
        await assert_alive(http, "s3cret")


async def test_non_ascii_credentials_on_the_websocket_are_401(seetalk_server, realtime_fake_engine):
    # uvicorn's websockets-sansio engine, as `seetalk serve` runs it (the legacy engine of the
    # realtime_server fixture fails on such a header inside uvicorn, before the app sees it)
    server = await seetalk_server(realtime_fake_engine, ServerConfig(api_key="sekret"))
    url = server.url.replace("http://", "ws://") + "/v1/realtime"
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(url, additional_headers={"Authorization": "Bearer tök"})
    assert info.value.response.status_code == 401
    assert not realtime_fake_engine.sessions
    async with connect(url, additional_headers={"Authorization": "Bearer sekret"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_a_503_at_capacity_leaves_the_token_usable(seetalk_server, replay_engine):
    srv = await seetalk_server(replay_engine, ServerConfig(api_key="s3cret", max_sessions=1))
    key = {"Authorization": "Bearer s3cret"}
    async with httpx.AsyncClient(base_url=srv.url) as http:
        token = (await http.post("/session-token", headers=key)).json()["token"]
        with_token = {"Authorization": f"Bearer {token}"}
        pc1, sdp1 = await make_offer()
        r = await http.post("/offer", json={"sdp": sdp1, "type": "offer"}, headers=key)
        assert r.status_code == 200
        first = r.json()["session_id"]
        pc2, sdp2 = await make_offer()
        r = await http.post("/offer", json={"sdp": sdp2, "type": "offer"}, headers=with_token)
        assert r.status_code == 503 and error_of(r)["code"] == "session_limit"
        # a bad offer after admission does not spend it either
        r = await http.delete(f"/sessions/{first}", headers=key)
        bad = spoil("a=mid:0", "a=mid:0\r\na=ssrc:x y")
        r = await http.post(
            "/offer", content=bad, headers={**with_token, "Content-Type": "application/sdp"}
        )
        assert r.status_code == 400
        r = await http.post("/offer", json={"sdp": sdp2, "type": "offer"}, headers=with_token)
        assert r.status_code == 200, r.text
        r = await http.post("/offer", json={"sdp": sdp2, "type": "offer"}, headers=with_token)
        assert r.status_code == 401 and "already used" in error_of(r)["message"]
        await pc1.close()
        await pc2.close()
        for peer in list(srv.state.peers):
            await http.delete(f"/sessions/{peer}", headers=key)
        await assert_alive(http, "s3cret")


async def test_a_503_on_the_websocket_leaves_the_token_usable(
    realtime_server, realtime_fake_engine
):
    server = await realtime_server(realtime_fake_engine, ServerConfig(api_key="k", max_sessions=1))
    key = {"Authorization": "Bearer k"}
    async with httpx.AsyncClient(base_url=server.http) as http:
        token = (await http.post("/session-token", headers=key)).json()["token"]
        url = f"{server.ws}/realtime"
        async with connect(url, additional_headers=key) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(url, additional_headers={"Authorization": f"Bearer {token}"})
            assert info.value.response.status_code == 503
            assert server.state.starting == 0 and len(server.state.peers) == 1
        for _ in range(200):
            if not server.state.peers:
                break
            await asyncio.sleep(0.01)
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        text = (await http.get("/metrics", headers=key)).text
        assert 'seetalk_sessions_rejected_total{reason="capacity"} 1' in text
