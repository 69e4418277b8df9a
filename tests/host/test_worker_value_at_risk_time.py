"""Value at risk by time: with `post_receipt_before`, the worker posts a session's newest
receipt on chain (submitCheckpoint, the session stays open) once the time left until the
session's end plus the settlement window is below the margin; a session far from its
deadline is left alone. /metrics shows the smallest such time left across sessions with
unposted receipts (`fabstir_host_unposted_deadline_seconds`)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest
from support.host_env import HostEnv
from support.protocol_client import start_session
from support.waits import run, wait_until
from support.worker import http_get, metric

from fabstir.host.__main__ import main as host_main
from fabstir.host.config import ConfigError
from fabstir.host.worker import default_post_receipt_before

DAY = 86_400
#: The test deployment's settlement window (tests/host/conftest.py).
WINDOW = 3600
ACTIVE = 1


def test_receipt_of_a_session_near_its_deadline_is_posted_and_a_far_one_is_not(
    hostenv: HostEnv, start_worker: Any
) -> None:
    margin = 6 * 3600  # the near session's deadline is ~2 h away, the far one's ~3 days
    w = start_worker(settlement_interval=0.3, post_receipt_before=float(margin))
    near = hostenv.open_session(duration=3600)
    far = hostenv.open_session(duration=3 * DAY)

    def metrics() -> str:
        return http_get(w.http + "/metrics")[2]

    async def scenario() -> tuple[int, int]:
        a = await start_session(w.url, near)
        b = await start_session(w.url, far)
        await b.ask("Name two fruits.", 6)  # receipts signed and acked
        await a.ask("Name two birds.", 6)
        # The near one is posted while it stays open for more prompts.
        info = await asyncio.to_thread(
            wait_until,
            lambda: s if (s := hostenv.session(near.session_id)).tokensUsed == a.tokens else None,
            20,
        )
        assert info.status == ACTIVE
        await asyncio.to_thread(
            wait_until, lambda: w.record(near.session_id).submitted_tokens == a.tokens or None
        )
        # Several more passes: the far one stays off chain.
        settlement = w.worker.settlement if w.worker is not None else None
        assert settlement is not None
        passes = settlement.passes
        await asyncio.to_thread(wait_until, lambda: settlement.passes >= passes + 3 or None)
        await a.aclose()
        await b.aclose()
        return a.tokens, b.tokens

    near_tokens, far_tokens = run(scenario())
    assert near_tokens > 0 and far_tokens > 0
    assert hostenv.session(far.session_id).tokensUsed == 0
    rec = w.record(far.session_id)
    assert rec.state == "open" and rec.submitted_tokens == 0 and rec.receipt_tokens == far_tokens
    # What is left at risk is the far session's: its deadline is days away. The worker
    # counts from the later of the wall clock and the chain's time; in a full run the
    # chain's clock can trail the wall clock (earlier modules' snapshots are reverted).
    left = metric(metrics(), "fabstir_host_unposted_deadline_seconds")
    latest = int(hostenv.chain.blocks.head.timestamp)
    expected = rec.ends_at + WINDOW - max(time.time(), latest)
    assert expected - 5 <= left <= expected + 60
    assert left > margin
    assert w.record(near.session_id).state == "open"


def test_deadline_gauge_is_infinite_when_nothing_is_unposted(
    hostenv: HostEnv, start_worker: Any
) -> None:
    w = start_worker()
    body = http_get(w.http + "/metrics")[2]
    assert math.isinf(metric(body, "fabstir_host_unposted_deadline_seconds"))


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_post_receipt_before_must_not_be_negative(make_config: Any, value: float) -> None:
    with pytest.raises(ConfigError, match="--post-receipt-before"):
        make_config(post_receipt_before=value)


def test_bad_post_receipt_before_on_the_command_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key"
    key.write_text("0x" + "cd" * 32)
    key.chmod(0o600)
    base = ["--rpc-url", "http://127.0.0.1:9", "--chain-id", "5", "--key-file", str(key)]
    assert host_main([*base, "--post-receipt-before", "soon"]) == 2
    assert "--post-receipt-before" in capsys.readouterr().err
    assert host_main([*base, "--post-receipt-before", "-60"]) == 2
    assert "must not be negative" in capsys.readouterr().err  # the worker's log line


def test_default_margin_is_off_locally_and_covers_the_window_elsewhere() -> None:
    assert default_post_receipt_before(31337, WINDOW) is None
    assert default_post_receipt_before(84532, WINDOW) == WINDOW + 3600
