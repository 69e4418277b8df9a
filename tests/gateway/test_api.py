"""OpenAI request parsing and response shapes (no chain, no host)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fabstir.gateway.api import (
    Answer,
    ApiError,
    CompletionRequest,
    Turn,
    finish_reason,
    parse_completion_request,
)
from fabstir.protocol.messages import Prompt, parse_message

HELLO = [{"role": "user", "content": "hi"}]


def _parse(**body: Any) -> CompletionRequest:
    return parse_completion_request({"model": "m", "messages": HELLO, **body})


def test_completion_tokens_limit_prefers_max_completion_tokens() -> None:
    assert _parse(max_tokens=5).max_tokens == 5
    assert _parse(max_tokens=5, max_completion_tokens=7).max_tokens == 7
    assert _parse().max_tokens is None


def test_stream_options_include_usage_only_with_stream() -> None:
    assert _parse(stream=True, stream_options={"include_usage": True}).include_usage
    assert not _parse(stream=True).include_usage
    with pytest.raises(ApiError) as exc:
        _parse(stream_options={"include_usage": True})
    assert exc.value.status == 400 and exc.value.param == "stream_options"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": ""}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_fields_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_completion_request({"model": "m", "messages": HELLO, **body})
    assert exc.value.status == 400
    assert exc.value.param == param
    assert exc.value.body()["error"]["type"] == "invalid_request_error"


def test_body_that_is_not_an_object_is_400() -> None:
    with pytest.raises(ApiError):
        parse_completion_request([1, 2])


def test_messages_become_system_context_and_prompt() -> None:
    req = CompletionRequest(
        model="m",
        messages=(
            Turn("system", "be brief"),
            Turn("developer", "no emoji"),
            Turn("user", "a"),
            Turn("user", "b"),
            Turn("assistant", "c"),
            Turn("user", "d"),
        ),
        temperature=0.5,
        stop=("\n",),
    )
    chat = req.chat_request(max_tokens=9)
    assert chat.system == "be brief\n\nno emoji"
    assert chat.context == ("a\n\nb", "c"), "consecutive turns of one role merge"
    assert chat.prompt == "d" and chat.max_tokens == 9
    assert chat.temperature == 0.5 and chat.stop == ("\n",)


def test_a_conversation_starting_with_the_assistant_gets_an_empty_user_turn() -> None:
    req = _parse(messages=[{"role": "assistant", "content": "Hi!"}, *HELLO])
    assert req.chat_request(4).context == ("", "Hi!")


def test_the_last_message_must_be_the_users() -> None:
    req = _parse(messages=[*HELLO, {"role": "assistant", "content": "x"}])
    with pytest.raises(ApiError, match="last message"):
        req.chat_request(4)


def test_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert _parse(messages=[{"role": "user", "content": parts}]).messages[0].content == "ab"


def test_chat_request_travels_as_a_v2_prompt_and_the_hash_covers_all_of_it() -> None:
    chat = _parse(messages=[{"role": "system", "content": "s"}, *HELLO], temperature=0.7)
    fields = chat.chat_request(4).prompt_fields()
    prompt = Prompt(id="r1", text="hi", max_tokens=4, **fields)
    assert prompt.self_contained
    assert parse_message(prompt.to_json()) == prompt
    assert json.loads(prompt.transcript_text()) == {"context": [], "system": "s", "text": "hi"}
    assert prompt.temperature == "0.7"
    # A version-1 peer never sees the fields (the SDK refuses to send such a prompt).
    assert set(json.loads(prompt.to_json(version=1))) == {"type", "id", "text", "max_tokens"}
    plain = Prompt(id="r2", text="hi", max_tokens=4)
    assert not plain.self_contained and plain.transcript_text() == "hi"


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", "2.5"), ("temperature", "0.1234567"), ("top_p", "0"), ("seed", -1)],
)
def test_prompt_refuses_sampling_out_of_range(field: str, value: Any) -> None:
    frame = {"type": "prompt", "id": "r", "text": "hi", "max_tokens": 1, field: value}
    with pytest.raises(Exception, match=field):
        parse_message(json.dumps(frame))


def test_finish_reasons_and_chunk_shapes() -> None:
    assert finish_reason("budget") == "length" == finish_reason("length")
    assert finish_reason("stop") == "stop" == finish_reason("cancelled")
    answer = Answer.new("m")
    usage_only = answer.chunk(None, usage_tokens=3)
    assert usage_only["choices"] == [] and usage_only["usage"]["completion_tokens"] == 3
    done = answer.completion("x", "stop", 2)
    assert done["usage"] == {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}
