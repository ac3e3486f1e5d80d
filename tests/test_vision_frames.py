"""Frame intake: sampling, bounded history, bad frames, and selection on real pixels."""

import cv2
import numpy as np
import pytest

from seetalk.config import SessionSettings
from seetalk.errors import BadImage
from vision.frames import HISTORY, FrameIntake, analyse
from vision.images import decode_image
from vision.select import SCENE_CHANGE, SHARPEST_AT_END, fixed_rate


def test_samples_at_a_modest_rate_and_keeps_a_bounded_history(coffee_bgr):
    intake = FrameIntake(SessionSettings())
    assert not intake.camera_on
    for i in range(30 * 10):  # 10 s at 30 fps
        intake.add(coffee_bgr, i / 30)
    assert intake.camera_on
    assert intake.frames_seen <= 10 * 5 + 1  # about 5 fps analysed
    assert len(intake.history) == HISTORY  # latest wins
    assert intake.history[-1].cand.t == pytest.approx(299 / 30, abs=0.21)


def test_camera_on_follows_the_clock(coffee_bgr):
    intake = FrameIntake(SessionSettings())
    now = [0.0]
    intake.clock = lambda: now[0]
    intake.add(coffee_bgr, 0.0)
    assert intake.camera_on
    now[0] = 5.0
    assert not intake.camera_on
    assert intake.select(0.0, 5.0).reason == "camera_off"


def test_stored_frames_fit_the_camera_size():
    intake = FrameIntake(SessionSettings(camera_max_side=640))
    frame = np.random.default_rng(0).integers(0, 255, (2160, 3840, 3), np.uint8)  # 4K
    intake.add(frame, 0.0)
    assert max(intake.history[0].frame.shape[:2]) == 640
    sel = intake.select(0.0, 0.1)
    [f] = sel.describe()
    assert (f["width"], f["height"]) == (640, 360) and f["reason"] == SHARPEST_AT_END
    assert decode_image(sel.jpegs()[0]).shape == (360, 640, 3)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((480, 640), np.uint8),  # gray
        np.zeros((480, 640, 1), np.uint8),
        np.zeros((480, 640, 4), np.uint8),  # BGRA
        np.random.default_rng(1).random((480, 640, 3), dtype=np.float32),  # float 0..1
        np.full((480, 640, 3), 300.0),  # float 0..255 and beyond
        np.zeros((480, 640, 3), np.uint16),
        np.zeros((480, 640, 3), bool),
        np.zeros((2160, 3840, 3), np.uint8)[::2, ::2],  # not contiguous
    ],
    ids=["gray", "gray1", "bgra", "float01", "float255", "uint16", "bool", "strided"],
)
def test_odd_frames_are_converted(frame):
    intake = FrameIntake(SessionSettings())
    intake.add(frame, 0.0)
    kept = intake.history[0].frame
    assert kept.dtype == np.uint8 and kept.ndim == 3 and kept.shape[2] == 3
    assert intake.select(0.0, 0.0).jpegs()


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((480, 0, 3), np.uint8),
        np.zeros((480, 640, 2), np.uint8),
        np.zeros((4, 480, 640, 3), np.uint8),
        np.full((480, 640, 3), np.nan, np.float32),
        np.zeros((480, 640, 3), np.complex64),
        np.zeros((10_000, 10, 3), np.uint8),
        b"\xff\xd8not a frame",
        None,
    ],
    ids=["empty", "zero-width", "2ch", "4d", "nan", "complex", "huge", "bytes", "none"],
)
def test_unusable_frames_raise_bad_image_and_the_intake_goes_on(frame, coffee_bgr):
    intake = FrameIntake(SessionSettings())
    with pytest.raises(BadImage):
        intake.add(frame, 0.0)
    intake.add(coffee_bgr, 0.1)
    assert len(intake.history) == 1


def test_a_run_of_bad_frames_is_reported_once_every_few_seconds():
    intake = FrameIntake(SessionSettings())
    raised = 0
    for i in range(30 * 6):
        try:
            intake.add(np.zeros((0, 0, 3), np.uint8), i / 30)
        except BadImage:
            raised += 1
    assert raised == 2 and intake.frames_bad == 180


def _blur(img):
    return cv2.GaussianBlur(img, (0, 0), 6)


def test_selector_beats_fixed_rate_sampling(coffee_bgr, render_sign):
    """15 fps: the cup until 2.1 s, then the camera swings to a sign (blurred while it
    moves, 2.1-2.6 s) and holds still; speech ends at 2.95 s. One frame a second shows the
    model the cup (stale); the selector shows the sharp sign."""
    cup = cv2.resize(coffee_bgr, (640, 480))
    sign = render_sign("EXIT")
    frames = []
    for i in range(int(2.95 * 15) + 1):
        t = i / 15
        frames.append((t, cup if t < 2.1 else _blur(sign) if t < 2.6 else sign))
    intake = FrameIntake(SessionSettings())
    for t, f in frames:
        intake.add(f, t)
    sel = intake.select(0.5, 2.95)
    main = [f for f in sel.frames if f.reason == SHARPEST_AT_END][0]
    seen = decode_image(main.jpeg)
    assert np.abs(seen.astype(int) - sign).mean() < 4  # the sharp sign
    # the baseline, on every frame the camera sent
    from vision.select import Candidate

    cands = [Candidate(t, analyse(f)[0], 0.0, i) for i, (t, f) in enumerate(frames)]
    base = fixed_rate(cands, 2.95)
    assert base is not None and frames[base.key][1] is cup
    # and shifted by a few frames the ticks land on the blur: still not the sharp sign
    base = fixed_rate(cands[6:], 2.95)
    assert base is not None and base.sharpness < main.sharpness / 3


def test_a_scene_change_during_the_utterance_is_a_keyframe(coffee_bgr, render_sign):
    cup = cv2.resize(coffee_bgr, (640, 480))
    sign = render_sign("OPEN 9AM - 5PM")
    intake = FrameIntake(SessionSettings())
    for i in range(45):
        intake.add(cup if i < 20 else sign, i / 15)
    sel = intake.select(0.2, 44 / 15)
    assert [f.reason for f in sel.frames] == [SCENE_CHANGE, SHARPEST_AT_END]
    first, last = (decode_image(j) for j in sel.jpegs())
    assert np.abs(first.astype(int) - cup).mean() < 6
    assert np.abs(last.astype(int) - sign).mean() < 6
    assert SessionSettings(max_keyframes=0).max_keyframes == 0


def test_camera_off_selection_is_empty():
    sel = FrameIntake(SessionSettings()).select(0.0, 1.0)
    assert sel.frames == [] and sel.jpegs() == () and sel.reason == "camera_off"
