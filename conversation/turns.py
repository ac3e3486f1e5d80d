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
* The endpoint is ``silence_ms`` of silence. Then the final transcript decides: the same words
  as the preemptive reply -> that reply is adopted and plays at once; other words -> a fresh
  reply; no words -> nothing (a cough is not a turn).
* Speech onset while a reply is audible is a barge-in: the reply's audio stops at once
  (:class:`PauseReply`). Words in the interrupting speech confirm it (:class:`InterruptReply`:
  cancel generation, keep only the heard words). If no words come within
  ``false_interruption_timeout_ms`` and the person is silent again, the reply resumes
  (:class:`ResumeReply`) where it stopped; with resuming off, a barge-in interrupts at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RecognitionPaused:
    """First silence at ``t``: start the final transcription speculatively."""

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
        self._utterance_start: float | None = None
        self._silence_since: float | None = None
        self._finalizing = False
        self._preemptive: str | None = None
        self._reply: str | None = None  # the current reply, once created
        self._audible = False
        self._barge: _Barge | None = None
        self._spoken_s = 0.0  # length of the utterance being finalized

    # --- settings and state ----------------------------------------------------------------

    def update_settings(self, settings: TurnSettings) -> None:
        self.settings = settings

    @property
    def in_utterance(self) -> bool:
        return self._utterance_start is not None

    @property
    def paused(self) -> bool:
        """In an utterance, in the silence after speech (before the endpoint)."""
        return self._silence_since is not None and not self._finalizing

    @property
    def barge_pending(self) -> bool:
        return self._barge is not None

    # --- voice activity ----------------------------------------------------------------------

    def speech_started(self, onset: float) -> list[Action]:
        self.speaking = True
        actions: list[Action] = []
        if self._reply is not None and self._barge is None:
            if self._audible and self.settings.interrupt:
                actions.append(PauseReply(self._reply, onset))
                if self.settings.resume_false_interruption:
                    deadline = onset + self.settings.false_interruption_timeout_ms / 1000
                    self._barge = _Barge(self._reply, onset, deadline)
                else:
                    actions.append(self._interrupt())
            elif not self._audible and not self._finalizing:
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
            if self._preemptive is not None:
                self._preemptive = None
                actions.append(CancelPreemptive())
        return actions

    def speech_stopped(self, offset: float) -> list[Action]:
        self.speaking = False
        if self._utterance_start is None or self._finalizing:
            return []
        self._silence_since = offset
        return [RecognitionPaused(offset)]

    def tick(self, now: float) -> list[Action]:
        """Call after each chunk of input audio with the input timeline's time."""
        actions: list[Action] = []
        if (
            self.settings.mode == "server_vad"
            and self._silence_since is not None
            and not self._finalizing
            and now - self._silence_since >= self.settings.silence_ms / 1000
        ):
            actions.extend(self._end_of_turn(self._silence_since))
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
                self._reset_utterance()
                actions.append(DiscardUtterance())
        return actions

    def commit(self, now: float) -> list[Action]:
        """The client committed its input (manual turns): the utterance ends now."""
        start = self._utterance_start if self._utterance_start is not None else now
        self._utterance_start = start
        return self._end_of_turn(self._silence_since or now)

    def _end_of_turn(self, end: float) -> list[Action]:
        assert self._utterance_start is not None
        self._finalizing = True
        self._spoken_s = end - self._utterance_start
        return [EndOfTurn(self._utterance_start, end)]

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
            or self._finalizing
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
        """The final transcript of the utterance that :class:`EndOfTurn` ended."""
        actions: list[Action] = []
        preemptive, self._preemptive = self._preemptive, None
        self._reset_utterance()
        if not has_words(text):
            if preemptive is not None:
                actions.append(CancelPreemptive())
            if self._barge is not None:
                actions.append(ResumeReply(self._barge.reply_id))
                self._barge = None
                actions.append(DiscardUtterance())
            else:
                actions.append(DiscardUtterance())
                if self._reply is None and self._spoken_s >= UNCLEAR_MIN_S:
                    actions.append(NotUnderstood())  # someone spoke at length: not noise
            return actions
        if self._barge is not None:
            actions.append(self._interrupt())
        if preemptive is not None and preemptive == normalize(text):
            actions.append(AdoptPreemptive(text))
        else:
            if preemptive is not None:
                actions.append(CancelPreemptive())
            actions.append(Respond(text))
        return actions

    def _reset_utterance(self) -> None:
        self._utterance_start = None
        self._silence_since = None
        self._finalizing = False

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
