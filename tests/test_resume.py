"""Resumption of a dropped WebSocket (conversation/resume.py, server/realtime_ws.py): the
registry on a fake clock (single use, expiry, credential binding), then the official
``openai`` client dropping its socket mid-conversation and coming back with the token to the
same conversation; a second use, an expired token and another credential are refused."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from conversation.resume import ResumeRefused, ResumeRegistry, binding
from seetalk.config import ServerConfig

# --- the registry, pure --------------------------------------------------------------------


def test_a_token_works_once_within_the_window_for_its_credential():
    reg: ResumeRegistry[str] = ResumeRegistry(window_s=60)
    key = binding("k", is_token=False)
    token = reg.issue("sess-a", key)
    assert reg.claim(token, key, now=0.0) == "sess-a"
    with pytest.raises(ResumeRefused) as err:
        reg.claim(token, key, now=0.0)
    assert (err.value.status, err.value.code) == (404, "resume_token_invalid")


def test_expired_and_foreign_tokens_are_refused():
    reg: ResumeRegistry[str] = ResumeRegistry(window_s=60)
    key, other = binding("k", is_token=False), binding("other", is_token=False)
    token = reg.issue("sess-a", key)
    assert reg.park("sess-a", now=100.0) == 160.0
    with pytest.raises(ResumeRefused) as err:
        reg.claim(token, other, now=110.0)
    assert err.value.status == 403
    assert reg.claim(token, key, now=159.0) == "sess-a"  # still valid for its owner
    token = reg.issue("sess-a", key)
    reg.park("sess-a", now=200.0)
    with pytest.raises(ResumeRefused) as err:
        reg.claim(token, key, now=260.5)
    assert err.value.status == 410
    with pytest.raises(ResumeRefused):  # and forgotten
        reg.claim(token, key, now=0.0)


def test_a_new_token_revokes_the_previous_and_the_registry_is_bounded():
    reg: ResumeRegistry[str] = ResumeRegistry(max_tokens=3)
    first = reg.issue("a", "")
    second = reg.issue("a", "")
    with pytest.raises(ResumeRefused):
        reg.claim(first, "", now=0.0)
    for owner in "bcde":
        reg.issue(owner, "")
    assert len(reg) == 3
    with pytest.raises(ResumeRefused):
        reg.claim(second, "", now=0.0)  # the oldest was forgotten
    assert binding(None, is_token=False) == "" and binding("t", is_token=True) == "token"


# --- the official client, the real models ----------------------------------------------------


async def _events(conn, types, limit=120.0):
    out = []
    async with asyncio.timeout(limit):
        async for event in conn:
            out.append(event)
            if event.type in types:
                return out
    raise AssertionError(f"no {types} before the socket closed")


async def _refused(url: str, headers: dict[str, str]) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(url, additional_headers=headers):
            pass
    return info.value.response.status_code


@pytest.mark.models
async def test_a_dropped_socket_resumes_the_same_conversation(realtime_server, engine):
    from openai import AsyncOpenAI

    srv = await realtime_server(engine, ServerConfig(api_key="k"), resume_window_s=30.0)
    client = AsyncOpenAI(api_key="k", websocket_base_url=srv.ws)
    conn = await client.realtime.connect(model="seetalk").__aenter__()
    if True:  # the first connection: never closed, it drops
        created = (await _events(conn, {"session.created"}))[-1]
        token = created.session.seetalk["resume_token"]
        session_id = created.session.id
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "My name is Ada."}],
            }
        )
        added = (await _events(conn, {"conversation.item.added"}))[-1]
        user_item = added.item.id
        await conn.response.create()
        done = (await _events(conn, {"response.done"}))[-1]
        assert done.response.status == "completed"
        conn._connection.transport.abort()  # the network went away: no close frame

    for _ in range(200):  # the server notices the drop and parks the session
        conns = list(srv.state.peers.values())
        if conns and conns[0].close_reason == "dropped":
            break
        await asyncio.sleep(0.02)
    assert len(srv.state.peers) == 1  # still held (and counted) while it waits

    async with client.realtime.connect(model="seetalk", extra_query={"resume": token}) as conn:
        created = (await _events(conn, {"session.created"}))[-1]
        assert created.session.id == session_id and created.session.seetalk["resumed"] is True
        assert created.session.output_modalities == ["text"]  # the settings came back
        new_token = created.session.seetalk["resume_token"]
        assert new_token != token
        await conn.conversation.item.retrieve(item_id=user_item)  # the history came back
        got = (await _events(conn, {"conversation.item.retrieved", "error"}))[-1]
        assert got.type == "conversation.item.retrieved", got
        await conn.response.create()
        done = (await _events(conn, {"response.done"}))[-1]
        assert done.response.status == "completed"

        url = f"{srv.ws}/realtime?resume="
        key = {"Authorization": "Bearer k"}
        assert await _refused(url + token, key) == 404  # used once already
        async with httpx.AsyncClient(base_url=srv.http) as http:
            minted = (await http.post("/session-token", headers=key)).json()["token"]
        # another credential (a session token, not the key that opened it): refused
        assert await _refused(url + new_token, {"Authorization": f"Bearer {minted}"}) == 403
        assert await _refused(url + new_token, {"Authorization": "Bearer wrong"}) == 401
    # a clean close ends the session at once: nothing waits to be resumed
    for _ in range(200):
        if not srv.state.peers:
            break
        await asyncio.sleep(0.02)
    assert not srv.state.peers


@pytest.mark.models
async def test_an_expired_resume_token_is_refused(realtime_server, engine):
    from openai import AsyncOpenAI

    srv = await realtime_server(engine, resume_window_s=0.2)
    client = AsyncOpenAI(api_key="x", websocket_base_url=srv.ws)
    conn = await client.realtime.connect(model="seetalk").__aenter__()
    if True:  # it drops: never closed
        created = (await _events(conn, {"session.created"}))[-1]
        token = created.session.seetalk["resume_token"]
        conn._connection.transport.abort()
    for _ in range(300):  # the window passes, the session ends
        if not srv.state.peers:
            break
        await asyncio.sleep(0.02)
    assert not srv.state.peers
    assert await _refused(f"{srv.ws}/realtime?resume={token}", {}) in (404, 410)
