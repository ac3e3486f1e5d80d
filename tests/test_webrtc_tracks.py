"""The paced outgoing track and the latest-wins camera slot, on a virtual clock."""

from __future__ import annotations

import fractions

import numpy as np
import pytest

from server.tracks import LatestFrame, PacedAudioTrack, fit_size


class VirtualTime:
    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        self.slept.append(dt)
        self.t += dt


async def test_exact_frames_on_a_schedule_that_does_not_drift():
    vt = VirtualTime()
    pulled: list[int] = []

    def pull(n: int) -> np.ndarray:
        pulled.append(n)
        return np.full(n, len(pulled), np.int16)

    track = PacedAudioTrack(pull, clock=vt.clock, sleep=vt.sleep)
    start = vt.t
    for i in range(3000):  # one minute of audio
        vt.t += 0.0001 * (i % 7)  # jitter in how late the sender asks
        frame = await track.recv()
        assert frame.samples == 960 and frame.sample_rate == 48_000
        assert frame.format.name == "s16" and frame.layout.name == "mono"
        assert frame.pts == 960 * i and frame.time_base == fractions.Fraction(1, 48_000)
    assert pulled == [960] * 3000
    # the 3000th frame left at start + 2999 * 20 ms: no accumulated drift
    assert vt.t - start == pytest.approx(2999 * 0.020, abs=0.001)
    assert track.resyncs == 0


async def test_a_stall_restarts_the_schedule_instead_of_bursting():
    vt = VirtualTime()
    track = PacedAudioTrack(lambda n: np.zeros(n, np.int16), clock=vt.clock, sleep=vt.sleep)
    for _ in range(10):
        await track.recv()
    vt.t += 1.0  # the loop was blocked for a second
    await track.recv()
    assert track.resyncs == 1
    vt.slept.clear()
    await track.recv()
    assert vt.slept == [pytest.approx(0.020)]  # paced again right away
    frame = await track.recv()
    assert frame.pts == 960 * 12  # timestamps stay continuous for the receiver


async def test_wrong_sized_pull_is_fixed_to_one_frame():
    vt = VirtualTime()
    track = PacedAudioTrack(lambda n: np.ones(100, np.int16), clock=vt.clock, sleep=vt.sleep)
    frame = await track.recv()
    data = frame.to_ndarray().reshape(-1)
    assert data.shape == (960,) and data[:100].sum() == 100 and data[100:].sum() == 0


async def test_latest_frame_keeps_only_the_newest():
    slot = LatestFrame()
    for i in range(5):
        slot.put(i)
    assert await slot.get() == 4
    assert slot.dropped == 4 and slot.received == 5


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((3840, 2160), (1280, 720)),
        ((641, 479), (640, 478)),
        ((1, 1), (2, 2)),
        ((100000, 10), (1280, 2)),
    ],
)
def test_fit_size(size, expected):
    assert fit_size(*size, 1280) == expected
