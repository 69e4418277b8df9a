"""The one way this package reads event logs: from a deployment's first block, in
bounded block ranges, shrinking a range the RPC refuses and growing it back.

Public RPCs cap eth_getLogs by block range ("block range too large", "range
exceeds 1000"), by result count ("query returned more than 10000 results",
"limit exceeded") or by response size. A refused range is halved until it passes;
after each success the next range doubles again (up to `max_range`), so one busy
stretch does not slow the rest of the scan. A scan never starts at block 0 by
accident: callers pass the deployment's first block (deployments/<chainId>.json).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address
from web3.exceptions import Web3RPCError

from fabstir.chain.client import ChainClient, RetryPolicy

log = logging.getLogger(__name__)

#: Messages public RPCs answer when a query is too big (Alchemy, Infura, QuickNode,
#: Base's public endpoint, geth, reth, anvil's own cap).
_TOO_BIG = re.compile(
    r"range|too large|too many|limit|exceed|more than|results|response size|max(imum)? "
    r"block|timeout|too big",
    re.IGNORECASE,
)


class LogScanError(Exception):
    """The RPC refused even a one-block query, or answered with another error."""


@dataclass(frozen=True)
class LogRange:
    """How big each eth_getLogs request is."""

    #: The first request's block span.
    initial: int = 2_000
    #: Never ask for more than this (many public RPCs allow 10,000 at most).
    maximum: int = 10_000


def is_range_refusal(exc: Exception) -> bool:
    """Whether an RPC error says "ask for less" rather than "this is wrong"."""
    return bool(_TOO_BIG.search(str(exc)))


def iter_log_chunks(
    client: ChainClient | Any,
    *,
    address: str | Sequence[str],
    topics: Sequence[Any] | None,
    from_block: int,
    to_block: int | None = None,
    ranges: LogRange | None = None,
) -> Iterator[list[Any]]:
    """Yield the raw logs of each accepted range, in block order.

    `to_block` None means the head at the start of the scan. Raises ChainUnavailable
    (RPC down through the client's retries) or LogScanError.
    """
    ranges = ranges or LogRange()
    # A ChainClient brings its retry policy; a bare Web3 (ape's, in deploy) gets one.
    w3: Any = getattr(client, "w3", client)
    retry: RetryPolicy = getattr(client, "retry", None) or RetryPolicy()
    if to_block is None:
        to_block = int(retry.run(lambda: w3.eth.block_number, "eth_blockNumber"))
    addresses = (
        to_checksum_address(address)
        if isinstance(address, str)
        else [to_checksum_address(a) for a in address]
    )
    span = max(1, min(ranges.initial, ranges.maximum))
    block = max(0, from_block)
    while block <= to_block:
        upper = min(block + span - 1, to_block)
        query: Any = {"address": addresses, "fromBlock": block, "toBlock": upper}
        if topics is not None:
            query["topics"] = list(topics)
        try:
            logs = retry.run(_get_logs(w3, query), "eth_getLogs")
        except Web3RPCError as exc:
            if span > 1 and is_range_refusal(exc):
                span = max(1, span // 2)
                log.info(
                    "eth_getLogs refused %d blocks (%s); trying %d", upper - block + 1, exc, span
                )
                continue
            raise LogScanError(f"eth_getLogs {block}..{upper} failed: {exc}") from exc
        yield list(logs)
        block = upper + 1
        span = min(ranges.maximum, span * 2)


def _get_logs(w3: Any, query: Any) -> Callable[[], Any]:
    return lambda: w3.eth.get_logs(query)


def scan_logs(
    client: ChainClient | Any,
    *,
    address: str | Sequence[str],
    topics: Sequence[Any] | None,
    from_block: int,
    to_block: int | None = None,
    ranges: LogRange | None = None,
) -> list[Any]:
    """Every matching log from `from_block` to `to_block` (default: the head)."""
    found: list[Any] = []
    for chunk in iter_log_chunks(
        client,
        address=address,
        topics=topics,
        from_block=from_block,
        to_block=to_block,
        ranges=ranges,
    ):
        found.extend(chunk)
    return found


def event_logs(
    client: ChainClient | Any,
    event: Any,
    *,
    from_block: int,
    to_block: int | None = None,
    topics: Sequence[Any] | None = None,
    ranges: LogRange | None = None,
) -> list[Any]:
    """Decoded logs of one web3 contract event (`contract.events.X()`), optionally
    narrowed by `topics` after the event's own signature topic."""
    topic = event.topic
    signature = "0x" + (topic.removeprefix("0x") if isinstance(topic, str) else bytes(topic).hex())
    raw = scan_logs(
        client,
        address=event.address,
        topics=[signature, *(topics or [])],
        from_block=from_block,
        to_block=to_block,
        ranges=ranges,
    )
    return [event.process_log(entry) for entry in raw]


def deployment_block(client: ChainClient, address: str) -> int:
    """The block `address` got its code in (binary search over eth_getCode), for
    callers given bare addresses without a deployment record. A node that prunes
    old state cannot answer: then 0, with a warning (the scan still is bounded)."""
    w3 = client.w3
    target = to_checksum_address(address)

    def has_code(block: int) -> bool:
        return bool(client.retry.run(lambda: w3.eth.get_code(target, block), "eth_getCode"))

    head = int(client.retry.run(lambda: w3.eth.block_number, "eth_blockNumber"))
    try:
        if not has_code(head):
            return head
        lo, hi = 0, head
        while lo < hi:
            mid = (lo + hi) // 2
            if has_code(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo
    except Web3RPCError as exc:
        log.warning("cannot find the deployment block of %s (%s); scanning from 0", target, exc)
        return 0
