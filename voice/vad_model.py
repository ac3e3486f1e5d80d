"""One Silero VAD ``onnxruntime.InferenceSession`` per model file, shared by every session.

Building an ``InferenceSession`` per conversation session (what ``SileroVad(path)`` does)
costs tens of milliseconds on the thread that builds it (the event loop, in
``conversation.session``) and a few megabytes of native allocations (graph, initializers,
arena) that glibc hands back to the system only in part: over hundreds of sessions the
server's RSS keeps creeping (bench/soak.py). The model is stateless between calls: the
recurrent state and the audio context are inputs and outputs of ``run``, and
``InferenceSession.run`` may be called from several threads at once. So one session per
model file is loaded once and kept, and :class:`SharedSileroVad` keeps only the per-stream
state (a few hundred floats).

Use: ``SharedSileroVad(engine.vad_path)`` wherever ``SileroVad(engine.vad_path)`` was
built per session; it is a :class:`~voice.vad.SileroVad`, so ``VoiceActivity`` takes it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from seetalk.errors import ModelNotFound
from voice.vad import SAMPLE_RATE, SileroVad

_lock = threading.Lock()
_sessions: dict[Path, Any] = {}


def shared_session(model_path: str | Path) -> Any:
    """The one ``InferenceSession`` of ``model_path`` (loaded on first use, then kept for
    the life of the process; the model is about 2 MB). Thread-safe."""
    path = Path(model_path).resolve()
    with _lock:
        session = _sessions.get(path)
        if session is None:
            if not path.is_file():
                raise ModelNotFound(f"voice activity model not found: {path} does not exist")
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            _sessions[path] = session
        return session


class SharedSileroVad(SileroVad):
    """A :class:`~voice.vad.SileroVad` stream on the shared session of its model file: its
    own state and context, no model of its own. Stateful, not thread-safe (one stream is fed
    by one thread at a time, as before); different streams may run at the same time."""

    def __init__(self, model_path: str | Path) -> None:  # no super(): nothing to load
        self._session = shared_session(model_path)
        names = {i.name for i in self._session.get_inputs()}
        self._hc = "h" in names and "c" in names
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()
