"""ERC-20 pulls from one signer, safe to issue concurrently.

The marketplace takes a wallet's tokens with transferFrom, so each pull needs an
allowance. Approving "exactly my deposit" from several threads at once let the
approvals overwrite each other (11 of 24 concurrent `start_session` calls failed
with ERC20InsufficientAllowance). Here, under one lock per SDK, a pull checks the
allowance *minus what earlier in-flight pulls will still take*, approves exactly
its own amount when that is short, and submits its transaction before the lock is
released. One nonce sequence orders everything: an approval is mined after every
earlier pull, so setting the allowance to this pull's amount is exactly right.
"""

from __future__ import annotations

import threading
from collections import Counter


class AllowanceBook:
    """Per-signer bookkeeping of pulls sent and not yet mined, by (token, spender)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pending: Counter[tuple[str, str]] = Counter()

    def pending(self, token: str, spender: str) -> int:
        """What in-flight pulls will still take (call with `lock` held)."""
        return self._pending[(token.lower(), spender.lower())]

    def add(self, token: str, spender: str, amount: int) -> None:
        """Count a pull just submitted (call with `lock` held, before releasing it)."""
        self._pending[(token.lower(), spender.lower())] += amount

    def release(self, token: str, spender: str, amount: int) -> None:
        """The pull is mined (or failed): stop counting it."""
        key = (token.lower(), spender.lower())
        with self.lock:
            self._pending[key] -= amount
            if self._pending[key] <= 0:
                del self._pending[key]
