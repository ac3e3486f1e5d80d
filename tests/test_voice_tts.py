"""Speech synthesis: piper round trip through whisper, clause splitting, streaming, heard text."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from voice.audio import resample
from voice.tts import ClauseSplitter, SpeechChunk, heard_text, stream_speech, word_boundaries

# --- ClauseSplitter (pure) -------------------------------------------------------------------


def split_streamed(text: str, step: int = 3, **kw) -> list[str]:
    s = ClauseSplitter(**kw)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += s.push(text[i : i + step])
    return out + s.flush()


def test_sentences_split_at_end_punctuation():
    assert split_streamed("Yes. I can see it! Is it red? It is.") == [
        "Yes.",
        "I can see it!",
        "Is it red?",
        "It is.",
    ]


def test_push_returns_only_completed_clauses():
    s = ClauseSplitter()
    assert s.push("Hello there") == []
    assert s.push(". How") == ["Hello there."]
    assert s.push(" are you") == []
    assert s.flush() == ["How are you"]
    assert s.flush() == []


def test_no_split_inside_numbers_or_abbreviations():
    text = "It costs 3.5 dollars, e.g. about 1,000 yen at 3:45 today. Dr. Smith and J. Doe agree."
    assert split_streamed(text, step=1) == [
        "It costs 3.5 dollars,",
        "e.g. about 1,000 yen at 3:45 today.",
        "Dr. Smith and J. Doe agree.",
    ]


def test_lowercase_after_period_continues_the_sentence():
    assert split_streamed("Use approx. ten grams. Then stir.") == [
        "Use approx. ten grams.",
        "Then stir.",
    ]
    assert split_streamed("The file is called notes.txt and it is fine.") == [
        "The file is called notes.txt and it is fine."
    ]


def test_commas_split_only_long_clauses():
    assert split_streamed("Well, I think so.") == ["Well, I think so."]
    assert split_streamed("The cup on the table, which is red, is mine; take it.") == [
        "The cup on the table,",
        "which is red,",
        "is mine; take it.",  # "is mine" is shorter than min_chars
    ]


def test_long_run_without_punctuation_is_cut_at_a_space():
    words = " ".join(["word"] * 60)
    out = split_streamed(words, max_chars=50)
    assert all(len(c) <= 50 for c in out)
    assert " ".join(out) == words


def test_offsets_point_into_the_whole_text():
    text = "  First part here, and more text after it. Second one!\nThird line"
    s = ClauseSplitter()
    spans = []
    for ch in text:
        spans += s.push_spans(ch)
    spans += s.flush_spans()
    assert [t for _, t in spans] == [
        "First part here,",
        "and more text after it.",
        "Second one!",
        "Third line",
    ]
    for start, t in spans:
        assert text[start : start + len(t)] == t


def test_unspeakable_pieces_are_dropped_and_quotes_stay():
    assert split_streamed('He said "stop." Then left. ... -') == ['He said "stop."', "Then left."]


# --- heard text (pure) -----------------------------------------------------------------------


def test_heard_text_is_monotonic_and_complete():
    text = "The quick brown fox, jumps over the lazy dog."
    ends = [e for _, e in word_boundaries(text)]
    assert ends == sorted(ends) and 0 < ends[0] and ends[-1] < 1
    assert heard_text(text, 0.0) == ""
    assert heard_text(text, 1.0) == text
    counts = [len(heard_text(text, f).split()) for f in np.linspace(0, 1, 21)]
    assert counts == sorted(counts)
    chunk = SpeechChunk(text, np.zeros(48_000, np.float32), 0, 48_000)
    assert chunk.duration == 1.0
    assert chunk.heard(24_000) == heard_text(text, 0.5)


@pytest.mark.models
def test_heard_text_within_one_word_of_what_was_said(piper_voice, whisper_base, normalize_words):
    """Truncate real speech, let whisper say what it hears, compare word counts."""
    texts = [
        "The quick brown fox jumps over the lazy dog and runs into the dark forest.",
        "I can see a red cup on the table, next to a small book about cooking.",
    ]
    diffs = []
    for text in texts:
        audio = resample(piper_voice.synthesize(text), piper_voice.sample_rate, 16_000)
        for f in (0.25, 0.45, 0.65, 0.85):
            heard_by_asr = normalize_words(whisper_base.transcribe(audio[: int(audio.size * f)]))
            diffs.append(len(heard_by_asr) - len(heard_text(text, f).split()))
    assert max(abs(d) for d in diffs) <= 2, diffs
    assert sum(abs(d) <= 1 for d in diffs) >= len(diffs) - 1, diffs


# --- the synthesizer -------------------------------------------------------------------------


@pytest.mark.models
def test_piper_round_trip_through_whisper(piper_voice, whisper_base, normalize_words):
    text = "The quick brown fox jumps over the lazy dog."
    audio = piper_voice.synthesize(text)
    assert audio.dtype == np.float32 and piper_voice.sample_rate == 22_050
    assert 1.5 < audio.size / piper_voice.sample_rate < 5.0
    assert np.abs(audio).max() <= 1.0
    got = normalize_words(whisper_base.transcribe(resample(audio, 22_050, 16_000)))
    want = normalize_words(text)
    assert sum(w in got for w in want) / len(want) >= 0.7, got


@pytest.mark.models
def test_synthesize_joins_sentences(piper_voice):
    one = piper_voice.synthesize("Hello there.")
    two = piper_voice.synthesize("Hello there. Hello there.")
    assert two.size > 1.6 * one.size
    assert piper_voice.synthesize("").size == 0


async def deltas_of(text: str, step: int = 4, delay: float = 0.0):
    for i in range(0, len(text), step):
        if delay:
            await asyncio.sleep(delay)
        yield text[i : i + step]


@pytest.mark.models
async def test_stream_speech_yields_clauses_in_order(piper_voice):
    text = "Sure. The red cup is on the table, right next to the window. Anything else?"
    with ThreadPoolExecutor(max_workers=1) as ex:
        chunks = [c async for c in stream_speech(deltas_of(text), piper_voice, ex, 48_000)]
    assert [c.text for c in chunks] == [
        "Sure.",
        "The red cup is on the table,",
        "right next to the window.",
        "Anything else?",
    ]
    for c in chunks:
        assert c.sample_rate == 48_000 and c.audio.dtype == np.float32
        assert text[c.start_char : c.start_char + len(c.text)] == c.text
        assert 0.3 < c.duration < 4.0


@pytest.mark.models
async def test_stream_speech_stops_on_cancellation(piper_voice):
    closed = asyncio.Event()
    two = asyncio.Event()
    got: list[SpeechChunk] = []

    async def endless():
        try:
            while True:
                await asyncio.sleep(0.01)
                yield "This is one more sentence. "
        finally:
            closed.set()

    async def consume():
        with ThreadPoolExecutor(max_workers=1) as ex:
            async for chunk in stream_speech(endless(), piper_voice, ex, 16_000):
                got.append(chunk)
                if len(got) >= 2:
                    two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()  # the text source was closed
    n = len(got)
    await asyncio.sleep(0.3)
    assert len(got) == n  # nothing more arrives after cancellation
    assert [c.start_char for c in got] == sorted(c.start_char for c in got)


# --- phoneme timing ---------------------------------------------------------------------


def test_word_ends_from_phoneme_alignments():
    from voice.tts import word_ends

    # "^ h i , _ y o u . $" with sample counts
    alignments = [
        ("^", 100),
        ("h", 10),
        ("i", 20),
        (",", 50),
        (" ", 5),
        ("j", 10),
        ("ˈ", 0),
        ("u", 30),
        (".", 40),
        ("$", 100),
    ]
    assert word_ends(alignments) == [130, 225]
    assert word_ends([("^", 5), ("$", 5)]) == []


def test_heard_text_uses_word_ends_when_they_match_the_words():
    from voice.tts import heard_text

    text = "Paris is lovely, isn't it?"
    ends = [0.2, 0.3, 0.6, 0.8, 0.95]
    assert heard_text(text, 0.59, ends) == "Paris is"
    assert heard_text(text, 0.6, ends) == "Paris is lovely,"
    assert heard_text(text, 0.1, ends) == ""
    # "100" is said as two words here: counts differ, so the character estimate is used
    assert heard_text("It is 100 degrees.", 1.0, [0.2, 0.3, 0.5, 0.7, 0.9]) == "It is 100 degrees."


@pytest.mark.models
def test_aligned_voice_reports_where_each_word_ends(piper_voice, tmp_path, monkeypatch):
    from models.registry import aligned_voice
    from voice.tts import Synthesizer

    monkeypatch.setenv("SEETALK_MODEL_CACHE", str(tmp_path))
    onnx, config = aligned_voice(piper_voice.onnx_path, piper_voice.config_path)
    assert onnx != piper_voice.onnx_path and onnx.parent.parent == tmp_path
    assert aligned_voice(piper_voice.onnx_path, piper_voice.config_path)[0] == onnx  # once
    synth = Synthesizer(onnx, config)
    text = "The quick brown fox jumps over the lazy dog."
    audio, ends = synth.synthesize_timed(text)
    assert ends is not None and len(ends) == 9
    assert ends == sorted(ends) and 0 < ends[0] and ends[-1] <= audio.size
    plain, none = piper_voice.synthesize_timed(text)  # the voice as shipped: no timing
    assert none is None and abs(plain.size - audio.size) < 0.05 * audio.size
