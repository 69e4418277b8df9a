"""SessionManager: a paid inference session from deposit to settlement.

`start_session` escrows the deposit on chain with a fresh throw-away session key,
connects to the host and proves it holds that key. Prompts stream back as chunks;
for every chunk the SDK recomputes the transcript hash and checks the host's token
count, and it signs receipts (EIP-712, with the session key, no wallet pop-up) as
the tokens arrive, so the host never waits long and never streams more than one
proof interval unsigned. `complete_session` hands over the newest receipt, asks
the host to settle, stores the conversation encrypted, and if the host does not
settle in time, asks for the close on chain itself.

The session key and state are kept (encrypted, under the wallet's storage key) in
the session metadata, so `resume_session` also works from another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir.protocol.messages import (
    Cancel,
    Chunk,
    Close,
    End,
    ErrorMessage,
    Hello,
    Message,
    Prompt,
    ProtocolError,
    ReceiptAck,
    ReceiptMessage,
    ReceiptRequest,
    SessionInit,
    SessionReady,
    negotiate_version,
)
from fabstir.protocol.receipts import ContentHasher, Receipt, ReceiptSigner, same_address
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.storage import ChatMessage
from fabstir.sdk.types import SessionConfig, SessionInfo, SessionStatus
from fabstir.sdk.websocket import WebSocketClient

if TYPE_CHECKING:
    from fabstir.sdk.sdk import FabstirSDK

log = logging.getLogger("fabstir.sdk.session")

#: Seconds without any frame from the host before a prompt fails.
FRAME_TIMEOUT = 120.0
#: Seconds complete_session waits for the host's settlement before closing on chain.
SETTLE_TIMEOUT = 30.0
DEFAULT_MAX_TOKENS = 256
#: Seconds to wait for a cancelled request's `end` before dropping the connection.
CANCEL_TIMEOUT = 10.0

TokenCallback = Callable[[str], Awaitable[None] | None]


@dataclass(frozen=True)
class StartedSession:
    """What start_session returns (the reference's {sessionId, jobId})."""

    session_id: int
    tx_hash: str
    host_url: str
    deposit: str

    @property
    def job_id(self) -> int:
        """The job id is the session id."""
        return self.session_id


@dataclass(frozen=True)
class StreamChunk:
    """One streamed piece of an answer; `tokens` is the session's running total.

    `send_chat` ends its stream with a piece that has no text and the host's
    `finish_reason` ("stop", "length", "cancelled", "budget")."""

    request_id: str
    text: str
    tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A self-contained request (an OpenAI chat completion): the host answers exactly
    `system` + `context` + `prompt` and keeps none of it for the session's later prompts.
    `context` is the earlier turns, alternating user and assistant, starting with user."""

    prompt: str
    context: tuple[str, ...] = ()
    system: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def prompt_fields(self) -> dict[str, Any]:
        """The wire prompt's optional fields for this request."""
        return {
            "context": self.context,
            "system": self.system,
            "temperature": None if self.temperature is None else _decimal(self.temperature),
            "top_p": None if self.top_p is None else _decimal(self.top_p),
            "seed": self.seed,
            "stop": self.stop or None,
        }


def _decimal(value: float) -> str:
    # The wire has no floats; six decimals is finer than any sampler cares about.
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


@dataclass(frozen=True)
class CompletionResult:
    """How a session ended. Amounts are human strings in the session's token.

    `settled_by_host` is False when the host did not settle within the timeout and
    the SDK requested the close on chain instead (status CLOSING: anyone may
    finalize after `finalize_after`).
    """

    session_id: int
    status: SessionStatus
    tokens_used: int
    cost: str
    refund: str
    settled_by_host: bool
    close_tx_hash: str | None
    conversation_cid: str | None
    finalize_after: int


@dataclass(frozen=True)
class SessionHistory:
    """The conversation (as this client saw it) and the chain's view of the session."""

    session_id: int
    messages: tuple[ChatMessage, ...]
    info: SessionInfo
    tokens_received: int
    last_receipt: Receipt | None


@dataclass
class _Live:
    """Client-side state of one session."""

    info: SessionInfo
    key: LocalAccount
    signer: ReceiptSigner
    host_url: str
    hasher: ContentHasher = field(default_factory=ContentHasher)
    tokens: int = 0
    last_receipt: Receipt | None = None
    acked: int = 0
    messages: list[ChatMessage] = field(default_factory=list)
    ws: WebSocketClient | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    completed: bool = False


def _same_session(live: _Live, info: SessionInfo) -> None:
    """The chain's session `live.info.session_id` must still be the one this client
    opened. A reorg can drop the creation and give the id to someone else's session;
    then its result is not this client's to report (or to act on)."""
    if info.session_key.lower() != live.key.address.lower():
        raise SDKError(
            SDKErrorCode.SESSION_NOT_FOUND,
            f"session {info.session_id} on chain is no longer the one this client opened "
            "(its creation was reorganised away; the id now belongs to another session). "
            "Its escrow was never taken from you.",
            {"session_id": info.session_id},
        )


class SessionManager:
    """The reference's SessionManager on the real protocol (see module docstring)."""

    def __init__(self, sdk: FabstirSDK, *, frame_timeout: float = FRAME_TIMEOUT) -> None:
        self._sdk = sdk
        self._live: dict[int, _Live] = {}
        self.frame_timeout = frame_timeout

    # ------------------------------------------------------------------ start

    async def start_session(
        self,
        model_id: str,
        provider: str,
        config: SessionConfig | Mapping[str, Any] | None = None,
        host_url: str | None = None,
        *,
        payment_token: str = "USDC",
        close_on_failure: bool = True,
    ) -> StartedSession:
        """Escrow the deposit and open a session with host `provider` for `model_id`.

        `config`: deposit_amount ("1.0"), price_per_token, duration (s),
        proof_interval (tokens). `host_url` defaults to the host's registered API
        URL. Raises SDKError before any transaction for bad input (see
        SessionJobManager.create_session_job), and WEBSOCKET_CONNECTION_FAILED /
        INVALID_PROOF / MODEL_MISMATCH if the host cannot be reached or is not who
        the chain says it is.

        A failure after the session was created on chain names it in the error
        (`details["session_id"]`) and, with `close_on_failure` (default), requests
        its close so the deposit is not locked until expiry (`details["close_tx"]`).
        Without it the session stays open for `resume_session`.
        """
        self._sdk.require_signer("start_session")
        key: LocalAccount = Account.create()
        jobs = self._sdk.get_session_job_manager()
        result = await asyncio.to_thread(
            jobs.create_session_job,
            provider,
            payment_token,
            None,
            config,
            model_id=model_id,
            session_key=key.address,
        )
        try:
            info = await asyncio.to_thread(jobs.wait_for_session, result.session_id)
            if host_url is None:
                host_info = await asyncio.to_thread(
                    self._sdk.get_host_manager().get_host_info, info.host
                )
                host_url = host_info.api_url
            live = _Live(info, key, ReceiptSigner(key.key, self._sdk.receipt_domain()), host_url)
            self._live[info.session_id] = live
            await self._save(live)
            await self._connect(live)
        except Exception as exc:
            # The escrow exists on chain but the session cannot be used: close it
            # (and say so) rather than leave the deposit locked until expiry. Kept
            # (close_on_failure=False), it stays known here for complete/resume.
            if close_on_failure:
                self._live.pop(result.session_id, None)
            raise await self._orphaned(
                result.session_id, result.tx_hash, exc, close=close_on_failure
            ) from exc
        return StartedSession(info.session_id, result.tx_hash, host_url, result.deposit)

    async def _orphaned(
        self, session_id: int, tx_hash: str, cause: Exception, *, close: bool
    ) -> SDKError:
        """The error for a session opened on chain that start_session could not use,
        after asking the chain to close it when `close` (the escrow comes back once
        the host's settlement window has passed and anyone finalizes)."""
        details: dict[str, Any] = {"session_id": session_id, "create_tx": tx_hash}
        if close:
            what = await self._close_orphan(session_id, details)
        else:
            what = f"it is still open: resume_session({session_id}) or close it"
        code = cause.code if isinstance(cause, SDKError) else SDKErrorCode.TRANSACTION_FAILED
        message = cause.message if isinstance(cause, SDKError) else str(cause)
        if isinstance(cause, SDKError):
            details = {**cause.details, **details}
        return SDKError(
            code,
            f"{message}; session {session_id} was opened on chain ({tx_hash}): {what}",
            details,
        )

    async def _close_orphan(self, session_id: int, details: dict[str, Any]) -> str:
        jobs = self._sdk.get_session_job_manager()
        try:
            close_tx = await asyncio.to_thread(jobs.request_close, session_id)
        except Exception as close_exc:  # the close failing must not hide the cause
            details["close_error"] = str(close_exc)
            return (
                f"it is still open (closing failed: {close_exc}); close it with "
                f"`fabstir session close {session_id}`"
            )
        details["close_tx"] = close_tx
        return (
            f"the SDK requested its close ({close_tx}); the deposit returns to your "
            "in-contract balance when it is finalized after the settlement window"
        )

    # ---------------------------------------------------------------- prompts

    async def send_prompt(
        self, session_id: int, prompt: str, *, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> str:
        """Send a prompt and return the whole answer."""
        parts = [c.text async for c in self._stream(session_id, prompt, max_tokens)]
        return "".join(parts)

    def send_chat(self, session_id: int, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer to a self-contained request (see ChatRequest); the last
        StreamChunk has no text and carries the finish_reason. Receipts are signed as
        for any prompt: the session's count and hash go on across requests."""
        return self._stream(
            session_id,
            request.prompt,
            request.max_tokens,
            fields=request.prompt_fields(),
            with_end=True,
        )

    def send_prompt_streaming(
        self,
        session_id: int,
        prompt: str,
        on_token: TokenCallback | None = None,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> PromptStream:
        """Stream an answer. Iterate it (`async for chunk in ...`) for StreamChunks, or
        await it (the reference's callback form: `on_token` gets each piece of text)
        for the whole answer."""
        return PromptStream(self._stream(session_id, prompt, max_tokens), on_token)

    async def _stream(
        self,
        session_id: int,
        prompt: str,
        max_tokens: int,
        *,
        fields: Mapping[str, Any] | None = None,
        with_end: bool = False,
    ) -> AsyncIterator[StreamChunk]:
        live = self._require_live(session_id)
        if not isinstance(prompt, str) or not prompt.strip():
            raise SDKError(SDKErrorCode.INVALID_ARGUMENT, "prompt must be a non-empty string")
        request_id = uuid.uuid4().hex[:16]
        try:
            message = Prompt(id=request_id, text=prompt, max_tokens=max_tokens, **(fields or {}))
        except ProtocolError as exc:
            raise SDKError(SDKErrorCode.INVALID_ARGUMENT, exc.message) from None
        async with live.lock:
            ws = await self._connected(live)
            if message.self_contained and ws.version < 2:
                raise SDKError(
                    SDKErrorCode.UNSUPPORTED_VERSION,
                    f"the host speaks protocol version {ws.version}; self-contained prompts "
                    "(OpenAI requests) need version 2",
                )
            before = live.hasher.copy()
            accepted = False
            end: StreamChunk | None = None
            live.hasher.update_prompt(message.transcript_text())
            await ws.send(message)
            answer: list[str] = []
            try:
                while True:
                    msg = await ws.receive(self.frame_timeout)
                    if isinstance(msg, Chunk) and msg.id == request_id:
                        accepted = True
                        self._take_chunk(live, msg)
                        answer.append(msg.text)
                        await self._maybe_sign(live, ws, eager=False)
                        if msg.text:
                            yield StreamChunk(request_id, msg.text, msg.tokens_used)
                    elif isinstance(msg, End) and msg.id == request_id:
                        accepted = True
                        self._take_end(live, msg)
                        await self._maybe_sign(live, ws, eager=True)
                        end = StreamChunk(request_id, "", msg.tokens_used, msg.finish_reason)
                        break
                    elif isinstance(msg, ErrorMessage) and msg.id in (None, request_id):
                        raise msg.to_error()
                    else:
                        await self._handle_side_message(live, ws, msg)
            except GeneratorExit:
                # The caller stopped reading (aclose): cancel the request and take the
                # rest of it in, so the transcript hash and the receipts stay in step
                # with the host and the session stays usable.
                if accepted:
                    await self._cancel_request(live, ws, request_id)
                raise
            except BaseException:
                if not accepted:
                    live.hasher = before  # the host never took the prompt
                raise
            finally:
                if accepted and not message.self_contained:
                    now = time.time()
                    live.messages.append(ChatMessage("user", prompt, now))
                    live.messages.append(ChatMessage("assistant", "".join(answer), now))
                    await self._save(live)
                elif accepted:
                    await self._save(live)  # the receipt state, without the conversation
        # Outside the lock: a caller that stops reading after the end holds nothing.
        if with_end and end is not None:
            yield end

    async def _cancel_request(self, live: _Live, ws: WebSocketClient, request_id: str) -> None:
        """Send `cancel` and read until the request's `end`; on any failure drop the
        connection (resume_session reconnects in step with the host)."""
        try:
            await ws.send(Cancel(id=request_id))
            while True:
                msg = await ws.receive(CANCEL_TIMEOUT)
                if isinstance(msg, Chunk) and msg.id == request_id:
                    self._take_chunk(live, msg)
                elif isinstance(msg, End) and msg.id == request_id:
                    self._take_end(live, msg)
                    await self._maybe_sign(live, ws, eager=True)
                    return
                elif isinstance(msg, ErrorMessage) and msg.id in (None, request_id):
                    raise msg.to_error()
                else:
                    await self._handle_side_message(live, ws, msg)
        except SDKError as exc:
            log.warning("session %s: cancel failed (%s); disconnecting", live.info.session_id, exc)
            await ws.close()
            live.ws = None

    def _take_chunk(self, live: _Live, msg: Chunk) -> None:
        if msg.tokens_used <= live.tokens or msg.tokens_used > live.info.max_tokens:
            raise SDKError(
                SDKErrorCode.PROOF_VERIFICATION_FAILED,
                f"host reported {msg.tokens_used} tokens after {live.tokens} "
                f"(budget {live.info.max_tokens}); refusing to sign",
            )
        live.hasher.update_chunk(msg.text)
        if live.hasher.hexdigest != msg.content_hash:
            raise SDKError(
                SDKErrorCode.PROOF_VERIFICATION_FAILED,
                "host's content hash does not match the transcript received; refusing to sign",
            )
        live.tokens = msg.tokens_used

    def _take_end(self, live: _Live, msg: End) -> None:
        if msg.tokens_used != live.tokens or msg.content_hash != live.hasher.hexdigest:
            raise SDKError(
                SDKErrorCode.PROOF_VERIFICATION_FAILED,
                f"host's end state ({msg.tokens_used} tokens) differs from what was streamed "
                f"({live.tokens}); refusing to sign",
            )

    async def _maybe_sign(self, live: _Live, ws: WebSocketClient, *, eager: bool) -> None:
        """Sign the current state when the host needs it soon (half an interval
        unsigned) or when an answer ends."""
        signed = live.last_receipt.tokens_used if live.last_receipt else 0
        unsigned = live.tokens - signed
        if unsigned <= 0:
            return
        if eager or unsigned * 2 >= live.info.proof_interval:
            await self._sign_and_send(live, ws)

    async def _sign_and_send(self, live: _Live, ws: WebSocketClient) -> None:
        receipt = live.signer.sign(live.info.session_id, live.tokens, live.hasher.digest)
        live.last_receipt = receipt
        await ws.send(ReceiptMessage.from_receipt(receipt))

    async def _handle_side_message(self, live: _Live, ws: WebSocketClient, msg: Message) -> None:
        if isinstance(msg, ReceiptAck):
            live.acked = max(live.acked, msg.tokens_used)
        elif isinstance(msg, ReceiptRequest):
            # The host paused for a receipt. Sign only what this client has seen.
            if msg.tokens_used <= live.tokens:
                await self._sign_and_send(live, ws)
        elif isinstance(msg, ErrorMessage):
            raise msg.to_error()
        else:
            log.debug("session %s: ignoring %s", live.info.session_id, msg.TYPE)

    # ------------------------------------------------------------ connection

    async def _connect(self, live: _Live) -> None:
        ws = WebSocketClient(live.host_url, auto_reconnect=False)
        await ws.connect()
        try:
            await self._handshake(live, ws)
        except BaseException:
            await ws.close()
            raise
        live.ws = ws

    async def _handshake(self, live: _Live, ws: WebSocketClient) -> None:
        hello = await ws.receive(self.frame_timeout)
        if isinstance(hello, ErrorMessage):
            raise hello.to_error()
        if not isinstance(hello, Hello):
            raise SDKError(SDKErrorCode.MALFORMED_MESSAGE, f"expected hello, got {hello.TYPE}")
        info = live.info
        domain = self._sdk.receipt_domain()
        if not same_address(hello.host, info.host):
            raise SDKError(
                SDKErrorCode.INVALID_PROOF,
                f"{live.host_url} is host {hello.host}, but session {info.session_id} "
                f"is with {info.host}",
            )
        if hello.chain_id != domain.chain_id or not same_address(
            hello.marketplace, domain.verifying_contract
        ):
            raise SDKError(
                SDKErrorCode.INVALID_PROOF,
                f"host serves chain {hello.chain_id} / marketplace {hello.marketplace}, "
                f"not {domain.chain_id} / {domain.verifying_contract}",
            )
        if hello.model_id.lower() != info.model_id.lower():
            raise SDKError(
                SDKErrorCode.MODEL_MISMATCH,
                f"host serves model {hello.model_id}, session is for {info.model_id}",
            )
        history = tuple(m.content for m in live.messages) if live.messages else None
        # Speak the host's version when it is older (a version-1 host never sees `v`).
        ws.version = negotiate_version(hello.v)
        await ws.send(
            SessionInit(
                session_id=info.session_id,
                signature=live.signer.sign_session_init(info.session_id, hello.nonce),
                history=history,
                v=ws.version,
            )
        )
        while True:
            msg = await ws.receive(self.frame_timeout)
            if isinstance(msg, SessionReady):
                break
            if isinstance(msg, ErrorMessage):
                raise msg.to_error()
        self._sync_to(live, msg)
        if live.last_receipt and live.last_receipt.tokens_used > msg.tokens_used:
            # Hand over a receipt the host may not have stored before we lost it.
            await ws.send(ReceiptMessage.from_receipt(live.last_receipt))
        live.ready.set()

    def _sync_to(self, live: _Live, ready: SessionReady) -> None:
        """Continue from the host's newest acknowledged receipt (both sides do)."""
        last = live.last_receipt
        if last and last.tokens_used >= ready.tokens_used and last.tokens_used > 0:
            if last.tokens_used == ready.tokens_used and last.content_hash != ready.content_hash:
                raise SDKError(
                    SDKErrorCode.PROOF_VERIFICATION_FAILED,
                    "host's acknowledged transcript hash differs from this client's receipt",
                )
            live.tokens, live.hasher = last.tokens_used, ContentHasher(last.content_hash)
        else:
            live.tokens, live.hasher = ready.tokens_used, ContentHasher(ready.content_hash)
        live.acked = ready.tokens_used

    async def _connected(self, live: _Live) -> WebSocketClient:
        if live.completed:
            raise SDKError(
                SDKErrorCode.INVALID_SESSION_STATE, f"session {live.info.session_id} is completed"
            )
        if live.ws is None or not live.ws.connected:
            raise SDKError(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {live.info.session_id} is paused or disconnected; call resume_session",
            )
        return live.ws

    # ------------------------------------------------------- pause / resume

    async def pause_session(self, session_id: int) -> None:
        """Stop prompting and disconnect; the escrow stays and the host keeps the
        conversation. Resume with resume_session (also from another process)."""
        live = self._require_live(session_id)
        async with live.lock:
            await self._hand_over_receipt(live)
            if live.ws is not None:
                await live.ws.close()
                live.ws = None
            await self._save(live)

    async def resume_session(self, session_id: int) -> None:
        """Reconnect to the host and go on with the conversation's context (the host
        restores it, or gets it from this client if it lost it)."""
        live = self._live.get(session_id) or await self._load(session_id)
        info = await asyncio.to_thread(self._sdk.get_session_job_manager().get_session, session_id)
        _same_session(live, info)
        if info.status != SessionStatus.ACTIVE:
            raise SDKError(
                SDKErrorCode.INVALID_SESSION_STATE,
                f"session {session_id} is {info.status.name.lower()}; it cannot be resumed",
            )
        live.info = info
        async with live.lock:
            if live.ws is not None:
                await live.ws.close()
                live.ws = None
            await self._connect(live)

    async def _hand_over_receipt(self, live: _Live) -> None:
        """Make sure the host has the newest receipt (best effort, a few seconds).

        An acknowledgement may still be on its way, so wait for it briefly before
        sending the receipt again (a duplicate only earns a STALE_RECEIPT frame)."""
        ws, last = live.ws, live.last_receipt
        if ws is None or not ws.connected or last is None:
            return
        deadline = time.monotonic() + 5.0
        resent = False
        while live.acked < last.tokens_used and time.monotonic() < deadline:
            try:
                msg = await ws.receive(0.5)
            except SDKError as exc:
                if exc.code is not SDKErrorCode.WEBSOCKET_MESSAGE_FAILED or resent:
                    return  # disconnected, or the host will not acknowledge
                await ws.send(ReceiptMessage.from_receipt(last))
                resent = True
                continue
            if isinstance(msg, ReceiptAck):
                live.acked = max(live.acked, msg.tokens_used)

    async def _say_goodbye(self, live: _Live) -> None:
        """Send `close` and let the host hang up once it has recorded it (it closes
        the connection after marking the session for settlement)."""
        ws = live.ws
        if ws is None:
            return
        with contextlib.suppress(SDKError):
            if ws.connected:
                await ws.send(Close(session_id=live.info.session_id))
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    await ws.receive(max(0.05, deadline - time.monotonic()))
        await ws.close()
        live.ws = None

    # ------------------------------------------------------------- complete

    async def complete_session(
        self, session_id: int, *, settle_timeout: float = SETTLE_TIMEOUT
    ) -> CompletionResult:
        """End the session: newest receipt to the host, `close`, conversation stored
        encrypted, then wait for the host's settlement; if it does not come within
        `settle_timeout`, request the close on chain with the newest receipt."""
        live = self._live.get(session_id) or await self._load(session_id)
        jobs = self._sdk.get_session_job_manager()
        async with live.lock:
            await self._hand_over_receipt(live)
            await self._say_goodbye(live)
            live.completed = True
            await self._save(live)
            cid = None
            if live.messages:
                cid = await self._sdk.get_storage_manager().store_conversation(
                    self._storage_id(session_id), live.messages
                )
        info = await self._wait_settled(session_id, settle_timeout)
        _same_session(live, info)
        close_tx = None
        if info.status == SessionStatus.ACTIVE:
            close_tx = await asyncio.to_thread(jobs.request_close, session_id, live.last_receipt)
            info = await asyncio.to_thread(jobs.get_session, session_id)
        token = self._sdk.get_token(info.token)
        cost = info.tokens_used * info.price_per_token
        refund = info.deposit_raw - cost
        return CompletionResult(
            session_id=session_id,
            status=info.status,
            tokens_used=info.tokens_used,
            cost=token.format(cost),
            refund=token.format(refund),
            settled_by_host=close_tx is None and info.status == SessionStatus.SETTLED,
            close_tx_hash=close_tx,
            conversation_cid=cid,
            finalize_after=info.finalize_after,
        )

    async def _wait_settled(self, session_id: int, timeout: float) -> SessionInfo:
        jobs = self._sdk.get_session_job_manager()
        deadline = time.monotonic() + timeout
        while True:
            info = await asyncio.to_thread(jobs.get_session, session_id)
            if info.status != SessionStatus.ACTIVE or time.monotonic() >= deadline:
                return info
            await asyncio.sleep(0.25)

    async def submit_checkpoint(self, session_id: int) -> str:
        """Put the newest signed receipt on chain now (anyone may; normally the host
        does). Returns the tx hash."""
        live = self._require_live(session_id)
        if live.last_receipt is None:
            raise SDKError(
                SDKErrorCode.INVALID_SESSION_STATE, f"session {session_id} has no receipt yet"
            )
        jobs = self._sdk.get_session_job_manager()
        return await asyncio.to_thread(jobs.submit_receipt, live.last_receipt)

    # -------------------------------------------------------------- history

    async def get_session_history(self, session_id: int) -> SessionHistory:
        """The conversation and the chain's record of the session."""
        live = self._live.get(session_id) or await self._load(session_id)
        info = await asyncio.to_thread(self._sdk.get_session_job_manager().get_session, session_id)
        return SessionHistory(
            session_id, tuple(live.messages), info, live.tokens, live.last_receipt
        )

    def tokens_received(self, session_id: int) -> int:
        """Tokens this client has received (and checked) in the session so far."""
        return self._require_live(session_id).tokens

    def latest_receipt(self, session_id: int) -> Receipt | None:
        """The newest receipt this client signed for the session."""
        return self._require_live(session_id).last_receipt

    def acknowledged_tokens(self, session_id: int) -> int:
        """Tokens of the newest receipt the host acknowledged storing: what it can be
        paid at least (it may also hold a newer one whose acknowledgement was lost)."""
        return self._require_live(session_id).acked

    async def close_all(self) -> None:
        """Disconnect every live session (no settlement)."""
        for live in self._live.values():
            if live.ws is not None:
                await live.ws.close()
                live.ws = None

    # ---------------------------------------------------------- persistence

    def _require_live(self, session_id: int) -> _Live:
        live = self._live.get(session_id)
        if live is None:
            raise SDKError(
                SDKErrorCode.SESSION_NOT_FOUND,
                f"session {session_id} was not started or resumed by this SessionManager",
            )
        return live

    def _storage_id(self, session_id: int) -> str:
        """Where a session's records live in the wallet's storage. Session ids restart
        at 1 in every deployment, so the chain and marketplace are part of the name."""
        domain = self._sdk.receipt_domain()
        return f"{domain.chain_id}:{domain.verifying_contract.lower()}:{session_id}"

    async def _save(self, live: _Live) -> None:
        last = live.last_receipt
        record = {
            "session_key": live.key.key.hex(),
            "host_url": live.host_url,
            "tokens": live.tokens,
            "content_hash": live.hasher.hexdigest,
            "last_receipt": last.to_dict() if last else None,
            "messages": [m.to_dict() for m in live.messages],
            "completed": live.completed,
        }
        await self._sdk.get_storage_manager().store_session_metadata(
            self._storage_id(live.info.session_id), {"client_state": record}
        )

    async def _load(self, session_id: int) -> _Live:
        storage = self._sdk.get_storage_manager()
        try:
            meta = await storage.retrieve_session_metadata(self._storage_id(session_id))
            state = meta["client_state"]
        except (SDKError, KeyError, TypeError) as exc:
            raise SDKError(
                SDKErrorCode.SESSION_NOT_FOUND,
                f"no stored client state for session {session_id} in this wallet's storage",
            ) from exc
        info = await asyncio.to_thread(self._sdk.get_session_job_manager().get_session, session_id)
        key: LocalAccount = Account.from_key(state["session_key"])
        last = state.get("last_receipt")
        live = _Live(
            info,
            key,
            ReceiptSigner(key.key, self._sdk.receipt_domain()),
            state["host_url"],
            hasher=ContentHasher(state["content_hash"]),
            tokens=int(state["tokens"]),
            last_receipt=Receipt(**last) if last else None,
            messages=[ChatMessage.from_value(m) for m in state.get("messages", [])],
            completed=bool(state.get("completed")),
        )
        self._live[session_id] = live
        return live


class PromptStream:
    """An answer in flight: `async for chunk in stream` or `await stream`."""

    def __init__(self, chunks: AsyncIterator[StreamChunk], on_token: TokenCallback | None) -> None:
        self._chunks = chunks
        self._on_token = on_token

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamChunk]:
        async for chunk in self._chunks:
            if self._on_token is not None:
                result = self._on_token(chunk.text)
                if asyncio.iscoroutine(result):
                    await result
            yield chunk

    async def _collect(self) -> str:
        return "".join([chunk.text async for chunk in self._iterate()])

    def __await__(self) -> Generator[Any, None, str]:
        return self._collect().__await__()
