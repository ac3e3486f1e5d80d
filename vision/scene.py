"""Scene notes: the embedded offline default for a model that cannot see.

This is NOT a vision-language model (none ships in any package we can use). It turns the
newest selected frame into one short line of notes that the small text model answers from:

    Camera view: the text "EXIT" is visible. The object in the centre is red.
    The background is orange.

- **Text** in view: rapidocr (PP-OCR on onnxruntime, Apache-2.0), lines with confidence of
  at least ``min_text_score``, in reading order.
- **Colours**: k-means (opencv) on a 96 px copy in Lab; each cluster is named by the nearest
  colour of a small palette, and clusters of the same name are merged. The colour that is
  much more common near the centre than along the border is "the object in the centre";
  the commonest other colour along the border is "the background". With no such object,
  "the scene is mostly X".
- **Light**: "the view is very dark" when it is.

Notes stay short on purpose: the tiny model copes with a short, explicit sentence, and every
token of notes delays the first spoken word. Earlier keyframes of the turn are not described
(the newest frame is what the user is looking at when they ask).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from seetalk.config import ModelConfig
from seetalk.errors import BadImage
from vision.images import decode_image, fit

log = logging.getLogger(__name__)

OCR_SIDE = 960  # frames are fitted to this before OCR
COLOUR_WIDTH = 96
CLUSTERS = 5
MIN_OBJECT_EXCESS = 0.08  # centre share minus border share for "the object in the centre"

# Named colours (RGB), a few shades each; a cluster takes the name of the nearest (in Lab).
PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((200, 30, 30), (150, 20, 25), (120, 25, 20), (230, 60, 50)),
    "orange": ((240, 140, 30), (220, 120, 50)),
    "yellow": ((240, 220, 40), (200, 180, 40)),
    "green": ((40, 160, 60), (30, 100, 40), (120, 200, 80)),
    "blue": ((40, 80, 200), (30, 50, 130), (100, 150, 230)),
    "purple": ((130, 60, 160), (80, 40, 110)),
    "pink": ((240, 150, 190), (220, 90, 150)),
    "brown": ((120, 75, 40), (90, 55, 30), (160, 110, 70)),
    "black": ((15, 15, 15), (40, 40, 40)),
    "white": ((245, 245, 245), (215, 215, 210)),
    "grey": ((128, 128, 128), (90, 90, 90), (170, 170, 170)),
    "beige": ((220, 200, 160),),
}


def _palette_lab() -> tuple[list[str], np.ndarray]:
    names = [name for name, shades in PALETTE.items() for _ in shades]
    bgr = np.array([[rgb[::-1] for shades in PALETTE.values() for rgb in shades]], np.uint8)
    return names, cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab)[0].astype(np.float32)


_NAMES, _LAB = _palette_lab()


def colour_name(lab: np.ndarray) -> str:
    """The palette name nearest to an 8-bit OpenCV Lab colour."""
    d = ((_LAB - np.asarray(lab, np.float32)[None, :]) ** 2).sum(axis=1)
    return _NAMES[int(d.argmin())]


@dataclass(frozen=True)
class SceneNotes:
    texts: tuple[str, ...]
    object_colour: str | None
    background_colour: str | None
    scene_colour: str | None
    dark: bool

    def sentence(self) -> str:
        parts: list[str] = []
        if self.texts:
            quoted = " and ".join(f'"{t}"' for t in self.texts)
            parts.append(f"the text {quoted} is visible.")
        if self.dark:
            parts.append("The view is very dark.")
        if self.object_colour:
            parts.append(f"The object in the centre is {self.object_colour}.")
            if self.background_colour:
                parts.append(f"The background is {self.background_colour}.")
        elif self.scene_colour:
            parts.append(f"The scene is mostly {self.scene_colour}.")
        if not parts:
            return ""
        text = " ".join(parts)
        return "Camera view: " + text[0].lower() + text[1:]


def colours(bgr: np.ndarray) -> tuple[str | None, str | None, str | None]:
    """(object in the centre, background, whole scene) colour names; see the module doc."""
    h, w = bgr.shape[:2]
    small = cv2.resize(
        bgr, (COLOUR_WIDTH, max(8, round(h * COLOUR_WIDTH / w))), interpolation=cv2.INTER_AREA
    )
    H, W = small.shape[:2]
    lab = cv2.cvtColor(small, cv2.COLOR_BGR2Lab).reshape(-1, 3).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)
    _, labels, centres = cv2.kmeans(  # type: ignore[call-overload]
        lab, CLUSTERS, None, criteria, 3, cv2.KMEANS_PP_CENTERS
    )
    labels = labels.reshape(H, W)
    yy, xx = np.mgrid[0:H, 0:W]
    weight = np.exp(-(((xx - W / 2) / (W / 4)) ** 2 + ((yy - H / 2) / (H / 4)) ** 2) / 2)
    border = np.zeros((H, W), bool)
    b = max(2, H // 10)
    border[:b] = border[-b:] = True
    border[:, :b] = border[:, -b:] = True
    centre: dict[str, float] = {}
    edge: dict[str, float] = {}
    whole: dict[str, float] = {}
    for k in range(CLUSTERS):
        mask = labels == k
        name = colour_name(centres[k])
        centre[name] = centre.get(name, 0.0) + float((weight * mask).sum() / weight.sum())
        edge[name] = edge.get(name, 0.0) + float(mask[border].mean())
        whole[name] = whole.get(name, 0.0) + float(mask.mean())
    scene = max(whole, key=lambda n: whole[n])
    obj = max(centre, key=lambda n: centre[n] - edge[n])
    if centre[obj] - edge[obj] < MIN_OBJECT_EXCESS or centre[obj] < 0.1:
        return None, None, scene
    others = {n: s for n, s in edge.items() if n != obj and s >= 0.3}
    background = max(others, key=lambda n: others[n]) if others else None
    return obj, background, scene


class SceneDescriber:
    """Short scene notes from camera frames (see the module doc). Thread-safe; rapidocr
    loads on first use. ``describe`` is blocking: run it in an executor."""

    def __init__(self, *, min_text_score: float = 0.9, max_texts: int = 3, threads: int = 2):
        self.min_text_score = min_text_score
        self.max_texts = max_texts
        self.threads = threads
        self._ocr: Any = None
        self._ocr_failed = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SceneDescriber:
        return cls(threads=max(1, cfg.llm_threads))

    def _engine(self) -> Any:
        with self._lock:
            if self._ocr is None and not self._ocr_failed:
                try:
                    from rapidocr import RapidOCR

                    self._ocr = RapidOCR(
                        params={
                            "Global.log_level": "error",
                            "Global.use_cls": False,
                            "Det.limit_type": "max",
                            "Det.limit_side_len": 736,
                            "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                        }
                    )
                except Exception as exc:  # noqa: BLE001 - notes go on without text
                    self._ocr_failed = True
                    log.warning("rapidocr unavailable, scene notes without text: %s", exc)
            return self._ocr

    def warmup(self) -> None:
        """Load the OCR models now (a second or so)."""
        self._engine()

    def texts(self, bgr: np.ndarray) -> tuple[str, ...]:
        ocr = self._engine()
        if ocr is None:
            return ()
        with self._lock:  # one OCR at a time per describer
            result = ocr(fit(bgr, OCR_SIDE))
        found: list[str] = []
        for text, score in zip(result.txts or (), result.scores or (), strict=False):
            text = " ".join(str(text).split()).strip(" .,;:'\"")
            alnum = sum(ch.isalnum() for ch in text)
            if alnum == 0 or score < self.min_text_score or (alnum < 2 and score < 0.98):
                continue
            if text not in found:
                found.append(text.replace('"', "'"))
        return tuple(found[: self.max_texts])

    def notes(self, bgr: np.ndarray) -> SceneNotes:
        obj, background, scene = colours(bgr)
        dark = float(cv2.cvtColor(fit(bgr, 160), cv2.COLOR_BGR2GRAY).mean()) < 40
        return SceneNotes(self.texts(bgr), obj, background, scene, dark)

    def describe(self, jpegs: Sequence[bytes]) -> str:
        """One line of notes on the newest of ``jpegs`` ("" for none). Raises
        :class:`BadImage` for bytes that are not an image."""
        if not jpegs:
            return ""
        bgr = decode_image(jpegs[-1])
        if bgr.size == 0:
            raise BadImage("empty image")
        return self.notes(bgr).sentence()
