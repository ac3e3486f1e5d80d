"""Tool calls on the web page, in headless Chromium over WebRTC and the data channel.

The server runs the real voice models with the ``time`` built-in switched on and a
scripted model that calls it when the person has just spoken. A typed question gets a
``function_call``, the built-in's output and a spoken answer; the page shows the call
(name, arguments) and its result in the transcript. An ``mcp_call`` item (the shape the
MCP code emits) is shown the same way, its error included. A screenshot is kept in
artifacts/page_tools.png."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from browser_util import poll

from conversation.session import Sessions
from llm.backend import ChatMessage, GenerationSettings
from llm.tools import ToolCallDelta, ToolUse
from seetalk.config import BuiltinTools

pytestmark = [pytest.mark.browser, pytest.mark.models]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ANSWER = "It is a quarter past ten in Paris."


class TimeAsker:
    """Calls ``get_current_time`` when the person spoke last; otherwise answers."""

    name = "scripted"
    supports_images = False

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncIterator[str]:
        yield ANSWER

    async def stream_tools(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings, tools: ToolUse
    ) -> AsyncIterator[str | ToolCallDelta]:
        if messages[-1].role == "user" and any(t.name == "get_current_time" for t in tools.tools):
            yield ToolCallDelta(0, name="get_current_time", arguments='{"format": "spoken"}')
        else:
            yield ANSWER

    async def aclose(self) -> None:
        return None


def silent_wav(tmp_path: Path) -> Path:
    out = tmp_path / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", str(out), "trim", "0", "30"], check=True)
    return out


async def test_page_shows_tool_calls_and_results(seetalk_server, chromium, engine, tmp_path):
    eng = copy.copy(engine)
    eng.backend = TimeAsker()
    srv = await seetalk_server(Sessions(eng, BuiltinTools(("time",), "Europe/Paris")))
    page = await chromium(srv.url, wav=silent_wav(tmp_path))
    await page.click("#connect")
    await poll(page, "window.seetalk.connected", 20)
    await page.fill("#message", "What time is it?")
    await page.click("#send")
    entry = await poll(
        page, "window.seetalk.tools.find(t => t.name === 'get_current_time' && t.output)", 120
    )
    assert entry["output"].endswith("(Europe/Paris)") and entry["kind"] == "function"
    assert json.loads(entry["arguments"]) == {"format": "spoken"}
    await poll(
        page,
        "window.seetalk.events.find(e => e.type === 'response.output_audio_transcript.done'"
        f" && e.transcript === {json.dumps(ANSWER)})",
        120,
    )
    line = await page.inner_text("#transcript li.tool")
    assert "get_current_time" in line and 'format: "spoken"' in line
    assert "(Europe/Paris)" in line and "running" not in line
    # the order a person reads: question, call with its result, spoken answer
    classes = await page.evaluate(
        "[...document.querySelectorAll('#transcript li')].map(li => li.className)"
    )
    assert classes.index("user") < classes.index("tool") < classes.index("assistant")

    # an MCP call as the protocol announces it (response.output_item.added/done, mcp_call)
    peer = next(iter(srv.state.peers.values()))
    item: dict[str, Any] = {
        "id": "item_mcp1",
        "type": "mcp_call",
        "server_label": "search",
        "name": "web_search",
        "arguments": '{"query": "opening hours of the Louvre"}',
        "output": None,
        "error": None,
    }
    peer.session.emit({"type": "response.output_item.added", "response_id": "r", "item": item})
    await poll(page, "window.seetalk.tools.find(t => t.kind === 'mcp')", 20)
    failed = {**item, "error": {"type": "tool_execution_error", "message": "search is down"}}
    peer.session.emit({"type": "response.output_item.done", "response_id": "r", "item": failed})
    await poll(page, "window.seetalk.tools.find(t => t.kind === 'mcp' && t.error)", 20)
    mcp = await page.inner_text("#transcript li.tool:last-of-type")
    assert "search.web_search" in mcp and "search is down" in mcp
    assert await page.locator("#transcript li.tool .tool-result.failed").count() == 1

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_tools.png"))
    await page.click("#connect")
