"""Frame intake: every camera frame in, a short scored history of candidates kept.

One :class:`FrameIntake` per session. :meth:`FrameIntake.add` runs on the event loop for
every decoded camera frame (15-30 fps), so it is cheap: it checks the frame's shape (no
pixel touched), and only at most ``SAMPLE_FPS`` times a second (by the ``t`` it is given)
converts the frame, scores it on a small analysis copy (sharpness: variance of the
Laplacian at 160 px wide; change: mean absolute difference of 32x24 gray thumbnails
against the previous candidate) and keeps it.

Memory is bounded: the history is a ``deque(maxlen=HISTORY)``, latest wins (the oldest
candidate drops out), about ``HISTORY_S`` seconds. Each candidate keeps its frame fitted to
``camera_max_side`` (the largest anything downstream uses), so a session holds at most
``HISTORY`` such frames (about 38 MB at 1024x768).

:meth:`FrameIntake.select` runs in an executor: the pure :func:`vision.select.select_frames`
picks, then the picks are fitted and JPEG-encoded. A lock guards the history between the
loop (``add``) and the executor (``select``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from seetalk.config import SessionSettings
from seetalk.errors import BadImage
from vision.images import check_frame, encode_jpeg, fit, to_bgr
from vision.select import Candidate, select_frames

SAMPLE_FPS = 5.0
HISTORY_S = 3.0
HISTORY = int(HISTORY_S * SAMPLE_FPS) + 1  # 16 candidates
ANALYSIS_WIDTH = 160
THUMB = (32, 24)
CAMERA_ON_S = 2.0  # a frame within this long before the end of speech: the camera is on
BAD_REPORT_S = 5.0  # a run of bad frames is reported at most this often


def analyse(bgr: np.ndarray) -> tuple[float, np.ndarray]:
    """(sharpness, thumbnail) of a BGR frame: the variance of the Laplacian of a copy
    ``ANALYSIS_WIDTH`` wide, and a 32x24 gray thumbnail for :func:`difference`."""
    h, w = bgr.shape[:2]
    small = cv2.resize(
        bgr, (ANALYSIS_WIDTH, max(2, round(h * ANALYSIS_WIDTH / w))), interpolation=cv2.INTER_AREA
    )
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    return sharpness, cv2.resize(gray, THUMB, interpolation=cv2.INTER_AREA).astype(np.int16)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """How different two thumbnails are: mean absolute difference, 0..1."""
    return float(np.abs(a - b).mean()) / 255.0


@dataclass(frozen=True)
class SelectedFrame:
    t: float
    width: int
    height: int
    jpeg: bytes = field(repr=False)
    sharpness: float
    reason: str


@dataclass(frozen=True)
class Selection:
    """What the model sees with one turn; ``reason`` says why there is nothing (``camera_off``)."""

    frames: list[SelectedFrame]
    reason: str | None = None

    def jpegs(self) -> tuple[bytes, ...]:
        return tuple(f.jpeg for f in self.frames)

    def describe(self) -> list[dict[str, Any]]:
        """For the ``seetalk.frames.selected`` event."""
        return [
            {
                "t": round(f.t, 3),
                "width": f.width,
                "height": f.height,
                "bytes": len(f.jpeg),
                "sharpness": round(f.sharpness, 1),
                "reason": f.reason,
            }
            for f in self.frames
        ]


@dataclass
class _Kept:
    cand: Candidate
    frame: np.ndarray  # BGR, fitted to camera_max_side


class FrameIntake:
    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self.clock: Callable[[], float] | None = None  # the timeline ``add`` is stamped with
        self.history: deque[_Kept] = deque(maxlen=HISTORY)  # latest wins
        self._lock = threading.Lock()
        self._last_frame_t: float | None = None
        self._last_sample_t: float | None = None
        self._prev_thumb: np.ndarray | None = None
        self._key = 0
        self._bad_reported_t: float | None = None
        self.frames_seen = 0
        self.frames_bad = 0

    @property
    def camera_on(self) -> bool:
        """A frame arrived within ``CAMERA_ON_S`` of ``clock()`` (the session's timeline),
        when a ``clock`` is set; without one, since the start or the last :meth:`stop`.
        Either way :meth:`select` finds a camera that stopped (no recent frame)."""
        if self._last_frame_t is None:
            return False
        return self.clock is None or self._last_frame_t >= self.clock() - CAMERA_ON_S

    def stop(self) -> None:
        """The camera track ended: forget every frame."""
        with self._lock:
            self.history.clear()
        self._last_frame_t = self._last_sample_t = None
        self._prev_thumb = None

    def add(self, frame_bgr: np.ndarray, t: float) -> None:
        """Offer a camera frame at time ``t`` (seconds). Raises :class:`BadImage` for a frame
        that cannot be used (at most once every ``BAD_REPORT_S`` of a run of them)."""
        try:
            check_frame(frame_bgr)
            if self._last_sample_t is not None and 0 <= t - self._last_sample_t < 0.9 / SAMPLE_FPS:
                self._last_frame_t = t
                return
            bgr = to_bgr(frame_bgr)
        except BadImage:
            self.frames_bad += 1
            if (
                self._bad_reported_t is None
                or t - self._bad_reported_t >= BAD_REPORT_S
                or (t < self._bad_reported_t)
            ):
                self._bad_reported_t = t
                raise
            return
        self._bad_reported_t = None
        self.frames_seen += 1
        self._last_frame_t = self._last_sample_t = t
        sharpness, thumb = analyse(bgr)
        prev, self._prev_thumb = self._prev_thumb, thumb
        change = 1.0 if prev is None else difference(thumb, prev)
        kept = fit(bgr, self.settings.camera_max_side)
        if kept is frame_bgr:
            kept = kept.copy()  # the caller may reuse its buffer
        self._key += 1
        with self._lock:
            self.history.append(_Kept(Candidate(t, sharpness, change, self._key), kept))

    def update_settings(self, settings: SessionSettings) -> None:
        """``camera_max_side`` applies to the next frame kept (and to every frame selected
        from now on: older ones are fitted again); ``jpeg_quality`` and ``max_keyframes`` to
        the next :meth:`select`. One reference swap: a ``select`` in flight in the executor
        finishes with the settings it started with."""
        self.settings = settings

    def candidates(self) -> list[Candidate]:
        with self._lock:
            return [k.cand for k in self.history]

    def select(self, start: float, end: float) -> Selection:
        """Choose and encode the frames for the utterance ``[start, end]``. Blocking (runs
        in an executor)."""
        settings = self.settings  # one set of settings for the whole selection
        with self._lock:
            kept = list(self.history)
        newest = max((k.cand.t for k in kept), default=None)
        if newest is None or newest < end - CAMERA_ON_S:
            return Selection([], "camera_off")
        choices = select_frames(
            [k.cand for k in kept], start, end, max_keyframes=settings.max_keyframes
        )
        by_key = {k.cand.key: k.frame for k in kept}
        frames = []
        for choice in choices:
            img = fit(by_key[choice.candidate.key], settings.camera_max_side)
            jpeg = encode_jpeg(img, settings.jpeg_quality)
            frames.append(
                SelectedFrame(
                    choice.candidate.t,
                    img.shape[1],
                    img.shape[0],
                    jpeg,
                    choice.candidate.sharpness,
                    choice.reason,
                )
            )
        return Selection(frames)
