"""The host worker's inference engine, on the bundled model (CPU, real llama.cpp)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import pytest

from fabstir.host.engines.base import (
    ChatMessage,
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    TokenChunk,
    fit_window,
)
from fabstir.host.engines.llama import (
    LlamaBatchEngine,
    _TextStream,
)

T = TypeVar("T")

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "What is the capital of France?",
    "List three uses for a paperclip.",
    "Explain photosynthesis to a child.",
]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage("user", text)]


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Iterator[LlamaBatchEngine]:
    eng = LlamaBatchEngine(model_path, n_ctx=1024, max_sequences=8)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def two_slots(model_path: Path) -> Iterator[LlamaBatchEngine]:
    """An engine with room for only two sequences at a time, prefilling 32 tokens a step."""
    eng = LlamaBatchEngine(model_path, n_ctx=512, max_sequences=2, prefill_chunk=32)
    yield eng
    eng.close()


async def collect(stream: AsyncIterator[TokenChunk]) -> tuple[str, int, str | None]:
    """Text, token count and finish reason of a whole stream."""
    text, n, reason = "", 0, None
    async for chunk in stream:
        assert reason is None, "nothing may follow the chunk with the finish reason"
        text, n, reason = text + chunk.text, n + chunk.n_tokens, chunk.finish_reason
    return text, n, reason


def solo(engine: LlamaBatchEngine, prompt: str, max_tokens: int = 24, **kw: Any) -> str:
    return run(collect(engine.generate(user(prompt), max_tokens=max_tokens, **kw)))[0]


# ------------------------------------------------------------------------ generation


def test_greedy_matches_bare_llama_cpp(engine: LlamaBatchEngine, model_path: Path) -> None:
    bare = llama_cpp.Llama(str(model_path), n_ctx=1024, flash_attn=True, verbose=False)
    try:
        for prompt in PROMPTS[:2]:
            want = bare.create_chat_completion(
                [{"role": "user", "content": prompt}], max_tokens=24, temperature=0.0
            )
            text, n, reason = run(collect(engine.generate(user(prompt), max_tokens=24)))
            assert text == want["choices"][0]["message"]["content"]  # type: ignore[index]
            assert n == want["usage"]["completion_tokens"]  # type: ignore[index]
            assert reason == want["choices"][0]["finish_reason"]  # type: ignore[index]
    finally:
        bare.close()


def test_concurrent_streams_equal_their_solo_runs(engine: LlamaBatchEngine) -> None:
    alone = [solo(engine, p) for p in PROMPTS]

    async def together() -> list[tuple[str, int, str | None]]:
        return await asyncio.gather(
            *(collect(engine.generate(user(p), max_tokens=24)) for p in PROMPTS)
        )

    assert [text for text, _, _ in run(together())] == alone


def test_chunked_prefill_next_to_a_decoding_stream(two_slots: LlamaBatchEngine) -> None:
    """A prompt prefilled 32 tokens a step, between another stream's decode steps, gives
    exactly its solo answer, and so does the other stream."""
    long_prompt = "Summarise this: " + " ".join(PROMPTS * 4)
    want_long = solo(two_slots, long_prompt, max_tokens=12)
    want_short = solo(two_slots, PROMPTS[0], max_tokens=40)

    async def main() -> list[tuple[str, int, str | None]]:
        short = asyncio.create_task(collect(two_slots.generate(user(PROMPTS[0]), max_tokens=40)))
        await asyncio.sleep(0.2)  # the short one is decoding by now
        long = collect(two_slots.generate(user(long_prompt), max_tokens=12))
        return [await long, await short]

    assert two_slots.count_prompt_tokens(user(long_prompt)) > 3 * 32
    assert [text for text, _, _ in run(main())] == [want_long, want_short]


def test_max_tokens_is_respected(engine: LlamaBatchEngine) -> None:
    for max_tokens in (1, 5):
        _, n, reason = run(collect(engine.generate(user(PROMPTS[0]), max_tokens=max_tokens)))
        assert (n, reason) == (max_tokens, "length")


def test_stops_at_end_of_generation(engine: LlamaBatchEngine) -> None:
    text, n, reason = run(collect(engine.generate(user("Say just: yes"), max_tokens=64)))
    assert reason == "stop" and 0 < n < 64 and text


def test_stop_string_cuts_the_answer(engine: LlamaBatchEngine) -> None:
    full = solo(engine, PROMPTS[0], max_tokens=32)
    words = re.findall(r"\w{4,}", full)
    stop = words[len(words) // 2]
    text, _, reason = run(collect(engine.generate(user(PROMPTS[0]), max_tokens=32, stop=[stop])))
    assert (text, reason) == (full[: full.index(stop)], "stop")


def test_seeded_sampling_is_deterministic(engine: LlamaBatchEngine) -> None:
    kw: dict[str, Any] = {"temperature": 0.9, "top_p": 0.95, "max_tokens": 16}
    first = solo(engine, PROMPTS[3], seed=7, **kw)
    assert solo(engine, PROMPTS[3], seed=7, **kw) == first

    async def concurrently() -> list[tuple[str, int, str | None]]:
        streams = [engine.generate(user(PROMPTS[3]), seed=s, **kw) for s in (7, 8, 7)]
        return await asyncio.gather(*map(collect, streams))

    texts = [t for t, _, _ in run(concurrently())]
    assert texts[0] == texts[2] == first


def test_event_loop_stays_responsive(engine: LlamaBatchEngine) -> None:
    async def main() -> float:
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        streams = [engine.generate(user(p), max_tokens=32) for p in PROMPTS]
        await asyncio.gather(*map(collect, streams))
        tick.cancel()
        assert len(gaps) > 20
        return max(gaps)

    assert run(main()) < 0.25  # generous for a shared CI box; blocking would be ~1 s


# ----------------------------------------------------------------------- cancellation


def test_cancelled_stream_frees_its_slot(two_slots: LlamaBatchEngine) -> None:
    eng = two_slots
    want_b = solo(eng, PROMPTS[1], max_tokens=48)
    want_c = solo(eng, PROMPTS[2], max_tokens=8)

    async def main() -> None:
        first_a = asyncio.Event()

        async def a() -> None:
            async for _ in eng.generate(user(PROMPTS[0]), max_tokens=400):
                first_a.set()

        task_a = asyncio.create_task(a())
        task_b = asyncio.create_task(collect(eng.generate(user(PROMPTS[1]), max_tokens=48)))
        await first_a.wait()
        c_stream = eng.generate(user(PROMPTS[2]), max_tokens=8)
        task_c = asyncio.create_task(collect(c_stream))
        await asyncio.sleep(0.3)
        assert not task_c.done(), "both slots are busy: the third stream must wait"
        task_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_a
        # A's slot goes to C within a few decode steps, long before A's 400 tokens.
        text_c = (await asyncio.wait_for(task_c, timeout=5))[0]
        assert text_c == want_c
        assert (await task_b)[0] == want_b

    run(main())


def test_closing_a_stream_early_frees_its_slot(two_slots: LlamaBatchEngine) -> None:
    async def main() -> None:
        for _ in range(3):  # more abandoned streams than slots
            async with contextlib.aclosing(
                two_slots.generate(user(PROMPTS[0]), max_tokens=400)
            ) as stream:
                async for _chunk in stream:
                    break
        text, _, _ = await asyncio.wait_for(
            collect(two_slots.generate(user(PROMPTS[1]), max_tokens=4)), timeout=5
        )
        assert text

    run(main())


# ---------------------------------------------------------------------------- errors


def test_invalid_requests_raise_at_the_call(engine: LlamaBatchEngine) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.generate([], max_tokens=8)
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.generate([ChatMessage("system", ""), ChatMessage("user", "  ")], max_tokens=8)
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        engine.generate(user("hi"), max_tokens=0)
    with pytest.raises(InvalidRequestError, match="temperature"):
        engine.generate(user("hi"), max_tokens=8, temperature=-1)


def test_oversize_prompt_is_refused(engine: LlamaBatchEngine) -> None:
    with pytest.raises(PromptTooLongError, match="context window of 1024") as info:
        engine.generate(user("word " * 2000), max_tokens=8)
    assert info.value.n_prompt > 1024
    n_prompt = engine.count_prompt_tokens(user("hello there"))
    engine.generate(user("hello there"), max_tokens=engine.n_ctx - n_prompt)  # just fits
    with pytest.raises(PromptTooLongError):
        engine.generate(user("hello there"), max_tokens=engine.n_ctx - n_prompt + 1)


def test_closed_engine_refuses_and_ends_open_streams(model_path: Path) -> None:
    eng = LlamaBatchEngine(model_path, n_ctx=256, max_sequences=1)

    async def main() -> None:
        running = eng.generate(user(PROMPTS[0]), max_tokens=200)
        waiting = eng.generate(user(PROMPTS[1]), max_tokens=8)
        assert await anext(running)
        task = asyncio.create_task(collect(waiting))
        await asyncio.sleep(0.05)
        await eng.aclose()
        with pytest.raises(EngineClosedError):
            async for _ in running:
                pass
        with pytest.raises(EngineClosedError):
            await task
        with pytest.raises(EngineClosedError):
            await anext(eng.generate(user("hi"), max_tokens=8))

    run(main())


# ---------------------------------------------------------------- prefix cache reuse


def test_prefix_cache_reuse_gives_identical_answers(
    engine: LlamaBatchEngine, two_slots: LlamaBatchEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A second turn prefilled on top of the first turn's KV cells answers exactly as a
    fresh prefill does, and the reuse really happened."""
    history = user(PROMPTS[1])
    first = solo(engine, PROMPTS[1], cache_key="s1")
    history = [*history, ChatMessage("assistant", first), ChatMessage("user", "And of Spain?")]
    with caplog.at_level(logging.DEBUG, logger="fabstir.host.engines.llama"):
        reused = run(collect(engine.generate(history, max_tokens=24, cache_key="s1")))
    fresh = run(collect(engine.generate(history, max_tokens=24)))
    assert reused == fresh
    cached = [int(m) for m in re.findall(r"(\d+) cached", caplog.text)]
    assert cached and max(cached) > 20

    # With more conversations than slots the least recently used one is evicted.
    async def turns() -> None:
        for key in ("a", "b", "c", "a"):
            await collect(two_slots.generate(history, max_tokens=4, cache_key=key))

    run(turns())


# --------------------------------------------------------------------- text decoding


def test_text_stream_never_splits_a_character() -> None:
    stream = _TextStream(())
    euro = "€".encode()
    assert stream.push(b"a" + euro[:1]) == "a"
    assert stream.push(euro[1:2]) == ""
    assert stream.push(euro[2:]) == "€"
    assert stream.push(b"\xff") == "\ufffd"
    assert stream.flush() == ""


def test_text_stream_holds_back_a_possible_stop_string() -> None:
    stream = _TextStream(("</end>",))
    assert stream.push(b"hello </") == "hello "
    assert stream.push(b"e") == ""
    assert stream.push(b"x") == "</ex"
    assert stream.push(b" ok </en") == " ok "
    assert stream.push(b"d> rest") == ""
    assert stream.stopped


# --------------------------------------------------------------------- context window


def words(messages: Sequence[ChatMessage]) -> int:
    return sum(len(m.content.split()) + 1 for m in messages)


def test_fit_window_drops_oldest_turns_keeping_the_system_prompt() -> None:
    turns = [
        ChatMessage(role, f"{role} {i} " + "x " * 8)
        for i in range(5)
        for role in ("user", "assistant")
    ] + [ChatMessage("user", "last question")]
    kept = fit_window("be brief", turns, n_ctx=60, max_tokens=10, count_prompt_tokens=words)
    assert kept[0] == ChatMessage("system", "be brief")
    assert kept[1].role == "user" and kept[-1] == turns[-1]
    assert words(kept) + 10 <= 60
    # One more exchange would not have fitted.
    start = turns.index(kept[1])
    assert words([kept[0], *turns[start - 2 :]]) + 10 > 60
    everything = fit_window(None, turns, n_ctx=10_000, max_tokens=10, count_prompt_tokens=words)
    assert everything == turns


def test_fit_window_refuses_when_the_last_turn_alone_is_too_long() -> None:
    turns = [ChatMessage("user", "x " * 100)]
    with pytest.raises(PromptTooLongError):
        fit_window("sys", turns, n_ctx=50, max_tokens=10, count_prompt_tokens=words)
    with pytest.raises(InvalidRequestError):
        fit_window("sys", [], n_ctx=50, max_tokens=10, count_prompt_tokens=words)


def test_fit_window_with_the_models_template(engine: LlamaBatchEngine) -> None:
    turns = [
        ChatMessage("user" if i % 2 == 0 else "assistant", f"Message number {i}. " * 10)
        for i in range(41)
    ]
    kept = fit_window(
        "You are terse.",
        turns,
        n_ctx=engine.n_ctx,
        max_tokens=128,
        count_prompt_tokens=engine.count_prompt_tokens,
    )
    assert 1 < len(kept) < len(turns)
    assert engine.count_prompt_tokens(kept) + 128 <= engine.n_ctx
    engine.generate(kept, max_tokens=128)  # accepted
