"""A session's echo handling: the setting, the canceller and the gate, in one object.

The session owns one :class:`SessionEcho` (nothing is shared between sessions). It sits on
the data path in three places:

- the output: :meth:`SessionEcho.played` sees every sample that leaves
  :class:`~conversation.playout.AudioOutput` (the reference), and :meth:`cleared` a
  barge-in's clear;
- the input, before recognition: :meth:`cancel` returns the microphone audio without the
  reply's echo (recognition and prefix padding hear that), and records per 10 ms how much
  of the microphone the reply explains;
- between voice activity and turn-taking: :meth:`filter` passes speech on only when the
  microphone holds energy the reply does not explain (:class:`~voice.echo_gate.EchoGate`).

The detector itself hears the microphone as it is: WebRTC's suppressor also mutes the
first syllables of a person who talks over the echo (measured: onsets 100-700 ms late),
which would slow every barge-in; the gate keeps the echo out instead.

``echo``: ``"on"`` and ``"auto"`` run it (the client did not say that it cancels echo
itself; the page says ``"off"``: browsers cancel echo); ``"off"`` bypasses it. Switching
it on starts from a clean state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from voice.echo import EchoCanceller, EchoPath
from voice.echo_gate import EchoGate
from voice.vad import VadTransition


class SessionEcho:
    """``now()``: microphone samples the session has received (processed and queued), the
    moment's position on the input timeline. ``queued``: push playout (the WebSocket API),
    whose client plays chunks back to back when they arrive ahead of time."""

    def __init__(self, mode: str, now: Callable[[], int], *, queued: bool = False) -> None:
        self.mode = mode
        self._now = now
        self._queued = queued
        self._lock = threading.Lock()  # set_mode (the loop) vs cancel (an executor)
        self.canceller: EchoCanceller | None = None
        self.gate = EchoGate()
        self.set_mode(mode)

    @property
    def active(self) -> bool:
        return self.canceller is not None

    @property
    def path(self) -> EchoPath | None:
        """The echo path found so far (delay, gain), if any."""
        return self.canceller.path if self.canceller is not None else None

    def set_mode(self, mode: str) -> None:
        """The ``echo`` setting changed (``auto``, ``on``, ``off``)."""
        self.mode = mode
        with self._lock:
            if mode == "off":
                self.canceller = None
            elif self.canceller is None:
                self.canceller = EchoCanceller()
                self.gate.reset()

    def played(self, samples: np.ndarray, rate: int) -> None:
        """Samples that left for the loudspeaker just now (int16 mono at ``rate``)."""
        canceller = self.canceller
        if canceller is not None:
            canceller.play(samples, rate, self._now(), queued=self._queued)

    def cleared(self) -> None:
        """The output was cleared: nothing more of it plays."""
        canceller = self.canceller
        if canceller is not None:
            canceller.stop(self._now())

    def cancel(self, audio: np.ndarray) -> np.ndarray:
        """Microphone audio (16 kHz float32, in order) -> the same without the reply's echo.
        Runs in the session's VAD executor."""
        with self._lock:
            canceller = self.canceller
            if canceller is None:
                return audio
            clean, blocks = canceller.process(audio)
            self.gate.blocks(blocks)
        return clean

    def filter(self, transitions: list[VadTransition]) -> list[VadTransition]:
        """Voice activity of the same audio -> what the turn-taker should hear."""
        canceller = self.canceller
        if canceller is None:
            return transitions
        return self.gate.filter(transitions, echo_known=canceller.path is not None)

    @property
    def suppressed(self) -> int:
        """Spells of speech dropped as echo so far."""
        return self.gate.suppressed
