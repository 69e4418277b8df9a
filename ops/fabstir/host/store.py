"""The worker's durable state: one SQLite file, written by one thread.

Every method is a coroutine that runs its statement on a single-thread
executor, so the connection is only ever touched by that thread and writes are
serialised. The database runs in WAL mode with `synchronous=FULL`: a commit is
on disk (fsync) before the coroutine returns, which is what lets the server
acknowledge a receipt only after it is stored. A write already handed to the
executor completes even if the awaiting coroutine is cancelled.

Lifecycle of a row: `open` (being served) -> `closing` (waiting for the
settlement loop) -> `settled`, or `failed` when the chain refused it for good. A
`settled` row goes back to `closing` when a re-check finds the chain no longer holds
its settlement (a reorg deeper than the confirmations); its receipt is never dropped,
so it is settled again with the same receipt.

A store belongs to one chain: `ChainIdentity` (chain id, genesis block hash,
marketplace address) is recorded in it when it is created, and opening it with
another identity raises `StoreIdentityError` (session ids are per deployment: an
old chain's "session 1" must never stand for a new chain's). By default each
identity gets its own file (`ChainIdentity.file_name`). The schema is versioned
(`PRAGMA user_version`); `_MIGRATIONS` brings an older file up to date in place,
keeping its rows; a new file gets the newest schema at once.

The newest receipt of a session is kept whole, as `protocol.receipts.Receipt`: the
`receipt` column holds its JSON (`Receipt.to_dict`) and `receipt_tokens` repeats its
`tokens_used` for the SQL that compares and sums counts. The store never looks inside
otherwise, so a new receipt field needs no column and no migration here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from fabstir.host.config import ConfigError
from fabstir.host.metrics import kv
from fabstir.protocol.receipts import Receipt

T = TypeVar("T")

log = logging.getLogger(__name__)

State = Literal["open", "closing", "settled", "failed"]
STATES: Final = ("open", "closing", "settled", "failed")

#: Version 0: the unversioned schema (sessions only). 1: the `store_meta` table with the
#: chain identity. 2: the receipt kept whole in `receipt` (JSON) instead of the columns
#: `receipt_hash` and `receipt_sig`. 3: `settled_at` (when the row became settled), which
#: bounds the re-check of settlements after a reorg.
SCHEMA_VERSION: Final = 3

_SESSIONS: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id       INTEGER PRIMARY KEY,
    client           TEXT    NOT NULL,
    session_key      TEXT    NOT NULL,
    token            TEXT    NOT NULL,
    price            TEXT    NOT NULL,
    max_tokens       INTEGER NOT NULL,
    proof_interval   INTEGER NOT NULL,
    ends_at          INTEGER NOT NULL,
    receipt_tokens   INTEGER NOT NULL DEFAULT 0,
    receipt          TEXT,
    submitted_tokens INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL DEFAULT 'open'
                     CHECK (state IN ('open', 'closing', 'settled', 'failed')),
    close_reason     TEXT,
    closing_since    REAL,
    last_activity    REAL    NOT NULL,
    settle_tx        TEXT,
    updated_at       REAL    NOT NULL,
    settled_at       REAL
);
CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state);
"""

_META: Final = "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"

#: The newest schema, for a new file.
_SCHEMA: Final = _SESSIONS + _META

#: Statements that take a file from version N to N + 1, by N.
_MIGRATIONS: Final[dict[int, str]] = {
    0: _META,
    # Only rows with a signature held a receipt (receipt_tokens 0 and NULLs otherwise).
    1: """
    ALTER TABLE sessions ADD COLUMN receipt TEXT;
    UPDATE sessions SET receipt = json_object(
        'session_id', session_id, 'tokens_used', receipt_tokens,
        'content_hash', receipt_hash, 'signature', receipt_sig)
    WHERE receipt_sig IS NOT NULL;
    ALTER TABLE sessions DROP COLUMN receipt_hash;
    ALTER TABLE sessions DROP COLUMN receipt_sig;
    """,
    # Rows settled before: their last update is when they were settled.
    2: """
    ALTER TABLE sessions ADD COLUMN settled_at REAL;
    UPDATE sessions SET settled_at = updated_at WHERE state = 'settled';
    """,
}


class StoreIdentityError(ConfigError):
    """The store file belongs to another chain or deployment (or a newer worker): a
    configuration error, so it ends `python -m fabstir.host` with exit status 2."""


@dataclass(frozen=True)
class ChainIdentity:
    """Which chain and deployment a store's session ids belong to."""

    chain_id: int
    genesis_hash: str
    marketplace: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "genesis_hash", self.genesis_hash.lower())
        object.__setattr__(self, "marketplace", self.marketplace.lower())

    @property
    def file_name(self) -> str:
        """A file name unique to the identity (readable: chain id and marketplace)."""
        return f"chain-{self.chain_id}-{self.marketplace[2:10]}-{self.genesis_hash[2:14]}.db"

    def as_rows(self) -> dict[str, str]:
        return {
            "chain_id": str(self.chain_id),
            "genesis_hash": self.genesis_hash,
            "marketplace": self.marketplace,
        }


_COLUMNS: Final = (
    "session_id, client, session_key, token, price, max_tokens, proof_interval, ends_at, "
    "receipt, submitted_tokens, state, close_reason, "
    "closing_since, last_activity, settle_tx, updated_at, settled_at"
)


@dataclass(frozen=True)
class SessionTerms:
    """What the store keeps of a session's on-chain terms."""

    session_id: int
    client: str
    session_key: str
    token: str
    price: int
    max_tokens: int
    proof_interval: int
    ends_at: int


@dataclass(frozen=True)
class SessionRecord:
    """One row of `sessions`."""

    session_id: int
    client: str
    session_key: str
    token: str
    price: int
    max_tokens: int
    proof_interval: int
    ends_at: int
    receipt: Receipt | None
    """The newest stored receipt (None before the first)."""
    submitted_tokens: int
    state: State
    close_reason: str | None
    closing_since: float | None
    last_activity: float
    settle_tx: str | None
    updated_at: float
    settled_at: float | None
    """When the row became settled (None unless settled)."""

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> SessionRecord:
        values = list(row)
        values[4] = int(values[4])  # price is stored as decimal text (uint64 > int64)
        values[8] = None if values[8] is None else Receipt.from_mapping(json.loads(values[8]))
        return cls(*values)

    @property
    def terms(self) -> SessionTerms:
        """The session's terms as the store registered them."""
        return SessionTerms(
            session_id=self.session_id,
            client=self.client,
            session_key=self.session_key,
            token=self.token,
            price=self.price,
            max_tokens=self.max_tokens,
            proof_interval=self.proof_interval,
            ends_at=self.ends_at,
        )

    @property
    def receipt_tokens(self) -> int:
        """The newest stored receipt's `tokens_used` (0 before the first)."""
        return 0 if self.receipt is None else self.receipt.tokens_used

    @property
    def has_unsubmitted_receipt(self) -> bool:
        """True when the newest receipt is newer than what the chain is known to hold."""
        return self.receipt is not None and self.receipt.tokens_used > self.submitted_tokens


class SessionStore:
    """Async access to the sessions table; see the module docstring."""

    def __init__(self, path: str | Path, identity: ChainIdentity | None = None) -> None:
        """`identity` None: the file's own (tests and tools that only read it)."""
        self.path = Path(path)
        self.identity = identity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-store")
        self._conn: sqlite3.Connection | None = None

    # -- plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the session store is not open")
        return self._conn

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every statement below is its own transaction, durable on return.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            self._migrate(conn)
            self._check_identity(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreIdentityError(
                f"{self.path} has schema version {version}, newer than this worker's "
                f"{SCHEMA_VERSION}; upgrade the worker"
            )
        if version == 0 and not _has_table(conn, "sessions"):
            conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            return
        while version < SCHEMA_VERSION:
            # One transaction per step: a crash leaves the file at a whole version.
            conn.executescript(
                f"BEGIN; {_MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;"
            )
            version += 1
            log.info(kv("store_migrated", path=str(self.path), version=version))

    def _check_identity(self, conn: sqlite3.Connection) -> None:
        stored = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
        if self.identity is None:
            return
        if not stored:
            # A new file, or one from before identities (version 0): it is the chain the
            # operator points the worker at, so the existing receipts stay usable.
            conn.executemany(
                "INSERT INTO store_meta (key, value) VALUES (?, ?)",
                list(self.identity.as_rows().items()),
            )
            return
        wanted = self.identity.as_rows()
        diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
        if diff:
            what = ", ".join(f"{k} {old} (file) vs {new}" for k, (old, new) in diff.items())
            raise StoreIdentityError(
                f"{self.path} belongs to another chain or deployment ({what}); its session "
                "ids are not this chain's. Use another --db (or the default per-chain file)."
            )

    async def stored_identity(self) -> ChainIdentity | None:
        """The identity recorded in the file (None before one was)."""

        def run() -> ChainIdentity | None:
            rows = dict(self._db().execute("SELECT key, value FROM store_meta").fetchall())
            if not rows:
                return None
            return ChainIdentity(int(rows["chain_id"]), rows["genesis_hash"], rows["marketplace"])

        return await self._run(run)

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _select(self, where: str, *args: Any) -> list[SessionRecord]:
        rows = self._db().execute(f"SELECT {_COLUMNS} FROM sessions {where}", args).fetchall()
        return [SessionRecord.from_row(r) for r in rows]

    # -- reads

    async def get(self, session_id: int) -> SessionRecord | None:
        rows = await self._run(self._select, "WHERE session_id = ?", session_id)
        return rows[0] if rows else None

    async def by_state(self, *states: State) -> list[SessionRecord]:
        marks = ",".join("?" for _ in states)
        return await self._run(
            self._select, f"WHERE state IN ({marks}) ORDER BY session_id", *states
        )

    async def counts(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            rows = self._db().execute("SELECT state, COUNT(*) FROM sessions GROUP BY state")
            out = dict.fromkeys(STATES, 0)
            out.update({state: int(n) for state, n in rows})
            return out

        return await self._run(run)

    async def oldest_closing_since(self) -> float | None:
        def run() -> float | None:
            row = (
                self._db()
                .execute("SELECT MIN(closing_since) FROM sessions WHERE state = 'closing'")
                .fetchone()
            )
            return None if row is None or row[0] is None else float(row[0])

        return await self._run(run)

    async def receipted_tokens(self) -> int:
        def run() -> int:
            row = self._db().execute("SELECT COALESCE(SUM(receipt_tokens), 0) FROM sessions")
            return int(row.fetchone()[0])

        return await self._run(run)

    # -- writes (each one durable when it returns)

    async def register(self, terms: SessionTerms, *, now: float | None = None) -> SessionRecord:
        """Insert the session if it is new (state `open`); refresh `ends_at`; return the row."""

        def run(ts: float) -> SessionRecord:
            db = self._db()
            db.execute(
                "INSERT INTO sessions (session_id, client, session_key, token, price, max_tokens,"
                " proof_interval, ends_at, last_activity, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET ends_at = excluded.ends_at",
                (
                    terms.session_id,
                    terms.client,
                    terms.session_key,
                    terms.token,
                    str(terms.price),
                    terms.max_tokens,
                    terms.proof_interval,
                    terms.ends_at,
                    ts,
                    ts,
                ),
            )
            return self._select("WHERE session_id = ?", terms.session_id)[0]

        return await self._run(run, time.time() if now is None else now)

    async def save_receipt(self, receipt: Receipt) -> bool:
        """Store `receipt` as its session's newest if it is newer than the stored one and
        the session is not settled. True when it was written (and is now durable)."""
        tokens = receipt.tokens_used

        def run(ts: float) -> bool:
            cur = self._db().execute(
                "UPDATE sessions SET receipt_tokens = ?, receipt = ?,"
                " last_activity = ?, updated_at = ?"
                " WHERE session_id = ? AND receipt_tokens < ? AND state IN ('open', 'closing')",
                (tokens, json.dumps(receipt.to_dict()), ts, ts, receipt.session_id, tokens),
            )
            return cur.rowcount == 1

        return await self._run(run, time.time())

    async def touch(self, session_id: int) -> None:
        def run(ts: float) -> None:
            self._db().execute(
                "UPDATE sessions SET last_activity = ? WHERE session_id = ?", (ts, session_id)
            )

        await self._run(run, time.time())

    async def mark_closing(self, session_id: int, reason: str) -> bool:
        """open -> closing; True if this call made the change."""

        def run(ts: float) -> bool:
            cur = self._db().execute(
                "UPDATE sessions SET state = 'closing', close_reason = ?, closing_since = ?,"
                " updated_at = ? WHERE session_id = ? AND state = 'open'",
                (reason, ts, ts, session_id),
            )
            return cur.rowcount == 1

        return await self._run(run, time.time())

    async def set_submitted(self, session_id: int, tokens: int) -> None:
        """The chain is known to hold a receipt for at least `tokens`."""

        def run(ts: float) -> None:
            self._db().execute(
                "UPDATE sessions SET submitted_tokens = MAX(submitted_tokens, ?), updated_at = ?"
                " WHERE session_id = ?",
                (tokens, ts, session_id),
            )

        await self._run(run, time.time())

    async def mark_settled(
        self, session_id: int, *, tx: str | None, tokens: int | None, note: str | None = None
    ) -> None:
        def run(ts: float) -> None:
            self._db().execute(
                "UPDATE sessions SET state = 'settled', settle_tx = COALESCE(?, settle_tx),"
                " submitted_tokens = MAX(submitted_tokens, COALESCE(?, 0)),"
                " close_reason = COALESCE(?, close_reason), updated_at = ?, settled_at = ?"
                " WHERE session_id = ?",
                (tx, tokens, note, ts, ts, session_id),
            )

        await self._run(run, time.time())

    async def settled_since(self, since: float) -> list[SessionRecord]:
        """Rows settled at or after `since` (the ones a reorg may still undo)."""
        return await self._run(
            self._select, "WHERE state = 'settled' AND settled_at >= ? ORDER BY session_id", since
        )

    async def unsettle(self, session_id: int, chain_tokens: int, reason: str) -> bool:
        """settled -> closing: the chain no longer shows the settlement (a reorg undid
        it). What the chain is known to hold goes back to `chain_tokens`, so the stored
        receipt, if newer, is sent again. True if this call made the change."""

        def run(ts: float) -> bool:
            cur = self._db().execute(
                "UPDATE sessions SET state = 'closing', submitted_tokens = ?,"
                " close_reason = ?, closing_since = ?, settled_at = NULL, updated_at = ?"
                " WHERE session_id = ? AND state = 'settled'",
                (chain_tokens, reason, ts, ts, session_id),
            )
            return cur.rowcount == 1

        return await self._run(run, time.time())

    async def mark_failed(self, session_id: int, reason: str, *, tx: str | None = None) -> None:
        def run(ts: float) -> None:
            self._db().execute(
                "UPDATE sessions SET state = 'failed', close_reason = ?,"
                " settle_tx = COALESCE(?, settle_tx), updated_at = ? WHERE session_id = ?",
                (reason, tx, ts, session_id),
            )

        await self._run(run, time.time())


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None
