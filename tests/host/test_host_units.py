"""Unit tests of the worker's parts that need no chain and no model: store, per-session
receipt rules, metrics and structured logs, configuration."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak

from fabstir.host.config import ConfigError, HostConfig, Limits, key_from_env, read_key_file
from fabstir.host.metrics import HostMetrics, JsonFormatter, kv
from fabstir.host.session import GENESIS_HEX, ServedSession, history_turns
from fabstir.host.settlement import SettlementLoop
from fabstir.host.store import SessionStore, SessionTerms
from fabstir.protocol.receipts import ContentHasher, Eip712Domain, Receipt, ReceiptSigner
from fabstir.sdk.errors import SDKError

KEY = Account.from_key(keccak(text="unit session key"))
DOMAIN = Eip712Domain(31337, "0x" + "42" * 20)
TERMS = SessionTerms(
    session_id=7,
    client="0x" + "11" * 20,
    session_key=KEY.address,
    token="0x" + "33" * 20,
    price=2**64 - 1,  # the largest uint64 price survives SQLite
    max_tokens=100,
    proof_interval=10,
    ends_at=2**40,
)


# ------------------------------------------------------------------------- store


def _stored(tokens: int, content: str, sig: str, session_id: int = 7) -> Receipt:
    return Receipt(session_id, tokens, "0x" + content * 32, "0x" + sig * 65)


def test_store_lifecycle_and_durability(tmp_path: Path) -> None:
    async def first() -> None:
        store = SessionStore(tmp_path / "h.db")
        await store.open()
        rec = await store.register(TERMS)
        assert rec.state == "open" and rec.receipt_tokens == 0 and rec.price == 2**64 - 1
        assert await store.save_receipt(_stored(5, "aa", "bb"))
        assert not await store.save_receipt(_stored(5, "cc", "dd"))
        assert not await store.save_receipt(_stored(3, "cc", "dd"))
        assert not await store.save_receipt(_stored(9, "cc", "dd", session_id=8))
        assert await store.mark_closing(7, "client")
        assert not await store.mark_closing(7, "idle")  # only once
        assert await store.save_receipt(_stored(6, "ee", "ff"))
        await store.close()

    async def second() -> None:
        store = SessionStore(tmp_path / "h.db")
        await store.open()
        rec = await store.get(7)
        assert rec is not None
        assert (rec.state, rec.close_reason, rec.receipt_tokens) == ("closing", "client", 6)
        assert rec.receipt == _stored(6, "ee", "ff") and rec.has_unsubmitted_receipt
        assert rec.closing_since is not None
        await store.register(TERMS)  # re-registering keeps the row as it is
        assert (await store.get(7)).receipt_tokens == 6  # type: ignore[union-attr]
        await store.set_submitted(7, 6)
        assert not (await store.get(7)).has_unsubmitted_receipt  # type: ignore[union-attr]
        await store.mark_settled(7, tx="0x01", tokens=6)
        assert not await store.save_receipt(_stored(9, "ee", "ff"))
        assert await store.counts() == {"open": 0, "closing": 0, "settled": 1, "failed": 0}
        assert await store.oldest_closing_since() is None
        await store.close()

    asyncio.run(first())
    asyncio.run(second())
    with __import__("sqlite3").connect(tmp_path / "h.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_settle_item_carries_only_a_newer_receipt(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SessionStore(tmp_path / "h.db")
        await store.open()
        await store.register(TERMS)
        rec = await store.get(7)
        assert SettlementLoop._item(rec).tokens_used == 0  # type: ignore[arg-type]
        await store.save_receipt(_stored(5, "aa", "bb"))
        item = SettlementLoop._item(await store.get(7))  # type: ignore[arg-type]
        assert item.receipt is not None
        assert item.receipt == _stored(5, "aa", "bb")  # the stored Receipt, as it came
        await store.set_submitted(7, 5)
        assert SettlementLoop._item(await store.get(7)).tokens_used == 0  # type: ignore[arg-type]
        await store.close()

    asyncio.run(scenario())


# ----------------------------------------------------------------- receipt rules


def _served(states: list[tuple[int, str]]) -> ServedSession:
    s = ServedSession(TERMS)
    for tokens, digest in states:
        s.tokens = tokens
        s._sent(tokens, digest)
    return s


def _receipt(tokens: int, digest: str, key: object = KEY.key, session_id: int = 7) -> Receipt:
    return ReceiptSigner(key, DOMAIN).sign(session_id, tokens, digest)  # type: ignore[arg-type]


def test_receipt_rules() -> None:
    h = ContentHasher()
    h.update_prompt("hi")
    a = h.update_chunk("one").hex()
    b = h.update_chunk("two").hex()
    s = _served([(3, "0x" + a), (5, "0x" + b)])
    assert s.unsigned == 5 and not s.needs_receipt

    def code(msg: Receipt) -> str:
        with pytest.raises(SDKError) as info:
            s.check_receipt(msg, DOMAIN)
        return info.value.code.value

    assert code(_receipt(4, "0x" + b)) == "PROOF_VERIFICATION_FAILED"  # never sent
    assert code(_receipt(5, "0x" + a)) == "PROOF_VERIFICATION_FAILED"
    assert code(_receipt(5, "0x" + b, session_id=8)) == "PROOF_VERIFICATION_FAILED"
    other = keccak(text="someone else")
    assert code(_receipt(5, "0x" + b, key=other)) == "WRONG_SIGNER"
    s.check_receipt(_receipt(3, "0x" + a), DOMAIN)
    s.accept_receipt(3, "0x" + a)
    assert (s.acked_tokens, s.unsigned) == (3, 2)
    assert code(_receipt(3, "0x" + a)) == "STALE_RECEIPT"
    s.check_receipt(_receipt(5, "0x" + b), DOMAIN)
    # A resume rolls back to the newest acknowledged receipt.
    s.rollback(3, "0x" + a)
    assert (s.tokens, s.hasher.hexdigest, s.last_sent) == (3, "0x" + a, (3, "0x" + a))
    assert code(_receipt(5, "0x" + b)) == "PROOF_VERIFICATION_FAILED"


def test_history_turns_alternate() -> None:
    turns = history_turns(["q1", "a1", "q2"])
    assert [(t.role, t.content) for t in turns] == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
    ]
    assert history_turns(None) == []
    assert ServedSession(TERMS).hasher.hexdigest == GENESIS_HEX


# ------------------------------------------------------------- metrics and logs


def test_metrics_render_prometheus_text() -> None:
    m = HostMetrics()
    m.errors.labels(code="STALE_RECEIPT").inc()
    m.tokens_served.inc(3)
    m.first_token_latency.observe(0.02)
    m.tokens_per_second.observe(42)
    m.session_settlement_lag.observe(3)
    text = m.render()
    assert "# TYPE fabstir_host_errors_total counter" in text
    assert 'fabstir_host_errors_total{code="STALE_RECEIPT"} 1.0' in text
    assert "fabstir_host_tokens_served_total 3.0" in text
    assert 'fabstir_host_first_token_latency_seconds_bucket{le="0.025"} 1.0' in text
    assert 'fabstir_host_tokens_per_second_bucket{le="25.0"} 0.0' in text
    assert "fabstir_host_session_settlement_lag_seconds_count 1.0" in text
    assert "fabstir_host_uptime_seconds" in text
    # Each worker has its own registry: counts do not leak between workers.
    assert "fabstir_host_tokens_served_total 0.0" in HostMetrics().render()
    with pytest.raises(ValueError):
        m.tokens_served.inc(-1)


def test_structured_log_lines() -> None:
    line = kv("session_ready", session=3, client="0xAb", note="two words", skip=None)
    assert line == 'event=session_ready session=3 client=0xAb note="two words"'
    record = logging.LogRecord("fabstir.host", logging.INFO, __file__, 1, line, None, None)
    out = json.loads(JsonFormatter().format(record))
    assert out["event"] == "session_ready" and out["note"] == "two words" and out["session"] == "3"


# ----------------------------------------------------------------------- config


def test_config_key_handling(tmp_path: Path) -> None:
    key = "0x" + "ab" * 32
    path = tmp_path / "key"
    path.write_text(key.upper().replace("0X", "0x") + "\n")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    assert read_key_file(path) == key
    assert key_from_env({"FABSTIR_HOST_KEY_FILE": str(path)}) == key
    with pytest.raises(ConfigError):
        key_from_env({})
    path.write_text("not a key")
    with pytest.raises(ConfigError) as info:
        read_key_file(path)
    assert "not a key" not in str(info.value)  # never echoed
    cfg = HostConfig(rpc_url="http://x", private_key="ab" * 32, chain_id=1)
    assert cfg.private_key == key and key not in repr(cfg)
    with pytest.raises(ConfigError):
        HostConfig(rpc_url="http://x", private_key=key)  # no addresses, no chain id
    with pytest.raises(ConfigError):
        HostConfig(
            rpc_url="http://x", private_key=key, addresses={"JobMarketplace": "0x"}
        ).resolve_addresses()
    with pytest.raises(ConfigError):
        Limits(max_tokens_per_request=0)
