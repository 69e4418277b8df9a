"""A tiny Prometheus registry and structured log lines for the host worker.

No client library: counters and gauges with optional labels, rendered in the
Prometheus text exposition format (version 0.0.4) by `Registry.render()`.
Everything runs on the worker's event loop, so no locking is needed.

`kv()` formats one structured log line: `event=<name> key=value ...`
(values with spaces or quotes are quoted), or a JSON object when the worker's
logging is configured with `configure_logging(json_lines=True)`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

_NAME_RE: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_BARE_RE: Final = re.compile(r"[A-Za-z0-9_.:/@+\-]+")

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._values: dict[LabelValues, float] = {}
        if not self.labels:
            self._values[()] = 0.0

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labels)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, value in sorted(self._values.items()):
            if key:
                pairs = ",".join(
                    f'{name}="{_escape(v)}"' for name, v in zip(self.labels, key, strict=True)
                )
                lines.append(f"{self.name}{{{pairs}}} {_number(value)}")
            else:
                lines.append(f"{self.name} {_number(value)}")
        return lines


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)


class Registry:
    """Named metrics plus callbacks that refresh gauges just before rendering."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        metric = Counter(name, help, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        metric = Gauge(name, help, labels)
        self._add(metric)
        return metric

    def _add(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} already registered")
        self._metrics[metric.name] = metric

    def on_collect(self, fn: Callable[[], None]) -> None:
        self._collectors.append(fn)

    def render(self) -> str:
        for fn in self._collectors:
            fn()
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class HostMetrics:
    """The worker's metrics (names are part of the operator interface: docs/runbooks/host.md)."""

    def __init__(self) -> None:
        self.started = time.time()
        r = self.registry = Registry()
        self.tokens_served = r.counter(
            "fabstir_host_tokens_served_total", "Generated tokens streamed to clients."
        )
        self.prompts = r.counter(
            "fabstir_host_prompts_total", "Prompts by how they ended.", ["finish_reason"]
        )
        self.sessions_started = r.counter(
            "fabstir_host_sessions_started_total", "session_ready sent (new or resumed)."
        )
        self.sessions = r.gauge(
            "fabstir_host_sessions", "Sessions in the store by state.", ["state"]
        )
        self.connections = r.gauge("fabstir_host_connections", "Open WebSocket connections.")
        self.receipts = r.counter(
            "fabstir_host_receipts_total", "Receipts verified, stored and acknowledged."
        )
        self.receipted_tokens = r.gauge(
            "fabstir_host_receipted_tokens", "Tokens covered by the newest receipt, summed."
        )
        self.errors = r.counter(
            "fabstir_host_errors_total", "Error frames sent, by code.", ["code"]
        )
        self.settlements = r.counter(
            "fabstir_host_settlements_total", "Settlement outcomes per session.", ["outcome"]
        )
        self.settled_tokens = r.counter(
            "fabstir_host_settled_tokens_total", "Tokens paid for in settled sessions."
        )
        self.settlement_txs = r.counter(
            "fabstir_host_settlement_transactions_total", "settleBatch transactions mined."
        )
        self.settlement_failures = r.counter(
            "fabstir_host_settlement_failures_total",
            "Settlement passes that failed (RPC unreachable, transaction rejected).",
        )
        self.unposted_value = r.gauge(
            "fabstir_host_unposted_value",
            "Value at risk: receipted tokens not yet on chain, times the price, summed over "
            "open and closing sessions (payment token's smallest unit).",
            ["token"],
        )
        self.settlement_lag = r.gauge(
            "fabstir_host_settlement_lag_seconds",
            "Age of the oldest session waiting to be settled (0 when none waits).",
        )
        self.last_settlement = r.gauge(
            "fabstir_host_last_settlement_timestamp_seconds",
            "Unix time of the last successful settlement pass.",
        )
        self.uptime = r.gauge("fabstir_host_uptime_seconds", "Seconds since the worker started.")
        r.on_collect(lambda: self.uptime.set(time.time() - self.started))

    def render(self) -> str:
        return self.registry.render()


# --------------------------------------------------------------------- structured logs


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and _BARE_RE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def kv(event: str, **fields: Any) -> str:
    """One structured log line: `event=<event> k=v ...` (None values left out)."""
    parts = [f"event={event}"]
    parts.extend(f"{k}={_kv_value(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, and the k=v fields of kv() lines."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        fields = _parse_kv(message)
        if fields:
            out.update(fields)
        else:
            out["message"] = message
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _parse_kv(message: str) -> dict[str, Any] | None:
    if not message.startswith("event="):
        return None
    out: dict[str, Any] = {}
    for match in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', message):
        key, raw = match[1], match[2]
        if raw.startswith('"'):
            try:
                out[key] = json.loads(raw)
                continue
            except ValueError:
                pass
        out[key] = raw
    return out


def configure_logging(level: str | int = "INFO", *, json_lines: bool = False) -> None:
    """Log to stderr: `ts level logger event=...` lines, or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every failed handshake (port scanners) at INFO/ERROR.
    logging.getLogger("websockets").setLevel(logging.WARNING)
