"""Echo of the reply: path estimation, cancellation, the residual measure and the gate, on
synthetic signals and a scripted timeline (no models), and the ``echo`` setting's protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conversation.protocol import SessionUpdate, parse_client_event
from voice.echo import (
    BLOCK,
    RATE,
    EchoBlock,
    EchoCanceller,
    EchoPath,
    FarEnd,
    PathTracker,
    estimate_path,
)
from voice.echo_gate import EchoGate
from voice.loudspeaker import EchoSpec, Loudspeaker, room_response
from voice.vad import FRAME, VadTransition


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Coloured noise in syllables and words with pauses: speech's rhythm and spectrum tilt."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    x = np.convolve(rng.standard_normal(n), np.exp(-np.arange(24) / 4.0), mode="same")
    syllables = np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)) ** 2
    words = np.repeat(rng.uniform(size=n // 4800 + 1) > 0.25, 4800)[:n]
    y = x * syllables * words
    return (0.25 * y / np.max(np.abs(y))).astype(np.float32)


def with_echo(far: np.ndarray, delay_ms: float, gain: float) -> np.ndarray:
    """What the microphone hears of ``far`` through the simulated loudspeaker."""
    speaker = Loudspeaker(EchoSpec(delay_ms, gain), RATE)
    out = []
    for i in range(0, far.size, 320):
        out.append(speaker.hear(320))  # the microphone chunk first, then the pull: as run-file
        speaker.play(far[i : i + 320], RATE)
    return np.concatenate(out)[: far.size]


def cancel(
    far: np.ndarray, mic: np.ndarray, ec: EchoCanceller | None = None
) -> tuple[np.ndarray, list[EchoBlock], EchoCanceller]:
    ec = ec or EchoCanceller()
    outs, blocks = [], []
    for i in range(0, mic.size - 319, 320):
        ec.play(far[i : i + 320], RATE, ec.pos + ec._pending.size)
        clean, reports = ec.process(mic[i : i + 320])
        outs.append(clean)
        blocks += reports
    return np.concatenate(outs), blocks, ec


def erle_db(echo: np.ndarray, residual: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(echo**2) / max(np.sum(residual**2), 1e-12)))


# --- the echo path ----------------------------------------------------------------------


@pytest.mark.parametrize(("delay_ms", "gain"), [(50, 0.3), (150, 0.5), (400, 1.0), (550, 0.5)])
def test_estimate_path_finds_delay_and_gain_through_reverberation(delay_ms, gain):
    far = speechlike(3.0, seed=1)
    mic = with_echo(far, delay_ms, gain)
    max_delay = int(0.6 * RATE)
    window = slice(2 * RATE - RATE, 2 * RATE)  # the microphone's last second before 2 s
    path = estimate_path(far[window.start - max_delay : window.stop], mic[window])
    assert path is not None
    assert abs(path.delay_ms - delay_ms) <= 0.5
    assert path.gain == pytest.approx(gain, rel=0.25)  # the direct path; the tail adds a little
    assert path.rho > 0.6


def test_estimate_path_is_none_on_silence_and_low_for_unrelated_audio():
    far, mic = speechlike(1.6, seed=2), speechlike(1.0, seed=3)
    assert estimate_path(np.zeros(25_600, np.float32), mic) is None
    assert estimate_path(far, np.zeros(16_000, np.float32)) is None
    unrelated = estimate_path(far, mic)
    assert unrelated is not None and unrelated.rho < 0.2
    with pytest.raises(ValueError):
        estimate_path(far, mic, max_delay=100)


def test_path_tracker_follows_drift_and_ignores_one_odd_window():
    tracker = PathTracker()

    def delay(rho: float, d: int) -> int | None:
        path = tracker.update(EchoPath(d, 0.5, rho))
        return None if path is None else path.delay

    assert delay(0.1, 2400) is None  # too weak to be an echo path
    assert delay(0.9, 3000) is None  # a first path needs two windows that agree
    assert delay(0.9, 2400) is None
    assert delay(0.9, 2410) == 2410
    assert delay(0.9, 2440) == 2440  # drift: followed
    assert delay(0.4, 6000) == 2440  # one odd window: not
    assert delay(0.9, 2450) == 2450
    assert delay(0.9, 6400) == 2450
    assert delay(0.9, 6410) == 6410  # two agree: moved
    tracker.reset()
    assert tracker.path is None


# --- the played signal ------------------------------------------------------------------


def test_far_end_is_a_bounded_ring_on_the_microphone_timeline():
    far = FarEnd(history=1000, ahead=500)
    far.write(np.ones(100, np.float32), at=0, now=0)
    far.write(np.full(100, 2, np.float32), at=300, now=0)  # a gap of silence before it
    assert far.read(0, 100).tolist() == [1.0] * 100
    assert far.read(100, 200).tolist() == [0.0] * 200
    assert far.read(300, 100).tolist() == [2.0] * 100
    far.write(np.ones(1000, np.float32), at=400, now=0)  # beyond `ahead`: dropped, counted
    assert far.dropped == 900 and far.end == 500
    far.truncate(350)  # cleared output: nothing plays from there on
    assert far.read(340, 20).tolist() == [2.0] * 10 + [0.0] * 10
    for k in range(50):  # a long stream never grows the ring
        far.write(np.ones(400, np.float32), at=500 + 400 * k, now=500 + 400 * k)
    assert far._buf.size == 1500
    assert far.read(0, 10).tolist() == [0.0] * 10  # forgotten: silence


# --- cancellation and the residual measure ------------------------------------------------


@pytest.mark.parametrize(("delay_ms", "gain"), [(150, 0.5), (400, 1.0), (550, 0.5)])
def test_canceller_removes_realistic_echo_and_tracks_its_path(delay_ms, gain):
    far = speechlike(6.0, seed=4)
    echo = with_echo(far, delay_ms, gain)
    clean, blocks, ec = cancel(far, echo)
    n = clean.size
    assert erle_db(echo[RATE:n], clean[RATE:n]) > 20  # after the first second
    assert ec.path is not None and abs(ec.path.delay_ms - delay_ms) <= 1
    playing = [b for b in blocks if b.playing and b.start >= RATE]
    explained = sum(b.residual < 0.15 for b in playing) / len(playing)
    assert explained > 0.9


def test_residual_measure_tells_the_person_from_the_echo():
    far = speechlike(6.0, seed=5)
    near = np.zeros_like(far)
    near[3 * RATE : 4 * RATE] = speechlike(1.0, seed=6) * 0.8  # the person, at 3-4 s
    echo = with_echo(far, 150, 0.5)
    _, blocks, _ = cancel(far, echo + near)
    loud = {b.start for b in blocks if np.mean(near[b.start : b.start + BLOCK] ** 2) > 1e-4}
    person = [b.residual for b in blocks if b.start in loud]
    echo_only = [b.residual for b in blocks if b.playing and RATE <= b.start < 3 * RATE]
    assert np.median(person) > 0.3
    assert np.mean(np.array(person) >= 0.15) > 0.7
    assert np.mean(np.array(echo_only) < 0.15) > 0.9


def test_nothing_playing_leaves_the_microphone_unexplained():
    near = speechlike(1.0, seed=7)
    clean, blocks, ec = cancel(np.zeros_like(near), near)
    assert all(not b.playing and b.residual == 1.0 for b in blocks)
    assert ec.path is None
    assert erle_db(near[: clean.size], clean) < 1.5  # passed through


def test_canceller_state_is_bounded_and_resets():
    far = speechlike(4.0, seed=8)
    mic = with_echo(far, 150, 0.5)
    _, _, ec = cancel(far, mic)
    held = ec.state_samples
    for _ in range(3):
        _, _, ec = cancel(far, mic, ec)
    assert ec.state_samples == held  # a longer session holds no more
    assert ec.path is not None and ec.pos > 0
    ec.reset()
    assert ec.path is None and ec.pos == 0 and ec.far.end == 0 and ec.align == 0


def test_push_playout_queues_back_to_back_and_stop_truncates():
    ec = EchoCanceller()
    ec.play(np.ones(1600, np.float32), RATE, now=0, queued=True)
    ec.play(np.ones(1600, np.float32), RATE, now=0, queued=True)  # after the first
    assert ec.far.end == 3200
    ec.stop(now=800)
    assert ec.far.end == 800
    ec.play(np.full(4800, 16384, np.int16), 48_000, now=800, queued=True)  # to 16 kHz
    assert 800 + 1400 < ec.far.end <= 800 + 1600


# --- the gate (a scripted timeline) --------------------------------------------------------


def blocks_from(start_s: float, end_s: float, residual: float, playing: bool) -> list[EchoBlock]:
    a, b = int(start_s * RATE) // BLOCK, int(end_s * RATE) // BLOCK
    return [EchoBlock(k * BLOCK, residual, playing) for k in range(a, b)]


def tr(kind: str, t: float) -> VadTransition:
    s = int(t * RATE) // FRAME * FRAME
    return VadTransition(kind, s // FRAME, s)  # type: ignore[arg-type]


def test_gate_drops_speech_that_only_the_reply_explains():
    gate = EchoGate()
    gate.blocks(blocks_from(0.0, 1.0, 0.02, playing=True))
    assert gate.filter([tr("speech_start", 0.5)]) == []
    assert gate.holding
    gate.blocks(blocks_from(1.0, 1.5, 0.05, playing=True))
    assert gate.filter([tr("speech_end", 1.2)]) == []
    assert gate.suppressed == 1 and not gate.holding


def test_gate_keeps_held_speech_while_the_echo_path_is_unknown():
    """Before any echo was found, speech held back as possibly the reply's is passed on
    whole when it ends: it became a turn, late, rather than being lost."""
    gate = EchoGate()
    gate.blocks(blocks_from(0.0, 1.0, 0.02, playing=True))
    assert gate.filter([tr("speech_start", 0.5)], echo_known=False) == []
    gate.blocks(blocks_from(1.0, 1.5, 0.05, playing=True))
    out = gate.filter([tr("speech_end", 1.2)], echo_known=False)
    assert [t.kind for t in out] == ["speech_start", "speech_end"]
    assert out[0].sample == tr("speech_start", 0.5).sample
    assert gate.suppressed == 0 and not gate.holding


def test_gate_passes_the_person_over_the_echo_at_their_onset():
    gate = EchoGate()
    gate.blocks(blocks_from(0.0, 1.0, 0.02, playing=True))
    assert gate.filter([tr("speech_start", 0.4)]) == []  # echo kept the detector speaking
    gate.blocks(blocks_from(1.0, 1.03, 0.6, playing=True))  # the person: 30 ms so far
    assert gate.filter([]) == []
    gate.blocks(blocks_from(1.03, 1.1, 0.6, playing=True))
    out = gate.filter([])
    assert [t.kind for t in out] == ["speech_start"]
    assert out[0].sample == int(1.0 * RATE)  # the person's onset, not the echo's
    gate.blocks(blocks_from(1.1, 2.0, 0.6, playing=False))
    assert [t.kind for t in gate.filter([tr("speech_end", 1.9)])] == ["speech_end"]


def test_gate_is_transparent_when_nothing_plays():
    gate = EchoGate()
    gate.blocks(blocks_from(0.0, 0.5, 1.0, playing=False))
    start, end = tr("speech_start", 0.3), tr("speech_end", 0.45)
    assert gate.filter([start]) == [start]
    assert gate.filter([end]) == [end]
    gate.reset()
    assert not gate.holding and gate.suppressed == 0


# --- the simulated loudspeaker ---------------------------------------------------------


def test_loudspeaker_delays_scales_and_reverberates():
    speaker = Loudspeaker(EchoSpec(150, 0.5), RATE)
    impulse = np.zeros(320, np.float32)
    impulse[0] = 1.0
    heard = [speaker.hear(320)]
    speaker.play(impulse, RATE)
    for _ in range(20):
        heard.append(speaker.hear(320))
        speaker.play(np.zeros(320, np.float32), RATE)
    y = np.concatenate(heard)
    assert int(np.argmax(np.abs(y))) == 2400 + 0  # played at 0, heard 150 ms later
    assert y[2400] == pytest.approx(0.5)
    assert np.sum(y[2400 + 100 :] ** 2) > 0  # a reverberant tail
    h = room_response(EchoSpec(150, 0.5), RATE)
    assert h.size == int(0.12 * RATE) and h[0] == pytest.approx(0.5)


def test_echo_spec_parses_the_flag():
    assert EchoSpec.parse("150,0.5") == EchoSpec(150.0, 0.5)
    for bad in ("150", "x,1", "5,0.5", "150,9"):
        with pytest.raises(ValueError):
            EchoSpec.parse(bad)


# --- the setting ------------------------------------------------------------------------


def _update(session: dict) -> SessionUpdate:
    event = parse_client_event(
        json.dumps({"type": "session.update", "session": session}), max_bytes=1 << 20
    )
    assert isinstance(event, SessionUpdate)
    return event


def test_echo_setting_from_the_protocol_and_in_the_session_object():
    from conversation.settings import describe_session, settings_for
    from seetalk.config import SessionSettings
    from seetalk.errors import InvalidEvent

    base = SessionSettings()
    assert base.echo == "auto"
    assert describe_session("s", base)["seetalk"]["echo"] == "auto"
    off = settings_for(base, _update({"seetalk": {"echo": "off"}}))
    assert off.echo == "off"
    far = _update({"audio": {"input": {"noise_reduction": {"type": "far_field"}}}})
    assert settings_for(off, far).echo == "on"
    near = _update({"audio": {"input": {"noise_reduction": {"type": "near_field"}}}})
    assert settings_for(off, near).echo == "off"
    assert settings_for(off, _update({"audio": {"input": {"noise_reduction": None}}})).echo == "off"
    with pytest.raises(InvalidEvent):
        _update({"seetalk": {"echo": "maybe"}})
    with pytest.raises(InvalidEvent):
        _update({"audio": {"input": {"noise_reduction": {"type": "loud"}}}})


def test_a_client_without_echo_is_found_echo_free_and_not_gated():
    far = speechlike(3.0, seed=9)
    silent = np.zeros_like(far)
    _, blocks, ec = cancel(far, silent + 1e-5 * speechlike(3.0, seed=10))
    assert ec.path is None and ec.tracker.echo_free
    near = np.zeros_like(far)
    near[2 * RATE :] = speechlike(1.0, seed=11) * 0.3  # quieter than the reply
    _, blocks, ec = cancel(far, near)
    loud = [b for b in blocks if np.mean(near[b.start : b.start + BLOCK] ** 2) > 1e-4]
    assert np.mean([b.residual >= 0.5 for b in loud]) > 0.9


def test_paced_playout_through_a_resampler_is_one_stream():
    """48 kHz frames pulled every 20 ms come out of the resampler in bursts; the reference
    stays one continuous stream, so the path is exact."""
    far48 = np.repeat(speechlike(4.0, seed=12), 3)
    speaker, ec = Loudspeaker(EchoSpec(50, 0.3), RATE), EchoCanceller()
    for k in range(far48.size // 960):
        ec.process(speaker.hear(320))
        chunk = (far48[k * 960 : (k + 1) * 960] * 32767).astype(np.int16)
        ec.play(chunk, 48_000, ec.pos)
        speaker.play(chunk, 48_000)
    assert ec.path is not None and abs(ec.path.delay_ms - 50) <= 1 and ec.path.rho > 0.8
