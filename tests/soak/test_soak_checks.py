"""The soak's own end checks, on hand-made records: a check that misreads what
happened fails the run for nothing, or passes it when money was lost."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALICE = "0xdF3e18d64BC6A983f673Ab319CCaE4f1a57C7097"
BOB = "0x1CBd3b2770909D4e10f157cABC84C7264073C9Ec"
FIRST_TX, SECOND_TX = "0x" + "aa" * 32, "0x" + "bb" * 32


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_under_test", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_a_client_whose_session_id_was_reused_by_its_own_next_session_is_reorged(
    soak: ModuleType,
) -> None:
    # Seen in a short soak: alice's session 8 vanished in a reorg, her next session got
    # id 8 again; comparing by id and depositor charged the old 52 acked tokens to it.
    vanished = soak.ClientSession(8, ALICE, "USDC", signed=52, acked=52, tx_hash=FIRST_TX)
    current = soak.ClientSession(8, ALICE, "USDC", signed=48, acked=48, tx_hash=SECOND_TX)
    assert soak.reorged_away(vanished, ALICE, SECOND_TX)
    assert not soak.reorged_away(current, ALICE, SECOND_TX)


def test_the_same_transaction_in_another_hex_spelling_is_the_same_session(
    soak: ModuleType,
) -> None:
    rec = soak.ClientSession(3, ALICE, "USDC", tx_hash=FIRST_TX.upper().replace("0X", "0x"))
    assert not soak.reorged_away(rec, ALICE.lower(), FIRST_TX.removeprefix("0x"))


def test_a_session_now_held_by_another_client_or_never_created_is_reorged(
    soak: ModuleType,
) -> None:
    rec = soak.ClientSession(5, ALICE, "USDC", tx_hash=FIRST_TX)
    assert soak.reorged_away(rec, BOB, FIRST_TX)
    assert soak.reorged_away(rec, ALICE, None)


def test_an_orphan_without_a_recorded_transaction_is_checked_as_the_chains(
    soak: ModuleType,
) -> None:
    orphan = soak.ClientSession(6, ALICE, "USDC", ending="failed_start")
    assert not soak.reorged_away(orphan, ALICE, FIRST_TX)
    assert soak.reorged_away(orphan, BOB, FIRST_TX)
