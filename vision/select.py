"""Turn-aware frame selection: which camera frames the model sees with a user turn.

Pure: candidates (time, sharpness, change) and the utterance's times in, choices out. No
I/O, no clock, no pixels; :class:`vision.frames.FrameIntake` scores the frames and encodes
what is chosen.

The rule:

1. **What the user is looking at when they finish**: the sharpest candidate from the last
   ``recent_s`` (300 ms) before the end of speech. When none is that recent, the newest one
   before the end; only when every candidate came after the end (late frames), the first of
   those.
2. **What changed while they spoke**: the scene splits into stable stretches where a
   candidate differs from the one before by at least ``change_threshold``. Each stretch
   inside ``[start, end]`` that held for at least two candidates (not a blur of motion) and
   is not the one of rule 1 gives its sharpest frame, up to ``max_keyframes`` of them (the
   biggest changes first).
3. No candidates (camera off): nothing.

Choices come back in time order, each with its reason.

:func:`fixed_rate` is the baseline everyone else uses (one frame a second, the latest such
frame before the end), kept here for tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SHARPEST_AT_END = "sharpest_at_end"
SCENE_CHANGE = "scene_change"
CHANGE_THRESHOLD = 0.1  # mean absolute difference of 32x24 gray thumbnails, 0..1


@dataclass(frozen=True)
class Candidate:
    """A sampled camera frame: when (seconds on the session's timeline), how sharp (variance
    of the Laplacian at analysis size), and how different from the previous candidate (0..1;
    1.0 for the first). ``key`` finds the frame's pixels in the intake."""

    t: float
    sharpness: float
    change: float
    key: int = 0


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    reason: str  # SHARPEST_AT_END | SCENE_CHANGE


def select_frames(
    candidates: Sequence[Candidate],
    start: float,
    end: float,
    *,
    max_keyframes: int,
    recent_s: float = 0.3,
    change_threshold: float = CHANGE_THRESHOLD,
) -> list[Choice]:
    """The frames for the utterance from ``start`` to ``end`` (see the module docstring)."""
    cands = sorted(candidates, key=lambda c: c.t)
    if not cands:
        return []
    before = [c for c in cands if c.t <= end]
    recent = [c for c in before if c.t >= end - recent_s]
    if recent:
        main = max(reversed(recent), key=lambda c: c.sharpness)  # ties: the newest
    elif before:
        main = before[-1]
    else:
        main = cands[0]
    chosen = [Choice(main, SHARPEST_AT_END)]
    if max_keyframes > 0:
        chosen += _keyframes(cands, main, start, end, max_keyframes, change_threshold)
    return sorted(chosen, key=lambda ch: ch.candidate.t)


def _keyframes(
    cands: list[Candidate], main: Candidate, start: float, end: float, k: int, threshold: float
) -> list[Choice]:
    stretches: list[list[Candidate]] = []
    for c in cands:
        if not stretches or c.change >= threshold:
            stretches.append([c])
        else:
            stretches[-1].append(c)
    scored: list[tuple[float, Candidate]] = []
    for stretch in stretches:
        if main in stretch or len(stretch) < 2:
            continue
        inside = [c for c in stretch if start <= c.t <= end]
        if not inside:
            continue
        best = max(reversed(inside), key=lambda c: c.sharpness)
        scored.append((stretch[0].change, best))
    scored.sort(key=lambda s: -s[0])
    return [Choice(c, SCENE_CHANGE) for _, c in scored[:k]]


def fixed_rate(
    candidates: Sequence[Candidate], end: float, *, period_s: float = 1.0
) -> Candidate | None:
    """The baseline: sample one frame every ``period_s`` (the first candidate at or after each
    tick of the clock) and show the model the latest sample taken before ``end``."""
    latest: Candidate | None = None
    next_tick: float | None = None
    for c in sorted(candidates, key=lambda c: c.t):
        if c.t > end:
            break
        if next_tick is None:
            next_tick = c.t
        if c.t >= next_tick - 1e-9:
            latest = c
            while next_tick <= c.t + 1e-9:
                next_tick += period_s
    return latest
