"""The gateway's ledger keeps, per session, the newest receipt signed and the newest the
host acknowledged (issue 15: the soak checks the host's pay against them). Real SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fabstir.gateway.ledger import SCHEMA_VERSION, Ledger

MARKET = "0x" + "ab" * 20
WALLET = "0x" + "cd" * 20


def _ledger(path: Path) -> Ledger:
    return Ledger(path, chain_id=31337, marketplace=MARKET, wallet=WALLET)


def _open(ledger: Ledger, session_id: int) -> None:
    ledger.session_opened(
        session_id, host="0xh", model_id="0xM", token="USDC", price=200, deposit=10**6,
        max_tokens=5000,
    )  # fmt: skip


def test_receipts_only_grow_and_survive_the_close(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "g.db")
    _open(ledger, 7)
    assert (ledger.sessions()[0].signed, ledger.sessions()[0].acked) == (0, 0)
    ledger.receipts(7, signed=40, acked=32)
    ledger.receipts(7, signed=24, acked=16)  # a late, older report
    ledger.session_closed(7, 40)
    (record,) = ledger.sessions()
    assert (record.signed, record.acked, record.tokens, record.state) == (40, 32, 40, "closed")
    ledger.close()
    reopened = _ledger(tmp_path / "g.db")  # on disk, not only in memory
    assert (reopened.sessions()[0].signed, reopened.sessions()[0].acked) == (40, 32)
    reopened.close()


def test_receipts_for_an_unknown_session_change_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "g.db")
    _open(ledger, 1)
    ledger.receipts(2, signed=10, acked=10)
    assert [(r.session_id, r.signed, r.acked) for r in ledger.sessions()] == [(1, 0, 0)]
    ledger.close()


def test_a_version_1_file_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    ledger = _ledger(path)
    _open(ledger, 3)
    ledger.close()
    # Make it a version-1 file: the table without the two columns.
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE s1 AS SELECT chain_id, marketplace, wallet, session_id, host, model_id,"
        " token, price, deposit, max_tokens, tokens, state, opened_at, closed_at FROM sessions;"
        " DROP TABLE sessions; ALTER TABLE s1 RENAME TO sessions; PRAGMA user_version=1;"
    )
    db.close()
    migrated = _ledger(path)
    migrated.receipts(3, signed=12, acked=12)
    (record,) = migrated.sessions()
    assert (record.session_id, record.signed, record.acked) == (3, 12, 12)
    migrated.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    db.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="schema version"):
        _ledger(path)
