"""What the benchmarks share: the machine's reference figure, printed beside every
benchmark's timings, and spoken questions from espeak-ng.

One whisper-base pass over about 3 s of speech on the full 30 s window, as faster-whisper runs
it. seetalk's own recognizer fits the encoder window to the audio and is about 2.7x faster on
a short question; the reference stays the standard pass, so figures from different machines,
and from before that change, compare.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 16_000


def whisper_base_ms(speech16k: np.ndarray, *, runs: int = 3) -> float:
    """Milliseconds of one full-window whisper-base pass over the first 3 s of ``speech16k``
    (repeated to 3 s if shorter): the median of ``runs`` after a warm-up pass."""
    from models.registry import resolve_asr
    from seetalk.config import ModelConfig
    from voice.asr import Transcriber

    audio = np.resize(np.asarray(speech16k, dtype=np.float32), 3 * RATE)
    tr = Transcriber(resolve_asr(ModelConfig()), fit_window=False)
    tr.transcribe(audio)  # load and warm
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        tr.transcribe(audio)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def espeak16k(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng: mono float32 at 16 kHz."""
    from voice.audio import load_audio_file, resample

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "q.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        audio, rate = load_audio_file(path)
    return resample(audio, rate, RATE).astype(np.float32)
