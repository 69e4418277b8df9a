"""An OpenAI-compatible server (vLLM, llama.cpp's server, SGLang) as the worker's engine.

The worker stays the metered, paid front: it forwards each prompt as a streamed
`/v1/chat/completions` request and turns the server-sent events into `TokenChunk`s.

Counting (docs/protocol.md, "Counting tokens"): every content delta counts one token
(no OpenAI-compatible server sends a token's text over two deltas, so the count never
exceeds what was generated). The request asks for `stream_options.include_usage`; when
the server reports `usage.completion_tokens` and it differs from the delivered count,
the difference is logged (`event=upstream_count_mismatch`) and counted
(`fabstir_host_upstream_count_mismatch_total`), and the delivered count is what is
billed: tokens merged into one delta, or never delivered, are not.

Flow control: the stream is read only as the consumer pulls (one HTTP connection per
request, at most `max_concurrent` at once, the rest wait), so a consumer held at the
unsigned-token cap holds back what the upstream sent, and a consumer that closes the
stream (no receipt in time, client gone, cancel) closes the HTTP response: vLLM and
llama.cpp's server stop generating when their client goes away. Nothing is buffered
beyond httpx's read buffer and the socket's.

Faults: a refused connection, a 5xx, a timeout or a stream cut mid-answer raise
`EngineUnavailableError` (the session's client gets SERVICE_UNAVAILABLE) and mark the
engine degraded in /health; a probe of `/v1/models` every few seconds marks it healthy
again, as does the next successful request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx

from fabstir.errors import SDKErrorCode
from fabstir.host.config import ConfigError
from fabstir.host.engines.base import (
    ChatMessage,
    EngineClosedError,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelVerificationError,
    PromptTooLongError,
    TokenChunk,
    check_sampling,
    file_sha256,
)
from fabstir.host.metrics import HostMetrics, kv

if TYPE_CHECKING:
    from fabstir.host.engines import EngineSpec

log = logging.getLogger(__name__)

#: Environment variable holding the upstream's API key (or use --upstream-key-file).
ENV_UPSTREAM_KEY: Final = "FABSTIR_UPSTREAM_API_KEY"
#: Tokens a chat template adds around one message, at most, for the common templates
#: (ChatML: `<|im_start|>role\n` ... `<|im_end|>\n`); used when the upstream can only
#: tokenize plain text, so the window estimate errs on the large side.
TEMPLATE_TOKENS_PER_MESSAGE: Final = 8
#: Seconds between health probes while the upstream is down.
PROBE_INTERVAL: Final = 2.0
#: Upstream answers that mean "the prompt does not fit" (vLLM, llama.cpp, OpenAI).
_TOO_LONG: Final = re.compile(
    r"context length|context window|too long|exceeds? (the )?(available )?context|"
    r"maximum (context|model) length|n_ctx|prompt is too",
    re.IGNORECASE,
)

Tokenizer = Literal["chat", "text", "none"]
Identity = Literal["sha256", "operator-attested"]


@dataclass(frozen=True)
class UpstreamSettings:
    """How to reach and use the upstream (from HostConfig's upstream_* options)."""

    url: str
    model: str
    api_key: str | None = None
    connect_timeout: float = 5.0
    #: Longest silence while reading an answer before the upstream counts as down.
    read_timeout: float = 60.0
    max_concurrent: int = 16

    @property
    def root(self) -> str:
        """The server root (the configured URL without a trailing /v1)."""
        return re.sub(r"/v1/?$", "", self.url.rstrip("/"))


class UpstreamEngine:
    """`Engine` over an OpenAI-compatible HTTP server; see the module docstring.

    Build it with `connect()` (which checks the model and finds the tokenizer), not
    directly.
    """

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        n_ctx: int,
        tokenizer: Tokenizer,
        identity: Identity,
        text_path: str = "/extras/tokenize",
        metrics: HostMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._text_path = text_path
        self._n_ctx = n_ctx
        self.tokenizer: Tokenizer = tokenizer
        self.identity: Identity = identity
        self._metrics = metrics
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout, pool=None)
        limits = httpx.Limits(
            max_connections=settings.max_concurrent,
            max_keepalive_connections=settings.max_concurrent,
        )
        # One pooled async client for the answers; a small sync one for tokenizing, which
        # the worker calls from a thread (fit_window).
        self._client = httpx.AsyncClient(
            base_url=settings.root, headers=headers, timeout=timeout, limits=limits
        )
        self._sync = httpx.Client(
            base_url=settings.root,
            headers=headers,
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
        )
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._closed = False
        self.ok = True
        self.last_error: str | None = None
        self._probe: asyncio.Task[None] | None = None
        # The loop the engine serves on (set on first use): tokenizing runs in threads,
        # and a failure there starts the probe on this loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Open upstream requests (streams being read), and the most at once: for /health
        #: and tests.
        self.in_flight = self.peak_in_flight = 0
        #: Upstream requests closed before the server finished them (cap, client, cancel).
        self.cancelled = 0

    # -- the Engine interface

    @property
    def model_path(self) -> Path | None:
        return None

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def health(self) -> dict[str, Any]:
        return {
            "engine": "upstream",
            "ok": self.ok and not self._closed,
            "url": self.settings.root,
            "model": self.settings.model,
            "identity": self.identity,
            "tokenizer": self.tokenizer,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
        }

    def count_tokens(self, text: str) -> int:
        if self.tokenizer == "none":
            return max(1, len(text) // 4)
        return len(self._tokenize_text(text)) if text else 0

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        if self.tokenizer == "chat":
            body = {
                "model": self.settings.model,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "add_generation_prompt": True,
            }
            return len(self._post_sync("/tokenize", body)["tokens"])
        text = "\n".join(m.content for m in messages)
        return self.count_tokens(text) + TEMPLATE_TOKENS_PER_MESSAGE * (len(messages) + 1)

    def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        seed: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        cache_key: str | None = None,  # upstreams cache prefixes by themselves
    ) -> AsyncIterator[TokenChunk]:
        check_sampling(max_tokens, temperature, top_p)
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if not messages or not any(m.content.strip() for m in messages):
            raise InvalidRequestError("the prompt is empty")
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        return self._stream(body, max_tokens)

    async def aclose(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(BaseException):
                await self._probe
        await self._client.aclose()
        await asyncio.to_thread(self._sync.close)

    # -- streaming

    async def _stream(self, body: dict[str, Any], max_tokens: int) -> AsyncIterator[TokenChunk]:
        self._loop = asyncio.get_running_loop()
        delivered = events = 0
        answered = False
        finish: str | None = None
        usage: int | None = None
        async with self._slots:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                async with self._client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    if resp.status_code != 200:
                        await self._raise_for(resp, body, max_tokens)
                    self._healthy()
                    answered = True
                    async for data in _sse_data(resp):
                        if data == "[DONE]":
                            break
                        event = json.loads(data)
                        events += 1
                        if event.get("usage"):
                            usage = int(event["usage"].get("completion_tokens", 0))
                        for choice in event.get("choices") or ():
                            text = (choice.get("delta") or {}).get("content") or ""
                            if choice.get("finish_reason"):
                                finish = str(choice["finish_reason"])
                            if text:
                                delivered += 1
                                yield TokenChunk(text, 1)
                    if events == 0:
                        await self._diagnose_empty(body, max_tokens)
                    if finish is None:
                        raise EngineError("the upstream ended the answer without a reason")
            except httpx.TimeoutException as exc:
                raise self._down(f"upstream timed out ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                if answered and events == 0:
                    with contextlib.suppress(httpx.TransportError):
                        await self._diagnose_empty(body, max_tokens)
                raise self._down(f"upstream unreachable or cut off: {exc!r}") from None
            except (GeneratorExit, asyncio.CancelledError):
                # The consumer closed the stream: leaving `async with` closed the response,
                # which is the upstream's signal to stop generating.
                if finish is None:
                    self.cancelled += 1
                    if self._metrics is not None:
                        self._metrics.upstream_cancelled.inc()
                raise
            finally:
                self.in_flight -= 1
        self._reconcile(delivered, usage)
        yield TokenChunk("", 0, "length" if finish == "length" else "stop")

    async def _diagnose_empty(self, body: dict[str, Any], max_tokens: int) -> None:
        """A 200 answer with no event at all: llama-cpp-python's server answers an
        oversize streamed request so (an empty or cut stream); its non-streamed answer
        says why (400, "maximum context length"). Raises what that answer means."""
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        resp = await self._client.post("/v1/chat/completions", json=plain)
        if resp.status_code != 200:
            await self._raise_for(resp, body, max_tokens)
        raise EngineError("the upstream streamed an empty answer")

    def _reconcile(self, delivered: int, usage: int | None) -> None:
        if usage is None or usage == delivered:
            return
        direction = "upstream_higher" if usage > delivered else "upstream_lower"
        log.warning(
            kv("upstream_count_mismatch", delivered=delivered, upstream=usage, billed=delivered)
        )
        if self._metrics is not None:
            self._metrics.upstream_count_mismatch.labels(direction=direction).inc()

    async def _raise_for(self, resp: httpx.Response, body: dict[str, Any], max_tokens: int) -> None:
        raw = (await resp.aread()).decode("utf-8", "replace")[:500]
        if resp.status_code in (400, 413, 422) and _TOO_LONG.search(raw):
            n_prompt = await asyncio.to_thread(
                self.count_prompt_tokens,
                [ChatMessage(m["role"], m["content"]) for m in body["messages"]],
            )
            raise PromptTooLongError(n_prompt, max_tokens, self._n_ctx)
        if resp.status_code in (400, 422):
            raise InvalidRequestError(f"the upstream refused the request: {raw}")
        if resp.status_code == 404:
            raise self._down(f"the upstream does not serve {self.settings.model!r}: {raw}")
        raise self._down(f"upstream answered {resp.status_code}: {raw}")

    # -- health

    def _healthy(self) -> None:
        if not self.ok:
            log.info(kv("upstream_recovered", url=self.settings.root))
        self.ok, self.last_error = True, None

    def _down(self, reason: str) -> EngineUnavailableError:
        if self.ok:
            log.warning(kv("upstream_down", url=self.settings.root, error=reason[:300]))
        self.ok, self.last_error = False, reason[:300]
        if self._metrics is not None:
            self._metrics.upstream_errors.inc()
        try:
            asyncio.get_running_loop()
            self._start_probe()
        except RuntimeError:  # a tokenizer thread: hand it to the engine's loop
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._start_probe)
        return EngineUnavailableError(reason)

    def _start_probe(self) -> None:
        if not self._closed and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while not self.ok and not self._closed:
            await asyncio.sleep(PROBE_INTERVAL)
            with contextlib.suppress(httpx.HTTPError):
                resp = await self._client.get("/v1/models")
                if resp.status_code == 200:
                    self._healthy()

    # -- tokenizing (sync: called from a thread)

    def _post_sync(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._sync.post(path, json=body)
        except httpx.HTTPError as exc:
            raise self._down(f"upstream tokenizer unreachable: {exc!r}") from None
        if resp.status_code != 200:
            raise self._down(f"upstream tokenizer answered {resp.status_code}")
        out: dict[str, Any] = resp.json()
        return out

    def _tokenize_text(self, text: str) -> list[int]:
        # llama-cpp-python's server; llama.cpp's C++ server takes {"content": ...} on
        # /tokenize, which connect() maps to the same "text" mode.
        if self._text_path == "/extras/tokenize":
            return list(self._post_sync("/extras/tokenize", {"input": text})["tokens"])
        return list(self._post_sync("/tokenize", {"content": text})["tokens"])


# --------------------------------------------------------------------------- building


async def connect(
    settings: UpstreamSettings,
    *,
    registry_sha256: str,
    attested: bool,
    n_ctx: int | None,
    default_n_ctx: int,
    metrics: HostMetrics | None = None,
) -> UpstreamEngine:
    """Check the upstream serves the model, establish its identity, find its tokenizer
    and context window; raise ModelVerificationError when the model is not what the
    registry names (or cannot be checked and `attested` is not given)."""
    async with httpx.AsyncClient(
        base_url=settings.root,
        headers={"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {},
        timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
    ) as client:
        try:
            resp = await client.get("/v1/models")
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(
                f"cannot list the upstream's models at {settings.root}/v1/models: {exc!r}"
            ) from None
        entries = {str(m.get("id")): m for m in resp.json().get("data", [])}
        if settings.model not in entries:
            raise ModelVerificationError(
                SDKErrorCode.MODEL_NOT_FOUND,
                f"the upstream at {settings.root} serves {sorted(entries)}, not {settings.model!r}",
            )
        entry = entries[settings.model]
        props = await _get_json(client, "/props")
        identity = await _identity(settings, entry, props, registry_sha256, attested)
        tokenizer, text_path = await _find_tokenizer(client, settings.model)
        window = n_ctx or _reported_n_ctx(entry, props) or default_n_ctx
    engine = UpstreamEngine(
        settings,
        n_ctx=window,
        tokenizer=tokenizer,
        identity=identity,
        text_path=text_path,
        metrics=metrics,
    )
    engine._loop = asyncio.get_running_loop()
    log.info(
        kv(
            "upstream_ready",
            url=settings.root,
            model=settings.model,
            identity=identity,
            tokenizer=tokenizer,
            n_ctx=window,
            max_concurrent=settings.max_concurrent,
        )
    )
    return engine


async def _get_json(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        resp = await client.get(path)
        if resp.status_code == 200 and isinstance(body := resp.json(), dict):
            return body
    return {}


async def _identity(
    settings: UpstreamSettings,
    entry: dict[str, Any],
    props: dict[str, Any],
    registry_sha256: str,
    attested: bool,
) -> Identity:
    """sha256 when a model file the upstream names is readable here and matches;
    operator-attested only when asked for."""
    candidates = [settings.model, str(entry.get("id")), str(entry.get("root") or "")]
    candidates.append(str(props.get("model_path") or ""))
    for name in candidates:
        path = Path(name) if name else None
        if path is None or not await asyncio.to_thread(_readable_file, path):
            continue
        sha256 = await asyncio.to_thread(file_sha256, path)
        if sha256 != registry_sha256.lower().removeprefix("0x"):
            raise ModelVerificationError(
                SDKErrorCode.INVALID_MODEL_HASH,
                f"the upstream's model file {path} has sha256 {sha256}, not the registry's "
                f"{registry_sha256}; refusing to serve",
            )
        log.info(kv("model_verified", path=str(path), sha256=sha256, via="upstream"))
        return "sha256"
    if not attested:
        raise ModelVerificationError(
            SDKErrorCode.MODEL_VALIDATION_FAILED,
            f"the upstream does not expose a model file readable here, so {settings.model!r} "
            "cannot be checked against the registry; pass --upstream-attested to serve it on "
            "your word (shown in /health as operator-attested)",
        )
    log.warning(kv("model_operator_attested", model=settings.model, url=settings.root))
    return "operator-attested"


def _readable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


async def _find_tokenizer(client: httpx.AsyncClient, model: str) -> tuple[Tokenizer, str]:
    """chat: vLLM's /tokenize with messages (exact, template included); text: plain-text
    tokenizing (llama-cpp-python's /extras/tokenize, llama.cpp's /tokenize); none."""
    probe = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        resp = await client.post("/tokenize", json=probe)
        if resp.status_code == 200 and isinstance(resp.json()["tokens"], list):
            return "chat", "/tokenize"
    for path, body in (("/extras/tokenize", {"input": "hi"}), ("/tokenize", {"content": "hi"})):
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            resp = await client.post(path, json=body)
            if resp.status_code == 200 and isinstance(resp.json()["tokens"], list):
                return "text", path
    log.warning(kv("upstream_no_tokenizer", hint="prompts too long are refused by the upstream"))
    return "none", ""


def _reported_n_ctx(entry: dict[str, Any], props: dict[str, Any]) -> int | None:
    """vLLM: max_model_len in /v1/models; llama.cpp's server: n_ctx in /props."""
    for value in (
        entry.get("max_model_len"),
        (props.get("default_generation_settings") or {}).get("n_ctx"),
        props.get("n_ctx"),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return None


async def _sse_data(resp: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream."""
    async for line in resp.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def read_api_key(key_file: Path | None, env: dict[str, str] | None = None) -> str | None:
    """The upstream's API key: from the file, else $FABSTIR_UPSTREAM_API_KEY (never argv)."""
    if key_file is not None:
        try:
            return key_file.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read the upstream key file {key_file}: {exc}") from None
    return (env if env is not None else os.environ).get(ENV_UPSTREAM_KEY) or None


async def build(spec: EngineSpec) -> UpstreamEngine:
    """The upstream engine of the configuration (--engine upstream)."""
    cfg = spec.config
    if not cfg.upstream_url or not cfg.upstream_model:
        raise ConfigError("--engine upstream needs --upstream-url and --upstream-model")
    settings = UpstreamSettings(
        url=cfg.upstream_url,
        model=cfg.upstream_model,
        api_key=read_api_key(cfg.upstream_key_file),
        connect_timeout=cfg.upstream_connect_timeout,
        read_timeout=cfg.upstream_read_timeout,
        max_concurrent=cfg.upstream_max_concurrent,
    )
    started = time.monotonic()
    engine = await connect(
        settings,
        registry_sha256=spec.sha256,
        attested=cfg.upstream_attested,
        n_ctx=cfg.upstream_n_ctx,
        default_n_ctx=cfg.n_ctx,
        metrics=spec.metrics,
    )
    log.debug("upstream checked in %.3fs", time.monotonic() - started)
    return engine
