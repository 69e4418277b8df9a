"""Bounded log scans against an RPC that caps eth_getLogs (the fault proxy's cap)."""

from __future__ import annotations

from typing import Any

import pytest
from support.anvil import rpc

from fabstir.chain.local import test_private_key as key_of
from fabstir.chain.logscan import LogRange, LogScanError, event_logs, is_range_refusal, scan_logs


def _mint_spread(ns: Any, gaps: list[int]) -> list[int]:
    """Mint 1 unit per gap after mining `gap` empty blocks; the blocks of the mints."""
    sender = ns.w3.eth.account.from_key(key_of(2))
    blocks = []
    for gap in gaps:
        rpc(ns.url, "anvil_mine", hex(gap))
        tx = ns.usdc.functions.mint(ns.address, 1).build_transaction(
            {"from": sender.address, "nonce": ns.w3.eth.get_transaction_count(sender.address)}
        )
        h = ns.w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
        blocks.append(int(ns.w3.eth.wait_for_transaction_receipt(h)["blockNumber"]))
    return blocks


def test_capped_ranges_shrink_and_grow_back(ns: Any, proxy: Any, make_client: Any) -> None:
    blocks = _mint_spread(ns, [150, 150, 1, 1, 1, 1, 250, 150])
    proxy.cap_logs(max_range=100, max_results=2)
    client = make_client(proxy.url)
    transfer = client.contract("USDC").events.Transfer()
    found = event_logs(client, transfer, from_block=1, ranges=LogRange(initial=800, maximum=1000))
    assert [int(e["blockNumber"]) for e in found] == blocks
    assert all(int(e["args"]["value"]) == 1 for e in found)
    assert proxy.injected["logs_refused"] > 0
    # ~850 blocks at <= 100 a request is at least 9 requests; growing back after the
    # dense stretch (1-2 blocks a request there) keeps it far from the hundreds a
    # range left small would need.
    assert proxy.calls["eth_getLogs"] < 60


def test_scan_starts_where_it_is_told(ns: Any, proxy: Any, make_client: Any) -> None:
    blocks = _mint_spread(ns, [10, 10])
    client = make_client(proxy.url)
    found = scan_logs(client, address=ns.usdc.address, topics=None, from_block=blocks[1])
    assert [int(e["blockNumber"]) for e in found] == [blocks[1]]


def test_a_one_block_refusal_is_an_error(ns: Any, proxy: Any, make_client: Any) -> None:
    _mint_spread(ns, [1])
    proxy.cap_logs(max_range=1000, max_results=0)  # refuses anything with a result
    with pytest.raises(LogScanError, match="failed"):
        scan_logs(make_client(proxy.url), address=ns.usdc.address, topics=None, from_block=0)


def test_refusal_messages_of_public_rpcs() -> None:
    for text in (
        "block range too large",
        "query returned more than 10000 results",
        "eth_getLogs is limited to a 1000 block range",
        "Log response size exceeded",
        "limit exceeded",
    ):
        assert is_range_refusal(Exception(text)), text
    assert not is_range_refusal(Exception("invalid argument 0: hex string has odd length"))
