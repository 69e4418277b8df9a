"""SessionJobManager: the direct JobMarketplace calls for sessions ("session jobs").

Who does what (DESIGN.md sections 2 and 6):

- the client opens a session (`create_session_job`), signs EIP-712 receipts
  as tokens arrive (the SessionManager does that), and may ask to close
  (`request_close`, with its newest receipt);
- the host (or anyone holding a receipt) records receipts on chain
  (`submit_checkpoint_proof`) and settles (`settle`, `settle_batch`);
- anyone may `finalize` once the settlement window after a close request or
  expiry has passed.

Every call checks the session's state, the caller's role and the receipt
against chain views first, so a call that would revert raises an SDKError
with a specific code before anything is signed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from eth_utils.crypto import keccak
from web3.logs import DISCARD

from fabstir.chain.client import ChainUnavailable
from fabstir.chain.logscan import LogRange, LogScanError, scan_logs
from fabstir.chain.marketplace import MAX_BATCH, OnChainSession
from fabstir.protocol.receipts import Receipt, check_receipt, same_address
from fabstir.sdk._base import (
    ZERO_ADDRESS,
    ManagerBase,
    check_address,
    check_bytes32,
    check_uint,
    fail,
    translate_errors,
)
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.preflight import SessionPreflight
from fabstir.sdk.types import (
    BatchSettleResult,
    ReceiptOutcome,
    SessionConfig,
    SessionInfo,
    SessionJobResult,
    SessionStatus,
    SettleItem,
    SettlementFinality,
)

SESSION_CREATED_TOPIC: Final = (
    "0x"
    + keccak(
        text="SessionCreated(uint256,address,address,bytes32,address,uint256,uint256,uint256,uint256,address)"
    ).hex()
)

_OUTCOME_ERRORS: Final[Mapping[ReceiptOutcome, SDKErrorCode]] = {
    ReceiptOutcome.UNKNOWN_SESSION: SDKErrorCode.SESSION_NOT_FOUND,
    ReceiptOutcome.NOT_OPEN: SDKErrorCode.INVALID_SESSION_STATE,
    ReceiptOutcome.NOT_HOST: SDKErrorCode.NOT_AUTHORIZED,
    ReceiptOutcome.STALE_RECEIPT: SDKErrorCode.STALE_RECEIPT,
    ReceiptOutcome.EXCEEDS_DEPOSIT: SDKErrorCode.SESSION_BUDGET_EXHAUSTED,
    ReceiptOutcome.BAD_SIGNATURE: SDKErrorCode.PROOF_VERIFICATION_FAILED,
}


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def _receipt_of(value: Receipt | Mapping[str, Any]) -> Receipt:
    if isinstance(value, Receipt):
        return value
    if isinstance(value, Mapping):
        return Receipt.from_mapping(value)
    fail(SDKErrorCode.INVALID_ARGUMENT, f"receipt must be a Receipt or a mapping, got {value!r}")


class SessionJobManager(ManagerBase):
    """Direct contract calls for session jobs (the reference's SessionJobManager)."""

    # --- reading ---------------------------------------------------------------

    def get_session(self, session_id: int) -> SessionInfo:
        """The session as the chain knows it; SDKError(SESSION_NOT_FOUND) if none."""
        sid = check_uint(session_id, "session_id", positive=True)
        market = self._contract("JobMarketplace")
        raw = self._call(market.functions.getSession(sid), f"getSession({sid})")
        return self._decode_session(raw)

    def _decode_session(self, raw: Sequence[Any]) -> SessionInfo:
        s = OnChainSession.from_tuple(raw)
        tok = self._token(s.token)
        return SessionInfo(
            session_id=s.session_id,
            depositor=s.depositor,
            host=s.host,
            session_key=s.session_key,
            token=tok.address,
            model_id=s.model_id,
            price_per_token=s.price,
            deposit_raw=s.deposit,
            deposit=tok.format(s.deposit),
            max_tokens=s.max_tokens,
            tokens_used=s.tokens_used,
            ends_at=s.ends_at,
            finalize_after=s.finalize_after,
            proof_interval=s.proof_interval,
            status=s.status,
        )

    def get_remaining_budget(self, session_id: int) -> tuple[int, str]:
        """(tokens the session can still pay for, their cost as a human string)."""
        info = self.get_session(session_id)
        market = self._contract("JobMarketplace")
        tokens, amount = self._call(
            market.functions.remainingBudget(info.session_id), "remainingBudget"
        )
        return int(tokens), self._token(info.token).format(int(amount))

    def get_session_count(self) -> int:
        """Sessions ever created (ids run 1..count)."""
        market = self._contract("JobMarketplace")
        return int(self._call(market.functions.sessionCount(), "sessionCount"))

    def check_receipt(
        self, session_id: int, tokens_used: int, content_hash: str | bytes, signature: str | bytes
    ) -> ReceiptOutcome:
        """Would the contract accept this receipt now? (JobMarketplace.checkReceipt)"""
        sid = check_uint(session_id, "session_id", positive=True)
        used = check_uint(tokens_used, "tokens_used")
        content = check_bytes32(content_hash, "content_hash")
        sig = _signature_hex(signature)
        market = self._contract("JobMarketplace")
        return ReceiptOutcome(
            int(self._call(market.functions.checkReceipt(sid, used, content, sig), "checkReceipt"))
        )

    def get_sessions_of_user(
        self,
        address: str | None = None,
        *,
        from_block: int | None = None,
        to_block: int | None = None,
    ) -> list[SessionInfo]:
        """Sessions `address` (default: the signer) opened, oldest first, in their
        current state. Read from SessionCreated events (depositor is indexed):
        sessions of a user are not stored on chain."""
        who = self._address_or_me(address, "address", "get_sessions_of_user")
        ids = self._session_ids(2, who, from_block, to_block)
        return [self.get_session(i) for i in ids]

    def get_sessions_of_host(
        self,
        address: str | None = None,
        *,
        from_block: int | None = None,
        to_block: int | None = None,
    ) -> list[SessionInfo]:
        """Sessions served by host `address` (default: the signer), oldest first,
        from SessionCreated events (host is indexed)."""
        who = self._address_or_me(address, "address", "get_sessions_of_host")
        ids = self._session_ids(3, who, from_block, to_block)
        return [self.get_session(i) for i in ids]

    def _session_ids(
        self, topic_index: int, who: str, from_block: int | None, to_block: int | None
    ) -> list[int]:
        market = self._contract("JobMarketplace")
        chain = self._sdk.chain
        w3 = chain.w3
        with translate_errors("eth_blockNumber"):
            latest = int(chain.retry.run(lambda: w3.eth.block_number, "eth_blockNumber"))
        start = (
            self._sdk.start_block() if from_block is None else check_uint(from_block, "from_block")
        )
        end = latest if to_block is None else min(check_uint(to_block, "to_block"), latest)
        # Topics: event, sessionId, depositor, host (all three are indexed).
        topics: list[str | None] = [SESSION_CREATED_TOPIC, None, None, None]
        topics[topic_index] = _topic(who)
        event = market.events.SessionCreated()
        step = self._sdk.config.log_block_range
        try:
            logs = scan_logs(
                chain,
                address=market.address,
                topics=topics,
                from_block=start,
                to_block=end,
                ranges=LogRange(initial=step, maximum=step),
            )
        except ChainUnavailable as exc:
            raise SDKError(SDKErrorCode.NETWORK_ERROR, f"eth_getLogs: {exc}") from exc
        except LogScanError as exc:
            raise SDKError(SDKErrorCode.NETWORK_ERROR, str(exc)) from exc
        ids = [int(event.process_log(entry)["args"]["sessionId"]) for entry in logs]
        return ids

    # --- opening -----------------------------------------------------------------

    def create_session_job(
        self,
        provider: str,
        token_address: str | None,
        deposit_amount: str | None = None,
        session_config: SessionConfig | Mapping[str, Any] | None = None,
        *,
        model_id: str | None = None,
        session_key: str | None = None,
    ) -> SessionJobResult:
        """Open a session with host `provider`, paid in `token_address` ("USDC",
        "ETH" or a token address), escrowing `deposit_amount` (human string;
        defaults to the config's deposit_amount).

        Whatever the in-contract balance lacks is taken from the wallet
        (createSessionFromWallet): ETH as value, an ERC-20 after an approval
        the SDK sends when the allowance is short. `model_id` defaults to the
        host's model when it serves exactly one. `session_key` is the address
        that will sign receipts (default: the signer itself).

        Raises SDKError before any transaction: AUTH_REQUIRED,
        INVALID_ADDRESS, INVALID_AMOUNT, INVALID_ARGUMENT, DEPOSIT_TOO_LOW,
        HOST_NOT_FOUND, MODEL_NOT_FOUND, MODEL_NOT_APPROVED, MODEL_MISMATCH
        (host does not serve the model), PRICE_TOO_LOW, INSUFFICIENT_BALANCE,
        SERVICE_UNAVAILABLE (marketplace paused); a revert or a failed
        approval raises TRANSACTION_FAILED / APPROVAL_FAILED (or the code of
        the decoded custom error).
        """
        what = "create_session_job"
        me = self._me(what)
        host = check_address(provider, "provider")
        token = self._token(token_address)
        config = SessionConfig.from_value(
            session_config if session_config is not None else {}, deposit_amount=deposit_amount
        )
        deposit = token.parse(config.deposit_amount, "deposit_amount")
        key = ZERO_ADDRESS if session_key is None else check_address(session_key, "session_key")
        plan = SessionPreflight(self._sdk).plan(me, host, token, deposit, config, model_id)
        market = self._contract("JobMarketplace")
        fn = market.functions.createSessionFromWallet(
            host,
            plan.model_id,
            token.address,
            deposit,
            plan.price_per_token,
            plan.duration,
            plan.proof_interval,
            key,
        )
        # The plan checked the wallet against what it must add (purpose None).
        result, approval = self._pay_and_send(
            fn,
            what,
            token=token,
            spender=self._sdk.get_contract_address("JobMarketplace"),
            amount=plan.from_wallet,
            purpose=None,
        )
        events = market.events.SessionCreated().process_receipt(result.receipt, errors=DISCARD)
        if not events:  # pragma: no cover - the contract always emits it
            fail(
                SDKErrorCode.TRANSACTION_FAILED,
                f"{what}: no SessionCreated event in {result.tx_hash}",
            )
        args = events[0]["args"]
        return SessionJobResult(
            session_id=int(args["sessionId"]),
            tx_hash=result.tx_hash,
            deposit=token.format(int(args["deposit"])),
            deposit_raw=int(args["deposit"]),
            token=token.address,
            model_id=plan.model_id,
            host=host,
            receipt=result.receipt,
            approval_tx_hash=approval,
        )

    # --- receipts ---------------------------------------------------------------

    def submit_checkpoint_proof(
        self,
        session_id: int,
        tokens_used: int,
        proof_data: str | bytes,
        content_hash: str | bytes,
        *,
        checkpoint_number: int | None = None,
    ) -> str:
        """Record a client-signed receipt on chain; returns the tx hash.

        `proof_data` is the client's 65-byte EIP-712 Checkpoint signature over
        (session_id, tokens_used, content_hash) (DESIGN.md section 6: not the
        reference's free-form 64 bytes). Anyone holding the receipt may submit,
        normally the host. `checkpoint_number` is accepted for the reference's
        signature and ignored: receipts are cumulative.

        Raises SDKError before sending: SESSION_NOT_FOUND, INVALID_SESSION_STATE,
        INVALID_PROOF (malformed signature), STALE_RECEIPT (not above the
        recorded count), SESSION_BUDGET_EXHAUSTED (more tokens than the
        deposit pays for), PROOF_VERIFICATION_FAILED (not the session key).
        """
        del checkpoint_number
        receipt = self._checked_receipt(session_id, tokens_used, proof_data, content_hash)
        market = self._contract("JobMarketplace")
        fn = market.functions.submitCheckpoint(*receipt.call_args())
        return self._send(fn, f"submitCheckpoint({receipt.session_id})").tx_hash

    def submit_receipt(self, receipt: Receipt | Mapping[str, Any]) -> str:
        """`submit_checkpoint_proof` for a `Receipt` (as the SessionManager keeps them)."""
        r = _receipt_of(receipt)
        return self.submit_checkpoint_proof(
            r.session_id, r.tokens_used, r.signature, r.content_hash
        )

    def verify_receipt(self, receipt: Receipt | Mapping[str, Any]) -> SessionInfo:
        """Check a receipt against its session like the contract would; returns
        the session. Raises the SDKErrors listed on submit_checkpoint_proof."""
        r = _receipt_of(receipt)
        info = self.get_session(r.session_id)
        self._check_receipt_against(info, r)
        return info

    def _checked_receipt(
        self, session_id: int, tokens_used: int, proof_data: str | bytes, content_hash: str | bytes
    ) -> Receipt:
        sid = check_uint(session_id, "session_id", positive=True)
        used = check_uint(tokens_used, "tokens_used", positive=True)
        content = check_bytes32(content_hash, "content_hash")
        receipt = Receipt(sid, used, content, _signature_hex(proof_data))
        self.verify_receipt(receipt)
        return receipt

    def _check_receipt_against(self, info: SessionInfo, r: Receipt) -> None:
        if info.status == SessionStatus.SETTLED:
            fail(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {info.session_id} is already settled",
                session_id=info.session_id,
            )
        check_receipt(
            r,
            self._sdk.receipt_domain(),
            session_id=info.session_id,
            signer=info.session_key,
            recorded=info.tokens_used,
            max_tokens=info.max_tokens,
        )

    # --- closing and settling ------------------------------------------------------

    def complete_session_job(
        self,
        session_id: int,
        conversation_cid: str | None = None,
        *,
        receipt: Receipt | Mapping[str, Any] | None = None,
    ) -> str:
        """End a session from whichever side the signer is on; returns the tx hash.

        Host: settle now (settleWithReceipt when `receipt` is newer than what
        is recorded, else settle). Client (depositor or session key): ask to
        close (requestCloseWithReceipt / requestClose); the host then has the
        settlement window to post a newer receipt, after which anyone may
        `finalize`. `conversation_cid` is not written on chain (receipts carry
        the transcript hash); keep it with the StorageManager.

        Raises SDKError(NOT_AUTHORIZED) for anyone else, and the errors of
        `settle` / `request_close`.
        """
        del conversation_cid
        what = "complete_session_job"
        me = self._me(what)
        info = self.get_session(session_id)
        if same_address(me, info.host):
            return self.settle(info.session_id, receipt)
        if same_address(me, info.depositor) or same_address(me, info.session_key):
            return self.request_close(info.session_id, receipt)
        fail(
            SDKErrorCode.NOT_AUTHORIZED,
            f"{me} is neither the host nor the client of session {info.session_id}",
            session_id=info.session_id,
        )

    def request_close(
        self, session_id: int, receipt: Receipt | Mapping[str, Any] | None = None
    ) -> str:
        """Client: ask to end the session (with the newest receipt, if given).

        Raises SDKError: NOT_AUTHORIZED if the signer is not the depositor or
        session key (hosts call `settle`), INVALID_SESSION_STATE if a close
        was already requested or the session is settled, and the receipt
        errors of `submit_checkpoint_proof`.
        """
        what = "request_close"
        me = self._me(what)
        info = self.get_session(session_id)
        if not (same_address(me, info.depositor) or same_address(me, info.session_key)):
            fail(
                SDKErrorCode.NOT_AUTHORIZED,
                f"only session {info.session_id}'s client ({info.depositor}) or its session key "
                f"can request a close; {me} is not"
                + ("; hosts use settle()" if same_address(me, info.host) else ""),
                session_id=info.session_id,
            )
        if info.status != SessionStatus.ACTIVE:
            fail(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {info.session_id} is {info.status.name.lower()}, not active"
                + (
                    f"; anyone may finalize it after {info.finalize_after}"
                    if info.status == SessionStatus.CLOSING
                    else ""
                ),
                session_id=info.session_id,
                status=info.status.name,
            )
        market = self._contract("JobMarketplace")
        r = self._newer_receipt(info, receipt)
        if r is None:
            return self._send(market.functions.requestClose(info.session_id), what).tx_hash
        fn = market.functions.requestCloseWithReceipt(*r.call_args())
        return self._send(fn, f"requestCloseWithReceipt({info.session_id})").tx_hash

    def _newer_receipt(
        self, info: SessionInfo, receipt: Receipt | Mapping[str, Any] | None
    ) -> Receipt | None:
        if receipt is None:
            return None
        r = _receipt_of(receipt)
        if r.session_id != info.session_id:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"receipt is for session {r.session_id}, not {info.session_id}",
            )
        if r.tokens_used <= info.tokens_used:
            return None  # already recorded (or older): nothing to add
        self._check_receipt_against(info, r)
        return r

    def settle(self, session_id: int, receipt: Receipt | Mapping[str, Any] | None = None) -> str:
        """Host: settle now with the newest receipt (recording `receipt` first when
        it is newer). Pays the host's ledger and the treasury, refunds the rest
        to the client's in-contract balance.

        Raises SDKError(NOT_AUTHORIZED) if the signer is not the session's host,
        INVALID_SESSION_STATE if it is settled, SESSION_NOT_FOUND, and the
        receipt errors of `submit_checkpoint_proof`.
        """
        what = "settle"
        me = self._me(what)
        info = self.get_session(session_id)
        self._require_host(me, info, what)
        market = self._contract("JobMarketplace")
        r = self._newer_receipt(info, receipt)
        if r is None:
            return self._send(
                market.functions.settle(info.session_id), f"settle({info.session_id})"
            ).tx_hash
        fn = market.functions.settleWithReceipt(*r.call_args())
        return self._send(fn, f"settleWithReceipt({info.session_id})").tx_hash

    def _require_host(self, me: str, info: SessionInfo, what: str) -> None:
        if not same_address(me, info.host):
            fail(
                SDKErrorCode.NOT_AUTHORIZED,
                f"only session {info.session_id}'s host ({info.host}) can {what}; {me} is not"
                + (
                    " (clients end a session with request_close / complete_session_job)"
                    if same_address(me, info.depositor)
                    else ""
                ),
                session_id=info.session_id,
            )
        if info.status == SessionStatus.SETTLED:
            fail(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {info.session_id} is already settled",
                session_id=info.session_id,
            )

    def settle_batch(self, items: Iterable[SettleItem | Receipt | int]) -> BatchSettleResult:
        """Host: settle many of its sessions in one transaction. Items are session
        ids (settle as recorded), Receipts (record, then settle) or SettleItems.
        A bad item is skipped on chain without reverting the others; the result
        has one outcome per item.

        Raises SDKError before sending: INVALID_ARGUMENT for an empty or too
        large batch, NOT_AUTHORIZED when no item is one of the signer's open
        sessions.
        """
        what = "settle_batch"
        me = self._me(what)
        normalised = [_settle_item(i) for i in items]
        if not normalised:
            fail(SDKErrorCode.INVALID_ARGUMENT, "settle_batch needs at least one item")
        if len(normalised) > MAX_BATCH:
            fail(
                SDKErrorCode.INVALID_ARGUMENT,
                f"settle_batch takes at most {MAX_BATCH} items, got {len(normalised)}; split it",
            )
        mine = 0
        for item in normalised:
            try:
                info = self.get_session(item.session_id)
            except SDKError as exc:
                if exc.code is SDKErrorCode.SESSION_NOT_FOUND:
                    continue
                raise
            if same_address(info.host, me) and info.is_open:
                mine += 1
        if mine == 0:
            fail(
                SDKErrorCode.NOT_AUTHORIZED,
                f"none of these sessions is an open session hosted by {me}; only hosts settle",
            )
        market = self._contract("JobMarketplace")
        fn = market.functions.settleBatch([i.as_tuple() for i in normalised])
        result = self._send(fn, what)
        outcomes: list[ReceiptOutcome] = []
        settled = {
            e["logIndex"]: int(e["args"]["sessionId"])
            for e in market.events.SessionSettled().process_receipt(result.receipt, errors=DISCARD)
        }
        skipped = {
            e["logIndex"]: ReceiptOutcome(int(e["args"]["reason"]))
            for e in market.events.BatchItemSkipped().process_receipt(
                result.receipt, errors=DISCARD
            )
        }
        for index in sorted(settled.keys() | skipped.keys()):
            outcomes.append(skipped.get(index, ReceiptOutcome.OK))
        return BatchSettleResult(result.tx_hash, tuple(outcomes))

    def finalize(self, session_id: int) -> str:
        """Anyone: settle a session with its last recorded receipt once the
        settlement window after its close request or expiry has passed.

        Raises SDKError: SESSION_NOT_FOUND, INVALID_SESSION_STATE (settled, or
        the window is still open: the message says until when).
        """
        what = "finalize"
        self._me(what)
        info = self.get_session(session_id)
        if info.status == SessionStatus.SETTLED:
            fail(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {info.session_id} is already settled",
                session_id=info.session_id,
            )
        with translate_errors("eth_getBlock"):
            now = self._sdk.chain.block_timestamp()
        if now < info.finalize_after:
            fail(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {info.session_id} can be finalized after {info.finalize_after} "
                f"(unix time, in {info.finalize_after - now} s); the host may still settle before",
                finalize_after=info.finalize_after,
            )
        market = self._contract("JobMarketplace")
        return self._send(
            market.functions.finalize(info.session_id), f"finalize({info.session_id})"
        ).tx_hash

    def get_settlement_finality(self, session_id: int) -> SettlementFinality | None:
        """The SessionSettled event of a session (a bounded scan from the deployment's
        first block) and whether it is final at this network's confirmation depth;
        None while the session is not settled."""
        from fabstir.chain.logscan import LogScanError, event_logs
        from fabstir.chain.transactions import confirmations_for_chain

        sid = check_uint(session_id, "session_id", positive=True)
        market = self._contract("JobMarketplace")
        chain = self._sdk.chain
        try:
            with translate_errors("eth_getLogs"):
                logs = event_logs(
                    chain,
                    market.events.SessionSettled(),
                    from_block=self._sdk.start_block(),
                    topics=["0x" + sid.to_bytes(32, "big").hex()],
                )
                head = int(chain.retry.run(lambda: chain.w3.eth.block_number, "eth_blockNumber"))
        except LogScanError as exc:
            raise SDKError(SDKErrorCode.NETWORK_ERROR, str(exc)) from exc
        if not logs:
            return None
        entry = logs[-1]
        block = int(entry["blockNumber"])
        return SettlementFinality(
            session_id=sid,
            tx_hash="0x" + bytes(entry["transactionHash"]).hex().removeprefix("0x"),
            block=block,
            confirmations=head - block + 1,
            required=confirmations_for_chain(self._sdk.config.chain_id),
        )

    # --- helpers for the SessionManager ----------------------------------------------

    def wait_for_session(self, session_id: int, timeout: float = 30.0) -> SessionInfo:
        """Poll until the session exists (for RPCs that lag behind their own receipts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_session(session_id)
            except SDKError as exc:
                if exc.code is not SDKErrorCode.SESSION_NOT_FOUND or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)


def _signature_hex(signature: str | bytes) -> str:
    if isinstance(signature, bytes | bytearray):
        return "0x" + bytes(signature).hex()
    if isinstance(signature, str):
        body = signature[2:] if signature[:2] in ("0x", "0X") else signature
        try:
            bytes.fromhex(body)
        except ValueError:
            fail(SDKErrorCode.INVALID_PROOF, "proof_data is not hex")
        if len(body) != 130:
            fail(
                SDKErrorCode.INVALID_PROOF,
                f"proof_data must be the 65-byte receipt signature (r||s||v), got {len(body) // 2} bytes",
            )
        return "0x" + body.lower()
    fail(SDKErrorCode.INVALID_PROOF, f"proof_data must be hex or bytes, got {signature!r}")


def _settle_item(value: SettleItem | Receipt | int) -> SettleItem:
    if isinstance(value, SettleItem):
        check_uint(value.session_id, "session_id", positive=True)
        return value
    if isinstance(value, Receipt):
        return SettleItem.of(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return SettleItem(check_uint(value, "session_id", positive=True))
    fail(
        SDKErrorCode.INVALID_ARGUMENT,
        f"settle_batch item must be a session id, Receipt or SettleItem: {value!r}",
    )
