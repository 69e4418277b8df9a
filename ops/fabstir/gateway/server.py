"""The gateway's HTTP server: OpenAI's `/v1/models` and `/v1/chat/completions`.

aiohttp serves; every error leaves as an OpenAI error object with its status
(gateway.api). A request is served by a pooled session (gateway.pool): a host that
fails before the first token is replaced by the next one; a host that fails
mid-answer ends the request with 502 (streaming: an `error` event) and the client
pays only for the tokens it received, since receipts are signed only for those. A
client that hangs up mid-stream cancels its request on the host.

Prompts and answers are never logged; one INFO line per request says who served it,
how many tokens and the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from fabstir.gateway.api import (
    OWNER,
    Answer,
    ApiError,
    CompletionRequest,
    bad_request,
    chain_unavailable,
    finish_reason,
    host_failed,
    marketplace_error,
    no_host,
    parse_completion_request,
    unauthorized,
)
from fabstir.gateway.ledger import Ledger
from fabstir.gateway.pool import ModelEntry, PooledSession, SessionPool
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.session import SessionManager, StreamChunk

log = logging.getLogger("fabstir.gateway")

#: Hosts tried for one request before it fails with 503.
MAX_ATTEMPTS: Final = 4
#: Errors about the session (spent, expired, out of step), not the host: another
#: session of the same host may serve the request.
_SESSION_ERRORS: Final = frozenset(
    {
        SDKErrorCode.SESSION_BUDGET_EXHAUSTED,
        SDKErrorCode.SESSION_EXPIRED,
        SDKErrorCode.INVALID_SESSION_STATE,
        SDKErrorCode.RECEIPT_REQUIRED,
        SDKErrorCode.RATE_LIMITED,
    }
)
_BAD_REQUEST_ERRORS: Final = frozenset(
    {SDKErrorCode.INVALID_ARGUMENT, SDKErrorCode.MALFORMED_MESSAGE}
)


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1"
    port: int = 8000
    #: Bearer token clients must send; required when `listen` is not loopback.
    api_key: str | None = None
    shutdown_timeout: float = 30.0
    reap_every: float = 5.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gateway:
    """`await start()`, then `await stop()`; `serve()` does both around SIGINT/SIGTERM."""

    def __init__(self, pool: SessionPool, ledger: Ledger, settings: ServerSettings) -> None:
        if not is_loopback(settings.listen) and not settings.api_key:
            raise ValueError(
                f"refusing to listen on {settings.listen} without an API key: "
                "pass --api-key-file (or listen on 127.0.0.1)"
            )
        self.pool = pool
        self.ledger = ledger
        self.settings = settings
        self._sm: SessionManager = pool.session_manager
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"http://{self.settings.listen}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=4 << 20)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        return app

    async def start(self) -> None:
        recovered = await self.pool.recover()
        if recovered:
            log.info("closed %d session(s) a previous run left open: %s", len(recovered), recovered)
        self._runner = web.AppRunner(
            self.app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.settings.shutdown_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.listen, self.settings.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:  # port 0: the one the OS chose
            self.port = sockets[0].getsockname()[1]
        self._reaper = asyncio.create_task(self._reap(), name="gateway-reaper")
        log.info("gateway listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, let running requests finish (bounded), close every session."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.pool.close_all()
        log.info("gateway stopped; every session closed")

    async def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_every)
            try:
                await self.pool.reap_idle()
            except Exception:
                log.exception("closing idle sessions failed")

    # --------------------------------------------------------------- plumbing

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if request.path.startswith("/v1/"):
                self._check_key(request)
            return await handler(request)
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.status)
        except SDKError as exc:
            # A chain outage reaches here from any chain read (models, hosts): the client
            # gets an OpenAI error with a code it can act on, never a bare 500.
            log.warning("request %s %s failed: %s", request.method, request.path, exc)
            if exc.code is SDKErrorCode.NETWORK_ERROR:
                error = chain_unavailable(exc.message)
            else:
                error = marketplace_error(exc.code.value, exc.message)
            return web.json_response(error.body(), status=error.status)
        except web.HTTPException as exc:
            error = ApiError(
                exc.status, exc.reason or "error", type="invalid_request_error", code=None
            )
            return web.json_response(error.body(), status=exc.status)
        except Exception:
            log.exception("request %s %s failed", request.method, request.path)
            error = ApiError(500, "internal error in the gateway", type="server_error")
            return web.json_response(error.body(), status=500)

    def _check_key(self, request: web.Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), key):
            raise unauthorized()

    # ----------------------------------------------------------------- routes

    def _model_object(self, m: ModelEntry) -> dict[str, Any]:
        return {
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": OWNER,
            "fabstir": {
                "model_id": m.model_id,
                "hosts": len(m.hosts),
                "token": self.pool.token_symbol,
                "best_price_per_token": str(m.best_price),
            },
        }

    async def _models(self, request: web.Request) -> web.Response:
        entries = await self.pool.models()
        return web.json_response(
            {"object": "list", "data": [self._model_object(m) for m in entries]}
        )

    async def _model(self, request: web.Request) -> web.Response:
        entry = await self.pool.resolve(request.match_info["model"])
        return web.json_response(self._model_object(entry))

    async def _health(self, request: web.Request) -> web.Response:
        token = self.pool.token_symbol
        committed = self.ledger.committed(token)
        body = {
            "status": "ok",
            "budget": {
                "token": token,
                "total": self.pool.format(self.pool.config.budget),
                "committed": self.pool.format(committed),
            },
            **self.pool.snapshot(),
        }
        return web.json_response(body)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request("the request body is not valid JSON") from None
        req = parse_completion_request(body)
        model = await self.pool.resolve(req.model)
        cap = self.pool.config.max_tokens
        want = min(req.max_tokens or cap, cap)
        started = time.time()
        s, stream, first = await self._begin(model, req, want)
        answer = Answer.new(req.model)
        before = s.tokens
        if req.stream:
            return await self._stream(request, req, answer, s, stream, first, before, started)
        return await self._complete(req, answer, s, stream, first, before, started)

    async def _begin(
        self, model: ModelEntry, req: CompletionRequest, want: int
    ) -> tuple[PooledSession, AsyncIterator[StreamChunk], StreamChunk]:
        """A session and the answer's first piece, failing over between hosts until one
        answers (errors before the first token cost nothing: nothing was received)."""
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS):
            s = await self.pool.acquire(model, want, tried)
            stream = self._sm.send_chat(s.session_id, req.chat_request(min(want, s.remaining)))
            try:
                return s, stream, await anext(stream)
            except SDKError as exc:
                if exc.code is SDKErrorCode.PROMPT_TOO_LARGE:
                    await self.pool.release(s)
                    raise bad_request(exc.message, "messages", "context_length_exceeded") from None
                if exc.code in _BAD_REQUEST_ERRORS:
                    await self.pool.release(s)
                    raise bad_request(exc.message) from None
                host_fault = exc.code not in _SESSION_ERRORS
                log.warning(
                    "session %s on host %s failed before its first token: %s",
                    s.session_id,
                    s.host,
                    exc,
                )
                await self.pool.release(s, failed=exc, host_fault=host_fault)
                if host_fault:
                    tried.add(s.host)
            except StopAsyncIteration:
                await self.pool.release(s)
                raise host_failed("the host ended the answer without a word") from None
        raise no_host(model.name, f"{MAX_ATTEMPTS} attempts failed")

    def _finish(
        self,
        req: CompletionRequest,
        answer: Answer,
        s: PooledSession,
        before: int,
        started: float,
        outcome: str,
    ) -> int:
        tokens = self._sm.tokens_received(s.session_id)
        used = tokens - before
        self.ledger.request_done(
            answer.id,
            session_id=s.session_id,
            model=req.model,
            started_at=started,
            completion_tokens=used,
            session_tokens=tokens,
            price=s.price,
            outcome=outcome,
        )
        self.pool.note_receipts(s.session_id)
        log.info(
            "request %s: session %s host %s, %d tokens, %s, %.0f ms",
            answer.id,
            s.session_id,
            s.host,
            used,
            outcome,
            (time.time() - started) * 1000,
        )
        return used

    async def _complete(
        self,
        req: CompletionRequest,
        answer: Answer,
        s: PooledSession,
        stream: AsyncIterator[StreamChunk],
        piece: StreamChunk,
        before: int,
        started: float,
    ) -> web.Response:
        parts: list[str] = []
        try:
            while piece.finish_reason is None:
                parts.append(piece.text)
                piece = await anext(stream)
        except SDKError as exc:
            self._finish(req, answer, s, before, started, "host_failed")
            await self.pool.release(s, failed=exc, host_fault=True)
            raise host_failed(f"the host failed mid-answer: {exc.message}") from None
        except StopAsyncIteration:
            pass
        await _aclose(stream)
        used = self._finish(req, answer, s, before, started, "ok")
        await self.pool.release(s)
        reason = finish_reason(piece.finish_reason)
        return web.json_response(answer.completion("".join(parts), reason, used))

    async def _stream(
        self,
        request: web.Request,
        req: CompletionRequest,
        answer: Answer,
        s: PooledSession,
        stream: AsyncIterator[StreamChunk],
        piece: StreamChunk,
        before: int,
        started: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )

        async def event(payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        outcome = "ok"
        failed: SDKError | None = None
        try:
            await response.prepare(request)
            await event(answer.chunk({"role": "assistant", "content": ""}))
            try:
                while piece.finish_reason is None:
                    await event(answer.chunk({"content": piece.text}))
                    piece = await anext(stream)
            except StopAsyncIteration:
                pass
            except SDKError as exc:
                outcome, failed = "host_failed", exc
                error = host_failed(f"the host failed mid-answer: {exc.message}")
                await event(error.body())
                return response
            await _aclose(stream)
            used = self._sm.tokens_received(s.session_id) - before
            await event(answer.chunk({}, finish_reason(piece.finish_reason)))
            if req.include_usage:
                await event(answer.chunk(None, usage_tokens=used))
            await event("[DONE]")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            outcome = "client_gone"
            await _aclose(stream)  # cancels the request on the host
        finally:
            self._finish(req, answer, s, before, started, outcome)
            await self.pool.release(s, failed=failed, host_fault=failed is not None)
        return response


async def _aclose(stream: AsyncIterator[StreamChunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
