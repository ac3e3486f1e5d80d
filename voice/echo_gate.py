"""Speech the reply explains is not the person: a pure filter of voice activity transitions.

The echo canceller (:mod:`voice.echo`) reports, for every 10 ms of microphone audio, the
share of its energy that the played reply does not explain. :class:`EchoGate` sits between
voice activity detection and turn-taking: a ``speech_start`` passes only once the speech
holds enough unexplained energy (``min_near_ms`` of blocks at or above ``threshold``,
within a ``window_ms`` run); speech made only of echo is held back and, when it ends,
dropped (counted in :attr:`EchoGate.suppressed`). Speech that went on ends when the
detector says so, or after ``release_ms`` in which the reply explains everything (the
person stopped, the echo goes on), so the echo never holds a turn open. When nothing is
playing every block is unexplained, so speech passes at once, as without the gate.

Pure: reports and transitions in, transitions out; time is the sample index they carry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from voice.echo import BLOCK, RATE, EchoBlock
from voice.vad import FRAME, VadTransition

KEEP_BLOCKS = 600  # 6 s of block reports; older ones are forgotten (bounded)


@dataclass(frozen=True)
class GateSettings:
    """``threshold``: the residual share (0..1) at which a block counts as the person;
    ``min_near_ms`` of such blocks within ``window_ms`` make the speech the person's;
    ``release_ms`` of explained blocks while a reply plays end it."""

    threshold: float = 0.1
    min_near_ms: int = 50
    window_ms: int = 80
    release_ms: int = 300


class EchoGate:
    """Passes voice activity transitions on, except speech that only the reply explains."""

    def __init__(self, settings: GateSettings | None = None) -> None:
        self.settings = settings or GateSettings()
        self._blocks: deque[EchoBlock] = deque(maxlen=KEEP_BLOCKS)
        self.suppressed = 0  # spells of speech dropped as echo
        self.reset()

    def reset(self) -> None:
        self._blocks.clear()
        self._vad = False  # the detector's own state
        self._passed = False  # a speech_start went on
        self._onset = 0
        self.suppressed = 0

    @property
    def holding(self) -> bool:
        """Speech is going on that the reply explains (held back)."""
        return self._vad and not self._passed

    def blocks(self, reports: Iterable[EchoBlock]) -> None:
        """The canceller's block reports, in order."""
        self._blocks.extend(reports)

    def filter(
        self, transitions: Iterable[VadTransition], *, echo_known: bool = True
    ) -> list[VadTransition]:
        """Transitions of the latest audio -> those the turn-taker should see. Call after
        :meth:`blocks` has the reports of the same audio. ``echo_known``: the canceller has
        found the echo path. Until it has, speech held back as possible echo is not lost:
        when it ends it is passed on whole (late), since nothing showed it was the reply's."""
        out: list[VadTransition] = []
        for tr in transitions:
            if tr.kind == "speech_start":
                self._vad, self._onset = True, tr.sample
                self._check(out)
            else:
                if self._passed:
                    out.append(tr)
                elif self._vad and not echo_known:
                    out.append(VadTransition("speech_start", self._onset // FRAME, self._onset))
                    out.append(tr)
                elif self._vad:
                    self.suppressed += 1
                self._vad = self._passed = False
        if self._vad and not self._passed:
            self._check(out)
        elif self._passed:
            self._release(out)
        return out

    def _release(self, out: list[VadTransition]) -> None:
        need = max(1, round(self.settings.release_ms * RATE / 1000 / BLOCK))
        if len(self._blocks) < need:
            return
        tail = list(self._blocks)[-need:]
        if tail[0].start >= self._onset and all(
            b.playing and b.residual < self.settings.threshold for b in tail
        ):
            sample = tail[0].start
            out.append(VadTransition("speech_end", sample // FRAME, sample))
            self._passed = False
            self._onset = tail[-1].start + BLOCK  # what follows must show the person anew

    def _check(self, out: list[VadTransition]) -> None:
        near = self._near_onset(self._onset)
        if near is not None:
            sample = max(self._onset, near)
            out.append(VadTransition("speech_start", sample // FRAME, sample))
            self._passed = True

    def _near_onset(self, since: int) -> int | None:
        """Start of the first run of unexplained blocks since ``since`` that is long
        enough, or ``None``."""
        s = self.settings
        need = max(1, round(s.min_near_ms * RATE / 1000 / BLOCK))
        window = max(need, round(s.window_ms * RATE / 1000 / BLOCK))
        recent: deque[int] = deque()  # starts of near blocks within the window
        for b in self._blocks:
            if b.start + BLOCK <= since:
                continue
            if not b.playing or b.residual >= s.threshold:
                recent.append(b.start)
            while recent and recent[0] <= b.start - window * BLOCK:
                recent.popleft()
            if len(recent) >= need:
                return recent[0]
        return None
