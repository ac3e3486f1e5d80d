"""The one exception hierarchy of seetalk.

Every error a client can cause is a :class:`SeetalkError` with a ``type`` and ``code`` that map
one to one onto the OpenAI Realtime ``error`` event (``{"type", "code", "message", "param",
"event_id"}``), so a session turns any of them into a typed event and goes on.
"""

from __future__ import annotations

from typing import Any


class SeetalkError(Exception):
    """Base class. ``type`` and ``code`` are what a client sees in an ``error`` event."""

    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, event_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.event_id = event_id

    def to_event_error(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


class ConfigError(SeetalkError):
    """A setting is invalid (unknown key, wrong type, out of range)."""

    type = "invalid_request_error"
    code = "invalid_config"


class ModelNotFound(SeetalkError):
    """A model role does not resolve. The message names the package or path to install."""

    code = "model_not_found"


class BadAudio(SeetalkError):
    """Input that is not audio, is empty, or has an unsupported sample format."""

    type = "invalid_request_error"
    code = "invalid_audio"


class BadImage(SeetalkError):
    """A camera frame or image that cannot be decoded or used."""

    type = "invalid_request_error"
    code = "invalid_image"


class BackendError(SeetalkError):
    """The language or vision model failed: server down, slow, or it rejected the request."""

    code = "model_backend_error"


class BackendTimeout(BackendError):
    code = "model_backend_timeout"


class SpeechBackendError(BackendError):
    """A remote speech role (``role``: ``"asr"`` or ``"tts"``) failed: its server is down,
    too slow, or refused the request. The turn fails with this error; the next one tries
    the server again, so the session recovers when the server returns."""

    code = "speech_backend_error"

    def __init__(self, message: str, *, role: str, param: str | None = None):
        super().__init__(message, param=param)
        self.role = role


class SpeechBackendTimeout(SpeechBackendError, BackendTimeout):
    code = "speech_backend_timeout"


class ImagesRejected(BackendError):
    """The backend refused image input (a text-only model). The turn goes on without images."""

    code = "images_rejected"


class InvalidEvent(SeetalkError):
    """A client event that cannot be parsed or is not valid now."""

    type = "invalid_request_error"
    code = "invalid_event"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        event_id: str | None = None,
    ):
        super().__init__(message, param=param, event_id=event_id)
        if code is not None:
            self.code = code


class SessionLimit(SeetalkError):
    """The server holds its maximum number of sessions."""

    code = "session_limit"


class Unauthorized(SeetalkError):
    type = "invalid_request_error"
    code = "unauthorized"


class Skipped(SeetalkError):
    """Background model work (a partial transcript, a scene note) was dropped because its
    role was behind or newer work replaced it (``models/scheduler.py``). Not a failure."""

    code = "work_skipped"


class SchedulerFull(SeetalkError):
    """A session queued more must-run work on one model role than its bound allows."""

    code = "scheduler_full"
