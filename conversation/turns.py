"""Turn-taking and barge-in: a pure state machine.

:class:`TurnTaker` takes what happened (voice activity, transcripts, reply playout) and the
time it happened on the input audio timeline, and returns the actions the session must take.
It never awaits and never reads a clock, so a test scripts a whole conversation on made-up
times and checks the actions (see tests/test_turns.py).

Policy, in short:

* An utterance starts at VAD speech onset. At the first silence the session starts the final
  transcription speculatively; when a partial or that result arrives while the person is
  still silent, the reply is generated preemptively (held back, not played). Speech
  resuming discards both.
* The endpoint is ``silence_ms`` of silence (``eot="silence"``). With ``eot="smart_turn"``
  the first silence also asks an end-of-turn model (:class:`CheckEndOfTurn`); its verdict
  (:meth:`TurnTaker.end_of_turn_verdict`) ends a complete turn after
  ``eot_complete_silence_ms`` and lets an incomplete one (or one with no verdict yet) run
  to ``eot_incomplete_silence_ms``. Then the final transcript decides: the same words
  as the preemptive reply -> that reply is adopted and plays at once; other words -> a fresh
  reply; no words -> nothing (a cough is not a turn).
* Speech onset while a reply is audible is a barge-in: the reply's audio stops at once
  (:class:`PauseReply`). Words in the interrupting speech confirm it (:class:`InterruptReply`:
  cancel generation, keep only the heard words). If no words come within
  ``false_interruption_timeout_ms`` and the person is silent again, the reply resumes
  (:class:`ResumeReply`) where it stopped; with resuming off, a barge-in interrupts at once.
* Speech is never lost: the endpoint closes the utterance, so speech while its final
  transcript is still being computed opens the next utterance at once
  (:class:`UtteranceStarted`). That utterance's own endpoint waits for the earlier final
  (finals come in order). When the earlier final arrives while the person already speaks
  again, it joins the history unanswered; the reply comes after the newer utterance (or,
  if that one held no words, to the unanswered turn).
* An utterance lasts at most ``MAX_UTTERANCE_S`` (automatic turns end there and the speech
  goes on as a new utterance), so one recognizer pass never gets more than that.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, replace

from seetalk.config import TurnSettings

# Words whisper produces from noise, breath or a cough; alone they are not an utterance.
_HALLUCINATIONS = frozenset(
    {
        "",
        "you",
        "thank you",
        "thanks",
        "bye",
        "uh",
        "um",
        "hmm",
        "mm",
        "oh",
        "ah",
        "so",
        "thank you for watching",
        "thanks for watching",
        # backchannels: the person is listening, not taking the turn
        "uh huh",
        "mm hmm",
        "mhm",
        "uh uh",
        "hmm hmm",
        "mm mm",
        "ah ha",
        "aha",
    }
)


# An utterance this long that yields no clear words was speech we failed to understand.
UNCLEAR_MIN_S = 1.0
# The longest utterance: one recognizer pass never gets more audio than this.
MAX_UTTERANCE_S = 120.0


def normalize(text: str) -> str:
    """Lower-case words without punctuation, for comparing transcripts."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def has_words(text: str) -> bool:
    """Whether a transcript holds words a person said, not noise."""
    return normalize(text) not in _HALLUCINATIONS


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UtteranceStarted:
    """Speech began at ``t`` (onset, before the VAD confirmed it): start recognizing."""

    t: float


def for_model(turn: TurnSettings, has_eot_model: bool) -> TurnSettings:
    """The settings the turn-taker runs on: ``semantic_vad`` on a server without the
    end-of-turn model ends turns on silence alone (``silence_ms``, which its eagerness
    chose), not on the long wait for a verdict that never comes."""
    if turn.eot == "smart_turn" and turn.eagerness and not has_eot_model:
        return replace(turn, eot="silence")
    return turn


@dataclass(frozen=True)
class RecognitionPaused:
    """First silence at ``t``: start the final transcription speculatively."""

    t: float


@dataclass(frozen=True)
class CheckEndOfTurn:
    """First silence at ``t`` with ``eot="smart_turn"``: ask the end-of-turn model about the
    speech up to ``t``; answer with :meth:`TurnTaker.end_of_turn_verdict`."""

    t: float


@dataclass(frozen=True)
class RecognitionResumed:
    """Speech came back before the endpoint: discard speculative work, keep recognizing."""

    t: float


@dataclass(frozen=True)
class StartPreemptive:
    """Generate a reply to ``text`` now, held back until the endpoint confirms it."""

    text: str


@dataclass(frozen=True)
class CancelPreemptive:
    """The held-back reply no longer fits what the person said."""


@dataclass(frozen=True)
class EndOfTurn:
    """The endpoint: the utterance spanned ``start``..``end``; finalize the transcript."""

    start: float
    end: float


@dataclass(frozen=True)
class AdoptPreemptive:
    """The final transcript matches the preemptive reply: play it."""

    text: str


@dataclass(frozen=True)
class Respond:
    """Reply to the user's turn whose final transcript is ``text``."""

    text: str


@dataclass(frozen=True)
class DiscardUtterance:
    """The utterance held no words (noise, a cough): it is not a turn."""


@dataclass(frozen=True)
class NotUnderstood:
    """A long utterance that held no clear words: ask the person to say it again."""


@dataclass(frozen=True)
class PauseReply:
    """Barge-in: stop the reply's audio now (it may resume). ``onset`` is the speech onset."""

    reply_id: str
    onset: float


@dataclass(frozen=True)
class InterruptReply:
    """The barge-in is confirmed: cancel the reply and keep only what was heard."""

    reply_id: str


@dataclass(frozen=True)
class ResumeReply:
    """The barge-in held no words: play the reply on from where it stopped."""

    reply_id: str


@dataclass(frozen=True)
class CancelPendingReply:
    """The person spoke again before the reply was audible: drop it (nothing was heard)."""

    reply_id: str


Action = (
    UtteranceStarted
    | RecognitionPaused
    | RecognitionResumed
    | CheckEndOfTurn
    | StartPreemptive
    | CancelPreemptive
    | EndOfTurn
    | AdoptPreemptive
    | Respond
    | DiscardUtterance
    | NotUnderstood
    | PauseReply
    | InterruptReply
    | ResumeReply
    | CancelPendingReply
)


@dataclass
class _Barge:
    reply_id: str
    onset: float
    deadline: float
    heard_nothing: bool = False  # a transcript of the interrupting speech came back empty


class TurnTaker:
    """The turn-taking decisions of one session. Times are seconds on the input timeline."""

    def __init__(self, settings: TurnSettings) -> None:
        self.settings = settings
        self.speaking = False
        self._utterance_start: float | None = None  # the open utterance
        self._silence_since: float | None = None  # ... in the silence after its speech
        self._verdict: bool | None = None  # the end-of-turn model on this silence
        self._ended: deque[float] = deque()  # lengths of ended utterances awaiting a final
        self._preemptive: str | None = None
        self._unanswered: str | None = None  # a final that came while the person spoke again
        self._reply: str | None = None  # the current reply, once created
        self._audible = False
        self._barge: _Barge | None = None

    # --- settings and state ----------------------------------------------------------------

    def update_settings(self, settings: TurnSettings) -> None:
        self.settings = settings

    @property
    def in_utterance(self) -> bool:
        """An utterance is open (started and not yet ended by an endpoint or a commit)."""
        return self._utterance_start is not None

    @property
    def utterance_start(self) -> float | None:
        return self._utterance_start

    @property
    def finalizing(self) -> bool:
        """An ended utterance waits for its final transcript."""
        return bool(self._ended)

    @property
    def paused(self) -> bool:
        """In the open utterance, in the silence after speech (before the endpoint)."""
        return self._silence_since is not None

    @property
    def barge_pending(self) -> bool:
        return self._barge is not None

    @property
    def verdict(self) -> bool | None:
        """The end-of-turn model's verdict on the last silence (``None``: none came)."""
        return self._verdict

    # --- voice activity ----------------------------------------------------------------------

    def speech_started(self, onset: float) -> list[Action]:
        self.speaking = True
        self._verdict = None
        actions: list[Action] = []
        if self._reply is not None and self._barge is None:
            if self._audible and self.settings.interrupt:
                actions.append(PauseReply(self._reply, onset))
                if self.settings.resume_false_interruption:
                    deadline = onset + self.settings.false_interruption_timeout_ms / 1000
                    self._barge = _Barge(self._reply, onset, deadline)
                else:
                    actions.append(self._interrupt())
            elif not self._audible and not self.finalizing:
                # Not heard yet: the person goes on, so this reply answers a stale turn.
                actions.append(CancelPendingReply(self._reply))
                self._reply = None
        if self._utterance_start is None:
            self._utterance_start = onset
            self._silence_since = None
            actions.append(UtteranceStarted(onset))
        elif self._silence_since is not None:
            self._silence_since = None
            actions.append(RecognitionResumed(onset))
            if self._preemptive is not None and not self.finalizing:
                self._preemptive = None
                actions.append(CancelPreemptive())
        return actions

    def speech_stopped(self, offset: float) -> list[Action]:
        self.speaking = False
        if self._utterance_start is None:
            return []
        self._silence_since = offset
        self._verdict = None
        if self.settings.mode == "server_vad" and self.settings.eot == "smart_turn":
            return [RecognitionPaused(offset), CheckEndOfTurn(offset)]
        return [RecognitionPaused(offset)]

    def end_of_turn_verdict(self, t: float, complete: bool) -> list[Action]:
        """The end-of-turn model's answer to :class:`CheckEndOfTurn` at ``t``. A verdict on
        a silence that speech already broke is ignored; the next :meth:`tick` acts on it."""
        if self._silence_since == t and not self.speaking:
            self._verdict = complete
        return []

    def endpoint_silence_s(self) -> float:
        """The silence that ends the open utterance now, given the end-of-turn verdict."""
        s = self.settings
        if s.eot != "smart_turn":
            return s.silence_ms / 1000
        if self._verdict:
            return s.eot_complete_silence_ms / 1000
        return s.eot_incomplete_silence_ms / 1000

    def tick(self, now: float) -> list[Action]:
        """Call after each chunk of input audio with the input timeline's time."""
        actions: list[Action] = []
        start = self._utterance_start
        if self.settings.mode == "server_vad" and start is not None and not self.finalizing:
            silence = self._silence_since
            if silence is not None and now - silence >= self.endpoint_silence_s():
                actions.extend(self._end_of_turn(silence))
            elif now - start >= MAX_UTTERANCE_S:
                actions.extend(self._end_of_turn(now))  # the longest utterance: cut here
                if self.speaking:  # and the speech goes on as the next one
                    self._utterance_start = now
                    actions.append(UtteranceStarted(now))
        barge = self._barge
        if (
            barge is not None
            and now >= barge.deadline
            and not self.speaking
            and barge.heard_nothing
        ):
            # No words came in time and the person is silent again: it was noise.
            actions.append(ResumeReply(barge.reply_id))
            self._barge = None
            if self._utterance_start is not None:
                self._utterance_start = self._silence_since = None
                actions.append(DiscardUtterance())
        return actions

    def commit(self, now: float) -> list[Action]:
        """The client committed its input (manual turns): the utterance ends now."""
        start = self._utterance_start if self._utterance_start is not None else now
        self._utterance_start = start
        return self._end_of_turn(self._silence_since or now)

    def _end_of_turn(self, end: float) -> list[Action]:
        start = self._utterance_start
        assert start is not None
        self._ended.append(end - start)
        self._utterance_start = self._silence_since = None
        return [EndOfTurn(start, end)]

    # --- transcripts ---------------------------------------------------------------------

    def partial(self, text: str) -> list[Action]:
        """A partial transcript. Words in it confirm a barge-in; one that arrives in the
        silence after speech starts the reply preemptively (its words may still change:
        the final transcript decides)."""
        if self._barge is not None:
            return [self._interrupt()] if has_words(text) else []
        return self._preempt(text)

    def speculative_final(self, text: str) -> list[Action]:
        """The speculative final transcript is ready (the person was silent when it began)."""
        if self._barge is not None:
            if has_words(text):
                return [self._interrupt()]
            self._barge.heard_nothing = True
            return []
        return self._preempt(text)

    def _preempt(self, text: str) -> list[Action]:
        if (
            not self.settings.preemptive
            or self._silence_since is None
            or self.finalizing
            or not has_words(text)
            or self._preemptive == normalize(text)
        ):
            return []
        actions: list[Action] = []
        if self._preemptive is not None:
            actions.append(CancelPreemptive())
        self._preemptive = normalize(text)
        actions.append(StartPreemptive(text))
        return actions

    def final(self, text: str) -> list[Action]:
        """The final transcript of the oldest utterance that :class:`EndOfTurn` ended (with
        none ended, of the open one, which it closes)."""
        if self._ended:
            spoken = self._ended.popleft()
        else:
            start = self._utterance_start
            spoken = (
                0.0
                if start is None or self._silence_since is None
                else (self._silence_since - start)
            )
            self._utterance_start = self._silence_since = None
        # The person already speaks again (or another utterance waits for its final).
        newer = self._utterance_start is not None or bool(self._ended)
        barge = None if newer else self._barge  # else the newer utterance decides it
        actions: list[Action] = []
        preemptive, self._preemptive = self._preemptive, None
        if not has_words(text):
            if preemptive is not None:
                actions.append(CancelPreemptive())
            if barge is not None:
                actions.append(ResumeReply(barge.reply_id))
                self._barge = None
                actions.append(DiscardUtterance())
            elif not newer:
                actions.append(DiscardUtterance())
                unanswered, self._unanswered = self._unanswered, None
                if unanswered is not None and self._reply is None:
                    actions.append(Respond(unanswered))  # the turn before this noise
                elif self._reply is None and spoken >= UNCLEAR_MIN_S:
                    actions.append(NotUnderstood())  # someone spoke at length: not noise
            return actions
        if barge is not None:
            actions.append(self._interrupt())
        if newer:
            if preemptive is not None:
                actions.append(CancelPreemptive())
            self._unanswered = text  # in history; answered after the newer utterance
            return actions
        self._unanswered = None
        if preemptive is not None and preemptive == normalize(text):
            actions.append(AdoptPreemptive(text))
        else:
            if preemptive is not None:
                actions.append(CancelPreemptive())
            actions.append(Respond(text))
        return actions

    def clear(self) -> list[Action]:
        """The client cleared its input: the open utterance is dropped (it is not a turn)."""
        if self._utterance_start is None:
            return []
        self._utterance_start = self._silence_since = None
        if self._preemptive is not None and not self.finalizing:
            self._preemptive = None
            return [CancelPreemptive(), DiscardUtterance()]
        return [DiscardUtterance()]

    def _interrupt(self) -> InterruptReply:
        reply_id = self._barge.reply_id if self._barge is not None else self._reply
        assert reply_id is not None
        self._barge = None
        if self._reply == reply_id:
            self._reply = None
            self._audible = False
        return InterruptReply(reply_id)

    # --- the reply -------------------------------------------------------------------------

    def reply_started(self, reply_id: str) -> None:
        """A reply was created for the current turn (not yet audible)."""
        self._reply = reply_id
        self._audible = False

    def reply_audible(self, reply_id: str) -> None:
        """The reply's first audio is playing."""
        if self._reply == reply_id:
            self._audible = True

    def reply_ended(self, reply_id: str) -> None:
        """The reply finished playing, or was cancelled."""
        if self._reply == reply_id:
            self._reply = None
            self._audible = False
        if self._barge is not None and self._barge.reply_id == reply_id:
            self._barge = None
