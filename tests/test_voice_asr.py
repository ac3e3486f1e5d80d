"""Speech recognition: whisper on real speech, and the streaming contract on a fake model."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from voice.asr import (
    SAMPLE_RATE,
    StreamingRecognizer,
    Transcriber,
    decide_partial,
    fitted_frames,
    looks_looped,
    split_windows,
    token_budget,
)

# --- pure pieces -----------------------------------------------------------------------------


def decide(**kw):
    args = dict(
        now=10.0,
        last_start=9.0,
        interval_s=0.4,
        busy=False,
        listening=True,
        audio_s=2.0,
        min_audio_s=0.5,
        new_audio=True,
    )
    args.update(kw)
    return decide_partial(**args)


def test_decide_partial_rules():
    assert decide().run
    assert decide(last_start=None).run
    assert not decide(listening=False).run
    assert not decide(busy=True).run  # skipped, never queued
    assert not decide(new_audio=False).run
    d = decide(audio_s=0.3)
    assert not d.run and d.wait_s == pytest.approx(0.2)
    d = decide(now=9.1)
    assert not d.run and d.wait_s == pytest.approx(0.3)
    assert decide(now=9.4).run


def test_partials_thin_out_when_a_pass_takes_longer():
    # a quick pass keeps the interval; a slow one (a loaded machine) stretches it so a
    # session's partials take at most half the time, leaving the cores to finals and replies
    assert decide(now=9.4, last_took_s=0.15).run
    d = decide(now=9.4, last_took_s=0.6)
    assert not d.run and d.wait_s == pytest.approx(0.8)
    assert decide(now=10.3, last_took_s=0.6).run
    assert decide(now=9.4, last_took_s=0.6, max_duty=0).run  # off


def test_split_windows_bounds_length_and_cuts_in_silence():
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(12):  # 12 x (4.5 s "speech" + 0.5 s silence) = 60 s
        parts += [rng.standard_normal(int(4.5 * SAMPLE_RATE)) * 0.3, np.zeros(SAMPLE_RATE // 2)]
    audio = np.concatenate(parts).astype(np.float32)
    windows = split_windows(audio)
    assert sum(w.size for w in windows) == audio.size
    assert all(w.size <= 28 * SAMPLE_RATE for w in windows)
    assert len(windows) == 3
    for w in windows[:-1]:
        assert np.abs(w[-800:]).max() == 0.0  # the cut fell inside a silence
    assert split_windows(audio[: 10 * SAMPLE_RATE])[0].size == 10 * SAMPLE_RATE


# --- the streaming contract with a fake model ------------------------------------------------


class FakeTranscriber:
    """Sleeps like a model would; records concurrency and what it was given."""

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[str, int]] = []

    def _work(self, kind: str, audio: np.ndarray) -> str:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.calls.append((kind, audio.size))
        time.sleep(self.seconds)
        with self.lock:
            self.in_flight -= 1
        return f"{kind}:{audio.size}"

    def transcribe(self, audio16k, *, prompt=None):
        return self._work("final", audio16k)

    def transcribe_partial(self, audio16k, *, prompt=None):
        return self._work("partial", audio16k)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=4) as ex:  # room for misbehaviour to show
        yield ex


def chunk(seconds: float) -> np.ndarray:
    return np.full(int(seconds * SAMPLE_RATE), 0.1, dtype=np.float32)


async def test_partials_during_long_utterance_one_inference_at_a_time(executor):
    fake = FakeTranscriber(seconds=0.12)
    partials: list[str] = []
    rec = StreamingRecognizer(fake, executor, partial_interval_s=0.1, on_partial=partials.append)
    lags = []
    rec.begin()
    for _ in range(60):  # 6 s of audio, 100 ms every 40 ms
        rec.append(chunk(0.1))
        await asyncio.sleep(0.04)
        if rec.stats.last_partial_lag_s is not None:
            lags.append(rec.stats.last_partial_lag_s)
    text = await rec.finalize()
    await rec.aclose()
    assert fake.max_in_flight == 1
    assert len(partials) >= 8
    covered = [int(p.split(":")[1]) for p in partials]
    assert covered == sorted(covered) and covered[-1] > 4 * SAMPLE_RATE
    assert text == f"final:{6 * SAMPLE_RATE}"
    # newest audio wins: appends that arrive during an inference are merged into the next
    # one, never queued one inference each (the lag in seconds: bench/timing.py)
    assert lags and len([c for c in fake.calls if c[0] == "partial"]) < 60 // 2
    assert rec.stats.inferences == len(fake.calls)


async def test_no_partial_before_min_audio(executor):
    fake = FakeTranscriber(seconds=0.01)
    rec = StreamingRecognizer(fake, executor, partial_interval_s=0.05, min_partial_audio_s=0.5)
    rec.begin()
    rec.append(chunk(0.3))
    await asyncio.sleep(0.2)
    assert fake.calls == []
    rec.append(chunk(0.3))
    await asyncio.sleep(0.2)
    assert fake.calls and fake.calls[0] == ("partial", int(0.6 * SAMPLE_RATE))
    await rec.aclose()


async def test_speculative_final_is_reused_when_no_audio_appended(executor):
    fake = FakeTranscriber(seconds=0.1)
    rec = StreamingRecognizer(fake, executor, min_partial_audio_s=10.0)  # no partials
    rec.begin()
    rec.append(chunk(1.0))
    await asyncio.sleep(0.01)
    assert not rec.busy
    n_before = len(fake.calls)
    rec.pause()
    assert rec.busy and fake.calls[-1] == ("final", SAMPLE_RATE)
    await asyncio.sleep(0.2)  # the silence goes on: the speculative final completes
    text = await rec.finalize()
    assert text == f"final:{SAMPLE_RATE}"
    assert rec.stats.speculative_hit is True
    assert len(fake.calls) == n_before + 1  # finalize did not run the model again
    await rec.aclose()


async def test_speculative_final_discarded_after_resume(executor):
    fake = FakeTranscriber(seconds=0.1)
    partials: list[str] = []
    rec = StreamingRecognizer(fake, executor, partial_interval_s=10.0, on_partial=partials.append)
    rec.begin()
    rec.append(chunk(1.0))
    await asyncio.sleep(0.15)
    rec.pause()
    await asyncio.sleep(0.02)
    rec.resume()  # speech came back while the speculative final runs
    rec.append(chunk(0.5))
    text = await rec.finalize()
    assert text == f"final:{int(1.5 * SAMPLE_RATE)}"
    assert rec.stats.speculative_hit is False
    assert ("final", SAMPLE_RATE) in fake.calls  # it did start, and was ignored
    assert fake.max_in_flight == 1
    await rec.aclose()


async def test_pause_while_partial_runs_starts_final_after_it(executor):
    fake = FakeTranscriber(seconds=0.15)
    rec = StreamingRecognizer(fake, executor, partial_interval_s=0.05)
    rec.begin()
    rec.append(chunk(1.0))
    await asyncio.sleep(0.07)
    assert rec.busy and fake.calls[-1][0] == "partial"
    rec.pause()
    await asyncio.sleep(0.4)
    assert fake.calls[-1] == ("final", SAMPLE_RATE)
    text = await rec.finalize()
    assert text == f"final:{SAMPLE_RATE}" and rec.stats.speculative_hit
    assert fake.max_in_flight == 1
    await rec.aclose()


async def test_new_utterance_ignores_old_partials(executor):
    fake = FakeTranscriber(seconds=0.1)
    partials: list[str] = []
    rec = StreamingRecognizer(fake, executor, partial_interval_s=0.05, on_partial=partials.append)
    rec.begin()
    rec.append(chunk(1.0))
    await asyncio.sleep(0.07)  # a partial of utterance 1 is running
    rec.begin()
    rec.append(chunk(0.6))
    await asyncio.sleep(0.35)
    assert all(p != f"partial:{SAMPLE_RATE}" for p in partials)
    assert f"partial:{int(0.6 * SAMPLE_RATE)}" in partials
    await rec.aclose()


async def test_finalize_of_too_little_audio_is_empty(executor):
    fake = FakeTranscriber(seconds=0.01)
    rec = StreamingRecognizer(fake, executor)
    assert await rec.finalize() == ""  # no utterance
    rec.begin()
    rec.append(chunk(0.05))
    assert await rec.finalize() == ""
    await rec.aclose()


async def test_aclose_leaves_no_tasks_and_propagates_cancellation(executor):
    fake = FakeTranscriber(seconds=0.2)
    rec = StreamingRecognizer(fake, executor, partial_interval_s=0.05)
    rec.begin()
    rec.append(chunk(1.0))
    await asyncio.sleep(0.07)
    closer = asyncio.create_task(rec.aclose())
    await asyncio.sleep(0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await rec.aclose()  # closing again finishes the wait
    assert rec._timer is None and not rec.busy
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
    with pytest.raises(RuntimeError):
        rec.begin()


async def test_cancelling_finalize_is_safe(executor):
    fake = FakeTranscriber(seconds=0.2)
    rec = StreamingRecognizer(fake, executor, partial_interval_s=10.0)
    rec.begin()
    rec.append(chunk(1.0))
    task = asyncio.create_task(rec.finalize())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await rec.aclose()
    assert fake.max_in_flight == 1


# --- the real model --------------------------------------------------------------------------


def overlap(expected: str, got: list[str], words_of) -> float:
    want = words_of(expected)
    return sum(1 for w in want if w in got) / len(want)


@pytest.mark.models
def test_whisper_base_transcribes_espeak(whisper_base, espeak, normalize_words):
    sentence = "what color is the cup on the table"
    audio = espeak(sentence)
    got = normalize_words(whisper_base.transcribe(audio))
    assert overlap(sentence, got, normalize_words) >= 0.7, got
    assert whisper_base.transcribe_partial(audio)  # the same audio fits one partial window


def test_fitted_window_is_the_audio_plus_a_margin_within_whisper_bounds():
    assert fitted_frames(2.4) == 1000  # at least 10 s
    assert fitted_frames(9.2) == 1100  # 9.2 + 1 s, whole seconds
    assert fitted_frames(12.0) == 1300
    assert fitted_frames(29.5) == 3000  # never past whisper's 30 s
    assert token_budget(2.0) < token_budget(10.0) <= 400


def test_looped_decodes_are_recognised():
    budget = token_budget(2.4)
    assert not looks_looped("What is 2 plus 3?", tokens=8, budget=budget)
    assert looks_looped("What is 2 plus 3? What is 2", tokens=budget, budget=budget)
    assert looks_looped("Wait, stop please. Wait, stop please.", tokens=10, budget=budget)
    assert looks_looped(
        "In America, China, China, China, China, China, China", tokens=20, budget=budget
    )
    assert not looks_looped(
        "No, no, I said the blue one, not the red one", tokens=14, budget=budget
    )
    assert not looks_looped("", tokens=0, budget=budget)
    # a loop cut off inside its last word, and a word said three times (not a loop)
    assert looks_looped(
        "named Zephyr and Zephyr and Zephyr and Zephyr and Zep", tokens=20, budget=budget
    )
    assert not looks_looped("No, no, no, I meant the other one.", tokens=10, budget=budget)
    assert looks_looped("China, China, China, China", tokens=10, budget=budget)


@pytest.mark.models
def test_the_fitted_window_transcribes(whisper_base, espeak, normalize_words):
    for sentence in ("what color is the cup on the table", "set a timer for ten minutes"):
        before = dict(whisper_base.stats)
        got = normalize_words(whisper_base.transcribe(espeak(sentence)))
        assert whisper_base.stats["fitted"] == before["fitted"] + 1  # no fallback needed
        assert overlap(sentence, got, normalize_words) >= 0.6, got


@pytest.mark.models
def test_a_looped_fitted_decode_falls_back_to_the_full_window(whisper_base, espeak, monkeypatch):
    import voice.asr

    audio = espeak("what is two plus three")
    expected = Transcriber(whisper_base.model_dir, fit_window=False).transcribe(audio)
    monkeypatch.setattr(voice.asr, "looks_looped", lambda text, **kw: True)  # every one loops
    before = dict(whisper_base.stats)
    assert whisper_base.transcribe(audio) == expected
    assert whisper_base.stats["looped"] == before["looped"] + 1
    assert whisper_base.stats["full"] == before["full"] + 1


@pytest.mark.models
def test_the_full_window_decode_is_bounded_too(whisper_base, espeak, monkeypatch):
    """A looping decode on the full window once ran to 448 tokens at six temperatures (a
    3 s final took 10-11 s on a loaded machine): its tokens and retries are bounded."""
    model = whisper_base.load()
    calls = []
    real = model.transcribe

    def spy(audio, **kwargs):
        calls.append(kwargs)
        return real(audio, **kwargs)

    monkeypatch.setattr(model, "transcribe", spy)
    audio = espeak("what is two plus three")
    whisper_base.fit_window = False  # the full window, on the spied model
    try:
        assert whisper_base.transcribe(audio)
    finally:
        whisper_base.fit_window = True
    assert calls and calls[-1]["max_new_tokens"] == token_budget(audio.size / SAMPLE_RATE)
    assert len(calls[-1]["temperature"]) == 2


@pytest.mark.models
def test_fitted_window_keeps_noise_and_silence_out(whisper_base):
    rng = np.random.default_rng(0)
    before = dict(whisper_base.stats)
    assert whisper_base.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32)) == ""
    noise = (rng.standard_normal(2 * SAMPLE_RATE) * 0.01).astype(np.float32)
    assert whisper_base.transcribe(noise) == ""
    # no confident words in the fitted window: the full window decided, and found none
    assert whisper_base.stats["unsure"] == before["unsure"] + 2
    assert whisper_base.stats["full"] == before["full"] + 2


@pytest.mark.models
def test_whisper_short_and_empty_audio(whisper_base):
    assert whisper_base.transcribe(np.zeros(0, np.float32)) == ""
    assert whisper_base.transcribe(np.zeros(800, np.float32)) == ""


@pytest.mark.models
def test_tiny_en_loads_too(espeak, normalize_words):
    from models import resolve_asr
    from seetalk.config import ModelConfig

    tiny = Transcriber(resolve_asr(ModelConfig(asr="tiny.en")))
    assert tiny.english_only
    got = normalize_words(tiny.transcribe(espeak("good morning, how are you")))
    assert overlap("good morning, how are you", got, normalize_words) >= 0.7, got


@pytest.mark.models
async def test_streaming_with_whisper(whisper_base, espeak, normalize_words):
    sentence = (
        "I would like to know what color the cup on the table is, "
        "and whether there is anything written on the paper next to it"
    )
    audio = espeak(sentence)
    partials: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as ex:
        rec = StreamingRecognizer(whisper_base, ex, on_partial=partials.append)
        rec.begin()
        step = SAMPLE_RATE // 10
        for i in range(0, audio.size, step):  # 100 ms chunks at twice real time
            rec.append(audio[i : i + step])
            await asyncio.sleep(0.05)
        rec.pause()
        await asyncio.sleep(0.1)
        text = await rec.finalize()
        await rec.aclose()
    assert partials, "no partial transcript during a long utterance"
    got = normalize_words(text)
    assert overlap(sentence, got, normalize_words) >= 0.7, text
    assert rec.stats.last_partial_lag_s is not None  # how long: bench/timing.py


async def test_a_separate_partial_model_lets_the_final_start_at_once(executor):
    """With a partial model of its own, a pause starts the final pass at once, even while a
    partial runs; each model still has at most one inference in flight."""
    final_model, partial_model = FakeTranscriber(seconds=0.15), FakeTranscriber(seconds=0.3)
    with ThreadPoolExecutor(max_workers=1) as partial_pool:
        rec = StreamingRecognizer(
            final_model,
            executor,
            partial_interval_s=0.05,
            partial_transcriber=partial_model,
            partial_executor=partial_pool,
        )
        rec.begin()
        for _ in range(10):
            rec.append(chunk(0.1))
            await asyncio.sleep(0.03)
        async with asyncio.timeout(5):
            while partial_model.in_flight == 0:
                await asyncio.sleep(0.005)
        rec.pause()  # a partial is running now
        await asyncio.sleep(0.01)
        assert final_model.in_flight == 1
        text = await rec.speculative_result()
        assert text == f"final:{SAMPLE_RATE}"
        assert await rec.finalize() == text and rec.stats.speculative_hit
        await rec.aclose()
    assert final_model.max_in_flight == 1 and partial_model.max_in_flight == 1
    assert {kind for kind, _ in partial_model.calls} == {"partial"}
    assert {kind for kind, _ in final_model.calls} == {"final"}


async def test_silence_after_a_pause_does_not_spoil_the_speculative_final(executor):
    """Audio keeps coming in the silence before the endpoint; the speculative final still
    counts, and that silence joins the utterance only if the person speaks again."""
    fake = FakeTranscriber(seconds=0.05)
    rec = StreamingRecognizer(fake, executor, partial_interval_s=10)
    rec.begin()
    rec.append(chunk(1.0))
    rec.pause()
    rec.append(chunk(0.3))  # silence (the fake cannot tell)
    assert await rec.finalize() == f"final:{SAMPLE_RATE}" and rec.stats.speculative_hit
    rec.begin()
    rec.append(chunk(1.0))
    rec.pause()
    rec.append(chunk(0.2))
    rec.resume()  # the pause was inside the utterance: its audio belongs to it
    rec.append(chunk(0.5))
    assert await rec.finalize() == f"final:{int(1.7 * SAMPLE_RATE)}"
    await rec.aclose()


async def test_audio_after_the_pause_that_is_not_silence_joins_the_final(executor):
    """A quiet word after the first silence, too weak to bring speech back, must still be
    heard by the final pass: keep_held() moves it into the utterance."""
    fake = FakeTranscriber(seconds=0.05)
    rec = StreamingRecognizer(fake, executor, partial_interval_s=10)
    rec.begin()
    rec.append(chunk(1.0))
    rec.pause()
    rec.append(chunk(0.2))  # the quiet word
    rec.keep_held()
    assert await rec.speculative_result() is None  # it no longer covers the utterance
    rec.append(chunk(0.3))  # then real silence, set aside
    assert await rec.finalize() == f"final:{int(1.2 * SAMPLE_RATE)}"
    assert not rec.stats.speculative_hit
    await rec.aclose()
