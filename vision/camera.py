"""A file as the camera: ``seetalk run-file INPUT.wav --camera PATH``.

An image is a still camera (the same frame ``STILL_FPS`` times a second); a video file plays
at its own frame rate on the session's timeline, decoded with PyAV as it goes (one frame
held at a time), and the camera goes off when the video ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seetalk.errors import BadImage
from vision.images import MAX_SIDE

STILL_FPS = 5.0


class FileCamera:
    def __init__(
        self,
        path: Path,
        still: np.ndarray | None = None,
        container: Any = None,
        frames: Iterator[tuple[float, np.ndarray]] | None = None,
    ):
        self.path = path
        self._still = still
        self._container = container
        self._frames = frames
        self._pending: tuple[float, np.ndarray] | None = None
        self._next_still_t = 0.0
        self.pushed = 0

    @classmethod
    def open(cls, path: str | Path) -> FileCamera:
        """An image or a video file; :class:`BadImage` for a missing file, one that is
        neither, or a video without a decodable video stream."""
        p = Path(path)
        if not p.is_file():
            raise BadImage(f"camera file {p} does not exist", param="camera")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None and img.size:
            if max(img.shape[:2]) > MAX_SIDE:
                raise BadImage(f"camera image {p} is over {MAX_SIDE} px", param="camera")
            return cls(p, still=img)
        try:
            import av

            container = av.open(str(p))
        except Exception as exc:  # noqa: BLE001 - PyAV raises many kinds
            raise BadImage(
                f"camera file {p} is neither an image nor a video: {exc}", param="camera"
            ) from exc
        if not container.streams.video:
            container.close()
            raise BadImage(f"camera file {p} has no video stream", param="camera")
        camera = cls(p, container=container, frames=_decode(container))
        if camera._next_frame() is None:
            camera.close()
            raise BadImage(f"camera file {p}: no video frame could be decoded", param="camera")
        return camera

    @property
    def is_still(self) -> bool:
        return self._still is not None

    def feed(self, session: Any, t: float) -> None:
        """Push the frames due by time ``t`` (seconds on the file's timeline) with
        ``session.push_video(frame_bgr, t)``. Called every 20 ms by the file session."""
        if self._still is not None:
            if t + 1e-9 >= self._next_still_t:
                session.push_video(self._still, t)
                self.pushed += 1
                while self._next_still_t <= t + 1e-9:
                    self._next_still_t += 1.0 / STILL_FPS
            return
        latest = None
        while (pending := self._next_frame()) is not None and pending[0] <= t + 1e-9:
            latest, self._pending = pending, None
        if latest is not None:  # frames that fell between two calls: only the newest
            session.push_video(latest[1], t)
            self.pushed += 1

    def _next_frame(self) -> tuple[float, np.ndarray] | None:
        if self._pending is None and self._frames is not None:
            try:
                self._pending = next(self._frames)
            except Exception:  # noqa: BLE001 - the end, or a corrupt tail, ends the video
                self._frames = None
                self.close()
        return self._pending

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _decode(container: Any) -> Iterator[tuple[float, np.ndarray]]:
    stream = container.streams.video[0]
    first: float | None = None
    for frame in container.decode(stream):
        t = float(frame.time) if frame.time is not None else 0.0
        if first is None:
            first = t
        yield t - first, frame.to_ndarray(format="bgr24")
