"""Turn-taking on scripted timelines: pure decisions, made-up times, no models, no clock."""

from __future__ import annotations

import dataclasses

from conversation import turns as tt
from seetalk.config import TurnSettings


def kinds(actions: list[tt.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def run_silence(
    taker: tt.TurnTaker, start: float, end: float, step: float = 0.02
) -> list[tt.Action]:
    """Ticks from ``start`` to ``end`` (silence), collecting actions."""
    out: list[tt.Action] = []
    steps = round((end - start) / step)
    for i in range(steps + 1):
        out += taker.tick(start + (end - start) * i / steps if steps else end)
    return out


def answered(taker: tt.TurnTaker, text: str = "what is the weather", t: float = 1.0) -> str:
    """Scripts one user turn up to a reply that is audible; returns the reply id."""
    taker.speech_started(t)
    taker.speech_stopped(t + 1.5)
    actions = run_silence(taker, t + 1.5, t + 1.5 + taker.settings.silence_ms / 1000)
    assert kinds(actions) == ["EndOfTurn"]
    actions = taker.final(text)
    assert kinds(actions) == ["Respond"]
    taker.reply_started("r1")
    taker.reply_audible("r1")
    return "r1"


def test_a_turn_ends_after_the_configured_silence() -> None:
    taker = tt.TurnTaker(TurnSettings(silence_ms=500))
    assert kinds(taker.speech_started(1.0)) == ["UtteranceStarted"]
    assert kinds(taker.speech_stopped(2.0)) == ["RecognitionPaused"]
    assert run_silence(taker, 2.0, 2.48) == []
    actions = taker.tick(2.5)
    assert actions == [tt.EndOfTurn(1.0, 2.0)]
    assert taker.tick(3.0) == []  # once
    assert kinds(taker.final("hello there")) == ["Respond"]
    assert not taker.in_utterance


def test_silence_is_tunable_per_session() -> None:
    taker = tt.TurnTaker(TurnSettings(silence_ms=500))
    taker.update_settings(dataclasses.replace(taker.settings, silence_ms=1200))
    taker.speech_started(0.0)
    taker.speech_stopped(1.0)
    assert run_silence(taker, 1.0, 2.18) == []
    assert kinds(taker.tick(2.2)) == ["EndOfTurn"]


def test_speech_resuming_after_a_short_pause_continues_the_turn() -> None:
    taker = tt.TurnTaker(TurnSettings(silence_ms=500))
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    assert run_silence(taker, 2.0, 2.3) == []
    assert kinds(taker.speech_started(2.35)) == ["RecognitionResumed"]
    assert run_silence(taker, 2.35, 3.5) == []  # still speaking: no endpoint
    taker.speech_stopped(3.5)
    actions = run_silence(taker, 3.5, 4.0)
    assert actions == [tt.EndOfTurn(1.0, 3.5)]


def test_preemptive_reply_is_adopted_when_the_final_matches() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    assert taker.speculative_final("What time is it?") == [tt.StartPreemptive("What time is it?")]
    assert taker.speculative_final("what time is it") == []  # same words: nothing new
    run_silence(taker, 2.0, 2.5)
    assert kinds(taker.final("What time is it?")) == ["AdoptPreemptive"]


def test_preemptive_reply_is_discarded_when_speech_resumes_or_words_differ() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    assert kinds(taker.speculative_final("What time")) == ["StartPreemptive"]
    assert kinds(taker.speech_started(2.2)) == ["RecognitionResumed", "CancelPreemptive"]
    taker.speech_stopped(3.0)
    assert kinds(taker.speculative_final("What time is it in Paris")) == ["StartPreemptive"]
    run_silence(taker, 3.0, 3.5)
    assert kinds(taker.final("What time is it in Peru")) == ["CancelPreemptive", "Respond"]


def test_no_preemption_when_switched_off() -> None:
    taker = tt.TurnTaker(TurnSettings(preemptive=False))
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    assert taker.speculative_final("hello") == []


def test_noise_is_not_a_turn() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    taker.speech_stopped(1.2)
    run_silence(taker, 1.2, 1.7)
    assert kinds(taker.final("")) == ["DiscardUtterance"]
    taker.speech_started(3.0)
    taker.speech_stopped(3.2)
    run_silence(taker, 3.2, 3.7)
    assert kinds(taker.final("Thank you.")) == ["DiscardUtterance"]  # whisper on a cough


def test_barge_in_pauses_at_onset_and_words_confirm_it() -> None:
    taker = tt.TurnTaker(TurnSettings())
    rid = answered(taker)
    actions = taker.speech_started(5.0)
    assert actions[0] == tt.PauseReply(rid, 5.0)
    assert kinds(actions) == ["PauseReply", "UtteranceStarted"]
    assert taker.partial("wait") == [tt.InterruptReply(rid)]
    assert taker.partial("wait stop") == []  # once
    taker.speech_stopped(5.8)
    run_silence(taker, 5.8, 6.3)
    assert kinds(taker.final("Wait, stop.")) == ["Respond"]


def test_false_interruption_resumes_after_the_timeout() -> None:
    taker = tt.TurnTaker(TurnSettings(false_interruption_timeout_ms=1500))
    rid = answered(taker)
    assert kinds(taker.speech_started(5.0)) == ["PauseReply", "UtteranceStarted"]
    taker.speech_stopped(5.3)  # a cough
    assert taker.speculative_final("") == []
    # The endpoint comes first; its transcript is empty: resume at once.
    assert kinds(run_silence(taker, 5.3, 5.8)) == ["EndOfTurn"]
    assert kinds(taker.final("")) == ["ResumeReply", "DiscardUtterance"]
    assert taker.final("") != [tt.ResumeReply(rid)]


def test_false_interruption_resumes_at_the_deadline_when_the_endpoint_is_long() -> None:
    taker = tt.TurnTaker(TurnSettings(silence_ms=3000, false_interruption_timeout_ms=1500))
    rid = answered(taker, t=1.0)
    taker.speech_started(6.0)
    taker.speech_stopped(6.2)
    taker.speculative_final("")  # no words in it
    assert run_silence(taker, 6.2, 7.48) == []
    assert taker.tick(7.5) == [tt.ResumeReply(rid), tt.DiscardUtterance()]


def test_no_resume_while_the_person_still_speaks() -> None:
    taker = tt.TurnTaker(TurnSettings(false_interruption_timeout_ms=1500))
    answered(taker)
    taker.speech_started(5.0)
    assert run_silence(taker, 5.0, 8.0) == []  # speaking throughout: wait for words
    assert kinds(taker.partial("so anyway")) == ["InterruptReply"]


def test_resume_off_interrupts_at_onset() -> None:
    taker = tt.TurnTaker(TurnSettings(resume_false_interruption=False))
    rid = answered(taker)
    assert taker.speech_started(5.0)[:2] == [tt.PauseReply(rid, 5.0), tt.InterruptReply(rid)]


def test_interrupt_off_keeps_talking() -> None:
    taker = tt.TurnTaker(TurnSettings(interrupt=False))
    answered(taker)
    assert kinds(taker.speech_started(5.0)) == ["UtteranceStarted"]


def test_speech_before_the_reply_is_audible_drops_it() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    run_silence(taker, 2.0, 2.5)
    taker.final("tell me a joke")
    taker.reply_started("r1")
    assert kinds(taker.speech_started(2.7)) == ["CancelPendingReply", "UtteranceStarted"]


def test_reply_that_ended_is_not_interrupted() -> None:
    taker = tt.TurnTaker(TurnSettings())
    rid = answered(taker)
    taker.reply_ended(rid)
    assert kinds(taker.speech_started(9.0)) == ["UtteranceStarted"]


def test_manual_commit_ends_the_turn_in_mode_none() -> None:
    taker = tt.TurnTaker(TurnSettings(mode="none"))
    taker.speech_started(0.0)
    taker.speech_stopped(1.0)
    assert run_silence(taker, 1.0, 5.0) == []  # no automatic endpoint
    assert kinds(taker.commit(5.0)) == ["EndOfTurn"]


def test_a_minute_of_conversation_runs_in_milliseconds() -> None:
    """Thirty scripted exchanges with barge-ins and coughs: the state never sticks."""
    taker = tt.TurnTaker(TurnSettings())
    t = 0.0
    for n in range(30):
        rid = f"r{n}"
        taker.speech_started(t)
        taker.speech_stopped(t + 1.0)
        assert kinds(run_silence(taker, t + 1.0, t + 1.5)) == ["EndOfTurn"]
        assert kinds(taker.final(f"question number {n}")) == ["Respond"]
        taker.reply_started(rid)
        taker.reply_audible(rid)
        t += 2.0
        if n % 3 == 0:  # a cough
            taker.speech_started(t)
            taker.speech_stopped(t + 0.2)
            taker.speculative_final("")
            acts = run_silence(taker, t + 0.2, t + 0.7)
            if acts:
                assert kinds(taker.final("")) == ["ResumeReply", "DiscardUtterance"]
            else:
                assert tt.ResumeReply(rid) in run_silence(taker, t + 0.7, t + 2.0)
            t += 2.0
        if n % 2 == 0:
            acts = taker.speech_started(t)
            assert acts[0] == tt.PauseReply(rid, t)
            assert taker.partial("no wait") == [tt.InterruptReply(rid)]
            taker.speech_stopped(t + 0.8)
            run_silence(taker, t + 0.8, t + 1.3)
            assert kinds(taker.final("no wait")) == ["Respond"]
            taker.reply_started(f"x{n}")
            taker.reply_ended(f"x{n}")
            t += 2.0
        else:
            taker.reply_ended(rid)
        t += 1.0
    assert not taker.in_utterance and not taker.barge_pending


def test_a_long_utterance_without_clear_words_asks_to_repeat() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    taker.speech_stopped(3.0)  # two seconds of speech, transcribed as nothing we trust
    run_silence(taker, 3.0, 3.5)
    assert kinds(taker.final("")) == ["DiscardUtterance", "NotUnderstood"]
    taker.speech_started(5.0)
    taker.speech_stopped(5.3)  # a short noise is only discarded
    run_silence(taker, 5.3, 5.8)
    assert kinds(taker.final("")) == ["DiscardUtterance"]


def test_a_partial_in_the_silence_starts_the_reply_and_the_final_corrects_it() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    assert taker.partial("What is the") == []  # still speaking: nothing to preempt
    taker.speech_stopped(2.0)
    assert taker.partial("What is the tallest mountain") == [
        tt.StartPreemptive("What is the tallest mountain")
    ]
    # the final pass heard more: the held reply is replaced, then adopted
    assert kinds(taker.speculative_final("What is the tallest mountain in the world?")) == [
        "CancelPreemptive",
        "StartPreemptive",
    ]
    run_silence(taker, 2.0, 2.5)
    assert kinds(taker.final("What is the tallest mountain in the world?")) == ["AdoptPreemptive"]


def test_speech_while_the_final_pass_runs_is_a_new_utterance() -> None:
    """'Wait, stop please' during a slow final pass: heard at once, answered after it."""
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    assert kinds(run_silence(taker, 2.0, 2.5)) == ["EndOfTurn"]
    assert kinds(taker.speech_started(3.0)) == ["UtteranceStarted"]  # final still pending
    assert kinds(taker.speech_stopped(4.0)) == ["RecognitionPaused"]
    assert run_silence(taker, 4.0, 6.0) == []  # its endpoint waits for the earlier final
    assert taker.final("what is the weather") == []  # the person spoke again: no reply yet
    assert taker.tick(6.02) == [tt.EndOfTurn(3.0, 4.0)]
    assert kinds(taker.final("wait stop please")) == ["Respond"]
    assert not taker.in_utterance and not taker.finalizing


def test_an_unanswered_turn_is_answered_when_the_next_was_only_noise() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(1.0)
    taker.speech_stopped(2.0)
    run_silence(taker, 2.0, 2.5)
    taker.speech_started(2.8)  # a cough while the final runs
    taker.speech_stopped(3.0)
    assert taker.final("tell me a joke") == []
    run_silence(taker, 3.0, 3.5)
    assert taker.final("") == [tt.DiscardUtterance(), tt.Respond("tell me a joke")]


def test_the_longest_utterance_is_cut_and_the_speech_goes_on() -> None:
    taker = tt.TurnTaker(TurnSettings())
    taker.speech_started(0.0)
    assert taker.tick(tt.MAX_UTTERANCE_S - 0.02) == []
    actions = taker.tick(tt.MAX_UTTERANCE_S)
    assert actions == [
        tt.EndOfTurn(0.0, tt.MAX_UTTERANCE_S),
        tt.UtteranceStarted(tt.MAX_UTTERANCE_S),
    ]
    assert taker.in_utterance and taker.finalizing
