"""Sending transactions on a chain that throttles, drops, delays and reorganises.

A transaction is identified by its hash from the moment it is signed. Its record
(`SentTx`: hash, nonce, raw bytes) goes to the `on_sent` hook *before* it is sent,
so a caller (the host's store) can persist it; after a crash `TxSender.recover`
finds it again by that hash. A send whose answer was lost (a 429 after the node
accepted it, a timeout) is resolved by looking the hash up, never by signing a
second transaction: that was how one `start_session` opened two sessions.

One `TxSender` per signer holds its nonce sequence: the chain's pending count when
nothing of ours is in flight (so a reorg or a dropped transaction resynchronises
it), the next free one while several calls are in flight (calls from many threads
are safe). Fees are EIP-1559, set explicitly (`FeePolicy`), capped per network.
A transaction not mined within `replace_after` seconds is re-sent when the node
forgot it, replaced with a higher fee (at least the replacement minimum) when it is
underpriced, and lower nonces that block it are re-sent or filled. A transaction
that still is not mined raises `TxPending`, never `ChainUnavailable`: a stuck
transaction is not an RPC outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TransactionNotFound,
    Web3RPCError,
)

from fabstir.chain.client import ChainClient, ChainError, ChainUnavailable, TxPending

log = logging.getLogger(__name__)

#: Nodes refuse a replacement unless both fees rise by 10% (geth, anvil); keep a margin.
MIN_BUMP_PERCENT = 10


@dataclass(frozen=True)
class FeePolicy:
    """EIP-1559 pricing: max fee = base fee * multiplier + tip, never above the cap."""

    #: Priority fee in wei; None takes the node's eth_maxPriorityFeePerGas.
    tip: int | None = None
    base_fee_multiplier: int = 2
    #: Highest max fee per gas this signer pays (None: no cap, for local chains).
    max_fee_cap: int | None = None
    #: How much a replacement raises both fees, in percent (> MIN_BUMP_PERCENT).
    bump_percent: int = 20

    def __post_init__(self) -> None:
        if self.bump_percent <= MIN_BUMP_PERCENT:
            raise ValueError(f"bump_percent must exceed {MIN_BUMP_PERCENT}")

    @classmethod
    def from_gas_config(cls, gas: Any) -> FeePolicy:
        """From a params file's `gas` block (`fabstir.chain.params.GasConfig`)."""
        return cls(
            tip=int(gas.max_priority_fee_wei),
            base_fee_multiplier=int(gas.base_fee_multiplier),
            max_fee_cap=int(gas.max_fee_cap_wei) or None,
        )

    def price(self, base_fee: int, suggested_tip: int) -> tuple[int, int]:
        """(max fee, tip) for a new transaction."""
        tip = self.tip if self.tip is not None else suggested_tip
        max_fee = base_fee * self.base_fee_multiplier + tip
        if self.max_fee_cap is not None and max_fee > self.max_fee_cap:
            log.warning(
                "fee capped: wanted %d wei/gas, cap %d (the transaction may wait)",
                max_fee,
                self.max_fee_cap,
            )
            max_fee = self.max_fee_cap
        return max_fee, min(tip, max_fee)

    def bump(self, max_fee: int, tip: int, base_fee: int) -> tuple[int, int] | None:
        """(max fee, tip) of a replacement, or None when the cap leaves no valid one."""
        new_tip = _raise(tip, self.bump_percent)
        new_max = max(
            _raise(max_fee, self.bump_percent), base_fee * self.base_fee_multiplier + new_tip
        )
        if self.max_fee_cap is not None:
            new_max = min(new_max, self.max_fee_cap)
        new_tip = min(new_tip, new_max)
        if new_max < _raise(max_fee, MIN_BUMP_PERCENT) or new_tip < _raise(tip, MIN_BUMP_PERCENT):
            return None
        return new_max, new_tip


def _raise(value: int, percent: int) -> int:
    return value + max(1, -(-value * percent // 100))


@dataclass(frozen=True)
class SentTx:
    """A signed transaction, as recorded before it is sent (enough to find it again)."""

    tx_hash: str
    nonce: int
    sender: str
    raw: str
    what: str
    max_fee: int
    tip: int
    #: Hash of the transaction this one replaces (same nonce, higher fee), if any.
    replaces: str | None = None


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    gas_used: int
    block_number: int
    receipt: Any


@dataclass
class _Slot:
    """Everything signed for one nonce: the unsigned transaction (None when recovered
    from a record) and each signed version, newest last."""

    tx: dict[str, Any] | None
    versions: list[SentTx] = field(default_factory=list)
    #: When it was last sent, re-sent or replaced (monotonic): waits that come and
    #: go (one per settlement pass) still replace a transaction that sits too long.
    pushed_at: float = field(default_factory=time.monotonic)


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex().removeprefix("0x")


class TxSender:
    """Sends transactions from one key (thread-safe); see the module docstring."""

    def __init__(
        self,
        client: ChainClient,
        private_key: str | bytes,
        *,
        receipt_timeout: float = 120.0,
        fees: FeePolicy | None = None,
        replace_after: float = 30.0,
        confirmations: int = 1,
        poll_interval: float = 0.2,
        on_sent: Callable[[SentTx], None] | None = None,
    ) -> None:
        self.client = client
        self.account: LocalAccount = Account.from_key(private_key)
        self.address: ChecksumAddress = self.account.address
        self.receipt_timeout = receipt_timeout
        self.fees = fees or FeePolicy()
        self.replace_after = replace_after
        self.confirmations = max(1, confirmations)
        self.poll_interval = poll_interval
        self.on_sent = on_sent
        self._lock = threading.RLock()
        self._slots: dict[int, _Slot] = {}
        self._stop = threading.Event()

    # --- public ----------------------------------------------------------------

    def send(self, fn: Any, *, value: int = 0, what: str = "transaction") -> TxResult:
        """Estimate, sign, record, send and wait for `fn` (a bound contract function).

        Raises ChainError (a revert at estimation: nothing signed; rejected; reverted
        on chain), TxPending (sent, not mined within receipt_timeout), or
        ChainUnavailable (the RPC stayed down while waiting).
        """
        return self.wait(self.submit(fn, value=value, what=what))

    def submit(self, fn: Any, *, value: int = 0, what: str = "transaction") -> SentTx:
        """Sign, record and send `fn`; return at once with its record."""
        with self._lock:
            for _ in range(3):
                nonce = self._next_nonce()
                max_fee, tip = self._price()
                params: dict[str, Any] = {
                    "from": self.address,
                    "value": value,
                    "chainId": self.client.chain_id,
                    "nonce": nonce,
                    "maxFeePerGas": max_fee,
                    "maxPriorityFeePerGas": tip,
                }
                try:
                    tx = self.client.retry.run(
                        lambda p=params: fn.build_transaction(p),  # type: ignore[misc]
                        f"{what}: estimate",
                    )
                except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                    raise self.client.errors.from_exception(exc) from exc
                rec = self._sign(tx, what, None)
                self._slots[nonce] = _Slot(dict(tx), [])
                try:
                    self._record(nonce, rec)
                except BaseException:
                    # Not recorded, so not sent: the nonce stays free for the next one.
                    del self._slots[nonce]
                    raise
                outcome = self._broadcast(rec)
                if outcome != "nonce_taken":
                    return rec
                # Another transaction of this key took the nonce before ours reached
                # the node (another process): ours can never be mined; sign at the next.
                log.warning("%s: nonce %d taken by another transaction; resyncing", what, nonce)
                del self._slots[nonce]
            raise ChainError("Rejected", (), f"{what}: nonces kept being taken by other senders")

    def wait(self, rec: SentTx, *, timeout: float | None = None) -> TxResult:
        """Wait for `rec` (or a replacement of it) to be mined with enough confirmations,
        re-sending, replacing and filling gaps as needed; at most `timeout` seconds
        (default receipt_timeout), then TxPending (it stays tracked: wait again)."""
        nonce = rec.nonce
        with self._lock:
            slot = self._slots.setdefault(nonce, _Slot(None, [rec]))
            if not slot.versions:
                slot.versions.append(rec)
        deadline = time.monotonic() + (self.receipt_timeout if timeout is None else timeout)
        outage: ChainUnavailable | None = None
        while True:
            if self._stop.is_set():
                raise TxPending(f"{rec.what}: stopped while pending", self._hashes(nonce), nonce)
            try:
                found = self._find_receipt(nonce)
                outage = None
                if found is not None:
                    version, receipt = found
                    if self._confirmed(receipt):
                        with self._lock:
                            self._slots.pop(nonce, None)
                        return self._result(version, receipt)
                    slot.pushed_at = time.monotonic()  # mined: wait for confirmations only
                elif time.monotonic() - slot.pushed_at >= self.replace_after:
                    self._unstick(nonce)
                    slot.pushed_at = time.monotonic()
            except ChainUnavailable as exc:
                outage = exc
            if time.monotonic() > deadline:
                if outage is not None:
                    raise ChainUnavailable(
                        f"{rec.what}: RPC unreachable while waiting for {rec.tx_hash}: {outage}"
                    ) from outage
                raise TxPending(
                    f"{rec.what}: transaction {self._hashes(nonce)[-1]} (nonce {nonce}) "
                    "not mined yet",
                    self._hashes(nonce),
                    nonce,
                )
            self._stop.wait(self.poll_interval)

    def recover(self, records: Sequence[SentTx]) -> TxResult:
        """Resume a transaction recorded before a crash (all versions of one nonce):
        found by hash, re-sent as signed when the node forgot it, never signed anew.
        Raises ChainError("Superseded") when another transaction used its nonce."""
        if not records:
            raise ValueError("recover needs at least one record")
        nonce = records[0].nonce
        with self._lock:
            slot = self._slots.setdefault(nonce, _Slot(None, []))
            known = {v.tx_hash for v in slot.versions}
            slot.versions.extend(r for r in records if r.tx_hash not in known)
        found = self._find_receipt(nonce)
        if found is None:
            newest = records[-1]
            if self._lookup(newest.tx_hash) == "unknown":
                if self._count("latest") > nonce:
                    with self._lock:
                        self._slots.pop(nonce, None)
                    raise ChainError(
                        "Superseded", (), f"{newest.what}: nonce {nonce} was used by another tx"
                    )
                self._broadcast(newest)
        return self.wait(records[-1])

    def estimate(self, fn: Any, *, value: int = 0) -> Any:
        """What sending `fn` now would cost at most (`fabstir.chain.l1fee.TxCost`: L2 gas
        at the max fee plus, on Base, the L1 data fee). Signs and sends nothing."""
        from fabstir.chain.l1fee import tx_cost

        max_fee, tip = self._price()
        params: dict[str, Any] = {
            "from": self.address,
            "value": value,
            "chainId": self.client.chain_id,
            "nonce": self._count("pending"),
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
        }
        try:
            tx = self.client.retry.run(lambda: fn.build_transaction(params), "estimate")
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            raise self.client.errors.from_exception(exc) from exc
        return tx_cost(self.client, tx)

    def adopt(self, records: Sequence[SentTx]) -> list[SentTx]:
        """Take over transactions recorded by an earlier run of this key (a crash):
        those whose nonce the chain has not used yet are tracked again, and re-sent
        as signed when the node forgot them. Returns what is still unfinished (all
        versions); `pending()` / `wait()` then pick them up. Nothing is signed."""
        mine = [r for r in records if r.sender.lower() == str(self.address).lower()]
        if not mine:
            return []
        latest = self._count("latest")
        open_ = [r for r in mine if r.nonce >= latest]
        by_nonce: dict[int, list[SentTx]] = {}
        for r in open_:
            by_nonce.setdefault(r.nonce, []).append(r)
        for nonce, versions in sorted(by_nonce.items()):
            with self._lock:
                slot = self._slots.setdefault(nonce, _Slot(None, []))
                known = {v.tx_hash for v in slot.versions}
                slot.versions.extend(v for v in versions if v.tx_hash not in known)
            if all(self._lookup(v.tx_hash) == "unknown" for v in versions):
                log.warning(
                    "%s: recorded %s unknown to the node; re-sending it",
                    versions[-1].what,
                    versions[-1].tx_hash,
                )
                self._broadcast(versions[-1])
        return open_

    def pending(self) -> list[SentTx]:
        """The newest version of every transaction sent and not yet seen mined."""
        with self._lock:
            return [s.versions[-1] for _, s in sorted(self._slots.items()) if s.versions]

    def abort(self) -> None:
        """Make every wait (now and later) raise TxPending at once: for shutdown."""
        self._stop.set()

    # --- chain reads -----------------------------------------------------------

    def _count(self, tag: str) -> int:
        w3 = self.client.w3
        return int(
            self.client.retry.run(
                lambda: w3.eth.get_transaction_count(self.address, tag),  # type: ignore[arg-type]
                f"nonce ({tag})",
            )
        )

    def _lookup(self, tx_hash: str) -> str:
        """'mined', 'pending' or 'unknown' (the node does not have it)."""
        w3 = self.client.w3

        def run() -> str:
            try:
                tx = w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return "unknown"
            return "mined" if tx.get("blockNumber") is not None else "pending"

        return self.client.retry.run(run, "eth_getTransactionByHash")

    def _receipt(self, tx_hash: str) -> Any:
        w3 = self.client.w3

        def run() -> Any:
            try:
                return w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return None

        return self.client.retry.run(run, "eth_getTransactionReceipt")

    def _find_receipt(self, nonce: int) -> tuple[SentTx, Any] | None:
        for version in reversed(self._versions(nonce)):
            receipt = self._receipt(version.tx_hash)
            if receipt is not None:
                return version, receipt
        return None

    def _confirmed(self, receipt: Any) -> bool:
        if self.confirmations <= 1:
            return True
        w3 = self.client.w3
        head = int(self.client.retry.run(lambda: w3.eth.block_number, "eth_blockNumber"))
        return head - int(receipt["blockNumber"]) + 1 >= self.confirmations

    def _base_fee(self) -> int:
        w3 = self.client.w3
        block = self.client.retry.run(lambda: w3.eth.get_block("latest"), "eth_getBlock")
        return int(block.get("baseFeePerGas", 0) or 0)

    def _price(self) -> tuple[int, int]:
        w3 = self.client.w3
        suggested = 0
        if self.fees.tip is None:
            suggested = int(self.client.retry.run(lambda: w3.eth.max_priority_fee, "tip"))
        return self.fees.price(self._base_fee(), suggested)

    # --- nonces and slots -------------------------------------------------------

    def _versions(self, nonce: int) -> list[SentTx]:
        with self._lock:
            slot = self._slots.get(nonce)
            return list(slot.versions) if slot else []

    def _hashes(self, nonce: int) -> list[str]:
        return [v.tx_hash for v in self._versions(nonce)]

    def _next_nonce(self) -> int:
        """The chain's pending count, or past our own transactions still in flight.
        Nothing is cached across idle periods: a reorg or a dropped transaction
        cannot leave the sequence ahead of the chain."""
        latest = self._count("latest")
        pending = self._count("pending")
        live = [n for n in self._slots if n >= latest]
        return max([pending, *(n + 1 for n in live)])

    def _record(self, nonce: int, rec: SentTx) -> None:
        # The hook runs before the send: a record exists for everything that may land.
        if self.on_sent is not None:
            self.on_sent(rec)
        self._slots[nonce].versions.append(rec)

    def _sign(self, tx: dict[str, Any], what: str, replaces: str | None) -> SentTx:
        signed = self.account.sign_transaction(tx)
        return SentTx(
            tx_hash=_hex(signed.hash),
            nonce=int(tx["nonce"]),
            sender=str(self.address),
            raw=_hex(signed.raw_transaction),
            what=what,
            max_fee=int(tx.get("maxFeePerGas", 0)),
            tip=int(tx.get("maxPriorityFeePerGas", 0)),
            replaces=replaces,
        )

    def _broadcast(self, rec: SentTx) -> str:
        """'sent', 'unconfirmed' (no answer: resolved later by hash), 'underpriced' or
        'nonce_taken'; other refusals raise ChainError("Rejected")."""
        w3 = self.client.w3
        raw = bytes.fromhex(rec.raw[2:])
        try:
            self.client.retry.run(lambda: w3.eth.send_raw_transaction(raw), f"{rec.what}: send")
            return "sent"
        except ChainUnavailable as exc:
            log.warning(
                "%s: send of %s unanswered (%s); will look it up", rec.what, rec.tx_hash, exc
            )
            return "unconfirmed"
        except Web3RPCError as exc:
            text = str(exc).lower()
            if "already known" in text or "already imported" in text or "known transaction" in text:
                return "sent"
            if "underpriced" in text or "base fee" in text or "fee cap" in text:
                return "underpriced"
            if "nonce" in text and ("low" in text or "too" in text or "used" in text):
                # The reply to an earlier try of this very transaction may have been lost.
                try:
                    if any(self._lookup(h) != "unknown" for h in self._hashes(rec.nonce)):
                        return "sent"
                except ChainUnavailable:
                    return "unconfirmed"
                return "nonce_taken"
            with self._lock:
                slot = self._slots.get(rec.nonce)
                if slot is not None and len(slot.versions) <= 1:
                    del self._slots[rec.nonce]
            raise ChainError(
                "Rejected", (), f"{rec.what}: node rejected the transaction: {exc}"
            ) from exc

    def _unstick(self, nonce: int) -> None:
        """Not mined after replace_after: find out why and push."""
        versions = self._versions(nonce)
        newest = versions[-1]
        latest = self._count("latest")
        if latest > nonce:
            # The nonce is used but no version of ours has a receipt: another transaction
            # took it (or a reorg is under way). Look once more before giving up.
            if self._find_receipt(nonce) is None and all(
                self._lookup(v.tx_hash) == "unknown" for v in versions
            ):
                with self._lock:
                    self._slots.pop(nonce, None)
                raise ChainError(
                    "Superseded",
                    (),
                    f"{newest.what}: nonce {nonce} was used by another transaction; "
                    f"{newest.tx_hash} will never be mined",
                )
            return
        if latest < nonce:
            self._fill_gap(latest, nonce)
        state = self._lookup(newest.tx_hash)
        if state == "unknown":
            log.warning("%s: %s dropped by the node; re-sending it", newest.what, newest.tx_hash)
            if self._broadcast(newest) != "underpriced":
                return
            # Dropped because the base fee rose past it: only a higher fee gets it in.
            self._replace(nonce)
            return
        if latest == nonce:
            self._replace(nonce)

    def _fill_gap(self, latest: int, nonce: int) -> None:
        """Lower nonces that block ours: re-send ours, fill the rest with a no-op."""
        # The node's pending count stops at the first nonce it has no transaction
        # for: below it something (maybe another process's transaction, or a node
        # lagging on `latest`) holds the nonce, and a filler would replace it.
        pending = self._count("pending")
        for n in range(latest, nonce):
            versions = self._versions(n)
            if versions:
                if self._lookup(versions[-1].tx_hash) == "unknown":
                    self._broadcast(versions[-1])
                continue
            if n < pending:
                continue
            log.warning("nonce gap at %d (chain at %d, ours %d): filling it", n, latest, nonce)
            max_fee, tip = self._price()
            tx = {
                "from": self.address,
                "to": self.address,
                "value": 0,
                "gas": 21_000,
                "chainId": self.client.chain_id,
                "nonce": n,
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": tip,
            }
            with self._lock:
                self._slots[n] = _Slot(tx, [])
                rec = self._sign(tx, f"nonce {n} gap filler", None)
                self._record(n, rec)
            self._broadcast(rec)

    def _replace(self, nonce: int) -> None:
        with self._lock:
            slot = self._slots.get(nonce)
            if slot is None or slot.tx is None or not slot.versions:
                if slot is not None and slot.versions:
                    self._broadcast(slot.versions[-1])  # recovered: re-send as signed
                return
            newest = slot.versions[-1]
            bumped = self.fees.bump(newest.max_fee, newest.tip, self._base_fee())
            if bumped is None:
                log.warning("%s: %s stuck at the fee cap; waiting", newest.what, newest.tx_hash)
                return
            tx = {**slot.tx, "maxFeePerGas": bumped[0], "maxPriorityFeePerGas": bumped[1]}
            rec = self._sign(tx, newest.what, newest.tx_hash)
            log.warning(
                "%s: %s not mined; replacing it with %s (max fee %d -> %d)",
                newest.what,
                newest.tx_hash,
                rec.tx_hash,
                newest.max_fee,
                rec.max_fee,
            )
            slot.tx = tx
            self._record(nonce, rec)
        self._broadcast(rec)

    def _result(self, version: SentTx, receipt: Any) -> TxResult:
        if receipt["status"] != 1:
            raise ChainError(
                "Reverted", (), f"{version.what}: transaction {version.tx_hash} reverted on chain"
            )
        return TxResult(
            version.tx_hash, int(receipt["gasUsed"]), int(receipt["blockNumber"]), receipt
        )


def fee_policy_for_chain(chain_id: int) -> FeePolicy:
    """The fee policy of a chain's params file (deployments/params/<network>.json,
    its `gas` block: tip, multiplier, cap); local chains price as the node suggests."""
    from fabstir.chain.local import LOCAL_CHAIN_ID
    from fabstir.chain.params import DEFAULT_PARAMS_BY_CHAIN, ParamsError, load_params_file

    name = DEFAULT_PARAMS_BY_CHAIN.get(chain_id)
    if name is None or chain_id in (LOCAL_CHAIN_ID, 1337):
        return FeePolicy()
    try:
        return FeePolicy.from_gas_config(load_params_file(name).gas)
    except (ParamsError, OSError, ValueError) as exc:
        log.warning("no fee policy for chain %d (%s); using the node's suggestion", chain_id, exc)
        return FeePolicy()


def confirmations_for_chain(chain_id: int) -> int:
    """Blocks on top of a transaction before it counts as final on this chain: the
    params file's `gas.confirmations` (a reorg deeper than that is not expected);
    1 on local chains."""
    from fabstir.chain.local import LOCAL_CHAIN_ID
    from fabstir.chain.params import DEFAULT_PARAMS_BY_CHAIN, ParamsError, load_params_file

    name = DEFAULT_PARAMS_BY_CHAIN.get(chain_id)
    if name is None or chain_id in (LOCAL_CHAIN_ID, 1337):
        return 1
    try:
        return max(1, load_params_file(name).gas.confirmations)
    except (ParamsError, OSError, ValueError):
        return 1
