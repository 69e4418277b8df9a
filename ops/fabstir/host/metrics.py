"""The host worker's Prometheus metrics and structured log lines.

`HostMetrics` holds the worker's series in its own prometheus-client registry (no
process-global state: two workers in one process, as in the tests, keep separate
counts); `render()` is the text exposition that /metrics serves.

`kv()` formats one structured log line: `event=<name> key=value ...`
(values with spaces or quotes are quoted), or a JSON object when the worker's
logging is configured with `configure_logging(json_lines=True)`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BARE_RE: Final = re.compile(r"[A-Za-z0-9_.:/@+\-]+")

#: Buckets (seconds) of the first-token latency: a local engine answers in tens of
#: milliseconds, a busy upstream in seconds.
LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Buckets of one answer's generation speed (tokens per second).
RATE_BUCKETS: Final = (1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200)
#: Buckets (seconds) of the time from a session's close to its settlement.
SETTLEMENT_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class HostMetrics:
    """The worker's metrics (names are part of the operator interface: docs/runbooks/host.md)."""

    def __init__(self) -> None:
        self.started = time.time()
        r = self.registry = CollectorRegistry()
        self.tokens_served = Counter(
            "fabstir_host_tokens_served", "Generated tokens streamed to clients.", registry=r
        )
        self.prompts = Counter(
            "fabstir_host_prompts", "Prompts by how they ended.", ["finish_reason"], registry=r
        )
        self.sessions_started = Counter(
            "fabstir_host_sessions_started", "session_ready sent (new or resumed).", registry=r
        )
        self.sessions = Gauge(
            "fabstir_host_sessions", "Sessions in the store by state.", ["state"], registry=r
        )
        self.connections = Gauge(
            "fabstir_host_connections", "Open WebSocket connections.", registry=r
        )
        self.receipts = Counter(
            "fabstir_host_receipts", "Receipts verified, stored and acknowledged.", registry=r
        )
        self.receipted_tokens = Gauge(
            "fabstir_host_receipted_tokens",
            "Tokens covered by the newest receipt, summed.",
            registry=r,
        )
        self.errors = Counter(
            "fabstir_host_errors", "Error frames sent, by code.", ["code"], registry=r
        )
        self.settlements = Counter(
            "fabstir_host_settlements", "Settlement outcomes per session.", ["outcome"], registry=r
        )
        self.settled_tokens = Counter(
            "fabstir_host_settled_tokens", "Tokens paid for in settled sessions.", registry=r
        )
        self.settlement_txs = Counter(
            "fabstir_host_settlement_transactions", "settleBatch transactions mined.", registry=r
        )
        self.settlement_deferrals = Counter(
            "fabstir_host_settlement_deferrals",
            "Settlement batches held back because their cost per session (L2 gas plus the "
            "L1 data fee) was above --max-settle-fee.",
            registry=r,
        )
        self.settlement_failures = Counter(
            "fabstir_host_settlement_failures",
            "Settlement passes that failed (RPC unreachable, transaction rejected).",
            registry=r,
        )
        self.unposted_value = Gauge(
            "fabstir_host_unposted_value",
            "Value at risk: receipted tokens not yet on chain, times the price, summed over "
            "open and closing sessions (payment token's smallest unit).",
            ["token"],
            registry=r,
        )
        self.unposted_deadline = Gauge(
            "fabstir_host_unposted_deadline_seconds",
            "Value at risk by time: the smallest time left until a session's end plus the "
            "settlement window (after it anyone may finalize with the receipt on chain) "
            "across sessions with unposted receipts; +Inf when none has one.",
            registry=r,
        )
        self.settlement_lag = Gauge(
            "fabstir_host_settlement_lag_seconds",
            "Age of the oldest session waiting to be settled (0 when none waits).",
            registry=r,
        )
        self.last_settlement = Gauge(
            "fabstir_host_last_settlement_timestamp_seconds",
            "Unix time of the last successful settlement pass.",
            registry=r,
        )
        self.first_token_latency = Histogram(
            "fabstir_host_first_token_latency_seconds",
            "Seconds from a prompt to its first streamed chunk.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "fabstir_host_tokens_per_second",
            "Generation speed of each answer: tokens after the first chunk per second.",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.session_settlement_lag = Histogram(
            "fabstir_host_session_settlement_lag_seconds",
            "Seconds from a session's close (state closing) to its settlement.",
            buckets=SETTLEMENT_BUCKETS,
            registry=r,
        )
        self.upstream_count_mismatch = Counter(
            "fabstir_host_upstream_count_mismatch",
            "Answers whose token count reported by the upstream differed from the delivered "
            "count (the delivered one is billed).",
            ["direction"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "fabstir_host_upstream_errors",
            "Upstream requests that failed: unreachable, 5xx, timed out, cut off.",
            registry=r,
        )
        self.upstream_cancelled = Counter(
            "fabstir_host_upstream_cancelled",
            "Upstream requests closed before the upstream finished (cap, client gone, cancel).",
            registry=r,
        )
        self.uptime = Gauge(
            "fabstir_host_uptime_seconds", "Seconds since the worker started.", registry=r
        )
        self.uptime.set_function(lambda: time.time() - self.started)

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


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
