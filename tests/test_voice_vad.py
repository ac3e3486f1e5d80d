"""Voice activity: the pure hysteresis gate on scripted probabilities, and Silero on speech."""

from __future__ import annotations

import numpy as np
import pytest

from seetalk.config import TurnSettings
from seetalk.errors import BadAudio
from voice.vad import FRAME, SileroVad, VadGate, VoiceActivity


def run(gate: VadGate, probs: list[float]) -> list[tuple[str, int]]:
    out = []
    for p in probs:
        t = gate.update(p)
        if t is not None:
            out.append((t.kind, t.frame))
            assert t.sample == t.frame * FRAME
    return out


def test_gate_onset_and_offset_indices():
    gate = VadGate(0.5, min_speech_frames=3, min_silence_frames=4)
    probs = [0.1] * 5 + [0.9] * 10 + [0.05] * 6
    assert run(gate, probs) == [("speech_start", 5), ("speech_end", 15)]
    assert not gate.speaking and gate.frames == len(probs)


def test_gate_ignores_short_blips_and_short_gaps():
    gate = VadGate(0.5, min_speech_frames=3, min_silence_frames=3)
    probs = [0.9, 0.9, 0.1, 0.9, 0.1]  # never 3 in a row
    assert run(gate, probs) == []
    gate.reset()
    probs = [0.9] * 4 + [0.1, 0.1, 0.9] + [0.1, 0.1] + [0.9] * 2 + [0.1] * 3
    assert run(gate, probs) == [("speech_start", 0), ("speech_end", 11)]


def test_gate_hysteresis_between_thresholds():
    gate = VadGate(0.5, min_speech_frames=2, min_silence_frames=2, neg_threshold=0.3)
    # 0.4 neither starts speech nor ends it
    assert run(gate, [0.4] * 10) == []
    assert run(gate, [0.6, 0.6]) == [("speech_start", 10)]
    assert run(gate, [0.4] * 20) == []
    assert gate.speaking
    assert run(gate, [0.2, 0.4, 0.2, 0.2]) == [("speech_end", 34)]


def test_gate_default_neg_threshold_and_validation():
    gate = VadGate(0.5, 1, 1)
    assert gate.neg_threshold == pytest.approx(0.35)
    assert run(gate, [0.5, 0.36, 0.34]) == [("speech_start", 0), ("speech_end", 2)]
    with pytest.raises(ValueError):
        VadGate(0.5, 1, 1, neg_threshold=0.6)


def energy_bounds(x: np.ndarray, rate: int = 16_000) -> tuple[float, float]:
    idx = np.nonzero(np.abs(x) > 0.02)[0]
    return idx[0] / rate, idx[-1] / rate


def feed_in_pieces(va: VoiceActivity, x: np.ndarray, piece: int = 320):
    out = []
    for i in range(0, x.size, piece):
        out += va.feed(x[i : i + piece])
    return out


@pytest.mark.models
def test_voice_activity_finds_speech_boundaries(silero_path, espeak):
    speech = espeak("What color is the cup on the table?")
    x = np.concatenate([np.zeros(16_000, np.float32), speech, np.zeros(24_000, np.float32)])
    start, end = energy_bounds(x)
    va = VoiceActivity(silero_path, TurnSettings())
    events = feed_in_pieces(va, x)
    assert [e.kind for e in events] == ["speech_start", "speech_end"]
    assert abs(events[0].time_s - start) < 0.15
    # the offset is reported at the first silent frame; Silero trails off within ~150 ms
    assert abs(events[1].time_s - end) < 0.15
    assert va.samples_seen == x.size // FRAME * FRAME
    assert not va.speaking


@pytest.mark.models
def test_silence_and_white_noise_are_not_speech(silero_path):
    va = VoiceActivity(silero_path)
    assert feed_in_pieces(va, np.zeros(48_000, np.float32)) == []
    noise = (np.random.default_rng(1).standard_normal(48_000) * 0.2).astype(np.float32)
    assert feed_in_pieces(va, noise) == []
    assert va.last_prob < 0.5


@pytest.mark.models
def test_faster_whisper_vad_export_also_works(silero_path, espeak):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("faster_whisper")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    speech = espeak("Hello there, how are you today?")
    x = np.concatenate([np.zeros(8_000, np.float32), speech, np.zeros(16_000, np.float32)])
    events = VoiceActivity(path).feed(x)
    kinds = [e.kind for e in events]
    # the comma's pause may split it in two; starts and ends alternate
    assert kinds[0::2] == ["speech_start"] * (len(kinds) // 2)
    assert kinds[1::2] == ["speech_end"] * (len(kinds) // 2)
    assert len(kinds) in (2, 4)
    start, end = energy_bounds(x)
    assert abs(events[0].time_s - start) < 0.15 and abs(events[-1].time_s - end) < 0.15


@pytest.mark.models
def test_silero_frame_contract(silero_path, espeak):
    vad = SileroVad(silero_path)
    with pytest.raises(BadAudio):
        vad.prob(np.zeros(400, np.float32))
    speech = espeak("testing one two three")
    frames = [speech[i : i + FRAME] for i in range(0, speech.size - FRAME, FRAME)]
    probs = [vad.prob(f) for f in frames]  # its cost per frame: bench/timing.py
    assert max(probs) > 0.8
    vad.reset()
    again = [vad.prob(f) for f in frames]
    np.testing.assert_allclose(again, probs, atol=1e-5)  # reset restores the initial state
