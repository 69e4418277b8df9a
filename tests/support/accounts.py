"""ape's funded test accounts as eth-account keys (anvil's mnemonic), and the key files
a worker reads."""

from __future__ import annotations

import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

MNEMONIC = "test test test test test test test test test test test junk"


Account.enable_unaudited_hdwallet_features()


def test_key(index: int) -> LocalAccount:
    """The private key of ape's test account `index` (anvil's mnemonic)."""
    return Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def write_key_file(path: Path, key: LocalAccount) -> Path:
    path.write_text(key.key.hex() + "\n")
    os.chmod(path, 0o600)
    return path
