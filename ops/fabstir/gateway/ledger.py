"""The gateway's local record: the sessions it opened and what every request spent.

One SQLite file (WAL, synchronous=FULL: a session is on disk before its first
request, so a gateway killed with -9 finds it again). Rows are scoped by chain id,
marketplace and wallet, so one file can serve several deployments. Amounts are the
payment token's smallest units, stored as decimal text (they can pass 2**63).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

SCHEMA_VERSION: Final = 2
SessionState = Literal["open", "closing", "closed"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    chain_id INTEGER NOT NULL,
    marketplace TEXT NOT NULL,
    wallet TEXT NOT NULL,
    session_id INTEGER NOT NULL,
    host TEXT NOT NULL,
    model_id TEXT NOT NULL,
    token TEXT NOT NULL,
    price TEXT NOT NULL,
    deposit TEXT NOT NULL,
    max_tokens INTEGER NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    signed INTEGER NOT NULL DEFAULT 0,
    acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chain_id, marketplace, session_id)
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    chain_id INTEGER NOT NULL,
    marketplace TEXT NOT NULL,
    session_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_session ON requests (chain_id, marketplace, session_id);
"""
#: Version 1 -> 2: the newest receipt signed and the newest the host acknowledged.
_MIGRATE_1_TO_2: Final = (
    "ALTER TABLE sessions ADD COLUMN signed INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE sessions ADD COLUMN acked INTEGER NOT NULL DEFAULT 0",
)


@dataclass(frozen=True)
class SessionRecord:
    session_id: int
    host: str
    model_id: str
    token: str
    price: int
    deposit: int
    max_tokens: int
    tokens: int
    state: SessionState
    opened_at: float
    closed_at: float | None
    #: tokens of the newest receipt the gateway signed / the host acknowledged: the
    #: host may be paid anything in [acked, signed] and nothing else.
    signed: int = 0
    acked: int = 0

    @property
    def cost(self) -> int:
        return self.tokens * self.price

    @property
    def committed(self) -> int:
        """What this session can still take from the budget: the whole deposit while it
        is open, the cost once it is closed (the rest came back to the balance)."""
        return self.cost if self.state == "closed" else self.deposit


@dataclass(frozen=True)
class RequestRecord:
    id: str
    session_id: int
    model: str
    started_at: float
    ended_at: float
    completion_tokens: int
    cost: int
    outcome: str


class Ledger:
    """Thread-safe (one connection behind a lock; calls are short)."""

    def __init__(self, path: Path, *, chain_id: int, marketplace: str, wallet: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._scope = (chain_id, marketplace.lower(), wallet.lower())
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            raise RuntimeError(
                f"{path} has gateway schema version {version}; this gateway knows {SCHEMA_VERSION}"
            )
        self._db.executescript(_SCHEMA)
        if version == 1:
            for statement in _MIGRATE_1_TO_2:
                self._db.execute(statement)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def session_opened(
        self,
        session_id: int,
        *,
        host: str,
        model_id: str,
        token: str,
        price: int,
        deposit: int,
        max_tokens: int,
    ) -> None:
        chain_id, marketplace, wallet = self._scope
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO sessions (chain_id, marketplace, wallet, session_id, host,"
                " model_id, token, price, deposit, max_tokens, tokens, state, opened_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'open', ?)",
                (
                    chain_id,
                    marketplace,
                    wallet,
                    session_id,
                    host,
                    model_id.lower(),
                    token,
                    str(price),
                    str(deposit),
                    max_tokens,
                    time.time(),
                ),
            )

    def request_done(
        self,
        request_id: str,
        *,
        session_id: int,
        model: str,
        started_at: float,
        completion_tokens: int,
        session_tokens: int,
        price: int,
        outcome: str,
    ) -> None:
        """Record one request and the session's running token count, atomically."""
        chain_id, marketplace, _ = self._scope
        with self._tx() as db:
            db.execute(
                "INSERT INTO requests (id, chain_id, marketplace, session_id, model, started_at,"
                " ended_at, completion_tokens, cost, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    chain_id,
                    marketplace,
                    session_id,
                    model,
                    started_at,
                    time.time(),
                    completion_tokens,
                    str(completion_tokens * price),
                    outcome,
                ),
            )
            db.execute(
                "UPDATE sessions SET tokens = MAX(tokens, ?)"
                " WHERE chain_id = ? AND marketplace = ? AND session_id = ?",
                (session_tokens, chain_id, marketplace, session_id),
            )

    def receipts(self, session_id: int, *, signed: int, acked: int) -> None:
        """The newest receipt signed for the session and the newest the host acknowledged
        (both only grow: a late, older report cannot lower them)."""
        chain_id, marketplace, _ = self._scope
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET signed = MAX(signed, ?), acked = MAX(acked, ?)"
                " WHERE chain_id = ? AND marketplace = ? AND session_id = ?",
                (signed, acked, chain_id, marketplace, session_id),
            )

    def session_closed(self, session_id: int, tokens: int) -> None:
        """The chain's final count for the session (what the host was paid for)."""
        chain_id, marketplace, _ = self._scope
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET state = 'closed', tokens = ?, closed_at = ?"
                " WHERE chain_id = ? AND marketplace = ? AND session_id = ?",
                (tokens, time.time(), chain_id, marketplace, session_id),
            )

    def sessions(self, state: SessionState | None = None) -> list[SessionRecord]:
        chain_id, marketplace, wallet = self._scope
        sql = (
            "SELECT session_id, host, model_id, token, price, deposit, max_tokens, tokens, state,"
            " opened_at, closed_at, signed, acked FROM sessions"
            " WHERE chain_id = ? AND marketplace = ? AND wallet = ?"
        )
        args: list[object] = [chain_id, marketplace, wallet]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY session_id", args).fetchall()
        return [
            SessionRecord(
                session_id=r[0],
                host=r[1],
                model_id=r[2],
                token=r[3],
                price=int(r[4]),
                deposit=int(r[5]),
                max_tokens=r[6],
                tokens=r[7],
                state=r[8],
                opened_at=r[9],
                closed_at=r[10],
                signed=r[11],
                acked=r[12],
            )
            for r in rows
        ]

    def requests(self, session_id: int | None = None) -> list[RequestRecord]:
        chain_id, marketplace, _ = self._scope
        sql = (
            "SELECT id, session_id, model, started_at, ended_at, completion_tokens, cost, outcome"
            " FROM requests WHERE chain_id = ? AND marketplace = ?"
        )
        args: list[object] = [chain_id, marketplace]
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY started_at", args).fetchall()
        return [RequestRecord(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7]) for r in rows]

    def committed(self, token: str) -> int:
        """Budget used in `token`: open sessions' deposits plus closed sessions' costs."""
        return sum(s.committed for s in self.sessions() if s.token == token)
