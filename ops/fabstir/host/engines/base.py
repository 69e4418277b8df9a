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

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

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


class EngineClosedError(EngineError):
    """The engine was closed (or its worker died) before or while serving the request."""


class Engine(Protocol):
    """What the host worker needs from an inference backend."""

    @property
    def model_path(self) -> Path: ...

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
