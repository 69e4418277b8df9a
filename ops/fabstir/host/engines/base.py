"""The engine interface of the host worker: what it needs from an inference backend.

`Engine` (the protocol), `TokenChunk` (a piece of a streamed answer), the engine errors,
and `fit_window` (which turns of a conversation fit the context window). Engines live one
per module next to this one and are built through `fabstir.host.engines.build_engine`.

Flow control is the consumer's: an engine generates at most a small, bounded number of
tokens beyond what the consumer has read from the stream, so a consumer that stops
reading (the unsigned-token cap) stops the engine too. Closing or cancelling a stream
cancels its request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from fabstir import models
from fabstir.errors import SDKError, SDKErrorCode
from fabstir.host.metrics import kv

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """A piece of a streamed answer.

    `n_tokens` is how many generated tokens the piece stands for: a token can end inside a
    UTF-8 character or be held back while it might start a stop string, so one piece may
    stand for several tokens, and the last one may carry tokens without text. The sum over
    a stream is the answer's token count (the end-of-generation token is not counted).
    `finish_reason` is set on the last chunk only.
    """

    text: str
    n_tokens: int
    finish_reason: FinishReason | None = None


class EngineError(Exception):
    """The engine could not serve a request."""


class InvalidRequestError(EngineError, ValueError):
    """The request itself is wrong (empty prompt, bad sampling parameters...)."""


class PromptTooLongError(InvalidRequestError):
    def __init__(self, n_prompt: int, max_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"prompt of {n_prompt} tokens plus max_tokens={max_tokens} does not fit "
            f"the context window of {n_ctx} tokens"
        )
        self.n_prompt = n_prompt
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx


class ModelVerificationError(SDKError):
    """The model served does not match its registry entry (or cannot be checked)."""


class EngineUnavailableError(EngineError):
    """The engine cannot serve now (an upstream down, overloaded or cut off mid-answer);
    the client may try again later (SERVICE_UNAVAILABLE)."""


class EngineClosedError(EngineUnavailableError):
    """The engine was closed (or its worker died) before or while serving the request."""


class Engine(Protocol):
    """What the host worker needs from an inference backend."""

    @property
    def model_path(self) -> Path | None:
        """The model file this process reads, if it reads one (None: an upstream's)."""
        ...

    @property
    def n_ctx(self) -> int:
        """Context window of one sequence, in tokens (prompt plus answer)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of `messages` rendered with the model's chat template."""
        ...

    def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        seed: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        cache_key: str | None = None,
    ) -> AsyncIterator[TokenChunk]:
        """Stream the answer to `messages`.

        Invalid requests raise `InvalidRequestError` at the call. `temperature == 0` is
        greedy; otherwise the output is a function of `seed`. `cache_key` (a session id)
        lets an engine keep the conversation's KV cache for the next turn.
        """
        ...

    def health(self) -> dict[str, Any]:
        """For /health: at least `engine` (its name) and `ok` (False: degraded)."""
        ...

    async def aclose(self) -> None: ...


def fit_window(
    system: str | None,
    turns: Sequence[ChatMessage],
    *,
    n_ctx: int,
    max_tokens: int,
    count_prompt_tokens: Callable[[Sequence[ChatMessage]], int],
) -> list[ChatMessage]:
    """The system prompt and the newest turns that leave `max_tokens` free in `n_ctx`.

    Oldest turns are dropped first. The kept history starts at a user turn (an answer
    without its question misleads the model) unless only the last turn fits, which is
    always kept; if even that does not fit, PromptTooLongError.
    """
    if not turns:
        raise InvalidRequestError("a conversation needs at least one turn")
    head = [ChatMessage("system", system)] if system is not None else []
    last = len(turns) - 1
    starts = [i for i, turn in enumerate(turns) if turn.role == "user" and i < last] + [last]

    def n_tokens(k: int) -> int:
        return count_prompt_tokens([*head, *turns[starts[k] :]])

    if (shortest := n_tokens(len(starts) - 1)) + max_tokens > n_ctx:
        raise PromptTooLongError(shortest, max_tokens, n_ctx)
    # Fewer turns never means more tokens, so the first start that fits can be bisected.
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if n_tokens(mid) + max_tokens <= n_ctx:
            hi = mid
        else:
            lo = mid + 1
    return [*head, *turns[starts[lo] :]]


def check_sampling(max_tokens: int, temperature: float, top_p: float) -> None:
    """InvalidRequestError unless the sampling parameters make sense."""
    if max_tokens < 1:
        raise InvalidRequestError(f"max_tokens must be at least 1, got {max_tokens}")
    if not temperature >= 0:
        raise InvalidRequestError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {top_p}")


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = models.sha256_file(path)
    return _sha_cache[key]


async def verify_model_file(path: Path, sha256: str, size: int) -> str:
    """Check a model file against its registry entry's sha256 and size; its sha256.
    Raises ModelVerificationError (a missing file, or a mismatch: refuse to serve)."""

    def probe() -> tuple[str, int] | None:
        return (file_sha256(path), path.stat().st_size) if path.is_file() else None

    found = await asyncio.to_thread(probe)
    if found is None:
        raise ModelVerificationError(
            SDKErrorCode.MODEL_VALIDATION_FAILED,
            f"model file {path} does not exist; run `fabstir models fetch`",
        )
    actual, actual_size = found
    if actual != sha256 or actual_size != size:
        log.error(
            kv(
                "model_hash_mismatch",
                path=str(path),
                sha256=actual,
                registry_sha256=sha256,
                size=actual_size,
                registry_size=size,
            )
        )
        raise ModelVerificationError(
            SDKErrorCode.INVALID_MODEL_HASH,
            f"{path} (sha256 {actual}, {actual_size} bytes) does not match the registry entry "
            f"(sha256 {sha256}, {size} bytes); refusing to serve",
        )
    log.info(kv("model_verified", path=str(path), sha256=actual))
    return actual
