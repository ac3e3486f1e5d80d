"""Admission by capacity: the pure gate on made-up role statistics, the admission path
(503 + Retry-After), and /healthz and /metrics reporting the load."""

from __future__ import annotations

from typing import Any

import pytest

from server.admission import Admission, CapacityGate, Refused, ReportsLoad
from server.auth import Authenticator
from server.metrics import Metrics


def stats(busy_s: float = 0.0, final: int = 0, first: int = 0, background: int = 0) -> dict:
    return {
        "queued": {"final": final, "first": first, "rest": 0, "background": background},
        "running": 0,
        "workers": 1,
        "busy_s": busy_s,
        "skipped": 0,
    }


# --- the pure gate ----------------------------------------------------------------------------


def test_an_idle_server_is_not_overloaded_and_estimates_nothing() -> None:
    gate = CapacityGate()
    gate.observe(0.0, {"asr": stats()})
    gate.observe(10.0, {"asr": stats()})
    v = gate.verdict({"asr": stats()}, sessions=0)
    assert not v.overloaded and v.capacity is None


def test_a_role_busy_most_of_the_window_refuses_and_estimates_capacity() -> None:
    gate = CapacityGate(window_s=10.0, max_utilisation=0.85)
    gate.observe(0.0, {"asr": stats(0.0), "tts": stats(0.0)})
    gate.observe(10.0, {"asr": stats(9.5), "tts": stats(2.0)})
    v = gate.verdict({"asr": stats(9.5), "tts": stats(2.0)}, sessions=4)
    assert v.overloaded and "asr" in v.reason
    assert v.utilisation == pytest.approx({"asr": 0.95, "tts": 0.2})
    assert v.capacity == int(4 * 0.85 / 0.95)  # 3: fewer than the 4 open


def test_half_busy_estimates_room_for_more() -> None:
    gate = CapacityGate(window_s=10.0, max_utilisation=0.85)
    gate.observe(0.0, {"asr": stats(0.0)})
    gate.observe(10.0, {"asr": stats(2.5)})
    v = gate.verdict({"asr": stats(2.5)}, sessions=2)
    assert not v.overloaded and v.capacity == 6  # 2 sessions use 25 %: 6 fit in 85 %


def test_finals_queueing_up_refuse_at_once_but_background_work_does_not() -> None:
    gate = CapacityGate(max_must_run_queued=2)
    gate.observe(0.0, {"asr": stats()})
    assert not gate.verdict({"asr": stats(background=50)}, sessions=3).overloaded
    assert gate.verdict({"asr": stats(final=2, first=1)}, sessions=3).overloaded


def test_utilisation_is_measured_over_the_window_only() -> None:
    gate = CapacityGate(window_s=10.0)
    gate.observe(0.0, {"asr": stats(0.0)})
    gate.observe(10.0, {"asr": stats(10.0)})  # a busy first 10 s
    for t in range(11, 31):
        gate.observe(float(t), {"asr": stats(10.0)})  # then idle
    v = gate.verdict({"asr": stats(10.0)}, sessions=1)
    assert not v.overloaded and v.utilisation["asr"] == pytest.approx(0.0)


# --- the admission path --------------------------------------------------------------------------


class LoadedSource:
    """A session source that reports load (and opens nothing: reserve() is all we test)."""

    def __init__(self) -> None:
        self.roles: dict[str, dict[str, Any]] = {"asr": stats()}

    def load(self) -> dict[str, dict[str, Any]]:
        return self.roles

    def new_session(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class Peer:
    id = "p1"
    close_reason = None
    on_closed: list = []

    async def close(self, reason: str = "closed") -> None:
        pass

    def stats(self) -> dict:
        return {}


def test_admission_refuses_with_retry_after_when_the_models_are_behind() -> None:
    source = LoadedSource()
    assert isinstance(source, ReportsLoad)
    metrics = Metrics()
    adm = Admission(max_sessions=8, auth=Authenticator(None), metrics=metrics, clock=lambda: 0.0)
    adm.source = source  # type: ignore[assignment]
    adm.peers["p1"] = Peer()  # type: ignore[assignment]
    slot = adm.reserve(None)  # not behind: admitted
    slot._release()
    source.roles = {"asr": stats(final=3)}
    with pytest.raises(Refused) as err:
        adm.reserve(None)
    assert err.value.status == 503 and err.value.code == "overloaded"
    assert err.value.retry_after == adm.gate.retry_after_s
    assert metrics.sessions_rejected["overloaded"] == 1
    adm.peers.clear()  # the first session is always admitted: nothing to measure by
    adm.reserve(None)._release()


def test_the_session_limit_says_when_to_retry_too() -> None:
    adm = Admission(max_sessions=1, auth=Authenticator(None), metrics=Metrics(), clock=lambda: 0.0)
    adm.source = LoadedSource()  # type: ignore[assignment]
    adm.peers["p1"] = Peer()  # type: ignore[assignment]
    with pytest.raises(Refused) as err:
        adm.reserve(None)
    assert err.value.code == "session_limit" and err.value.retry_after is not None


def test_metrics_render_queue_depth_per_role_and_capacity() -> None:
    text = Metrics().render(
        load={"asr": stats(final=2, background=1)},
        utilisation={"asr": 0.5},
        capacity=7,
        overloaded=False,
    )
    assert 'seetalk_role_queue_depth{role="asr",priority="final"} 2' in text
    assert 'seetalk_role_queue_depth{role="asr",priority="background"} 1' in text
    assert 'seetalk_role_utilisation{role="asr"} 0.5000' in text
    assert "seetalk_capacity_sessions 7" in text and "seetalk_overloaded 0" in text


def test_metrics_render_whisper_decodes_by_window() -> None:
    text = Metrics().render(asr={"asr": {"fitted": 5, "full": 2, "looped": 1, "unsure": 1}})
    assert 'seetalk_asr_decodes_total{role="asr",window="fitted"} 5' in text
    assert 'seetalk_asr_decodes_total{role="asr",window="full"} 2' in text
    assert 'seetalk_asr_refits_total{role="asr",reason="looped"} 1' in text
    assert "seetalk_asr" not in Metrics().render()


def test_overloaded_holds_for_the_retry_after_then_clears() -> None:
    """A queue that empties a second after the server said "full" does not reopen it: the
    verdict holds ``hold_s`` past the last overloaded snapshot, then clears."""
    gate = CapacityGate(max_must_run_queued=2, retry_after_s=5)
    gate.observe(0.0, {"asr": stats(final=3)})
    assert gate.verdict({"asr": stats(final=3)}, sessions=3).overloaded
    gate.observe(1.0, {"asr": stats()})
    held = gate.verdict({"asr": stats()}, sessions=3)
    assert held.overloaded and "waiting on asr" in held.reason
    gate.observe(4.9, {"asr": stats()})
    assert gate.verdict({"asr": stats()}, sessions=3).overloaded
    gate.observe(5.1, {"asr": stats()})
    assert not gate.verdict({"asr": stats()}, sessions=3).overloaded
