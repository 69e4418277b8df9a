"""The settlement loop: turns stored receipts into on-chain payment.

Every `interval` seconds, or when woken (a client closed a session; the loop
then waits `coalesce` seconds so that closes arriving together share one
transaction):

1. Local rules move `open` sessions to `closing`: the end is within
   `expiry_margin`, or nobody is connected and nothing happened for
   `idle_timeout`.
2. The chain is polled for the other open sessions (every `poll_interval`
   seconds): a client's on-chain `requestClose` (status Closing) makes the
   session `closing` at once, so the newest receipt lands inside the
   settlement window; one settled by someone else is recorded as settled.
   Sessions settled within the last `recheck_window` seconds are asked again:
   one the chain no longer shows settled (a reorg deeper than the confirmations
   undid it) goes back to `closing` with what the chain now holds, and step 3
   sends its stored receipt again.
3. Every `closing` session is settled with ONE `settleBatch` transaction (up to
   100 per transaction). An item carries the newest stored receipt when it is
   newer than what the chain is known to hold, else `tokensUsed = 0` (settle
   as recorded). Outcomes: Ok -> settled; NotOpen -> settled already;
   StaleReceipt -> settled again at once with `tokensUsed = 0`; anything else
   -> `failed`, with a log line. With `max_settle_fee`, a batch whose estimated
   cost per session (L2 gas at the max fee plus, on Base, the L1 data fee) is
   above it is held back so that later closes share it, unless one of its
   sessions is due: an on-chain close request or a reorged settlement (a
   window runs), the session's end within `expiry_margin`, closing for
   `settle_defer_max`, or shutdown.
4. Value at risk: the newest receipt of an open session is posted on chain
   (submitCheckpoint; the session stays open) once its unposted value reaches
   `post_receipt_value`, or once the time left until its deadline (its end plus
   the settlement window: after it anyone may finalize with what the chain
   holds) is below `post_receipt_before` seconds.

All state lives in SQLite, so a crash or restart picks up exactly where it
was. An unreachable RPC (ChainUnavailable) or a rejected transaction fails the
pass, not the loop: the next try comes after a backoff (1 s doubling up to the
interval), and the sessions stay `closing` until the chain answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from fabstir.chain.client import ChainError, ChainUnavailable, TxPending
from fabstir.chain.l1fee import TxCost
from fabstir.chain.marketplace import MAX_BATCH, OnChainSession, Outcome, SettleItem, Status
from fabstir.errors import SDKErrorCode
from fabstir.host.chain import HostChain
from fabstir.host.metrics import HostMetrics, kv
from fabstir.host.store import SessionRecord, SessionStore

log = logging.getLogger(__name__)


class SessionHooks(Protocol):
    """What the loop needs from the server."""

    def is_connected(self, session_id: int) -> bool: ...

    async def end_session(self, session_id: int, code: SDKErrorCode, message: str) -> None: ...


class SettlementLoop:
    def __init__(
        self,
        *,
        store: SessionStore,
        chain: HostChain,
        metrics: HostMetrics,
        hooks: SessionHooks,
        interval: float,
        poll_interval: float,
        coalesce: float = 0.0,
        idle_timeout: float,
        expiry_margin: float,
        post_receipt_value: int | None = None,
        post_receipt_before: float | None = None,
        settlement_window: int = 0,
        recheck_window: float = 0.0,
        max_settle_fee: int | None = None,
        settle_defer_max: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.chain = chain
        self.metrics = metrics
        self.hooks = hooks
        self.interval = interval
        self.poll_interval = poll_interval
        self.coalesce = coalesce
        self.idle_timeout = idle_timeout
        self.expiry_margin = expiry_margin
        self.post_receipt_value = post_receipt_value
        self.post_receipt_before = post_receipt_before or None  # 0: off
        self.settlement_window = settlement_window
        #: How far the chain's clock was ahead of ours at the last look (a local chain
        #: whose time was moved on); deadlines are the chain's.
        self._chain_ahead = 0.0
        self.recheck_window = recheck_window
        self.max_settle_fee = max_settle_fee
        self.settle_defer_max = settle_defer_max
        #: The newest batch cost estimate (for operators and tests).
        self.last_batch_cost: TxCost | None = None
        self._risk_tokens: set[str] = set()
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_poll = 0.0
        self._lock = asyncio.Lock()
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.passes = 0

    # -- lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="settlement")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop the periodic loop (a pass in progress finishes first)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def final_pass(self, timeout: float) -> bool:
        """Settle everything `closing`, retrying until done or `timeout`. True when done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.5
        while True:
            ok = await self.pass_once(poll_chain=False, force=True)
            if ok and not await self.store.by_state("closing"):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        delay = 0.0  # first pass at once: resume whatever a previous run left
        backoff = 1.0
        while not self._stopping:
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
                woken = True
            if woken and self.coalesce > 0 and not self._stopping:
                # Closes tend to come in bursts: wait a moment so one transaction
                # settles all of them.
                await asyncio.sleep(self.coalesce)
            self._wake.clear()
            if self._stopping:
                break
            if await self.pass_once():
                backoff = 1.0
                delay = self.interval
            else:
                delay = min(backoff, self.interval)
                backoff = min(backoff * 2, self.interval)

    # -- one pass

    async def pass_once(self, *, poll_chain: bool = True, force: bool = False) -> bool:
        """One pass of the rules above; False when the chain could not be reached.
        `force`: send every batch, however costly (shutdown)."""
        async with self._lock:
            self.passes += 1
            try:
                await self._close_due()
                if poll_chain:
                    await self._poll_chain()
                await self._settle_closing(force=force)
                await self._post_at_risk()
            except TxPending as exc:
                # Sent but not mined (a fee spike, a gap): not an outage. The sender
                # re-sends / replaces it; the next pass waits for it, sends no other.
                self._failed(f"settlement transaction pending: {exc}")
                return False
            except ChainUnavailable as exc:
                self._failed(f"chain unreachable: {exc}")
                return False
            except ChainError as exc:
                self._failed(f"settlement transaction failed: {exc}")
                return False
            except Exception as exc:  # the loop must survive anything
                log.exception(kv("settlement_pass_crashed"))
                self._failed(f"unexpected: {exc!r}")
                return False
            finally:
                with contextlib.suppress(Exception):
                    await self.refresh_gauges()
            self.last_success = self.clock()
            self.last_error = None
            self.metrics.last_settlement.set(self.last_success)
            return True

    def _failed(self, reason: str) -> None:
        self.last_error = reason
        self.metrics.settlement_failures.inc()
        log.warning(kv("settlement_pass_failed", reason=reason[:300]))

    async def refresh_gauges(self) -> None:
        counts = await self.store.counts()
        for state, n in counts.items():
            self.metrics.sessions.labels(state=state).set(n)
        self.metrics.settlement_lag.set(await self.lag())
        self.metrics.receipted_tokens.set(await self.store.receipted_tokens())
        at_risk: dict[str, int] = {}
        now = self.clock() + self._chain_ahead
        soonest = float("inf")
        for rec in await self.store.by_state("open", "closing"):
            at_risk[rec.token] = at_risk.get(rec.token, 0) + _unposted_value(rec)
            if rec.has_unsubmitted_receipt:
                soonest = min(soonest, self._time_left(rec, now))
        self.metrics.unposted_deadline.set(soonest)
        self._risk_tokens |= set(at_risk)
        for token in self._risk_tokens:  # a token with nothing at risk reads 0, not stale
            self.metrics.unposted_value.labels(token=token).set(at_risk.get(token, 0))

    async def lag(self) -> float:
        oldest = await self.store.oldest_closing_since()
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest)

    async def _close(self, session_id: int, reason: str, code: SDKErrorCode, message: str) -> None:
        await self.hooks.end_session(session_id, code, message)
        if await self.store.mark_closing(session_id, reason):
            log.info(kv("session_closing", session=session_id, reason=reason))

    async def _close_due(self) -> None:
        now = self.clock()
        for rec in await self.store.by_state("open"):
            if rec.ends_at - now <= self.expiry_margin:
                await self._close(
                    rec.session_id, "expiry", SDKErrorCode.SESSION_EXPIRED,
                    f"the session ends at {rec.ends_at}; settling it now",
                )  # fmt: skip
            elif (
                not self.hooks.is_connected(rec.session_id)
                and now - rec.last_activity >= self.idle_timeout
            ):
                await self._close(
                    rec.session_id, "idle", SDKErrorCode.INVALID_SESSION_STATE,
                    "the session was idle too long and is being settled",
                )  # fmt: skip

    async def _poll_chain(self) -> None:
        now = self.clock()
        if now - self._last_poll < self.poll_interval:
            return
        records = await self.store.by_state("open")
        recent = (
            await self.store.settled_since(now - self.recheck_window)
            if self.recheck_window > 0
            else []
        )
        if recent:
            # Cheap first: one receipt lookup per settlement transaction; only the
            # sessions of one the chain no longer has (or settled by others) are read.
            mined = await self.chain.mined(sorted({r.settle_tx for r in recent if r.settle_tx}))
            recent = [r for r in recent if r.settle_tx not in mined]
        ids = [r.session_id for r in (*records, *recent)]
        infos = await self.chain.sessions(ids) if ids else {}
        self._last_poll = now
        for rec in records:
            await self._reconcile(rec, infos.get(rec.session_id))
        for rec in recent:
            await self._recheck_settled(rec, infos.get(rec.session_id))

    async def _recheck_settled(self, rec: SessionRecord, info: OnChainSession | None) -> None:
        """A settled row whose settlement the chain no longer shows goes back to
        `closing` (its receipt was kept), to be settled again in this pass."""
        if info is None or info.status == Status.SETTLED:
            # Settled as recorded; or unknown altogether (the reorg took the session's
            # creation too): nothing can be settled then.
            return
        if await self.store.unsettle(rec.session_id, info.tokens_used, "reorg"):
            self.metrics.settlements.labels(outcome="reorged").inc()
            log.warning(
                kv(
                    "settlement_reorged",
                    session=rec.session_id,
                    tx=rec.settle_tx,
                    chain_status=info.status.name.lower(),
                    chain_tokens=info.tokens_used,
                    stored_tokens=rec.receipt_tokens,
                )
            )

    async def _reconcile(self, rec: SessionRecord, info: OnChainSession | None) -> None:
        sid = rec.session_id
        if info is None:
            await self.hooks.end_session(sid, SDKErrorCode.SESSION_NOT_FOUND, "unknown on chain")
            await self.store.mark_failed(sid, "unknown on chain")
            self.metrics.settlements.labels(outcome="unknown_session").inc()
            log.error(kv("session_failed", session=sid, reason="unknown on chain"))
        elif info.status == Status.CLOSING:
            await self._close(
                sid, "client_request", SDKErrorCode.INVALID_SESSION_STATE,
                "the client asked the chain to close the session",
            )  # fmt: skip
        elif info.status == Status.SETTLED:
            await self.hooks.end_session(sid, SDKErrorCode.INVALID_SESSION_STATE, "settled")
            await self.store.mark_settled(
                sid, tx=None, tokens=info.tokens_used, note="settled on chain by another party"
            )
            self.metrics.settlements.labels(outcome="settled_elsewhere").inc()
            level = logging.WARNING if rec.receipt_tokens > info.tokens_used else logging.INFO
            log.log(
                level,
                kv(
                    "session_settled_elsewhere",
                    session=sid,
                    chain_tokens=info.tokens_used,
                    stored_tokens=rec.receipt_tokens,
                ),
            )
        elif info.tokens_used > rec.submitted_tokens:
            await self.store.set_submitted(sid, info.tokens_used)

    def _time_left(self, rec: SessionRecord, now: float) -> float:
        """Seconds until anyone may finalize the session with what the chain holds."""
        return rec.ends_at + self.settlement_window - now

    def _at_risk_because(self, rec: SessionRecord, now: float) -> str | None:
        if not rec.has_unsubmitted_receipt:
            return None
        if self.post_receipt_value is not None and _unposted_value(rec) >= self.post_receipt_value:
            return "value"
        if self.post_receipt_before is not None and (
            self._time_left(rec, now) < self.post_receipt_before
        ):
            return "deadline"
        return None

    async def _post_at_risk(self) -> None:
        """Post the newest receipt of every open session whose unposted value reached
        `post_receipt_value`, or whose deadline is within `post_receipt_before` (the
        session stays open; settlement comes later)."""
        if self.post_receipt_value is None and self.post_receipt_before is None:
            return
        records = [r for r in await self.store.by_state("open") if r.has_unsubmitted_receipt]
        if not records:
            return
        now = self.clock()
        if self.post_receipt_before is not None:
            chain_now = await self.chain.now()
            self._chain_ahead = max(0.0, chain_now - now)
            now = max(now, chain_now)
        for rec in records:
            why = self._at_risk_because(rec, now)
            if why is None:
                continue
            item = self._item(rec)
            try:
                tx = await self.chain.submit_checkpoint(item)
            except ChainError as exc:  # e.g. the chain holds a newer one: settle decides
                log.warning(kv("receipt_post_failed", session=rec.session_id, error=str(exc)))
                continue
            await self.store.set_submitted(rec.session_id, rec.receipt_tokens)
            log.info(
                kv(
                    "receipt_posted",
                    session=rec.session_id,
                    reason=why,
                    time_left=round(self._time_left(rec, now)),
                    tokens=rec.receipt_tokens,
                    value=_unposted_value(rec),
                    tx=tx,
                )
            )

    async def _settle_closing(self, *, force: bool = False) -> None:
        closing = await self.store.by_state("closing")
        for start in range(0, len(closing), MAX_BATCH):
            batch = closing[start : start + MAX_BATCH]
            if not force and await self._hold_back(batch):
                continue
            await self._settle_batch(batch)

    def _due(self, rec: SessionRecord, now: float) -> bool:
        """Settle now whatever it costs: a settlement window is running (close requested
        on chain, a settlement a reorg undid), the session ends, or it waited enough."""
        return (
            rec.close_reason in ("client_request", "reorg")
            or now >= rec.ends_at - self.expiry_margin
            or now - (rec.closing_since or now) >= self.settle_defer_max
        )

    async def _hold_back(self, records: Sequence[SessionRecord]) -> bool:
        """True when the batch costs more per session than `max_settle_fee` and none of
        its sessions is due: it waits for more closes to share the transaction."""
        cap = self.max_settle_fee
        if cap is None:
            return False
        now = self.clock()
        if any(self._due(r, now) for r in records):
            return False
        cost = await self.chain.settle_cost([self._item(r) for r in records])
        self.last_batch_cost = cost
        if cost.total <= cap * len(records):
            return False
        self.metrics.settlement_deferrals.inc()
        log.info(
            kv(
                "settlement_held_back",
                sessions=len(records),
                cost=cost.total,
                l2_fee=cost.l2_fee,
                l1_fee=cost.l1_fee,
                cap_per_session=cap,
            )
        )
        return True

    @staticmethod
    def _item(rec: SessionRecord) -> SettleItem:
        if rec.receipt is not None and rec.has_unsubmitted_receipt:
            return SettleItem.of(rec.receipt)
        return SettleItem(rec.session_id)

    async def _settle_batch(self, records: Sequence[SessionRecord]) -> None:
        items = [self._item(r) for r in records]
        result = await self.chain.settle_batch(items)
        self.metrics.settlement_txs.inc()
        log.info(kv("settle_batch", tx=result.tx_hash, gas=result.gas_used, sessions=len(items)))
        stale: list[int] = []
        for rec, item in zip(records, items, strict=True):
            sid = rec.session_id
            if sid not in result.outcomes:
                continue  # an earlier, pending settlement was reported instead: next pass
            outcome = result.outcomes[sid]
            if outcome == Outcome.OK:
                tokens = result.settled_tokens.get(sid, item.tokens_used)
                await self.store.mark_settled(sid, tx=result.tx_hash, tokens=tokens)
                self.metrics.settlements.labels(outcome="ok").inc()
                self.metrics.settled_tokens.inc(tokens)
                if rec.closing_since is not None:
                    self.metrics.session_settlement_lag.observe(time.time() - rec.closing_since)
                log.info(kv("session_settled", session=sid, tokens=tokens, tx=result.tx_hash))
            elif outcome == Outcome.NOT_OPEN:
                await self.store.mark_settled(sid, tx=None, tokens=None, note="already settled")
                self.metrics.settlements.labels(outcome="already_settled").inc()
                log.info(kv("session_already_settled", session=sid))
            elif outcome == Outcome.STALE_RECEIPT:
                # The chain already holds this receipt or a newer one: settle as recorded.
                await self.store.set_submitted(sid, item.tokens_used)
                stale.append(sid)
            else:
                reason = outcome.name.lower()
                await self.store.mark_failed(sid, reason, tx=result.tx_hash)
                self.metrics.settlements.labels(outcome=reason).inc()
                log.error(
                    kv(
                        "session_failed",
                        session=sid,
                        reason=reason,
                        tokens=item.tokens_used,
                        tx=result.tx_hash,
                    )
                )
        if stale:
            fresh = [r for r in await self.store.by_state("closing") if r.session_id in stale]
            if fresh:
                await self._settle_batch(fresh)


def _unposted_value(rec: SessionRecord) -> int:
    """What the host would lose of this session if it never posted again."""
    return max(0, rec.receipt_tokens - rec.submitted_tokens) * rec.price
