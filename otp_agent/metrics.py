"""The agent's metrics, in the Prometheus text exposition format (version 0.0.4).

Owns the counters and histograms the daemon keeps, and their rendering.  The format is written
here rather than with prometheus_client: it is about a hundred lines, it keeps the daemon's
dependencies to what Debian's package already pulls (cryptography, lxml, segno), and the daemon
opens no port anyway (``otpctl metrics`` asks over the socket; ``[metrics] textfile`` writes a
file for node_exporter).  The tests parse the output with prometheus_client's own parser.

Counters move from the audit log's events (:meth:`Metrics.observe_event`: every decision, send,
lock and disable is one), latencies from :func:`timed` wrappers around the key backend and the
store; gauges (tokens by type and state, HSM up/down) are read when rendering.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from time import perf_counter
from typing import Any, TypeVar

_T = TypeVar("_T")
Labels = tuple[tuple[str, str], ...]
#: Histogram buckets, seconds: a key-backend or store call takes from tens of microseconds
#: (software) to tens of milliseconds (an HSM, a remote PostgreSQL, an fsync).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PREFIX = "otp_agent_"
HELP = {
    "decisions_total": "Validation decisions, by result and reason.",
    "sends_total": "Out-of-band sends, by channel and result.",
    "locks_total": "Tokens locked (event locked) or disabled after repeated locks (event disabled).",
    "alerts_total": "Audit events of severity warning or above, by event.",
    "keystore_seconds": "Latency of key backend calls, by operation.",
    "store_seconds": "Latency of store calls, by operation.",
    "tokens": "Tokens, by type and state (active, locked, disabled, pending).",
    "keystore_up": "1 when the key backend answers its health check.",
    "hsm_up": "1 when this payShield HSM is up.",
    "store_up": "1 when the store answers its health check.",
}
_SEND_EVENTS = ("send",)


def _text(value: object) -> str:
    """A label value: an enum member's value, else the text of the value ("" for None)."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    return "" if value is None else str(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


class Metrics:
    """Counters and histograms of one agent; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, list[float]]] = {}

    def increment(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with these labels."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Record one observation of the histogram ``name``."""
        self.observe_labelled(name, seconds, tuple(sorted(labels.items())))

    def observe_labelled(self, name: str, seconds: float, labels: Labels) -> None:
        """:meth:`observe` with the labels already as a sorted tuple (the per-request path)."""
        bucket = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            series = self._histograms.get(name)
            if series is None:
                series = self._histograms[name] = {}
            # A count per bucket (the last one: above every bound), then the sum; cumulated
            # when rendered.
            values = series.get(labels)
            if values is None:
                values = series[labels] = [0.0] * (len(BUCKETS) + 2)
            values[bucket] += 1
            values[-1] += seconds

    def observe_event(self, event: str, fields: Mapping[str, object]) -> None:
        """Count an audit event: decisions, sends, locks and alerts."""
        result, reason = _text(fields.get("result")), _text(fields.get("reason"))
        if event == "validate":
            self.increment("decisions_total", result=result, reason=reason)
        elif event in _SEND_EVENTS:
            self.increment("sends_total", channel=_text(fields.get("channel")), result=result)
        elif event in ("lock", "disable"):
            self.increment("locks_total", event="locked" if event == "lock" else "disabled")
        if fields.get("severity") in ("warning", "error", "critical"):
            self.increment("alerts_total", event=event, severity=str(fields["severity"]))

    def render(self, gauges: Iterable[tuple[str, Labels, float]] = ()) -> str:
        """The text exposition of every metric, with ``gauges`` (name, labels, value) added."""
        lines: list[str] = []
        with self._lock:
            counters = {name: dict(series) for name, series in self._counters.items()}
            histograms = {
                name: {k: list(v) for k, v in series.items()} for name, series in self._histograms.items()
            }
        for name in ("decisions_total", "sends_total", "locks_total", "alerts_total"):
            lines += [f"# HELP {PREFIX}{name} {HELP[name]}", f"# TYPE {PREFIX}{name} counter"]
            for labels, value in sorted(counters.get(name, {}).items()):
                lines.append(f"{PREFIX}{name}{_labels(labels)} {_number(value)}")
        for name in ("keystore_seconds", "store_seconds"):
            lines += [f"# HELP {PREFIX}{name} {HELP[name]}", f"# TYPE {PREFIX}{name} histogram"]
            for labels, values in sorted(histograms.get(name, {}).items()):
                cumulative = list(itertools.accumulate(values[:-1]))
                for bound, count in zip((*BUCKETS, math.inf), cumulative, strict=True):
                    lines.append(
                        f"{PREFIX}{name}_bucket{_labels(labels, (('le', _number(bound)),))} {_number(count)}"
                    )
                lines.append(f"{PREFIX}{name}_sum{_labels(labels)} {_number(values[-1])}")
                lines.append(f"{PREFIX}{name}_count{_labels(labels)} {_number(cumulative[-1])}")
        declared: set[str] = set()
        for name, labels, value in gauges:
            if name not in declared:
                lines += [f"# HELP {PREFIX}{name} {HELP.get(name, name)}", f"# TYPE {PREFIX}{name} gauge"]
                declared.add(name)
            lines.append(f"{PREFIX}{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def timed(target: _T, metrics: Metrics, histogram: str, operations: Sequence[str]) -> _T:
    """``target`` with each of ``operations`` timed into ``histogram`` (label ``operation``).

    Every other attribute is the target's own.  Failures are timed too: a slow refusal is what
    an operator needs to see.
    """

    class Timed:
        def __getattr__(self, name: str) -> Any:
            attribute = getattr(target, name)
            if name not in operations or not callable(attribute):
                return attribute

            labels = (("operation", name),)

            def call(*args: Any, **kwargs: Any) -> Any:
                start = perf_counter()
                try:
                    return attribute(*args, **kwargs)
                finally:
                    metrics.observe_labelled(histogram, perf_counter() - start, labels)

            # Kept on the wrapper: later calls find it without __getattr__ (a hot path).
            object.__setattr__(self, name, call)
            return call

        def __repr__(self) -> str:
            return repr(target)

    return Timed()  # type: ignore[return-value]


def write_textfile(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same directory, renamed)."""
    import os

    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class TextfileWriter:
    """A thread that writes the metrics to ``[metrics] textfile`` every ``interval`` seconds."""

    def __init__(self, path: str, interval: float, render: Callable[[], str]) -> None:
        self.path, self.interval, self.render = path, interval, render
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-textfile", daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def write(self) -> None:
        """Write once now; a failure is logged, never raised (the agent keeps deciding)."""
        import logging

        try:
            write_textfile(self.path, self.render())
        except Exception as exc:
            logging.getLogger(__name__).warning("metrics textfile %s not written: %s", self.path, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
