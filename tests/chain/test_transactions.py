"""TxSender on a chain that loses replies, drops, underprices and rewinds transactions.

Each test reproduces one condition on a real anvil (through the fault proxy where the
RPC misbehaves) and checks the money: how many transactions this key really sent
(its nonce) and how many tokens were minted (once, never twice).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from support.anvil import rpc

from fabstir.chain.client import ChainError, TxPending
from fabstir.chain.transactions import FeePolicy, SentTx, TxSender

GWEI = 10**9


def nonce_of(ns: Any) -> int:
    return int(ns.w3.eth.get_transaction_count(ns.address, "latest"))


def minted(ns: Any) -> int:
    return int(ns.usdc.functions.balanceOf(ns.address).call())


def mint(sender: TxSender, amount: int = 1) -> Any:
    usdc = sender.client.contract("USDC")
    return usdc.functions.mint(sender.address, amount)


def test_reply_lost_after_acceptance_sends_once(ns: Any, proxy: Any, make_client: Any) -> None:
    # The node takes the raw transaction, then the RPC answers 429: the retry of the
    # same bytes is "nonce too low". The sender must find its hash, not sign anew.
    proxy.accept_then_fail("eth_sendRawTransaction", times=1, status=429, retry_after=0.1)
    sender = TxSender(make_client(proxy.url), ns.key, receipt_timeout=10)
    result = sender.send(mint(sender, 5), what="mint")
    assert proxy.injected["accept_then_status"] == 1
    assert nonce_of(ns) == 1
    assert minted(ns) == 5
    assert result.tx_hash == "0x" + ns.w3.eth.get_block(result.block_number)["transactions"][
        0
    ].hex().removeprefix("0x")


def test_hook_records_before_send(ns: Any, proxy: Any, make_client: Any) -> None:
    seen: list[tuple[SentTx, int]] = []

    def record(rec: SentTx) -> None:
        # Nothing has reached the node yet when the record is written.
        seen.append((rec, proxy.calls["eth_sendRawTransaction"]))

    sender = TxSender(make_client(proxy.url), ns.key, on_sent=record)
    result = sender.send(mint(sender), what="mint")
    assert len(seen) == 1
    rec, sends_before = seen[0]
    assert sends_before == 0
    assert rec.tx_hash == result.tx_hash and rec.nonce == 0 and rec.raw.startswith("0x02")


def test_nonce_resyncs_after_the_chain_rewinds(ns: Any, make_client: Any) -> None:
    sender = TxSender(make_client(ns.url), ns.key, receipt_timeout=5)
    snap = rpc(ns.url, "evm_snapshot")
    sender.send(mint(sender), what="mint 1")
    # A reorg (here: a revert) takes the mined transaction away; the sender's next
    # nonce must follow the chain, not a cached counter that is now ahead of it.
    rpc(ns.url, "evm_revert", snap)
    assert nonce_of(ns) == 0
    sender.send(mint(sender, 7), what="mint 2")
    assert nonce_of(ns) == 1
    assert minted(ns) == 7


def test_concurrent_sends_from_one_signer(ns: Any, make_client: Any) -> None:
    sender = TxSender(make_client(ns.url), ns.key, receipt_timeout=20)
    results: list[Any] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(sender.send(mint(sender), what="mint"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.tx_hash for r in results}) == 8
    assert nonce_of(ns) == 8 and minted(ns) == 8


def test_dropped_transaction_is_resent_as_signed(ns: Any, make_client: Any) -> None:
    rpc(ns.url, "evm_setAutomine", False)
    sender = TxSender(
        make_client(ns.url), ns.key, receipt_timeout=20, replace_after=0.5, poll_interval=0.1
    )
    rec = sender.submit(mint(sender, 3), what="mint")
    rpc(ns.url, "anvil_dropTransaction", rec.tx_hash)
    stop = threading.Event()

    def miner() -> None:
        while not stop.wait(0.3):
            rpc(ns.url, "evm_mine")

    t = threading.Thread(target=miner)
    t.start()
    try:
        result = sender.wait(rec)
    finally:
        stop.set()
        t.join()
    assert result.tx_hash == rec.tx_hash  # the same signed bytes, re-sent
    assert nonce_of(ns) == 1 and minted(ns) == 3


def _spike_then_mine(url: str, stop: threading.Event) -> None:
    rpc(url, "anvil_setNextBlockBaseFeePerGas", hex(100 * GWEI))
    while not stop.wait(0.3):
        rpc(url, "evm_mine")


def test_underpriced_transaction_is_replaced_with_a_higher_fee(ns: Any, make_client: Any) -> None:
    rpc(ns.url, "evm_setAutomine", False)
    fees = FeePolicy(tip=GWEI, max_fee_cap=1000 * GWEI)
    sender = TxSender(
        make_client(ns.url), ns.key, fees=fees, receipt_timeout=30, replace_after=0.6,
        poll_interval=0.1,
    )  # fmt: skip
    rec = sender.submit(mint(sender, 4), what="mint")
    assert rec.max_fee < 100 * GWEI  # priced before the spike
    stop = threading.Event()
    t = threading.Thread(target=_spike_then_mine, args=(ns.url, stop))
    t.start()
    try:
        result = sender.wait(rec)
    finally:
        stop.set()
        t.join()
    assert result.tx_hash != rec.tx_hash
    mined = ns.w3.eth.get_transaction(result.tx_hash)
    assert mined["nonce"] == rec.nonce
    assert mined["maxFeePerGas"] >= 100 * GWEI
    assert mined["maxPriorityFeePerGas"] >= rec.tip * 11 // 10
    assert nonce_of(ns) == 1 and minted(ns) == 4  # replaced, not sent twice


def test_stuck_at_the_fee_cap_is_pending_not_an_outage(ns: Any, make_client: Any) -> None:
    rpc(ns.url, "evm_setAutomine", False)
    fees = FeePolicy(tip=GWEI, max_fee_cap=5 * GWEI)
    signed: list[SentTx] = []
    sender = TxSender(
        make_client(ns.url), ns.key, fees=fees, receipt_timeout=3, replace_after=0.5,
        poll_interval=0.1, on_sent=signed.append,
    )  # fmt: skip
    rec = sender.submit(mint(sender), what="mint")
    stop = threading.Event()
    t = threading.Thread(target=_spike_then_mine, args=(ns.url, stop))
    t.start()
    try:
        with pytest.raises(TxPending) as info:
            sender.wait(rec)
    finally:
        stop.set()
        t.join()
    assert info.value.nonce == rec.nonce and rec.tx_hash in info.value.tx_hashes
    assert len(signed) >= 2  # it tried a replacement, up to the cap and no further
    assert all(rec.max_fee <= 5 * GWEI for rec in signed)
    assert {r.tx_hash for r in signed} == set(info.value.tx_hashes)
    assert nonce_of(ns) == 0


def test_restart_recovers_the_recorded_transaction(ns: Any, make_client: Any) -> None:
    # kill -9 between sending and seeing it mined: the new process has only the
    # record its hook wrote. It must find (or re-send) that transaction, not sign
    # a second one with the next nonce.
    rpc(ns.url, "evm_setAutomine", False)
    records: list[SentTx] = []
    first = TxSender(make_client(ns.url), ns.key, on_sent=records.append)
    first.submit(mint(first, 9), what="settle")
    rpc(ns.url, "anvil_dropTransaction", records[0].tx_hash)  # and the pool lost it
    rpc(ns.url, "evm_setAutomine", True)

    restarted = TxSender(make_client(ns.url), ns.key, receipt_timeout=10, replace_after=0.3)
    result = restarted.recover(records)
    assert result.tx_hash == records[0].tx_hash
    assert nonce_of(ns) == 1 and minted(ns) == 9


def test_recover_reports_a_superseded_record(ns: Any, make_client: Any) -> None:
    rpc(ns.url, "evm_setAutomine", False)
    records: list[SentTx] = []
    first = TxSender(make_client(ns.url), ns.key, on_sent=records.append)
    first.submit(mint(first, 9), what="settle")
    rpc(ns.url, "anvil_dropTransaction", records[0].tx_hash)
    rpc(ns.url, "evm_setAutomine", True)
    other = TxSender(make_client(ns.url), ns.key)
    other.send(mint(other, 1), what="something else")  # takes nonce 0
    with pytest.raises(ChainError, match="nonce 0 was used by another"):
        TxSender(make_client(ns.url), ns.key).recover(records)
    assert minted(ns) == 1


def test_abort_ends_a_pending_wait_at_once(ns: Any, make_client: Any) -> None:
    rpc(ns.url, "evm_setAutomine", False)
    sender = TxSender(make_client(ns.url), ns.key, receipt_timeout=60)
    rec = sender.submit(mint(sender), what="settle")
    threading.Timer(0.3, sender.abort).start()
    started = time.monotonic()
    with pytest.raises(TxPending):
        sender.wait(rec)
    assert time.monotonic() - started < 3
    assert sender.pending() == [rec]


def test_revert_at_estimation_signs_nothing(ns: Any, make_client: Any) -> None:
    sender = TxSender(make_client(ns.url), ns.key)
    usdc = sender.client.contract("USDC")
    with pytest.raises(ChainError, match="ERC20InsufficientBalance"):
        sender.send(usdc.functions.transfer(ns.address, 1), what="transfer")
    assert nonce_of(ns) == 0 and sender.pending() == []


def test_fee_policy_prices_and_bumps_within_the_cap() -> None:
    fees = FeePolicy(tip=2 * GWEI, base_fee_multiplier=2, max_fee_cap=30 * GWEI)
    assert fees.price(5 * GWEI, 0) == (12 * GWEI, 2 * GWEI)
    assert fees.price(20 * GWEI, 0) == (30 * GWEI, 2 * GWEI)  # capped
    bumped = fees.bump(12 * GWEI, 2 * GWEI, 5 * GWEI)
    assert bumped is not None
    assert bumped[0] >= 12 * GWEI * 11 // 10 and bumped[1] >= 2 * GWEI * 11 // 10
    assert fees.bump(30 * GWEI, 2 * GWEI, 5 * GWEI) is None  # no room left under the cap
    assert FeePolicy().bump(0, 0, 0) == (1, 1)  # zero fees still rise
    with pytest.raises(ValueError):
        FeePolicy(bump_percent=10)


def test_journal_and_adopt_after_a_crash(ns: Any, make_client: Any, tmp_path: Any) -> None:
    from fabstir.chain.txjournal import TxJournal

    journal = TxJournal(tmp_path / "host.db.txlog")
    rpc(ns.url, "evm_setAutomine", False)
    first = TxSender(make_client(ns.url), ns.key, on_sent=journal.append)
    rec = first.submit(mint(first, 6), what="settle")
    with journal.path.open("a") as f:
        f.write('{"tx_hash": "0xtorn')  # the crash cut the last line short
    rpc(ns.url, "anvil_dropTransaction", rec.tx_hash)

    restarted = TxSender(make_client(ns.url), ns.key, receipt_timeout=10)
    records = journal.load()
    assert records == [rec]
    assert restarted.adopt(records) == [rec]
    assert restarted.pending() == [rec]
    assert ns.w3.eth.get_transaction(rec.tx_hash)["nonce"] == 0  # re-sent as signed
    rpc(ns.url, "evm_setAutomine", True)
    rpc(ns.url, "evm_mine")
    assert restarted.wait(rec).tx_hash == rec.tx_hash
    assert restarted.adopt(journal.load()) == []  # mined: nothing left to adopt
    journal.keep([])
    assert journal.load() == []
    assert nonce_of(ns) == 1 and minted(ns) == 6


def test_a_reorg_before_enough_confirmations_resends_it(ns: Any, make_client: Any) -> None:
    sender = TxSender(
        make_client(ns.url), ns.key, confirmations=3, receipt_timeout=20, replace_after=0.3,
        poll_interval=0.1,
    )  # fmt: skip
    rec = sender.submit(mint(sender, 8), what="settle")  # automine: in a block at once
    assert ns.w3.eth.get_transaction_receipt(rec.tx_hash) is not None
    # The block holding it is replaced by an empty one: the transaction is gone.
    rpc(ns.url, "anvil_reorg", 1, [])
    assert minted(ns) == 0
    stop = threading.Event()

    def miner() -> None:
        while not stop.wait(0.2):
            rpc(ns.url, "evm_mine")

    t = threading.Thread(target=miner)
    t.start()
    try:
        result = sender.wait(rec)
    finally:
        stop.set()
        t.join()
    assert result.tx_hash == rec.tx_hash  # the same transaction, mined again
    head = ns.w3.eth.block_number
    assert head - result.block_number + 1 >= 3
    assert nonce_of(ns) == 1 and minted(ns) == 8


def test_fees_and_confirmations_per_network_come_from_the_params() -> None:
    from fabstir.chain.params import load_params_file
    from fabstir.chain.transactions import confirmations_for_chain, fee_policy_for_chain

    gas = load_params_file("base-sepolia").gas
    live = fee_policy_for_chain(84532)
    assert live.max_fee_cap == gas.max_fee_cap_wei and live.tip == gas.max_priority_fee_wei
    assert confirmations_for_chain(84532) == max(1, gas.confirmations)
    assert fee_policy_for_chain(31337) == FeePolicy() and confirmations_for_chain(31337) == 1


def test_a_node_lagging_on_latest_sends_nothing_twice(
    ns: Any, proxy: Any, make_client: Any
) -> None:
    rpc(ns.url, "anvil_mine", hex(10))
    proxy.lag_latest(5)
    sender = TxSender(
        make_client(proxy.url), ns.key, receipt_timeout=10, replace_after=0.2, poll_interval=0.1
    )
    for amount in (1, 2, 3):
        sender.send(mint(sender, amount), what="mint")
    assert proxy.injected["lagged"] > 0
    assert nonce_of(ns) == 3 and minted(ns) == 6


def test_a_gap_is_filled_only_where_no_transaction_holds_the_nonce(
    ns: Any, make_client: Any
) -> None:
    # Another process of the same key has a transaction pending at nonce 0; ours is at
    # nonce 1 behind it. That is no gap: nothing may replace the other transaction.
    rpc(ns.url, "evm_setAutomine", False)
    # (cheaply priced, so a filler at the node's suggested fee would replace it)
    other = TxSender(make_client(ns.url), ns.key, fees=FeePolicy(tip=1, base_fee_multiplier=1))
    theirs = other.submit(mint(other, 5), what="theirs")
    ours = TxSender(make_client(ns.url), ns.key, receipt_timeout=2, replace_after=0.2)
    rec = ours.submit(mint(ours, 7), what="ours")
    assert rec.nonce == 1
    with pytest.raises(TxPending):
        ours.wait(rec)  # it tries to push, but fills nothing
    assert ns.w3.eth.get_transaction(theirs.tx_hash)["nonce"] == 0  # still theirs
    rpc(ns.url, "evm_setAutomine", True)
    rpc(ns.url, "evm_mine")
    assert ours.wait(rec).tx_hash and nonce_of(ns) == 2 and minted(ns) == 12


def test_a_failing_record_hook_sends_nothing_and_frees_the_nonce(ns: Any, make_client: Any) -> None:
    def full_disk(rec: SentTx) -> None:
        raise OSError("No space left on device")

    sender = TxSender(make_client(ns.url), ns.key, on_sent=full_disk)
    with pytest.raises(OSError):
        sender.send(mint(sender), what="settle")
    assert nonce_of(ns) == 0 and sender.pending() == []
    sender.on_sent = None
    assert (
        ns.w3.eth.get_transaction(sender.send(mint(sender, 2), what="settle").tx_hash)["nonce"] == 0
    )
