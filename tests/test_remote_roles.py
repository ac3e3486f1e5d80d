"""Every model role on another process: ``seetalk models serve`` on loopback, real models.

Two model servers run as subprocesses: one holds speech recognition and the language model
(whisper base, SmolLM2), the other the voice (piper, behind an API key), so each role can go
down on its own. The seetalk side is an :class:`~models.engine.Engine` whose ASR, TTS and
LLM are all remote (only VAD and the small partial-transcript model stay local).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parent.parent
TTS_KEY = "test-tts-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ModelsServer:
    """``seetalk models serve`` in a subprocess on a fixed port: start, kill, start again."""

    def __init__(self, roles: str, log_dir: Path, api_key: str | None = None) -> None:
        self.roles = roles
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.api_key = api_key
        self.log_path = log_dir / f"models-{roles.replace(',', '-')}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        cmd = [sys.executable, "-m", "seetalk.cli", "-v", "models", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--roles", self.roles]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"seetalk models serve exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"seetalk models serve did not answer within {timeout_s:g} s")
            time.sleep(0.25)

    def kill(self) -> None:
        """The machine goes away: SIGKILL, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def asr_llm_server(tmp_path_factory):
    server = ModelsServer("asr,llm", tmp_path_factory.mktemp("models_serve"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tts_server(tmp_path_factory):
    server = ModelsServer("tts", tmp_path_factory.mktemp("models_serve"), api_key=TTS_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def remote_engine(asr_llm_server, tts_server):
    from models.engine import Engine
    from seetalk.config import ModelConfig

    cfg = ModelConfig(
        asr_base_url=asr_llm_server.url,
        llm_base_url=asr_llm_server.url,
        tts_base_url=tts_server.url,
        tts_api_key=TTS_KEY,
        asr_timeout_s=30.0,  # two cores shared with the model servers
        tts_timeout_s=30.0,
    )
    engine = Engine.load(cfg)
    yield engine
    for ex in engine.executors:
        ex.shutdown(wait=False, cancel_futures=True)
    engine.transcriber.close()  # type: ignore[union-attr]
    engine.synthesizer.close()  # type: ignore[union-attr]


# --- the roles one by one ------------------------------------------------------------------


def test_remote_transcriber_hears_a_recording(asr_llm_server, espeak, normalize_words):
    from voice.remote import RemoteTranscriber

    asr = RemoteTranscriber(asr_llm_server.url, timeout_s=60)
    try:
        text = asr.transcribe(espeak("What is the capital of France?"), prompt="Geography.")
        assert {"capital", "france"} <= set(normalize_words(text)), text
        partial = asr.transcribe_partial(espeak("good morning, how are you"))
        assert {"good", "morning", "how"} <= set(normalize_words(partial)), partial
        assert asr.transcribe(np.zeros(800, np.float32)) == ""  # too short: no request
    finally:
        asr.close()


def test_remote_voice_says_the_words(asr_llm_server, tts_server, normalize_words):
    from voice.audio import resample
    from voice.remote import RemoteSynthesizer, RemoteTranscriber

    tts = RemoteSynthesizer(tts_server.url, api_key=TTS_KEY, timeout_s=60)
    asr = RemoteTranscriber(asr_llm_server.url, timeout_s=60)
    try:
        sentence = "The yellow bicycle is parked near the old library."
        audio, ends = tts.synthesize_timed(sentence)
        assert ends is None  # no phoneme timing over the API: heard text is estimated
        assert tts.sample_rate == 24_000
        assert 1.5 < audio.size / 24_000 < 8, audio.size
        assert float(np.abs(audio).max()) > 0.1
        pieces = list(tts.synthesize_stream("First sentence here. And a second one after it."))
        assert len(pieces) >= 1 and sum(p.size for p in pieces) > 24_000
        heard = asr.transcribe(resample(audio, 24_000, 16_000))
        assert {"yellow", "bicycle", "parked", "library"} <= set(normalize_words(heard)), heard
    finally:
        tts.close()
        asr.close()


async def test_remote_language_model_streams(asr_llm_server):
    from llm.backend import ChatMessage, GenerationSettings
    from llm.openai_compat import OpenAIChatBackend

    backend = OpenAIChatBackend(asr_llm_server.url, timeout_s=60)
    try:
        deltas = [
            d
            async for d in backend.stream(
                [ChatMessage("user", "Say hello.")], GenerationSettings(max_tokens=16)
            )
        ]
    finally:
        await backend.aclose()
    assert len(deltas) > 1 and "".join(deltas).strip()


def _record_backoff(monkeypatch) -> list[float]:
    """The back-off waits the remote roles would sleep, recorded instead of slept."""
    import voice.remote

    waits: list[float] = []
    monkeypatch.setattr(voice.remote.time, "sleep", waits.append)
    return waits


def test_a_wrong_key_is_refused_at_once(tts_server, monkeypatch):
    from seetalk.errors import SpeechBackendError
    from voice.remote import RemoteSynthesizer

    waits = _record_backoff(monkeypatch)
    tts = RemoteSynthesizer(tts_server.url, api_key="wrong", backoff_s=5.0)
    with pytest.raises(SpeechBackendError) as info:
        tts.synthesize("Hello.")
    assert waits == []  # an HTTP error is not retried
    assert "HTTP 401" in info.value.message and info.value.role == "tts"
    tts.close()


def test_unreachable_is_retried_then_typed(monkeypatch):
    from seetalk.errors import SpeechBackendError, SpeechBackendTimeout
    from voice.remote import RemoteTranscriber

    waits = _record_backoff(monkeypatch)
    asr = RemoteTranscriber(f"http://127.0.0.1:{_free_port()}", retries=2, backoff_s=0.2)
    with pytest.raises(SpeechBackendError) as info:
        asr.transcribe(np.zeros(16_000, np.float32))
    assert not isinstance(info.value, SpeechBackendTimeout)
    assert waits == [0.2, 0.4]  # two retries with back-off
    assert "unreachable" in info.value.message
    assert info.value.to_event_error()["code"] == "speech_backend_error"

    # A server that accepts the connection and never answers: a timeout, not retried.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        slow = RemoteTranscriber(f"http://127.0.0.1:{mute.getsockname()[1]}", timeout_s=0.5)
        waits.clear()
        with pytest.raises(SpeechBackendTimeout) as timeout:
            slow.transcribe(np.zeros(16_000, np.float32))
        assert waits == []  # a timeout is not retried
    assert timeout.value.to_event_error()["code"] == "speech_backend_timeout"


def test_the_multipart_parser_keeps_binary_parts_exact():
    from models.serve import decode_audio, parse_multipart
    from voice.remote import wav_bytes

    tricky = b"\r\n--\r\n\x00\xff" * 1000 + b"--boundary"
    wav = wav_bytes(np.sin(np.arange(16_000) / 10).astype(np.float32) * 0.5)
    request = httpx.Request(
        "POST",
        "http://x/v1/audio/transcriptions",
        data={"model": "whisper-1", "prompt": "Grüße"},
        files={"file": ("a.wav", wav, "audio/wav"), "blob": ("b.bin", tricky)},
    )
    form = parse_multipart(request.headers["content-type"], request.read())
    assert form["blob"].data == tricky and form["file"].filename == "a.wav"
    assert form["prompt"].data.decode() == "Grüße"
    audio = decode_audio(form["file"].data)
    assert audio.size == 16_000 and abs(float(audio.max()) - 0.5) < 0.01


def test_shared_secret_tokens_hold_across_instances_and_clocks():
    from seetalk.errors import Unauthorized
    from server.auth import Authenticator

    # two instances whose monotonic clocks are far apart: at wall time 1_000_000, A's clock
    # reads 50 and B's 9_000 (skew: wall-clock time minus the instance's clock)
    a = Authenticator("key", ttl_s=60, secret="shared", skew=lambda: 999_950.0)
    b = Authenticator("key", ttl_s=60, secret="shared", skew=lambda: 991_000.0)
    other = Authenticator("key", ttl_s=60, secret="another", skew=lambda: 991_000.0)
    token, _ = a.mint(50.0)
    b.check_offer(token, 9_030.0)  # 30 s later, on B's clock
    with pytest.raises(Unauthorized, match="already used"):
        b.verify(token, 9_031.0)
    with pytest.raises(Unauthorized, match="invalid"):
        other.verify(token, 9_030.0)
    late, _ = a.mint(80.0)  # expires at wall time 1_000_090
    b.verify(late, 9_089.0)
    with pytest.raises(Unauthorized, match="expired"):
        b.verify(late, 9_091.0)
    # without a secret, tokens are this process's only
    with pytest.raises(Unauthorized, match="invalid"):
        Authenticator("key").verify(Authenticator("key").mint(0.0)[0], 1.0)


async def test_drain_refuses_new_sessions_and_waits_for_open_ones():
    from seetalk.config import ServerConfig
    from server.admission import Refused
    from server.app import Server

    state = Server(object(), ServerConfig(), None, time.monotonic, {})
    state.admission.source = object()  # type: ignore[assignment]  # a stand-in source
    state.peers["s1"] = object()  # type: ignore[assignment]  # an open session
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    drain = asyncio.create_task(state.drain(5.0))
    await asyncio.sleep(0.3)
    assert state.status == "draining" and not drain.done()
    with pytest.raises(Refused) as refused:
        state.admission.reserve(None)
    assert refused.value.status == 503 and refused.value.code == "draining"
    del state.peers["s1"]  # the conversation ends
    await asyncio.wait_for(drain, 2)
    assert loop.time() - t0 < 1.5
    state.peers["s2"] = object()  # type: ignore[assignment]
    t0 = loop.time()
    await state.drain(0.3)  # a session that never ends: the drain timeout bounds the wait
    assert 0.3 <= loop.time() - t0 < 1.0
    state.video_executor.shutdown()


# --- a session on remote roles --------------------------------------------------------------


async def test_aiortc_peer_holds_a_turn_on_remote_roles(
    seetalk_server, remote_engine, espeak, webrtc_client_module, normalize_words
):
    srv = await seetalk_server(remote_engine)
    async with webrtc_client_module.Client(srv.url) as client:
        await client.wait_for("session.created", 10)
        client.mic.say(np.zeros(24_000, np.int16))
        client.mic.say(
            webrtc_client_module.load_audio(str(espeak("What is the capital of France?", wav=True)))
        )
        done = await client.wait_for("conversation.item.input_audio_transcription.completed", 60)
        assert {"capital", "france"} <= set(normalize_words(done["transcript"]))
        resp = await client.wait_for("response.done", 90)
        assert resp["response"]["status"] == "completed", resp
        heard = client.recorder.first_loud_after(client.mic.speech_ended_at)
        assert heard is not None, "no reply audio reached the peer"


class _Driver:
    """Feeds 20 ms of audio at a time into a session on a virtual clock (model work takes
    no time on the timeline) and collects its events and audio."""

    def __init__(self, engine: Any) -> None:
        from conversation.session import Session
        from seetalk.clock import VirtualClock
        from seetalk.config import SessionSettings

        self.clock = VirtualClock()
        self.session = Session(engine, SessionSettings(output_rate=24_000), clock=self.clock)
        self.t = 0.0
        self.events: list[dict[str, Any]] = []
        self.loud_samples = 0

    async def feed(self, audio: np.ndarray, *, tail_s: float = 0.0, until: str | None = None):
        """Play ``audio`` (16 kHz), then silence for up to ``tail_s``, stopping early once
        an event of type ``until`` arrived after this call started (and the audio ended)."""
        start = len(self.events)
        steps = -(-audio.size // 320) + int(tail_s / 0.02)
        for k in range(steps):
            chunk = audio[k * 320 : (k + 1) * 320]
            if chunk.size < 320:
                chunk = np.concatenate([chunk, np.zeros(320 - chunk.size, np.float32)])
            self.clock.set(self.t)
            await self.session.feed_audio(chunk, 16_000, 1)
            await self.session.wait_idle()
            out = self.session.audio_out.pull(480)
            self.loud_samples += int(np.count_nonzero(np.abs(out) > 1000))
            while (event := self.session.events.get_nowait()) is not None:
                self.events.append(event)
            self.t += 0.02
            if (
                until
                and k * 320 >= audio.size
                and any(e["type"] == until for e in self.events[start:])
            ):
                break
        return self.events[start:]


def _errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["error"] for e in events if e["type"] == "error"]


async def test_speech_recognition_down_mid_session_then_back(
    remote_engine, asr_llm_server, espeak, normalize_words
):
    question = espeak("What is the capital of France?")
    drive = _Driver(remote_engine)
    await drive.session.start()
    try:
        asr_llm_server.kill()
        events = await drive.feed(np.concatenate([np.zeros(8000, np.float32), question]), tail_s=3)
        errors = _errors(events)
        assert any("speech recognition server" in e["message"] for e in errors), errors
        assert any("unreachable" in e["message"] for e in errors), errors
        assert not [e for e in events if e["type"].endswith("transcription.completed")]
        # The session says it did not catch that; let it finish before speaking again.
        events += await drive.feed(np.zeros(0, np.float32), tail_s=20, until="response.done")
        said = "".join(e["delta"] for e in events if e["type"].endswith("transcript.delta"))
        assert "catch" in said.lower(), said
        await drive.feed(np.zeros(16_000, np.float32))

        await asyncio.to_thread(asr_llm_server.start)
        loudness_before = drive.loud_samples
        events = await drive.feed(question, tail_s=30, until="response.done")
        done = [e for e in events if e["type"].endswith("input_audio_transcription.completed")]
        assert done and {"capital", "france"} <= set(normalize_words(done[-1]["transcript"]))
        resp = [e for e in events if e["type"] == "response.done"]
        assert resp and resp[-1]["response"]["status"] == "completed", _errors(events)
        await drive.feed(np.zeros(0, np.float32), tail_s=10, until="output_audio_buffer.stopped")
        assert drive.loud_samples > loudness_before
    finally:
        await drive.session.aclose()
        if asr_llm_server.proc is None:
            await asyncio.to_thread(asr_llm_server.start)


async def test_voice_down_mid_session_then_back(remote_engine, tts_server, espeak):
    question = espeak("What is the capital of France?")
    drive = _Driver(remote_engine)
    await drive.session.start()
    try:
        tts_server.kill()
        events = await drive.feed(
            np.concatenate([np.zeros(8000, np.float32), question]), tail_s=30, until="response.done"
        )
        errors = _errors(events)
        assert any("speech synthesis server" in e["message"] for e in errors), errors
        resp = [e for e in events if e["type"] == "response.done"]
        assert resp and resp[-1]["response"]["status"] != "completed"
        assert drive.loud_samples == 0

        await asyncio.to_thread(tts_server.start)
        events = await drive.feed(question, tail_s=30, until="response.done")
        resp = [e for e in events if e["type"] == "response.done"]
        assert resp and resp[-1]["response"]["status"] == "completed", _errors(events)
        await drive.feed(np.zeros(0, np.float32), tail_s=10, until="output_audio_buffer.stopped")
        assert drive.loud_samples > 0
    finally:
        await drive.session.aclose()
        if tts_server.proc is None:
            await asyncio.to_thread(tts_server.start)


async def test_a_role_down_is_a_typed_error_event(remote_engine, tts_server, espeak):
    drive = _Driver(remote_engine)
    await drive.session.start()
    try:
        tts_server.kill()
        events = await drive.feed(
            np.concatenate([np.zeros(8000, np.float32), espeak("Hello there, how are you?")]),
            tail_s=30,
            until="response.done",
        )
        codes = {e["code"] for e in _errors(events)}
        assert "speech_backend_error" in codes, codes
    finally:
        await drive.session.aclose()
        await asyncio.to_thread(tts_server.start)


def test_models_serve_refuses_what_it_does_not_serve(tts_server):
    r = httpx.post(
        f"{tts_server.url}/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TTS_KEY}"},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "role_not_served"
    r = httpx.post(
        f"{tts_server.url}/audio/speech",
        json={"input": "Hi.", "response_format": "mp3"},
        headers={"Authorization": f"Bearer {TTS_KEY}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = httpx.post(
        f"{tts_server.url}/audio/speech",
        json={"input": "Hi.", "response_format": "wav"},
        headers={"Authorization": f"Bearer {TTS_KEY}"},
    )
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert httpx.get(f"{tts_server.url}/models").status_code == 401


# --- stateless instances: shared token secret, graceful drain ------------------------------

API_KEY = "test-api-key"
TOKEN_SECRET = "test-token-secret-shared-by-all-instances"


class SeetalkInstance:
    """``seetalk serve`` in a subprocess, its models all on the model servers."""

    def __init__(self, name: str, log_dir: Path, extra: list[str], env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"seetalk-{name}.log"
        self.extra, self.env = extra, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        cmd = [sys.executable, "-m", "seetalk.cli", "-v", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--api-key", API_KEY, *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"seetalk serve exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"seetalk serve was not ready within {timeout_s:g} s")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def instances(asr_llm_server, tts_server, tmp_path_factory):
    """Two instances sharing the token secret (one by flag, one by environment)."""
    log_dir = tmp_path_factory.mktemp("instances")
    roles = ["--asr-base-url", asr_llm_server.url, "--llm-base-url", asr_llm_server.url]
    roles += ["--tts-base-url", tts_server.url, "--tts-api-key", TTS_KEY]
    a = SeetalkInstance("a", log_dir, [*roles, "--token-secret", TOKEN_SECRET], {})
    b = SeetalkInstance(
        "b", log_dir, [*roles, "--drain-timeout", "60"], {"SEETALK_TOKEN_SECRET": TOKEN_SECRET}
    )
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def _dummy_offer(url: str, credential: str) -> httpx.Response:
    return httpx.post(
        f"{url}/offer",
        json={"sdp": "v=0\r\n", "type": "offer"},
        headers={"Authorization": f"Bearer {credential}"},
        timeout=10,
    )


async def _offer_sdp() -> str:
    """A real offer (a peer with a microphone and a data channel), its peer closed."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_a_token_minted_by_one_instance_opens_a_session_on_another(
    instances, webrtc_client_module
):
    a, b = instances
    async with httpx.AsyncClient(timeout=10) as http:
        minted = await http.post(
            f"{a.url}/session-token", headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]
    async with webrtc_client_module.Client(b.url, key=token) as client:
        await client.wait_for("session.created", 15)
    # spent on the instance that opened the session
    refused = await asyncio.to_thread(_dummy_offer, b.url, token)
    assert refused.status_code == 401 and "already used" in refused.json()["error"]["message"]
    # a token signed with another secret is refused
    body, _, _sig = token.rpartition(".")
    forged = await asyncio.to_thread(_dummy_offer, b.url, body + ".AAAAAAAAAAAAAAAAAAAAAAAA")
    assert forged.status_code == 401


async def test_sigterm_lets_the_turn_finish_and_refuses_new_sessions(
    instances, espeak, webrtc_client_module
):
    _a, b = instances
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        async with webrtc_client_module.Client(b.url, key=API_KEY) as client:
            await client.wait_for("session.created", 15)
            client.mic.say(np.zeros(24_000, np.int16))
            client.mic.say(
                webrtc_client_module.load_audio(
                    str(espeak("What is the capital of France?", wav=True))
                )
            )
            await client.wait_for("input_audio_buffer.speech_stopped", 30)
            assert b.proc is not None
            b.proc.send_signal(signal.SIGTERM)  # mid-turn: the reply is on its way
            for _ in range(100):
                ready = await http.get("/readyz")
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            health = await http.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            assert (await http.get("/livez")).status_code == 200
            offer = await http.post(
                "/offer",
                json={"sdp": await _offer_sdp(), "type": "offer"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert offer.status_code == 503 and offer.json()["error"]["code"] == "draining"

            resp = await client.wait_for("response.done", 90)
            assert resp["response"]["status"] == "completed", resp
            heard = client.recorder.first_loud_after(client.mic.speech_ended_at)
            assert heard is not None, "the turn's reply did not reach the peer"
            assert b.proc.poll() is None, "the instance quit while a session was open"
    # the last session ended: the instance exits well before its drain timeout (60 s)
    code = await asyncio.to_thread(b.proc.wait, 20)
    assert code == 0
