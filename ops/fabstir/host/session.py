"""Serving state of one session, and the streaming of one prompt under the receipt rules.

A `ServedSession` lives in the worker's memory from the first session_init until
the session is closed; connections come and go (a client that reconnects
resumes it). It holds:

* the conversation (user/assistant turns; the configured system prompt is put
  in front of the window sent to the engine, see `fit_window`),
* the transcript hash chain (`ContentHasher`) and the tokens streamed so far,
* the newest acknowledged receipt, and every (tokens, content_hash) state the
  host has sent since: a receipt is valid only for one of those states, above
  the acknowledged count, signed by the session key.

The unsigned-token cap: the host never streams more than `proof_interval`
tokens beyond the newest acknowledged receipt. When the next piece would pass
it, the host sends `receipt_request` for the last state it sent and stops
pulling the engine's stream until a receipt moves the mark (or the wait times
out: `end` with finish_reason "error", then `error RECEIPT_REQUIRED`). One
exception, documented in docs/protocol.md: a single engine piece that alone is
larger than the interval (several tokens that make one UTF-8 character) is sent
when nothing is unsigned, since it cannot be split.

On resume the state rolls back to the newest acknowledged (stored) receipt:
tokens streamed after it were never paid for, and the client continues its hash
chain from the receipt it signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from fabstir.errors import SDKErrorCode
from fabstir.host.config import Limits
from fabstir.host.engines.base import (
    ChatMessage,
    Engine,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    PromptTooLongError,
    TokenChunk,
    fit_window,
)
from fabstir.host.metrics import HostMetrics, kv
from fabstir.host.store import SessionTerms
from fabstir.protocol.messages import Chunk, End, Message, Prompt, ReceiptRequest
from fabstir.protocol.receipts import (
    GENESIS_HASH,
    ContentHasher,
    Eip712Domain,
    Receipt,
    check_receipt,
)

log = logging.getLogger(__name__)

GENESIS_HEX: Final = "0x" + GENESIS_HASH.hex()
#: Conversation messages kept in memory per session (the engine sees a window of them).
MAX_TURNS_KEPT: Final = 128

SendFn = Callable[[Message], Awaitable[None]]
ErrorFn = Callable[[SDKErrorCode, str, str | None], Awaitable[None]]


@dataclass(frozen=True)
class ServeContext:
    """What a prompt needs from the worker around it."""

    engine: Engine
    send: SendFn
    error: ErrorFn
    limits: Limits
    metrics: HostMetrics
    system_prompt: str | None = None
    temperature: float = 0.0


class _Cancelled(Exception):
    """The client cancelled the running request."""


class _ReceiptTimeout(Exception):
    """No receipt arrived in time for the state the host asked to be signed."""


def history_turns(history: Sequence[str] | None) -> list[ChatMessage]:
    """session_init.history (alternating user, assistant, ...) as chat messages."""
    roles = ("user", "assistant")
    return [ChatMessage(roles[i % 2], text) for i, text in enumerate(history or ())]


def _whole_window(
    system: str | None,
    turns: Sequence[ChatMessage],
    *,
    n_ctx: int,
    max_tokens: int,
    count_prompt_tokens: Callable[[Sequence[ChatMessage]], int],
) -> list[ChatMessage]:
    """`system` + every turn, or PromptTooLongError: fit_window for a self-contained
    prompt, where dropping the client's turns would answer a different question."""
    if not turns:
        raise InvalidRequestError("a conversation needs at least one turn")
    window = [*([ChatMessage("system", system)] if system is not None else []), *turns]
    if (n_prompt := count_prompt_tokens(window)) + max_tokens > n_ctx:
        raise PromptTooLongError(n_prompt, max_tokens, n_ctx)
    return window


class ServedSession:
    """See the module docstring. Only the event loop touches an instance."""

    def __init__(
        self,
        terms: SessionTerms,
        *,
        acked_tokens: int = 0,
        acked_hash: str = GENESIS_HEX,
        turns: Sequence[ChatMessage] = (),
    ) -> None:
        self.terms = terms
        self.turns: list[ChatMessage] = list(turns)[-MAX_TURNS_KEPT:]
        self.acked_tokens = acked_tokens
        self.acked_hash = acked_hash
        self.tokens = acked_tokens
        self.hasher = ContentHasher(acked_hash)
        self.last_sent: tuple[int, str] = (acked_tokens, acked_hash)
        self._points: set[tuple[int, str]] = set()
        self._wake = asyncio.Event()
        self._cancel = asyncio.Event()
        self.running: str | None = None  # id of the request being generated
        self.closed = False
        #: The connection serving the session now (server.Connection), if any.
        self.owner: object | None = None
        #: Admitted while the chain was unreachable (not checked on chain): receipts and
        #: close only. A later session_init with the chain reachable clears it.
        self.offline = False

    @property
    def session_id(self) -> int:
        return self.terms.session_id

    @property
    def unsigned(self) -> int:
        """Tokens streamed beyond the newest acknowledged receipt."""
        return self.tokens - self.acked_tokens

    @property
    def remaining(self) -> int:
        """Tokens the deposit can still pay for."""
        return max(0, self.terms.max_tokens - self.tokens)

    @property
    def needs_receipt(self) -> bool:
        """No new request may start before a receipt: the cap is reached."""
        return self.unsigned >= self.terms.proof_interval

    def rollback(self, acked_tokens: int, acked_hash: str) -> None:
        """Continue from the newest acknowledged receipt (resume)."""
        self.acked_tokens, self.acked_hash = acked_tokens, acked_hash
        self.tokens = acked_tokens
        self.hasher = ContentHasher(acked_hash)
        self.last_sent = (acked_tokens, acked_hash)
        self._points.clear()

    # -- receipts

    def check_receipt(self, receipt: Receipt, domain: Eip712Domain) -> None:
        """Raise SDKError (its code for the error frame) unless `receipt` is a valid new
        receipt: above the acknowledged one, for a state this host sent, signed by the
        session key (protocol.receipts.check_receipt)."""
        check_receipt(
            receipt,
            domain,
            session_id=self.session_id,
            signer=self.terms.session_key,
            recorded=self.acked_tokens,
            sent=self._points,
        )

    def accept_receipt(self, tokens: int, content_hash: str) -> None:
        """The receipt is stored: move the acknowledged mark and wake a paused stream."""
        if tokens <= self.acked_tokens:
            return
        self.acked_tokens, self.acked_hash = tokens, content_hash
        self._points = {p for p in self._points if p[0] > tokens}
        self._wake.set()

    def _sent(self, tokens: int, content_hash: str) -> None:
        self.last_sent = (tokens, content_hash)
        if tokens > self.acked_tokens:
            self._points.add((tokens, content_hash))

    # -- cancellation

    def begin(self, request_id: str) -> None:
        """Mark `request_id` as running (before its task starts: one prompt at a time)."""
        self.running = request_id
        self._cancel.clear()

    def cancel(self) -> bool:
        """Ask the running request to stop (end with finish_reason "cancelled")."""
        if self.running is None:
            return False
        self._cancel.set()
        self._wake.set()
        return True

    # -- one prompt

    async def run_prompt(self, prompt: Prompt, ctx: ServeContext) -> None:
        """Stream the answer to `prompt`. The caller has checked the prompt is allowed
        (one at a time, size, rate, budget, cap). Raises CancelledError only when the
        task is cancelled from outside (client gone, shutdown)."""
        if self.running != prompt.id:
            self.begin(prompt.id)
        try:
            await self._run(prompt, ctx)
        finally:
            self.running = None
            self._cancel.clear()

    async def _prepare(
        self, prompt: Prompt, ctx: ServeContext, max_tokens: int
    ) -> tuple[AsyncIterator[TokenChunk], int]:
        engine = ctx.engine
        if prompt.self_contained:
            # The client chose every turn: answer all of them or refuse, never a part.
            system = prompt.system if prompt.system is not None else ctx.system_prompt
            turns = [*history_turns(prompt.context), ChatMessage("user", prompt.text)]
            fit = functools.partial(_whole_window, system, turns)
        else:
            turns = [*self.turns, ChatMessage("user", prompt.text)]
            fit = functools.partial(fit_window, ctx.system_prompt, turns)
        temperature = ctx.temperature if prompt.temperature is None else float(prompt.temperature)
        top_p = 1.0 if prompt.top_p is None else float(prompt.top_p)
        for attempt in range(2):
            try:
                window = await asyncio.to_thread(
                    fit,
                    n_ctx=engine.n_ctx,
                    max_tokens=max_tokens,
                    count_prompt_tokens=engine.count_prompt_tokens,
                )
                stream = await asyncio.to_thread(
                    functools.partial(
                        engine.generate,
                        window,
                        max_tokens=max_tokens,
                        cache_key=f"session-{self.session_id}",
                        temperature=temperature,
                        top_p=top_p,
                        seed=prompt.seed,
                        stop=prompt.stop or (),
                    )
                )
                return stream, max_tokens
            except PromptTooLongError as exc:
                room = exc.n_ctx - exc.n_prompt
                if attempt or room < 1:
                    raise
                max_tokens = min(max_tokens, room)  # a long prompt leaves less room to answer
        raise AssertionError("unreachable")

    async def _run(self, prompt: Prompt, ctx: ServeContext) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_at: float | None = None
        tokens_before = self.tokens
        wanted = min(prompt.max_tokens, ctx.limits.max_tokens_per_request)
        max_tokens = min(wanted, self.remaining)
        try:
            stream, max_tokens = await self._prepare(prompt, ctx, max_tokens)
        except PromptTooLongError as exc:
            await ctx.error(SDKErrorCode.PROMPT_TOO_LARGE, str(exc), prompt.id)
            return
        except InvalidRequestError as exc:
            await ctx.error(SDKErrorCode.INVALID_ARGUMENT, str(exc), prompt.id)
            return
        except EngineUnavailableError as exc:
            await ctx.error(SDKErrorCode.SERVICE_UNAVAILABLE, str(exc), prompt.id)
            return
        budget_bound = max_tokens < wanted and max_tokens == self.remaining

        # From here the prompt is part of the transcript: `end` always follows.
        self.hasher.update_prompt(prompt.transcript_text())
        answer: list[str] = []
        finish = "error"
        after: tuple[SDKErrorCode, str] | None = None
        pending = 0  # tokens that came without text (reported by the next frame)
        it = aiter(stream)
        nxt: asyncio.Future[TokenChunk | None] | None = None
        cancel_wait = asyncio.ensure_future(self._cancel.wait())
        try:
            while True:
                if self._cancel.is_set():
                    raise _Cancelled
                nxt = asyncio.ensure_future(anext(it, None))
                await asyncio.wait({nxt, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    raise _Cancelled
                piece = nxt.result()
                nxt = None
                if piece is None:
                    break
                n = piece.n_tokens + pending
                if n:
                    await self._allow(n, ctx)
                if piece.text:
                    self.tokens += n
                    pending = 0
                    digest = self.hasher.update_chunk(piece.text)
                    state = (self.tokens, "0x" + digest.hex())
                    self._sent(*state)
                    answer.append(piece.text)
                    ctx.metrics.tokens_served.inc(n)
                    if first_at is None:
                        first_at = loop.time()
                        ctx.metrics.first_token_latency.observe(first_at - started)
                    await ctx.send(
                        Chunk(
                            id=prompt.id,
                            text=piece.text,
                            tokens_used=state[0],
                            content_hash=state[1],
                        )
                    )
                else:
                    pending = n
                if piece.finish_reason is not None:
                    finish = piece.finish_reason
                    break
        except _Cancelled:
            finish = "cancelled"
        except _ReceiptTimeout:
            after = (
                SDKErrorCode.RECEIPT_REQUIRED,
                f"no receipt for {self.last_sent[0]} tokens within "
                f"{ctx.limits.receipt_timeout:g}s; sign it to continue",
            )
        except PromptTooLongError as exc:
            # An engine that learns it only from its backend (an upstream's "too long").
            after = (SDKErrorCode.PROMPT_TOO_LARGE, str(exc))
        except InvalidRequestError as exc:
            after = (SDKErrorCode.INVALID_ARGUMENT, str(exc))
        except EngineError as exc:
            log.warning(kv("engine_error", session=self.session_id, id=prompt.id, error=str(exc)))
            if isinstance(exc, EngineUnavailableError):
                after = (SDKErrorCode.SERVICE_UNAVAILABLE, "the engine is unavailable; try again")
            else:
                after = (SDKErrorCode.INTERNAL_ERROR, "generation failed")
        finally:
            cancel_wait.cancel()
            if nxt is not None and not nxt.done():
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

        if pending and finish != "error":
            # Tokens without text at the very end (the engine's last piece): counted,
            # hash unchanged; allowed within the cap like any other piece.
            try:
                await self._allow(pending, ctx)
                self.tokens += pending
                ctx.metrics.tokens_served.inc(pending)
            except (_Cancelled, _ReceiptTimeout):
                pass
        if finish == "length" and budget_bound:
            finish = "budget"
        state = (self.tokens, self.hasher.hexdigest)
        self._sent(*state)
        text = "".join(answer)
        if text and not prompt.self_contained:
            self.turns += [ChatMessage("user", prompt.text), ChatMessage("assistant", text)]
            del self.turns[:-MAX_TURNS_KEPT]
        ctx.metrics.prompts.labels(finish_reason=finish).inc()
        n_answer = self.tokens - tokens_before
        elapsed = loop.time() - first_at if first_at is not None else 0.0
        rate = (n_answer - 1) / elapsed if n_answer > 1 and elapsed > 0 else None
        if rate is not None:
            ctx.metrics.tokens_per_second.observe(rate)
        # Counts and timings only: a host's logs must never hold what its clients said.
        log.info(
            kv(
                "prompt_served",
                session=self.session_id,
                id=prompt.id,
                tokens=n_answer,
                finish=finish,
                first_token_ms=round((first_at - started) * 1000, 1) if first_at else None,
                tokens_per_s=round(rate, 1) if rate is not None else None,
            )
        )
        await ctx.send(
            End(id=prompt.id, tokens_used=state[0], content_hash=state[1], finish_reason=finish)
        )
        if after is not None:
            await ctx.error(after[0], after[1], prompt.id)
        elif finish == "budget" and self.remaining == 0:
            await ctx.error(
                SDKErrorCode.SESSION_BUDGET_EXHAUSTED,
                f"the deposit pays for {self.terms.max_tokens} tokens and all are used",
                prompt.id,
            )

    async def _allow(self, n: int, ctx: ServeContext) -> None:
        """Return when `n` more tokens stay within the unsigned-token cap; until then ask
        for a receipt and wait. Raises _ReceiptTimeout or _Cancelled."""
        interval = self.terms.proof_interval
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        requested: tuple[int, str] | None = None
        while True:
            self._wake.clear()
            if self._cancel.is_set():
                raise _Cancelled
            if self.tokens <= self.acked_tokens or self.tokens + n - self.acked_tokens <= interval:
                return
            if deadline is None:
                deadline = loop.time() + ctx.limits.receipt_timeout
            if requested != self.last_sent:
                requested = self.last_sent
                await ctx.send(ReceiptRequest(tokens_used=requested[0], content_hash=requested[1]))
            left = deadline - loop.time()
            if left <= 0:
                raise _ReceiptTimeout
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                raise _ReceiptTimeout from None
