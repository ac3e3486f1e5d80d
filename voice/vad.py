"""Voice activity: Silero VAD probabilities and a hysteresis gate counted in frames.

- :class:`SileroVad` runs the ONNX model (one intra-op thread) on 512-sample frames at
  16 kHz (32 ms), carrying the model state and 64 samples of context between calls.
- :class:`VadGate` is pure: probabilities in, ``speech_start``/``speech_end`` transitions
  out, counted in frames. No clock.
- :class:`VoiceActivity` glues them: arbitrary-length 16 kHz audio in, transitions out,
  each stamped with the absolute sample index of its onset/offset (time is samples).

Everything here is synchronous; one frame costs well under a millisecond.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from seetalk.config import TurnSettings
from seetalk.errors import BadAudio, ModelNotFound

SAMPLE_RATE = 16_000
FRAME = 512  # samples per VAD frame at 16 kHz = 32 ms
FRAME_MS = FRAME * 1000 / SAMPLE_RATE
CONTEXT = 64


class SileroVad:
    """Silero VAD speech probability of successive 512-sample frames (stateful, not thread-safe).

    Supports the silero-vad 6.x export (inputs ``input``, ``state``, ``sr``) and the
    faster-whisper export (inputs ``input`` of width 576, ``h``, ``c``).
    """

    def __init__(self, model_path: str | Path) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise ModelNotFound(f"voice activity model not found: {path} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self._session.get_inputs()}
        self._hc = "h" in names and "c" in names
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the state and context (a new stream)."""
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        if self._hc:
            self._h = np.zeros((1, 1, 128), dtype=np.float32)
            self._c = np.zeros((1, 1, 128), dtype=np.float32)
        else:
            self._state = np.zeros((2, 1, 128), dtype=np.float32)

    def prob(self, chunk: np.ndarray) -> float:
        """Speech probability of the next 512 samples (16 kHz mono float32)."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if chunk.size != FRAME:
            raise BadAudio(f"VAD frames are {FRAME} samples at 16 kHz, got {chunk.size}")
        x = np.concatenate([self._context, chunk])[None, :]
        self._context = chunk[-CONTEXT:].copy()
        if self._hc:
            out, self._h, self._c = self._session.run(
                None, {"input": x, "h": self._h, "c": self._c}
            )
        else:
            out, self._state = self._session.run(
                None, {"input": x, "state": self._state, "sr": self._sr}
            )
        return float(np.asarray(out).reshape(-1)[0])


@dataclass(frozen=True)
class VadTransition:
    """Speech started or ended. ``frame`` is the index of the first frame of the new state;
    ``sample`` the absolute 16 kHz sample index of that frame's start."""

    kind: Literal["speech_start", "speech_end"]
    frame: int
    sample: int

    @property
    def time_s(self) -> float:
        return self.sample / SAMPLE_RATE


class VadGate:
    """Hysteresis over per-frame speech probabilities, counted in frames (pure, no clock).

    Speech starts after ``min_speech_frames`` consecutive frames ``>= threshold`` and is
    reported at the first of them. It ends after ``min_silence_frames`` consecutive frames
    ``< neg_threshold`` and is reported at the first silent one. A frame in between the two
    thresholds breaks a run of either kind, so short blips and short gaps are ignored.
    """

    def __init__(
        self,
        threshold: float,
        min_speech_frames: int,
        min_silence_frames: int,
        neg_threshold: float | None = None,
    ) -> None:
        self.configure(threshold, min_speech_frames, min_silence_frames, neg_threshold)
        self.reset()

    def configure(
        self,
        threshold: float,
        min_speech_frames: int,
        min_silence_frames: int,
        neg_threshold: float | None = None,
    ) -> None:
        """New thresholds and run lengths; the state (speaking or not, the run so far) stays,
        so a change mid-stream applies from the next frame."""
        neg = max(threshold - 0.15, 0.01) if neg_threshold is None else neg_threshold
        if neg > threshold:
            raise ValueError("neg_threshold must not exceed threshold")
        self.threshold, self.neg_threshold = threshold, neg
        self.min_speech_frames = max(1, min_speech_frames)
        self.min_silence_frames = max(1, min_silence_frames)

    def reset(self) -> None:
        self._frame = 0
        self._speaking = False
        self._run = 0  # length of the current run towards a change of state
        self._run_start = 0

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def frames(self) -> int:
        """Frames seen since the last reset."""
        return self._frame

    def update(self, prob: float) -> VadTransition | None:
        i = self._frame
        self._frame += 1
        towards = prob < self.neg_threshold if self._speaking else prob >= self.threshold
        if not towards:
            self._run = 0
            return None
        if self._run == 0:
            self._run_start = i
        self._run += 1
        needed = self.min_silence_frames if self._speaking else self.min_speech_frames
        if self._run < needed:
            return None
        self._speaking = not self._speaking
        self._run = 0
        kind: Literal["speech_start", "speech_end"] = (
            "speech_start" if self._speaking else "speech_end"
        )
        return VadTransition(kind, self._run_start, self._run_start * FRAME)


class VoiceActivity:
    """Arbitrary-length 16 kHz float audio in, :class:`VadTransition` list out.

    Buffers to 512-sample frames and counts samples from the first :meth:`feed` (or the last
    :meth:`reset`), so every transition carries an absolute sample index. :meth:`feed` may
    run in an executor; :meth:`update_settings` (from the event loop) hands new settings to
    the next :meth:`feed`, which applies them before its first frame.
    """

    def __init__(self, model: str | Path | SileroVad, settings: TurnSettings | None = None):
        s = settings or TurnSettings()
        self.vad = model if isinstance(model, SileroVad) else SileroVad(model)
        self.gate = VadGate(*_gate_params(s))
        self._next: TurnSettings | None = None
        self._next_lock = threading.Lock()
        self._pending = np.zeros(0, dtype=np.float32)
        self.last_prob = 0.0
        self.peak_prob = 0.0  # the highest probability among the frames of the last feed
        self.samples_seen = 0  # samples consumed into frames

    def reset(self) -> None:
        self.vad.reset()
        self.gate.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self.last_prob = 0.0
        self.peak_prob = 0.0  # the highest probability among the frames of the last feed
        self.samples_seen = 0

    @property
    def speaking(self) -> bool:
        return self.gate.speaking

    def update_settings(self, settings: TurnSettings) -> None:
        """``vad_threshold``, ``min_speech_ms`` and ``min_silence_ms`` apply from the next
        :meth:`feed` on (a feed in flight finishes with the old ones)."""
        with self._next_lock:
            self._next = settings

    def feed(self, audio: np.ndarray) -> list[VadTransition]:
        with self._next_lock:
            pending, self._next = self._next, None
        if pending is not None:
            self.gate.configure(*_gate_params(pending))
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = buf.size // FRAME
        out: list[VadTransition] = []
        self.peak_prob = 0.0
        for k in range(n):
            self.last_prob = self.vad.prob(buf[k * FRAME : (k + 1) * FRAME])
            self.peak_prob = max(self.peak_prob, self.last_prob)
            self.samples_seen += FRAME
            t = self.gate.update(self.last_prob)
            if t is not None:
                out.append(t)
        self._pending = buf[n * FRAME :].copy()
        return out


def _gate_params(s: TurnSettings) -> tuple[float, int, int]:
    """(threshold, min speech frames, min silence frames) of the turn settings."""
    return (
        s.vad_threshold,
        math.ceil(s.min_speech_ms / FRAME_MS),
        math.ceil(s.min_silence_ms / FRAME_MS),
    )
