"""Turn-aware frame selection on synthetic candidate sequences (pure: no pixels, no clock)."""

from vision.select import (
    SCENE_CHANGE,
    SHARPEST_AT_END,
    Candidate,
    fixed_rate,
    select_frames,
)

SHARP, BLURRED = 400.0, 20.0


def seq(spec, fps=5.0, t0=0.0):
    """Candidates from ``[(n, sharpness, change_of_first), ...]``: n frames per stretch,
    the first of each stretch with the given change, the rest steady (0.01)."""
    out, t, key = [], t0, 0
    for n, sharp, change in spec:
        for i in range(n):
            key += 1
            out.append(Candidate(round(t, 3), sharp, change if i == 0 else 0.01, key))
            t += 1 / fps
    return out


def test_camera_off_is_nothing():
    assert select_frames([], 0.0, 3.0, max_keyframes=2) == []


def test_sharpest_of_the_last_300_ms_wins_over_a_newer_blurred_frame():
    cands = [
        Candidate(2.5, SHARP, 1.0, 1),
        Candidate(2.7, SHARP * 1.2, 0.01, 2),
        Candidate(2.9, BLURRED, 0.02, 3),
        Candidate(3.0, BLURRED, 0.02, 4),
    ]
    [choice] = select_frames(cands, 1.0, 3.0, max_keyframes=2)
    assert choice.candidate.key == 2 and choice.reason == SHARPEST_AT_END


def test_a_sharper_but_older_frame_is_not_chosen():
    """Older than 300 ms before the end: stale, even if sharper."""
    cands = [Candidate(2.0, SHARP * 3, 1.0, 1), Candidate(2.8, BLURRED, 0.01, 2)]
    [choice] = select_frames(cands, 1.0, 3.0, max_keyframes=0)
    assert choice.candidate.key == 2


def test_without_recent_frames_the_newest_before_the_end():
    cands = [Candidate(1.0, SHARP, 1.0, 1), Candidate(1.5, BLURRED, 0.01, 2)]
    [choice] = select_frames(cands, 0.5, 3.0, max_keyframes=0)
    assert choice.candidate.key == 2


def test_late_frames_only_when_nothing_else():
    late = [Candidate(3.2, SHARP, 1.0, 7), Candidate(3.4, SHARP, 0.01, 8)]
    [choice] = select_frames(late, 1.0, 3.0, max_keyframes=2)
    assert choice.candidate.key == 7  # the first that arrived after the end
    on_time = [Candidate(2.9, BLURRED, 1.0, 1), *late]
    [choice] = select_frames(on_time, 1.0, 3.0, max_keyframes=2)
    assert choice.candidate.key == 1


def test_scene_change_during_the_utterance_adds_a_keyframe():
    # 1 s of scene A (sharp), a cut to scene B held to the end
    cands = seq([(5, SHARP, 1.0), (10, SHARP, 0.4)])
    choices = select_frames(cands, 0.0, 2.9, max_keyframes=2)
    assert [c.reason for c in choices] == [SCENE_CHANGE, SHARPEST_AT_END]
    assert choices[0].candidate.t < 1.0 <= choices[1].candidate.t


def test_keyframes_are_capped_by_the_biggest_changes():
    cands = seq(
        [(3, SHARP, 1.0), (3, SHARP, 0.2), (3, SHARP, 0.5), (3, SHARP, 0.3), (3, SHARP, 0.6)]
    )
    choices = select_frames(cands, 0.0, 2.9, max_keyframes=2)
    keys = [c for c in choices if c.reason == SCENE_CHANGE]
    assert len(keys) == 2
    # the last stretch holds the frame at the end; of the others, changes 1.0 and 0.5 win
    assert [cands.index(c.candidate) // 3 for c in keys] == [0, 2]
    assert select_frames(cands, 0.0, 2.9, max_keyframes=0)[0].reason == SHARPEST_AT_END


def test_motion_blur_is_not_a_scene():
    """While the camera pans every candidate differs from the last: single-frame stretches
    are motion, not scenes worth showing."""
    cands = seq(
        [(5, SHARP, 1.0), (1, BLURRED, 0.3), (1, BLURRED, 0.3), (1, BLURRED, 0.3), (5, SHARP, 0.3)]
    )
    choices = select_frames(cands, 0.0, 2.5, max_keyframes=3)
    assert all(c.candidate.sharpness == SHARP for c in choices)
    assert len(choices) == 2


def test_keyframes_only_from_inside_the_utterance():
    cands = seq([(5, SHARP, 1.0), (10, SHARP, 0.4)])
    choices = select_frames(cands, 1.2, 2.9, max_keyframes=2)
    assert [c.reason for c in choices] == [SHARPEST_AT_END]


def test_fixed_rate_baseline_shows_a_stale_or_blurred_frame():
    """The sampling everyone else uses (one frame a second) against the selector, on a
    sequence where the scene changes at 2.1 s, the camera settles (blurred) until 2.6 s,
    and the user stops speaking at 2.95 s."""
    cands = seq([(11, SHARP, 1.0), (3, BLURRED, 0.4), (1, BLURRED, 0.05), (1, SHARP, 0.3)])
    cands = [*cands[:-1], Candidate(2.8, SHARP, 0.2, 99), Candidate(2.9, SHARP, 0.01, 100)]
    base = fixed_rate(cands, 2.95)
    assert base is not None and base.t == 2.0  # scene A: stale
    base_late = fixed_rate(cands[1:], 2.95)  # the clock ticks at 0.2, 1.2, 2.2: blurred
    assert base_late is not None and base_late.sharpness == BLURRED
    [*_, main] = select_frames(cands, 0.5, 2.95, max_keyframes=2)
    assert main.reason == SHARPEST_AT_END and main.candidate.sharpness == SHARP
    assert main.candidate.t >= 2.8
