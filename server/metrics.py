"""Server metrics in the Prometheus text exposition format (version 0.0.4).

A tiny, dependency-free registry: the transports feed it every session event with
:meth:`Metrics.observe_event`, and ``GET /metrics`` renders it. Everything is plain counters,
one gauge and fixed-bucket histograms; no I/O, no clock.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

# Latency buckets in milliseconds: spoken-dialogue stages live between 20 ms and a few seconds.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    25,
    50,
    100,
    200,
    300,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    10000,
)
_LABEL_RE = re.compile(r"[^a-zA-Z0-9_]")


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _stage_name(key: str) -> str:
    """``"first_audio_ms"`` -> ``"first_audio"``: the stage label of a metrics field."""
    name = key[:-3] if key.endswith("_ms") else key
    return _LABEL_RE.sub("_", name)[:64]


class Histogram:
    """A Prometheus histogram with fixed upper bounds (cumulative on render)."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS_MS) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * len(self.bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    def quantile(self, q: float) -> float | None:
        """An upper-bound estimate of quantile ``q`` (the bucket it falls in)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return math.inf


class Metrics:
    """Counters for sessions, turns, barge-ins and errors, and per-stage latency histograms.

    Bounded: stage labels come from ``seetalk.turn.metrics`` field names and error labels
    from error codes; at most ``max_labels`` distinct values of each are kept, further new
    values count under ``"other"`` (overflow policy: fold).
    """

    def __init__(self, max_labels: int = 32) -> None:
        self.max_labels = max_labels
        self.sessions_active = 0
        self.sessions_total = 0
        self.sessions_rejected: dict[str, int] = defaultdict(int)
        self.session_end_reasons: dict[str, int] = defaultdict(int)
        self.turns_total = 0
        self.responses: dict[str, int] = defaultdict(int)
        self.barge_ins_total = 0
        self.barge_in_stop_ms = Histogram()
        self.errors: dict[str, int] = defaultdict(int)
        self.stage_latency: dict[str, Histogram] = {}

    # --- sessions ---------------------------------------------------------------------------

    def session_started(self) -> None:
        self.sessions_active += 1
        self.sessions_total += 1

    def session_ended(self, reason: str) -> None:
        self.sessions_active = max(0, self.sessions_active - 1)
        self.session_end_reasons[self._fold(self.session_end_reasons, reason)] += 1

    def session_rejected(self, reason: str) -> None:
        self.sessions_rejected[self._fold(self.sessions_rejected, reason)] += 1

    # --- events -----------------------------------------------------------------------------

    def observe_event(self, event: Mapping[str, Any]) -> None:
        """Count one session event (the shapes built by ``conversation.events``)."""
        kind = event.get("type")
        if kind == "seetalk.turn.metrics":
            self.turns_total += 1
            for key, value in (event.get("metrics") or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    if math.isfinite(value):
                        self._stage(key).observe(float(value))
        elif kind == "seetalk.barge_in":
            self.barge_ins_total += 1
            onset, stopped = event.get("onset_ms"), event.get("stopped_ms")
            if isinstance(onset, int | float) and isinstance(stopped, int | float):
                if stopped >= onset:
                    self.barge_in_stop_ms.observe(float(stopped - onset))
        elif kind == "response.done":
            status = str((event.get("response") or {}).get("status", "unknown"))
            self.responses[self._fold(self.responses, status)] += 1
        elif kind == "error":
            code = str((event.get("error") or {}).get("code") or "unknown")
            self.errors[self._fold(self.errors, code)] += 1

    def _fold(self, table: Mapping[str, int], label: str) -> str:
        label = _LABEL_RE.sub("_", label)[:64] or "unknown"
        if label in table or len(table) < self.max_labels:
            return label
        return "other"

    def _stage(self, key: str) -> Histogram:
        stage = _stage_name(key)
        if stage not in self.stage_latency and len(self.stage_latency) >= self.max_labels:
            stage = "other"
        hist = self.stage_latency.get(stage)
        if hist is None:
            hist = self.stage_latency[stage] = Histogram()
        return hist

    # --- exposition -------------------------------------------------------------------------

    def render(
        self,
        extra_gauges: Mapping[str, float] | None = None,
        *,
        load: Mapping[str, Mapping[str, Any]] | None = None,
        utilisation: Mapping[str, float] | None = None,
        capacity: int | None = None,
        overloaded: bool | None = None,
        asr: Mapping[str, Mapping[str, int]] | None = None,
    ) -> str:
        """Prometheus text. ``load``: each model role's scheduler statistics (queue depth
        by priority, jobs running, skipped); ``utilisation``, ``capacity`` and
        ``overloaded``: the admission gate's verdict; ``asr``: local whisper decodes by window
        (``Engine.asr_stats``)."""
        out: list[str] = []

        def metric(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        metric("seetalk_sessions_active", "gauge", "WebRTC sessions now open.")
        out.append(f"seetalk_sessions_active {self.sessions_active}")
        metric("seetalk_sessions_total", "counter", "WebRTC sessions started.")
        out.append(f"seetalk_sessions_total {self.sessions_total}")
        metric("seetalk_sessions_rejected_total", "counter", "Offers refused, by reason.")
        for reason, n in sorted(self.sessions_rejected.items()):
            out.append(f'seetalk_sessions_rejected_total{{reason="{_label_value(reason)}"}} {n}')
        metric("seetalk_sessions_ended_total", "counter", "Sessions ended, by reason.")
        for reason, n in sorted(self.session_end_reasons.items()):
            out.append(f'seetalk_sessions_ended_total{{reason="{_label_value(reason)}"}} {n}')
        metric("seetalk_turns_total", "counter", "Turns completed (seetalk.turn.metrics events).")
        out.append(f"seetalk_turns_total {self.turns_total}")
        metric("seetalk_responses_total", "counter", "Responses finished, by status.")
        for status, n in sorted(self.responses.items()):
            out.append(f'seetalk_responses_total{{status="{_label_value(status)}"}} {n}')
        metric("seetalk_barge_ins_total", "counter", "Replies interrupted by the user.")
        out.append(f"seetalk_barge_ins_total {self.barge_ins_total}")
        metric("seetalk_errors_total", "counter", "Error events sent to clients, by code.")
        for code, n in sorted(self.errors.items()):
            out.append(f'seetalk_errors_total{{code="{_label_value(code)}"}} {n}')
        metric(
            "seetalk_turn_stage_latency_ms",
            "histogram",
            "Per-stage turn latency in milliseconds, from seetalk.turn.metrics.",
        )
        for stage, hist in sorted(self.stage_latency.items()):
            out.extend(_histogram_lines("seetalk_turn_stage_latency_ms", hist, f'stage="{stage}"'))
        metric(
            "seetalk_barge_in_stop_ms",
            "histogram",
            "Speech onset to reply audio stopped, in milliseconds, from seetalk.barge_in.",
        )
        out.extend(_histogram_lines("seetalk_barge_in_stop_ms", self.barge_in_stop_ms, ""))
        if load:
            metric("seetalk_role_queue_depth", "gauge", "Jobs queued on a model role.")
            for role, stats in sorted(load.items()):
                for prio, n in sorted(stats.get("queued", {}).items()):
                    lbl = f'role="{_label_value(role)}",priority="{_label_value(prio)}"'
                    out.append(f"seetalk_role_queue_depth{{{lbl}}} {n}")
            metric("seetalk_role_running", "gauge", "Jobs running on a model role.")
            for role, stats in sorted(load.items()):
                out.append(
                    f'seetalk_role_running{{role="{_label_value(role)}"}} {stats.get("running", 0)}'
                )
            metric("seetalk_role_skipped_total", "counter", "Background jobs skipped (behind).")
            for role, stats in sorted(load.items()):
                out.append(
                    f'seetalk_role_skipped_total{{role="{_label_value(role)}"}} {stats.get("skipped", 0)}'
                )
        if utilisation:
            metric("seetalk_role_utilisation", "gauge", "Busy fraction of a role, last window.")
            for role, u in sorted(utilisation.items()):
                out.append(f'seetalk_role_utilisation{{role="{_label_value(role)}"}} {u:.4f}')
        if capacity is not None:
            metric("seetalk_capacity_sessions", "gauge", "Sessions the busiest role could carry.")
            out.append(f"seetalk_capacity_sessions {capacity}")
        if overloaded is not None:
            metric("seetalk_overloaded", "gauge", "1 while new sessions are refused for load.")
            out.append(f"seetalk_overloaded {int(overloaded)}")
        if asr:
            metric("seetalk_asr_decodes_total", "counter", "Local whisper decodes, by window.")
            for role, stats in sorted(asr.items()):
                for window in ("fitted", "full"):
                    lbl = f'role="{_label_value(role)}",window="{window}"'
                    out.append(f"seetalk_asr_decodes_total{{{lbl}}} {stats.get(window, 0)}")
            metric(
                "seetalk_asr_refits_total",
                "counter",
                "Fitted-window decodes done again on the full window, by reason.",
            )
            for role, stats in sorted(asr.items()):
                for reason in ("looped", "unsure"):
                    lbl = f'role="{_label_value(role)}",reason="{reason}"'
                    out.append(f"seetalk_asr_refits_total{{{lbl}}} {stats.get(reason, 0)}")
        for name, value in (extra_gauges or {}).items():
            metric(name, "gauge", name.replace("_", " ") + ".")
            out.append(f"{name} {value}")
        return "\n".join(out) + "\n"


def _histogram_lines(name: str, hist: Histogram, labels: str) -> list[str]:
    sep = "," if labels else ""
    lines = []
    cumulative = 0
    for bound, n in zip(hist.bounds, hist.counts, strict=True):
        cumulative += n
        lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
    lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {hist.count}')
    suffix = f"{{{labels}}}" if labels else ""
    lines.append(f"{name}_sum{suffix} {hist.sum:g}")
    lines.append(f"{name}_count{suffix} {hist.count}")
    return lines
