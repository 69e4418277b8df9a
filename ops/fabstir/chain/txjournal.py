"""A durable record of every transaction a key signed, written before it is sent.

`TxSender(on_sent=journal.append)` appends each `SentTx` (hash, nonce, raw bytes)
as one JSON line and fsyncs it before the node sees the transaction. After a crash
(kill -9 between sending and seeing it mined) the restarted process hands the
journal to `TxSender.adopt`, which finds each unfinished transaction by its hash and
re-sends the same signed bytes if the node forgot it: never a second transaction
with a new nonce for work already sent.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict
from pathlib import Path

from fabstir.chain.transactions import SentTx


class TxJournal:
    """Append-only JSON lines of SentTx at `path` (thread-safe)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, rec: SentTx) -> None:
        line = json.dumps(asdict(rec), separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def load(self) -> list[SentTx]:
        """Every record, oldest first (a torn last line from a crash is skipped)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            try:
                records.append(SentTx(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return records

    def keep(self, records: list[SentTx]) -> None:
        """Rewrite the journal with only `records` (those still unfinished)."""
        with self._lock:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(
                "".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in records),
                encoding="utf-8",
            )
            os.replace(tmp, self.path)
