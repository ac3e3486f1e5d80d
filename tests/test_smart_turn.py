"""End of turn by model: the turn-taker on scripted verdicts (pure), the log-mel features
(numpy), and Smart Turn itself on espeak speech."""

from __future__ import annotations

import numpy as np
import pytest

from conversation import turns as tt
from seetalk.config import TurnSettings
from seetalk.errors import ConfigError
from voice.smart_turn import FRAMES, N_MELS, RATE, last_window, log_mel, mel_filters

SMART = TurnSettings(eot="smart_turn", eot_complete_silence_ms=200, eot_incomplete_silence_ms=2000)


def kinds(actions: list[tt.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def silence(taker: tt.TurnTaker, start: float, end: float, step: float = 0.02) -> list[tt.Action]:
    out: list[tt.Action] = []
    n = round((end - start) / step)
    for i in range(n + 1):
        out += taker.tick(start + (end - start) * i / n)
    return out


# --- the turn-taker -----------------------------------------------------------------------


def test_the_first_silence_asks_the_model_only_with_smart_turn() -> None:
    assert kinds(tt.TurnTaker(SMART).speech_started(1.0)) == ["UtteranceStarted"]
    taker = tt.TurnTaker(SMART)
    taker.speech_started(1.0)
    assert taker.speech_stopped(2.0) == [tt.RecognitionPaused(2.0), tt.CheckEndOfTurn(2.0)]
    plain = tt.TurnTaker(TurnSettings())
    plain.speech_started(1.0)
    assert kinds(plain.speech_stopped(2.0)) == ["RecognitionPaused"]


def test_a_complete_turn_ends_after_the_short_silence() -> None:
    taker = tt.TurnTaker(SMART)
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    assert silence(taker, 2.0, 2.1) == []
    assert taker.end_of_turn_verdict(2.0, True) == []
    assert silence(taker, 2.1, 2.18) == []
    assert taker.tick(2.2) == [tt.EndOfTurn(1.0, 2.0)]


def test_an_incomplete_turn_waits_for_the_long_silence() -> None:
    taker = tt.TurnTaker(SMART)
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    taker.end_of_turn_verdict(2.0, False)
    assert silence(taker, 2.0, 3.98) == []  # far past silence_ms (500 ms): not cut off
    assert kinds(taker.tick(4.0)) == ["EndOfTurn"]


def test_without_a_verdict_the_turn_ends_at_the_long_limit() -> None:
    taker = tt.TurnTaker(SMART)
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    assert silence(taker, 2.0, 3.98) == []
    assert kinds(taker.tick(4.0)) == ["EndOfTurn"]


def test_a_verdict_on_a_silence_that_speech_broke_is_ignored() -> None:
    taker = tt.TurnTaker(SMART)
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    taker.speech_started(2.1)  # they go on
    assert taker.end_of_turn_verdict(2.0, True) == []  # late: about the old silence
    taker.speech_stopped(3.0)
    assert silence(taker, 3.0, 4.98) == []  # this silence has no verdict yet
    assert kinds(taker.tick(5.0)) == ["EndOfTurn"]


def test_eot_is_a_validated_session_setting() -> None:
    with pytest.raises(ConfigError):
        TurnSettings(eot="magic")
    with pytest.raises(ConfigError):
        TurnSettings(eot_complete_silence_ms=-1)


# --- features -------------------------------------------------------------------------------


def test_features_are_80_mels_by_800_frames_of_the_last_8_seconds() -> None:
    rng = np.random.default_rng(0)
    long = rng.standard_normal(RATE * 12).astype(np.float32) * 0.1
    feats = log_mel(long)
    assert feats.shape == (N_MELS, FRAMES) and feats.dtype == np.float32
    assert np.array_equal(last_window(long), long[-8 * RATE :])
    short = long[: RATE // 2]
    window = last_window(short)
    assert window.size == 8 * RATE and np.all(window[: -short.size] == 0)
    assert np.array_equal(window[-short.size :], short)  # left-padded: the end is the speech


def test_a_tone_lights_the_mel_band_of_its_frequency_and_values_are_scaled() -> None:
    t = np.arange(RATE * 2) / RATE
    feats = log_mel((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    tone_frames = feats[:, -100:]  # the tone is at the end of the window
    band = int(np.argmax(tone_frames.mean(axis=1)))
    centres = np.argmax(mel_filters(), axis=1) * (RATE / 2) / (mel_filters().shape[1] - 1)
    assert abs(centres[band] - 1000) < 100
    # log10 range clamped to 8 below the peak, then (x + 4) / 4: a span of at most 2
    assert feats.max() - feats.min() <= 2.0 + 1e-6


def test_mel_filters_are_unit_area_triangles() -> None:
    f = mel_filters()
    assert f.shape == (80, 201) and np.all(f >= 0)
    peaks = np.argmax(f, axis=1)
    assert np.all(np.diff(peaks) >= 0)  # bands ascend in frequency


# --- the model on speech nobody recorded for it ------------------------------------------------


@pytest.fixture(scope="module")
def smart_turn():
    from models.registry import resolve_smart_turn
    from seetalk.errors import ModelNotFound
    from voice.smart_turn import SmartTurn

    try:
        return SmartTurn(resolve_smart_turn())
    except ModelNotFound as exc:
        pytest.skip(exc.message)


def speech_only(audio: np.ndarray) -> np.ndarray:
    """Up to the end of the speech, as the session hands it over at the first silence."""
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return audio[: loud[-1] + 1]


def test_a_finished_question_scores_above_the_same_words_cut_mid_sentence(
    espeak, smart_turn
) -> None:
    for complete, cut in (
        ("What is the capital of France?", "I would like to order a pizza with"),
        ("Can you tell me the weather for tomorrow in Paris?", "So I was thinking that maybe we"),
    ):
        p_complete = smart_turn.predict(speech_only(espeak(complete))).probability
        p_cut = smart_turn.predict(speech_only(espeak(cut))).probability
        assert p_complete > p_cut, (complete, p_complete, cut, p_cut)
    verdict = smart_turn.predict(speech_only(espeak("What is the capital of France?")))
    assert 0.0 <= verdict.probability <= 1.0


# --- in a session, on the real engine -------------------------------------------------------


async def test_a_session_with_smart_turn_ends_a_finished_question_early(engine, timeline):
    """The verdict reaches the turn-taker: with a 3 s limit for an unfinished turn (and
    for one without a verdict), a finished question still ends after about 200 ms."""
    import dataclasses

    from conversation.filesession import run_session
    from seetalk.config import SessionSettings

    if engine.eot is None:
        pytest.skip("Smart Turn is not installed")
    base = SessionSettings()
    turn = dataclasses.replace(
        base.turn, eot="smart_turn", eot_complete_silence_ms=200, eot_incomplete_silence_ms=3000
    )
    audio = timeline([(0.5, "What is the capital of France?")], 9.0)
    run = await run_session(
        engine, audio, 16_000, fast=True, settings=dataclasses.replace(base, turn=turn)
    )
    metrics = [e["metrics"] for e in run.events if e["type"] == "seetalk.turn.metrics"]
    assert metrics, [e["type"] for e in run.events]
    assert metrics[0]["endpoint_ms"] < 1000  # not the 3 s limit: the model said complete
    assert engine.eot_executor.stats()["done"] >= 1  # it ran on the scheduler
