"""OpenAI's chat-completions API: request parsing, response and chunk shapes, errors.

Pure functions and frozen types; nothing here does I/O. Field rules follow OpenAI's
reference: `max_completion_tokens` wins over the older `max_tokens`; `stop` is a
string or up to four strings; `n` must be 1. Parameters that change nothing here
(`user`, `logit_bias`, penalties, `response_format` of type text...) are accepted
and ignored, as OpenAI-compatible servers do; ones we cannot honour (tools, `n > 1`,
images) are refused with 400 rather than silently dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fabstir.sdk.session import ChatRequest

#: What `/v1/models` and every answer name as the owner.
OWNER: Final = "fabstir-marketplace"
MAX_STOP: Final = 4
_ROLES: Final = frozenset({"system", "developer", "user", "assistant"})


class ApiError(Exception):
    """An OpenAI error object with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, type="invalid_request_error", param=param, code=code)


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Incorrect or missing API key: pass the gateway's key as a bearer token.",
        type="invalid_request_error",
        code="invalid_api_key",
    )


def budget_exhausted(message: str) -> ApiError:
    return ApiError(402, message, type="insufficient_quota", code="insufficient_quota")


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model {model!r} does not exist or is not approved on the marketplace; "
        "GET /v1/models lists the ones hosts serve.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def no_host(model: str, why: str = "") -> ApiError:
    extra = f" ({why})" if why else ""
    return ApiError(
        503,
        f"No marketplace host is available for {model!r}{extra}; try again later.",
        type="server_error",
        code="no_host_available",
    )


def chain_unavailable(message: str) -> ApiError:
    """The chain (its RPC) could not be reached: a passing outage, so 503 and retry."""
    return ApiError(
        503,
        f"The marketplace's chain is unreachable right now ({message}); try again later.",
        type="server_error",
        code="chain_unavailable",
    )


def marketplace_error(code: str, message: str) -> ApiError:
    """Any other marketplace (SDK) failure, named by its SDK error code."""
    return ApiError(502, message, type="server_error", code=code.lower())


def host_failed(message: str) -> ApiError:
    return ApiError(502, message, type="server_error", code="host_failed")


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    """A validated POST /v1/chat/completions body."""

    model: str
    messages: tuple[Turn, ...]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def chat_request(self, max_tokens: int) -> ChatRequest:
        """The marketplace request: system and developer messages become the system
        prompt; the other turns, merged where one role speaks twice in a row, become
        the alternating context that ends with the user's question."""
        system = [t.content for t in self.messages if t.role in ("system", "developer")]
        turns: list[Turn] = []
        for t in self.messages:
            if t.role in ("system", "developer"):
                continue
            if turns and turns[-1].role == t.role:
                turns[-1] = Turn(t.role, f"{turns[-1].content}\n\n{t.content}")
            else:
                turns.append(t)
        if not turns or turns[-1].role != "user":
            raise bad_request("the last message must be from the user", "messages")
        if turns[0].role == "assistant":
            turns.insert(0, Turn("user", ""))  # the context alternates from a user turn
        return ChatRequest(
            prompt=turns[-1].content,
            context=tuple(t.content for t in turns[:-1]),
            system="\n\n".join(system) if system else None,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=self.stop,
        )


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise bad_request(f"{name} must be a number in [{lo:g}, {hi:g}]", name)
    return float(value)


def _int(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"{name} must be an integer in [{lo}, {hi}]", name)
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise bad_request(f"{where}: only text content parts are supported", "messages")
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{where}: a text part needs a string 'text'", "messages")
            parts.append(text)
        return "".join(parts)
    raise bad_request(f"{where}.content must be a string or a list of text parts", "messages")


def _messages(value: Any) -> tuple[Turn, ...]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty array", "messages")
    turns = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise bad_request(f"{where} must be an object", "messages")
        role = m.get("role")
        if role not in _ROLES:
            raise bad_request(
                f"{where}.role must be one of {sorted(_ROLES)}; tools are not supported",
                "messages",
            )
        if m.get("tool_calls"):
            raise bad_request(f"{where}: tool calls are not supported", "messages")
        turns.append(Turn(str(role), _content(m.get("content"), where)))
    return tuple(turns)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or len(items) > MAX_STOP
        or not all(isinstance(s, str) and s for s in items)
    ):
        raise bad_request(f"stop must be a string or up to {MAX_STOP} non-empty strings", "stop")
    return tuple(items)


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate a chat-completions body; ApiError(400) names the first bad field."""
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required", "model")
    if body.get("tools") or body.get("functions"):
        raise bad_request("tools and functions are not supported", "tools")
    if _int(body, "n", 1, 1) not in (None, 1):
        raise bad_request("n must be 1", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, Mapping) or not stream):
        raise bad_request("stream_options is an object, allowed only with stream", "stream_options")
    include_usage = bool(options.get("include_usage", False)) if options else False
    max_tokens = _int(body, "max_completion_tokens", 1, 2**31 - 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, 2**31 - 1)
    return CompletionRequest(
        model=model,
        messages=_messages(body.get("messages")),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0) or None,
        seed=_int(body, "seed", 0, 2**53 - 1),
        stop=_stop(body.get("stop")),
    )


def finish_reason(host_reason: str | None) -> str:
    """The host's finish reason in OpenAI's words (a spent budget is a length stop)."""
    return "length" if host_reason in ("length", "budget") else "stop"


def usage(completion_tokens: int) -> dict[str, int]:
    """Usage as billed: completion tokens are what the client signed for and pays;
    prompt tokens are neither metered nor billed by the marketplace, so they read 0."""
    return {
        "prompt_tokens": 0,
        "completion_tokens": completion_tokens,
        "total_tokens": completion_tokens,
    }


@dataclass(frozen=True)
class Answer:
    """Identity of one answer, shared by its chunks."""

    model: str
    id: str
    created: int

    @classmethod
    def new(cls, model: str) -> Answer:
        return cls(model, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()))

    def completion(self, text: str, reason: str, completion_tokens: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            ],
            "usage": usage(completion_tokens),
        }

    def chunk(
        self,
        delta: Mapping[str, Any] | None,
        reason: str | None = None,
        *,
        usage_tokens: int | None = None,
    ) -> dict[str, Any]:
        """One `chat.completion.chunk`; with `usage_tokens` the usage-only chunk that
        `stream_options.include_usage` asks for (empty choices)."""
        choices: Sequence[Mapping[str, Any]] = (
            []
            if delta is None
            else [{"index": 0, "delta": dict(delta), "finish_reason": reason, "logprobs": None}]
        )
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": list(choices),
        }
        if usage_tokens is not None:
            body["usage"] = usage(usage_tokens)
        return body
