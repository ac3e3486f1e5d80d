"""Speech recognition and synthesis on another machine, over the OpenAI audio APIs.

- :class:`RemoteTranscriber`: ``POST {base}/audio/transcriptions`` (multipart: a 16 kHz WAV
  ``file``, ``model``, ``language``, ``prompt``, ``response_format=json``), as served by
  ``seetalk models serve``, vLLM, faster-whisper servers and OpenAI.
- :class:`RemoteSynthesizer`: ``POST {base}/audio/speech`` (JSON ``model``, ``voice``,
  ``input``, ``response_format="pcm"``), answered with streamed 24 kHz mono s16le PCM.

Both are drop-ins for :class:`voice.asr.Transcriber` and :class:`voice.tts.Synthesizer`: the
calls are synchronous and thread-safe, and the engine runs them in the role's executor, never
on the event loop. A remote voice reports no phoneme timing, so the words heard of a clause cut
short are estimated by characters (:func:`voice.tts.heard_text`).

Failures are :class:`~seetalk.errors.SpeechBackendError` (``role`` says which):

- connection refused or reset before any answer: retried ``retries`` times, waiting
  ``backoff_s``, then twice that, ...; then "... is unreachable";
- no answer within ``timeout_s`` (connect, response head, or between two chunks of a stream)
  -> :class:`~seetalk.errors.SpeechBackendTimeout`, not retried (the server may be busy on it);
- an HTTP error -> the status and the server's own message (408 and 504 are timeouts);
- an answer that is not what the API promises -> a plain :class:`SpeechBackendError`.

Nothing is remembered between calls but the connection pool: when the server comes back,
the next call simply succeeds.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np

from seetalk.errors import BadAudio, SpeechBackendError, SpeechBackendTimeout
from seetalk.openai_http import error_message, normalize_base_url
from voice.asr import MIN_AUDIO_S, PARTIAL_WINDOW_S, SAMPLE_RATE, split_windows
from voice.audio import float_to_s16

log = logging.getLogger(__name__)

SPEECH_RATE = 24_000  # the OpenAI speech API's "pcm": 24 kHz mono s16le
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_ROLE_NAMES = {"asr": "speech recognition server", "tts": "speech synthesis server"}


def wav_bytes(audio16k: np.ndarray) -> bytes:
    """Mono float32 at 16 kHz as a 16-bit PCM WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(float_to_s16(audio16k).astype("<i2").tobytes())
    return buf.getvalue()


class _Remote:
    """What both roles share: the HTTP client, retries and error mapping."""

    role = ""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None,
        timeout_s: float,
        retries: int,
        backoff_s: float,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.name = f"{_ROLE_NAMES[self.role]} at {self.base_url}"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Nothing to load: the server holds the model. (The server may be down now and up
        by the first turn; a session reports a role that is down when it needs it.)"""

    def close(self) -> None:
        """Close the connection pool; a later call opens a new one. Idempotent."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._headers, timeout=httpx.Timeout(self.timeout_s)
                )
            return self._client

    @contextmanager
    def _request(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """One request, its response open for reading; retried on connection errors before
        any answer, every failure mapped onto :class:`SpeechBackendError`."""
        url = f"{self.base_url}{path}"
        attempt = 0
        answered = False  # after the response head, a retry could repeat the server's work
        while True:
            try:
                with self._http().stream(method, url, **kwargs) as resp:
                    answered = True
                    if resp.status_code >= 400:
                        raise self._status_error(resp.status_code, resp.read())
                    yield resp
                return
            except httpx.TimeoutException as exc:
                raise SpeechBackendTimeout(
                    f"{self.name} did not answer within {self.timeout_s:g} s "
                    f"({type(exc).__name__})",
                    role=self.role,
                ) from exc
            except _RETRYABLE as exc:
                if answered:
                    raise SpeechBackendError(
                        f"{self.name} broke off its answer: {exc!r}", role=self.role
                    ) from exc
                if attempt >= self.retries:
                    raise SpeechBackendError(
                        f"{self.name} is unreachable: {exc or type(exc).__name__}", role=self.role
                    ) from exc
                delay = self.backoff_s * 2**attempt
                attempt += 1
                log.info("%s: %r; retry %d in %.2f s", self.name, exc, attempt, delay)
                time.sleep(delay)
            except httpx.HTTPError as exc:
                raise SpeechBackendError(f"{self.name} failed: {exc!r}", role=self.role) from exc

    def _status_error(self, status: int, body: bytes) -> SpeechBackendError:
        message = f"{self.name} returned HTTP {status}: {error_message(body)}"
        if status in (408, 504):
            return SpeechBackendTimeout(message, role=self.role)
        return SpeechBackendError(message, role=self.role)


class RemoteTranscriber(_Remote):
    """Speech recognition by an OpenAI-compatible transcription server.

    - ``base_url``: the API root (``http://host:8000/v1``; a bare ``http://host:8000`` gets
      ``/v1``); ``model``: the ``model`` field (one-model servers ignore it);
    - ``language``: sent with every request (``""``: the server detects it);
    - ``timeout_s``, ``retries``, ``backoff_s``: see the module docstring.

    Audio longer than 28 s is sent in windows cut at quiet moments, as the local model
    transcribes it; a partial sends only the last 25 s.
    """

    role = "asr"

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "whisper-1",
        api_key: str | None = None,
        language: str = "en",
        timeout_s: float = 15.0,
        retries: int = 2,
        backoff_s: float = 0.2,
    ) -> None:
        super().__init__(
            base_url,
            model=model,
            api_key=api_key,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
        )
        self.language = language

    def transcribe(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        """The whole utterance (mono float32 at 16 kHz)."""
        a = _check(audio16k)
        if a.size < MIN_AUDIO_S * SAMPLE_RATE:
            return ""
        texts = [self._post(w, prompt) for w in split_windows(a)]
        return " ".join(t for t in texts if t)

    def transcribe_partial(self, audio16k: np.ndarray, *, prompt: str | None = None) -> str:
        """The last ``PARTIAL_WINDOW_S`` seconds only."""
        a = _check(audio16k)
        if a.size < MIN_AUDIO_S * SAMPLE_RATE:
            return ""
        return self._post(a[-int(PARTIAL_WINDOW_S * SAMPLE_RATE) :], prompt)

    def _post(self, audio: np.ndarray, prompt: str | None) -> str:
        data = {"model": self.model, "response_format": "json"}
        if self.language:
            data["language"] = self.language
        if prompt:
            data["prompt"] = prompt
        files = {"file": ("audio.wav", wav_bytes(audio), "audio/wav")}
        with self._request("POST", "/audio/transcriptions", data=data, files=files) as resp:
            body = resp.read()
            kind = resp.headers.get("content-type", "")
        if "json" not in kind:
            return body.decode("utf-8", "replace").strip()  # a server that sent plain text
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise SpeechBackendError(
                f"{self.name} sent invalid JSON: {body[:200]!r}", role=self.role
            ) from exc
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise SpeechBackendError(f"{self.name} sent no text: {body[:200]!r}", role=self.role)
        return text.strip()


class RemoteSynthesizer(_Remote):
    """Speech synthesis by an OpenAI-compatible speech server, as 24 kHz PCM.

    ``model`` and ``voice`` are the request's fields (``seetalk models serve`` has one voice
    and ignores both). ``timeout_s`` also bounds the wait between two chunks of the stream.
    """

    role = "tts"
    sample_rate = SPEECH_RATE

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "tts-1",
        voice: str = "alloy",
        api_key: str | None = None,
        timeout_s: float = 15.0,
        retries: int = 2,
        backoff_s: float = 0.2,
    ) -> None:
        super().__init__(
            base_url,
            model=model,
            api_key=api_key,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
        )
        self.voice = voice

    def synthesize_stream(self, text: str) -> Iterator[np.ndarray]:
        """Mono float32 at 24 kHz, piece by piece as the server streams it. Closing the
        iterator early closes the connection (the server stops)."""
        body = {"model": self.model, "voice": self.voice, "input": text, "response_format": "pcm"}
        with self._request("POST", "/audio/speech", json=body) as resp:
            kind = resp.headers.get("content-type", "")
            if "json" in kind or kind.startswith("text/"):
                raise SpeechBackendError(
                    f"{self.name} sent {kind} instead of PCM audio: {resp.read()[:200]!r}",
                    role=self.role,
                )
            odd = b""
            for raw in resp.iter_bytes():
                raw, odd = odd + raw, b""
                if len(raw) % 2:
                    raw, odd = raw[:-1], raw[-1:]
                if raw:
                    yield np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0

    def synthesize(self, text: str) -> np.ndarray:
        """Mono float32 at :attr:`sample_rate`."""
        parts = list(self.synthesize_stream(text))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def synthesize_timed(self, text: str) -> tuple[np.ndarray, list[int] | None]:
        """Like :meth:`synthesize`; no word timing (``None``): heard text is estimated."""
        return self.synthesize(text), None


def _check(audio16k: np.ndarray) -> np.ndarray:
    a = np.asarray(audio16k)
    if a.ndim != 1:
        raise BadAudio(f"expected mono 16 kHz audio, got shape {a.shape}")
    return a.astype(np.float32, copy=False)
