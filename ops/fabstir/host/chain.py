"""The worker's view of the chain: sessions to serve, the model it announces, settlement.

A thin layer over `fabstir.chain.client` (web3, retries with backoff, decoded
reverts, one nonce sequence). Every call is blocking web3 and runs in a thread
(`asyncio.to_thread`) so the event loop keeps serving other sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from web3.exceptions import TransactionNotFound
from web3.logs import DISCARD

from fabstir.chain.client import ChainClient, ChainError, ChainUnavailable
from fabstir.chain.l1fee import TxCost
from fabstir.chain.logscan import LogScanError, event_logs
from fabstir.chain.marketplace import (
    ModelStatus,
    OnChainSession,
    Outcome,
    SettleItem,
    Status,
    to_hex,
)
from fabstir.chain.transactions import TxSender
from fabstir.errors import SDKError, SDKErrorCode
from fabstir.protocol.receipts import same_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """ModelRegistry.getModel, decoded."""

    model_id: str
    sha256: str  # 64 lowercase hex digits, no 0x (as hashlib gives it)
    size: int
    status: ModelStatus
    repo: str
    file: str


class SessionRejected(SDKError):
    """The session may not be served; `code` goes into the error frame."""


def check_servable(
    session: OnChainSession | None, *, session_id: int, host: str, model_id: str, now: float
) -> OnChainSession:
    """Raise SessionRejected unless this worker may serve the session now."""
    if session is None:
        raise SessionRejected(SDKErrorCode.SESSION_NOT_FOUND, f"session {session_id} not found")
    if not same_address(session.host, host):
        raise SessionRejected(
            SDKErrorCode.WRONG_HOST, f"session {session_id} belongs to host {session.host}"
        )
    if session.model_id.lower() != model_id.lower():
        raise SessionRejected(
            SDKErrorCode.MODEL_MISMATCH,
            f"session {session_id} is for model {session.model_id}; this host serves {model_id}",
        )
    if session.status != Status.ACTIVE:
        raise SessionRejected(
            SDKErrorCode.INVALID_SESSION_STATE,
            f"session {session_id} is {session.status.name.lower()}, not active",
        )
    if session.ends_at <= now:
        raise SessionRejected(
            SDKErrorCode.SESSION_EXPIRED, f"session {session_id} ended at {session.ends_at}"
        )
    if session.tokens_used >= session.max_tokens:
        raise SessionRejected(
            SDKErrorCode.SESSION_BUDGET_EXHAUSTED,
            f"session {session_id} has used all {session.max_tokens} tokens",
        )
    return session


@dataclass(frozen=True)
class BatchResult:
    tx_hash: str
    gas_used: int
    outcomes: dict[int, Outcome]
    #: session id -> tokens the chain paid for (from SessionSettled)
    settled_tokens: dict[int, int]


class HostChain:
    """Async facade over ChainClient/TxSender for the worker (one instance per worker)."""

    def __init__(self, client: ChainClient, sender: TxSender, *, first_block: int = 0) -> None:
        self.client = client
        self.sender = sender
        #: Where event scans start: the deployment's first block.
        self.first_block = first_block
        #: How long a settlement pass waits on an earlier, still pending settlement.
        self.pending_wait = 2.0
        self.address: str = sender.address
        self.marketplace = client.contract("JobMarketplace")
        self.model_registry = client.contract("ModelRegistry")
        self.node_registry = client.contract("NodeRegistry")

    @property
    def marketplace_address(self) -> str:
        return str(self.marketplace.address)

    async def chain_id(self) -> int:
        return await asyncio.to_thread(lambda: self.client.chain_id)

    async def genesis_hash(self) -> str:
        """Hash of block 0: tells apart two chains with the same id (a fresh anvil)."""

        def run() -> str:
            block = self.client.retry.run(
                lambda: self.client.w3.eth.get_block(0), "eth_getBlockByNumber"
            )
            return to_hex(block["hash"])

        return await asyncio.to_thread(run)

    # -- sessions

    def _get_session(self, session_id: int) -> OnChainSession | None:
        try:
            info = self.client.call(self.marketplace.functions.getSession(session_id), "getSession")
        except ChainError as exc:
            if exc.name == "UnknownSession":
                return None
            raise
        return OnChainSession.from_tuple(info)

    async def session(self, session_id: int) -> OnChainSession | None:
        """The session, or None if the chain does not know it."""
        return await asyncio.to_thread(self._get_session, session_id)

    async def session_and_time(self, session_id: int) -> tuple[OnChainSession | None, float]:
        """The session and "now" as the chain will judge it: the later of the wall clock
        and the newest block's timestamp (a local chain may run ahead of the clock)."""

        def run() -> tuple[OnChainSession | None, float]:
            return self._get_session(session_id), max(
                time.time(), float(self.client.block_timestamp())
            )

        return await asyncio.to_thread(run)

    async def now(self) -> float:
        """Now as the chain judges deadlines: the later of the wall clock and the newest
        block's timestamp."""
        return await asyncio.to_thread(
            lambda: max(time.time(), float(self.client.block_timestamp()))
        )

    async def settlement_window(self) -> int:
        """JobMarketplace.settlementWindow: seconds after a session's end (or a close
        request) during which the host may still post a newer receipt."""
        fn = self.marketplace.functions.settlementWindow()
        return int(await asyncio.to_thread(self.client.call, fn, "settlementWindow"))

    async def sessions(self, session_ids: Sequence[int]) -> dict[int, OnChainSession | None]:
        """Several sessions (one call each, in one thread)."""

        def run() -> dict[int, OnChainSession | None]:
            return {sid: self._get_session(sid) for sid in session_ids}

        return await asyncio.to_thread(run)

    async def mined(self, tx_hashes: Sequence[str]) -> set[str]:
        """Those of `tx_hashes` the chain has a receipt for now (a transaction a reorg
        took out has none)."""
        w3 = self.client.w3

        def receipt(tx_hash: str) -> bool:
            try:
                return w3.eth.get_transaction_receipt(tx_hash) is not None  # type: ignore[arg-type]
            except TransactionNotFound:
                return False

        def run() -> set[str]:
            return {
                h
                for h in tx_hashes
                if self.client.retry.run(lambda h=h: receipt(h), "eth_getTransactionReceipt")  # type: ignore[misc]
            }

        return await asyncio.to_thread(run)

    async def checkpoint_hash(self, session_id: int, tokens: int) -> str | None:
        """The content hash of the recorded receipt for `tokens`, from CheckpointSubmitted
        (None when it cannot be found). A bounded scan from the deployment's first block."""

        def run() -> str | None:
            event = self.marketplace.events.CheckpointSubmitted()
            try:
                logs = event_logs(
                    self.client,
                    event,
                    from_block=self.first_block,
                    topics=["0x" + session_id.to_bytes(32, "big").hex()],
                )
            except (ChainUnavailable, LogScanError) as exc:
                log.warning("event=checkpoint_lookup_failed session=%s error=%r", session_id, exc)
                return None
            for entry in reversed(logs):
                if int(entry["args"]["tokensUsed"]) == tokens:
                    return to_hex(entry["args"]["contentHash"])
            return None

        return await asyncio.to_thread(run)

    # -- the model

    async def model(self, model_id: str) -> ModelEntry | None:
        def run() -> ModelEntry | None:
            try:
                m = self.client.call(
                    self.model_registry.functions.getModel(bytes.fromhex(model_id[2:])), "getModel"
                )
            except ChainError as exc:
                if exc.name == "UnknownModel":
                    return None
                raise
            return ModelEntry(
                model_id=model_id.lower(),
                sha256=bytes(m[0]).hex(),
                size=int(m[1]),
                status=ModelStatus(int(m[3])),
                repo=str(m[4]),
                file=str(m[5]),
            )

        return await asyncio.to_thread(run)

    async def serves_model(self, model_id: str) -> bool:
        def run() -> bool:
            fn = self.node_registry.functions.hostServesModel(
                self.address, bytes.fromhex(model_id[2:])
            )
            return bool(self.client.call(fn, "hostServesModel"))

        return await asyncio.to_thread(run)

    # -- settlement

    async def submit_checkpoint(self, item: SettleItem) -> str:
        """Record a receipt on chain without settling (JobMarketplace.submitCheckpoint);
        returns the tx hash. Raises like settle_batch."""

        def run() -> str:
            fn = self.marketplace.functions.submitCheckpoint(*item.as_tuple())
            return self.sender.send(fn, what=f"submitCheckpoint({item.session_id})").tx_hash

        return await asyncio.to_thread(run)

    async def settle_cost(self, items: Sequence[SettleItem]) -> TxCost:
        """What one settleBatch of `items` would cost at most now: L2 gas at the max fee
        plus, on an OP-stack chain (Base), the L1 data fee from the GasPriceOracle."""
        fn = self.marketplace.functions.settleBatch([i.as_tuple() for i in items])
        cost: TxCost = await asyncio.to_thread(self.sender.estimate, fn)
        return cost

    async def settle_batch(self, items: Sequence[SettleItem]) -> BatchResult:
        """One settleBatch transaction; per-item outcomes from its events.

        Raises ChainUnavailable (RPC down through every retry), ChainError (the
        whole transaction reverted or was rejected) or TxPending (sent, not mined
        yet: stuck behind a fee or a gap; the sender keeps pushing it).
        """

        def run() -> BatchResult:
            earlier: str | None = None
            for pending in self.sender.pending():
                # A settlement from an earlier pass is still unmined: never send a
                # second one beside it. Its wait re-sends or replaces it as needed;
                # still pending -> TxPending (the pass fails, not the loop).
                earlier = self.sender.wait(pending, timeout=self.pending_wait).tx_hash
            if earlier is not None:
                # It is mined now: report what it settled (the rest goes next pass),
                # never a second transaction for the same sessions.
                sessions = {i.session_id: self._get_session(i.session_id) for i in items}
                done = {
                    sid: s.tokens_used
                    for sid, s in sessions.items()
                    if s is not None and s.status == Status.SETTLED
                }
                if done:
                    return BatchResult(earlier, 0, dict.fromkeys(done, Outcome.OK), done)
            return run_batch(items)

        def run_batch(items: Sequence[SettleItem]) -> BatchResult:
            fn = self.marketplace.functions.settleBatch([i.as_tuple() for i in items])
            result = self.sender.send(fn, what=f"settleBatch({len(items)})")
            skipped = self.marketplace.events.BatchItemSkipped().process_receipt(
                result.receipt, errors=DISCARD
            )
            settled = self.marketplace.events.SessionSettled().process_receipt(
                result.receipt, errors=DISCARD
            )
            outcomes = {i.session_id: Outcome.OK for i in items}
            for ev in skipped:
                outcomes[int(ev["args"]["sessionId"])] = Outcome(int(ev["args"]["reason"]))
            tokens = {int(ev["args"]["sessionId"]): int(ev["args"]["tokensUsed"]) for ev in settled}
            return BatchResult(result.tx_hash, result.gas_used, outcomes, tokens)

        return await asyncio.to_thread(run)
