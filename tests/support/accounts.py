"""ape's funded test accounts as eth-account keys, and the key files a worker reads."""

from __future__ import annotations

import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir.chain.local import test_private_key


def test_key(index: int) -> LocalAccount:
    """The key of ape's test account `index` (anvil's standard mnemonic)."""
    return Account.from_key(test_private_key(index))


def write_key_file(path: Path, key: LocalAccount) -> Path:
    path.write_text(key.key.hex() + "\n")
    os.chmod(path, 0o600)
    return path
