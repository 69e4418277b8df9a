"""The in-process llama.cpp engine (the only module that imports `llama_cpp`).

`LlamaBatchEngine` implements `Engine` on llama-cpp-python's low-level API: one llama
context shared by up to `max_sequences` sequences (each its own seq_id and KV stream),
driven by one dedicated thread that feeds one token of every decoding sequence to a
single `llama_decode` per step and prefills newcomers' prompts (in chunks) inside those
same steps.

Consumers pace their sequences: a sequence whose consumer has not read the last
`read_ahead` tokens it was handed is parked (skipped by the decode steps, its KV cells
kept) until the consumer reads on. So a session held at its unsigned-token cap costs no
compute beyond a few tokens while it waits for the receipt. Consumers should close
streams they abandon (`contextlib.aclosing`, or cancel the task): closing or cancelling
a stream drops its sequence at the next step.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import itertools
import logging
import os
import queue
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import _internals
from llama_cpp.llama_chat_format import ChatFormatterResponse, Jinja2ChatFormatter

from fabstir import models
from fabstir.host.engines.base import (
    ChatMessage,
    EngineClosedError,
    EngineError,
    FinishReason,
    InvalidRequestError,
    PromptTooLongError,
    TokenChunk,
    check_sampling,
    verify_model_file,
)

if TYPE_CHECKING:
    from fabstir.host.engines import EngineSpec
    from fabstir.host.engines.base import Engine

log = logging.getLogger(__name__)

# Largest CPU micro-batch below ggml-cpu's tiled flash-attention threshold (64 rows).
_CPU_INVARIANT_UBATCH = 63


@dataclass(frozen=True, slots=True)
class _Job:
    tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    cache_key: str | None


Emit = Callable[[TokenChunk | BaseException], bool]


@dataclass(frozen=True, slots=True)
class _Request:
    id: int
    job: _Job
    emit: Emit  # thread-safe; False when the consumer's event loop is gone


@dataclass(eq=False, slots=True)
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds; index = position
    key: str | None = None  # cache_key whose conversation the idle slot keeps
    busy: bool = False
    last_used: int = 0


class _TextStream:
    """Bytes of token pieces in, text out: whole UTF-8 characters, stop strings cut off."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._held = ""
        self.stopped = False

    def push(self, piece: bytes) -> str:
        self._held += self._decoder.decode(piece)
        return self._release(final=False)

    def flush(self) -> str:
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        held = self._held
        hits = [i for s in self._stop if (i := held.find(s)) >= 0]
        if hits:
            self._held, self.stopped = "", True
            return held[: min(hits)]
        keep = 0 if final else self._partial_stop_len(held)
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep]

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest tail of `text` that a stop string starts with."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


class _Runtime:
    """The llama model, context and batch; after construction only the worker thread
    decodes, while tokenizing (read-only vocabulary) is safe from any thread."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        max_sequences: int,
        n_batch: int,
        n_ubatch: int,
        n_threads: int,
        flash_attn: bool | None,
        n_gpu_layers: int,
    ) -> None:
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        try:
            self.model = _internals.LlamaModel(path_model=str(path), params=mparams, verbose=False)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        self.vocab = self.model.vocab
        self.n_vocab = int(self.model.n_vocab())
        n_ctx = min(n_ctx, int(self.model.n_ctx_train()))
        ctx = llama_cpp.llama_init_from_model(
            self.model.model,
            _context_params(n_ctx, max_sequences, n_batch, n_ubatch, n_threads, flash_attn),
        )
        if ctx is None:
            self.model.close()  # type: ignore[no-untyped-call]
            raise EngineError(f"llama.cpp could not create a context for {path}")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(ctx))
        self.n_batch = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._token = np.ctypeslib.as_array(self._batch.token, shape=(n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n_batch,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(n_batch,))
        self._seq = [self._batch.seq_id[i] for i in range(n_batch)]
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n_batch,))[:] = 1
        self._piece = ctypes.create_string_buffer(64)
        self._closed = False

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        return [int(t) for t in self.model.tokenize(text.encode("utf-8"), add_bos, special)]

    def decode(self, feeds: Sequence[tuple[int, int, Sequence[int], bool]]) -> list[int]:
        """One llama_decode of every (seq_id, first position, tokens, want logits) feed.

        Returns, per feed, the batch row of its last token's logits (-1 if not wanted).
        """
        rows, n = [], 0
        for seq_id, pos, tokens, want in feeds:
            k = len(tokens)
            self._token[n : n + k] = tokens
            self._pos[n : n + k] = np.arange(pos, pos + k)
            self._logits[n : n + k] = 0
            self._logits[n + k - 1] = want
            for i in range(n, n + k):
                self._seq[i][0] = seq_id
            n += k
            rows.append(n - 1 if want else -1)
        self._batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, self._batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc}")
        return rows

    def logits(self, row: int) -> npt.NDArray[np.float32]:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return cast("npt.NDArray[np.float32]", np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))

    def piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(
            self.vocab, token, self._piece, len(self._piece), 0, False
        )
        if n < 0:  # buffer too small; -n is the size needed
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, -n, 0, False)
        return self._piece.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def forget(self, seq_id: int, start: int) -> None:
        """Drop the sequence's KV cells from position `start` on."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, start, -1)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self.ctx)
        self.model.close()  # type: ignore[no-untyped-call]


def _context_params(
    n_ctx: int,
    max_sequences: int,
    n_batch: int,
    n_ubatch: int,
    n_threads: int,
    flash_attn: bool | None,
) -> llama_cpp.llama_context_params:
    params: llama_cpp.llama_context_params = llama_cpp.llama_context_default_params()
    # One KV stream per sequence (kv_unified off): attention reads only the sequence's own
    # cells, which is faster for unrelated prompts and makes each sequence's output
    # independent of what else is in the batch. n_ctx is then split between them.
    params.kv_unified = False
    params.n_seq_max = max_sequences
    params.n_ctx = n_ctx * max_sequences
    params.n_batch = n_batch
    params.n_ubatch = min(n_ubatch, n_batch)
    params.n_threads = params.n_threads_batch = n_threads
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        if flash_attn is None
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if flash_attn
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    return params


class _Sampler:
    """Greedy argmax over the logits row (cheap in numpy), or llama.cpp's sampler chain
    (top-p, temperature, seeded distribution) when temperature > 0."""

    def __init__(self, rt: _Runtime, job: _Job) -> None:
        self._rt = rt
        self._chain: Any = None
        if job.temperature > 0:
            chain = llama_cpp.llama_sampler_chain_init(
                llama_cpp.llama_sampler_chain_default_params()
            )
            if job.top_p < 1:
                llama_cpp.llama_sampler_chain_add(
                    chain, llama_cpp.llama_sampler_init_top_p(job.top_p, 1)
                )
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_temp(job.temperature)
            )
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(job.seed))
            self._chain = chain

    def sample(self, row: int) -> int:
        if self._chain is None:
            return int(self._rt.logits(row).argmax())
        return int(llama_cpp.llama_sampler_sample(self._chain, self._rt.ctx, row))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


@dataclass(eq=False, slots=True)
class _Active:
    req: _Request
    slot: _Slot
    pending: list[int]  # to feed next: the rest of the prompt, then the last sampled token
    text: _TextStream
    sampler: _Sampler
    decoding: bool = False  # the prompt is in; pending is the one last sampled token
    n_generated: int = 0
    n_unreported: int = 0  # generated tokens not yet counted in an emitted chunk
    n_emitted: int = 0  # tokens of the chunks handed to the consumer
    n_read: int = 0  # of those, the tokens the consumer has taken from its stream


@dataclass(frozen=True, slots=True)
class _Read:
    """The consumer took `n_tokens` more of request `req_id`'s stream."""

    req_id: int
    n_tokens: int


# A worker inbox item: a request to start, the id of one to cancel, or None to stop.
_Command = _Request | _Read | int | None


class _Worker:
    """Schedules sequences onto the llama context. `run` is the only code that touches the
    context; the other public methods are thread-safe."""

    def __init__(
        self,
        rt: _Runtime,
        *,
        max_sequences: int,
        prefill_chunk: int,
        prefix_cache: bool,
        read_ahead: int,
    ) -> None:
        self._rt = rt
        self._read_ahead = read_ahead
        #: Tokens sampled since start (all requests); read by tests and benchmarks.
        self.tokens_generated = 0
        self._prefill_chunk = prefill_chunk
        self._prefix_cache = prefix_cache
        self._inbox: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._slots = [_Slot(seq_id) for seq_id in range(max_sequences)]
        self._waiting: deque[_Request] = deque()
        self._active: list[_Active] = []
        self._clock = itertools.count(1)
        # Chunks are handed to consumers' loops at the start of the next step, just before
        # llama_decode releases the GIL, so the loop thread mostly handles them while the
        # worker waits on llama.cpp, not while it samples.
        self._outbox: list[tuple[_Request, TokenChunk | BaseException]] = []

    # -- any thread

    def submit(self, req: _Request) -> None:
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            self._inbox.put(req)

    def cancel(self, req_id: int) -> None:
        self._inbox.put(req_id)

    def read(self, req_id: int, n_tokens: int) -> None:
        self._inbox.put(_Read(req_id, n_tokens))

    def stop(self) -> None:
        with self._lock:
            self._closed = True
        self._inbox.put(None)

    # -- worker thread

    def run(self) -> None:
        error: EngineError = EngineClosedError("the engine was closed")
        try:
            while True:
                self._admit()
                # Nothing to decode (no request, or every sequence parked until its
                # consumer reads on): hand out what is ready and wait for a command.
                idle = not self._runnable()
                if idle:
                    self._flush()
                if not self._receive(block=idle):
                    break
                self._admit()
                if self._runnable():
                    self._step()
        except Exception as exc:
            log.exception("engine worker crashed")
            error = EngineClosedError(f"the engine worker crashed: {exc!r}")
        finally:
            with self._lock:
                self._closed = True
            self._shutdown(error)

    def _receive(self, *, block: bool) -> bool:
        """Handle inbox commands (waiting for one if `block`); False once told to stop."""
        try:
            cmd = self._inbox.get(block=block)
            while cmd is not None:
                if isinstance(cmd, _Read):
                    self._on_read(cmd)
                elif isinstance(cmd, int):
                    self._cancel(cmd)
                else:
                    self._waiting.append(cmd)
                cmd = self._inbox.get_nowait()
            return False
        except queue.Empty:
            return True

    def _cancel(self, req_id: int) -> None:
        for req in self._waiting:
            if req.id == req_id:
                self._waiting.remove(req)
                return
        for act in self._active:
            if act.req.id == req_id:
                log.debug("request %d cancelled after %d tokens", req_id, act.n_generated)
                self._release(act, keep=True)
                return

    def _on_read(self, cmd: _Read) -> None:
        for act in self._active:
            if act.req.id == cmd.req_id:
                act.n_read += cmd.n_tokens
                return

    def _parked(self, act: _Active) -> bool:
        """A decoding sequence whose consumer is `read_ahead` tokens behind waits, with
        its KV cells kept: a session held at its unsigned-token cap stops reading, so
        the engine stops decoding for it instead of running on until the receipt
        timeout; it resumes when the receipt comes and the consumer reads again."""
        return act.decoding and act.n_emitted - act.n_read >= self._read_ahead

    def _runnable(self) -> bool:
        return any(not self._parked(act) for act in self._active)

    def _admit(self) -> None:
        while self._waiting and (slot := self._pick_slot(self._waiting[0].job.cache_key)):
            self._start(self._waiting.popleft(), slot)

    def _pick_slot(self, key: str | None) -> _Slot | None:
        idle = [s for s in self._slots if not s.busy]
        if key is not None and self._prefix_cache:
            for slot in idle:
                if slot.key == key:
                    return slot
        empty = [s for s in idle if s.key is None]
        if empty:
            return empty[0]
        return min(idle, key=lambda s: s.last_used, default=None)  # evict the LRU conversation

    def _start(self, req: _Request, slot: _Slot) -> None:
        tokens = req.job.tokens
        if self._prefix_cache and req.job.cache_key is not None and slot.key == req.job.cache_key:
            # At least the last prompt token must be decoded again to get logits for it.
            keep = min(_common_prefix(slot.tokens, tokens), len(tokens) - 1)
            self._rt.forget(slot.seq_id, keep)
            del slot.tokens[keep:]
        else:
            self._clear(slot)
        slot.key, slot.busy = None, True
        log.debug(
            "request %d on seq %d: %d prompt tokens, %d cached",
            req.id, slot.seq_id, len(tokens), len(slot.tokens),
        )  # fmt: skip
        pending = tokens[len(slot.tokens) :]
        self._active.append(
            _Active(req, slot, pending, _TextStream(req.job.stop), _Sampler(self._rt, req.job))
        )

    def _step(self) -> None:
        """One llama_decode: the next token of every decoding sequence, then as much of the
        waiting prompts as the prefill budget allows."""
        self._flush()  # first: a consumer found gone here is released before batching
        feeds = [
            (act, act.pending) for act in self._active if act.decoding and not self._parked(act)
        ]
        budget = self._prefill_chunk
        for act in self._active:
            if budget > 0 and not act.decoding:
                feeds.append((act, act.pending[:budget]))
                budget -= len(feeds[-1][1])
        if not feeds:
            return
        batch = []
        for act, chunk in feeds:
            act.pending = act.pending[len(chunk) :]
            batch.append((act.slot.seq_id, len(act.slot.tokens), chunk, not act.pending))
            act.slot.tokens.extend(chunk)
        try:
            rows = self._rt.decode(batch)
        except EngineError as exc:
            for act, _ in feeds:
                self._outbox.append((act.req, exc))
                self._release(act, keep=False)
            return
        for (act, _), row in zip(feeds, rows, strict=True):
            if row >= 0:
                self._advance(act, act.sampler.sample(row))

    def _advance(self, act: _Active, token: int) -> None:
        if self._rt.is_eog(token):
            self._finish(act, "stop", "")
            return
        act.n_generated += 1
        act.n_unreported += 1
        self.tokens_generated += 1
        text = act.text.push(self._rt.piece(token))
        if act.text.stopped:
            self._finish(act, "stop", text)
        elif act.n_generated >= act.req.job.max_tokens:
            self._finish(act, "length", text)
        else:
            act.pending, act.decoding = [token], True
            if text:
                self._emit(act, TokenChunk(text, act.n_unreported))

    def _emit(self, act: _Active, chunk: TokenChunk) -> None:
        act.n_unreported = 0
        act.n_emitted += chunk.n_tokens
        self._outbox.append((act.req, chunk))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for req, item in outbox:
            if not req.emit(item):  # the consumer's loop is gone: nobody will read on
                self._cancel(req.id)

    def _finish(self, act: _Active, reason: FinishReason, text: str) -> None:
        log.debug("request %d finished (%s) after %d tokens", act.req.id, reason, act.n_generated)
        chunk = TokenChunk(text + act.text.flush(), act.n_unreported, reason)
        self._release(act, keep=True)
        self._outbox.append((act.req, chunk))

    def _release(self, act: _Active, *, keep: bool) -> None:
        """Free the sequence's slot, keeping its KV cells for the next turn of its
        conversation when it has a cache key (the slot stays evictable)."""
        self._active.remove(act)
        act.sampler.close()
        slot, key = act.slot, act.req.job.cache_key
        slot.busy, slot.last_used = False, next(self._clock)
        if keep and self._prefix_cache and key is not None:
            for other in self._slots:
                if other.key == key:
                    self._clear(other)
            slot.key = key
        else:
            self._clear(slot)

    def _clear(self, slot: _Slot) -> None:
        if slot.tokens:
            self._rt.forget(slot.seq_id, 0)
            slot.tokens.clear()
        slot.key = None

    def _shutdown(self, error: EngineError) -> None:
        self._flush()
        while True:  # requests that raced the stop command
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(cmd, _Request):
                self._waiting.append(cmd)
        for req in self._waiting:
            req.emit(error)
        self._waiting.clear()
        for act in list(self._active):
            act.req.emit(error)
            self._release(act, keep=False)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _emitter(
    loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[TokenChunk | BaseException]
) -> Emit:
    def emit(item: TokenChunk | BaseException) -> bool:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    return emit


def _chat_formatter(model: _internals.LlamaModel, path: Path) -> Jinja2ChatFormatter:
    template = model.metadata().get("tokenizer.chat_template")
    if not template:
        raise EngineError(f"{path} has no tokenizer.chat_template in its GGUF metadata")
    eos, bos = int(model.token_eos()), int(model.token_bos())
    return Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(eos) if eos != -1 else "",
        bos_token=model.token_get_text(bos) if bos != -1 else "",
        add_generation_prompt=True,
    )


class LlamaBatchEngine:
    """`Engine` on llama-cpp-python with batched decoding of concurrent sequences.

    n_ctx is per sequence (the KV cache holds n_ctx * max_sequences tokens). Requests
    beyond max_sequences wait for a slot. With prefix_cache, a finished request's KV cells
    stay in its slot under its cache_key (least recently used evicted first) so the next
    turn of that conversation only prefills what follows the common prefix.

    Defaults: all layers on the GPU when the build can offload, flash attention where
    the backend has it (flash_attn=None), one thread per available core. On the CPU
    n_ubatch defaults to 63 to keep results batch-invariant: from 64 query rows per
    micro-batch ggml-cpu's flash attention takes a tiled kernel that sums in another
    order, so a prompt would get slightly different logits depending on how it was
    chunked or batched, or whether its prefix came from the cache. Below that,
    concurrent, chunked and cache-reusing runs give exactly the solo output (for ~12%
    slower prefill). GPU kernels make no such promise, so there n_ubatch = n_batch.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 2048,
        max_sequences: int = 8,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        prefill_chunk: int = 256,
        n_threads: int | None = None,
        flash_attn: bool | None = None,
        n_gpu_layers: int | None = None,
        prefix_cache: bool = True,
        read_ahead: int = 8,
        verbose: bool = False,
    ) -> None:
        if max_sequences < 1 or n_batch <= max_sequences or prefill_chunk < 1 or read_ahead < 1:
            raise ValueError(
                "need max_sequences >= 1, n_batch > max_sequences, prefill_chunk >= 1, "
                "read_ahead >= 1"
            )
        # Same switch as Llama(verbose=...): llama.cpp's own log lines go to stderr.
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
        if n_gpu_layers is None:
            n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        if n_ubatch is None:
            n_ubatch = _CPU_INVARIANT_UBATCH if n_gpu_layers == 0 else n_batch
        self._path = Path(model_path)
        self._rt = _Runtime(
            self._path,
            n_ctx=n_ctx,
            max_sequences=max_sequences,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            n_threads=n_threads or len(os.sched_getaffinity(0)),
            flash_attn=flash_attn,
            n_gpu_layers=n_gpu_layers,
        )
        self.n_gpu_layers = n_gpu_layers
        self.max_sequences = max_sequences
        try:
            self._formatter = _chat_formatter(self._rt.model, self._path)
        except BaseException:
            self._rt.close()
            raise
        self._worker = _Worker(
            self._rt,
            max_sequences=max_sequences,
            prefill_chunk=min(prefill_chunk, n_batch - max_sequences),
            prefix_cache=prefix_cache,
            read_ahead=read_ahead,
        )
        self._ids = itertools.count(1)
        # Tokenizing runs on callers' threads; this keeps close() from freeing the model
        # under them.
        self._model_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._worker.run, name="llama-engine", daemon=True)
        self._thread.start()
        log.info(
            "engine ready: %s, n_ctx=%d per sequence, %d sequences, gpu layers=%d",
            self._path.name, self.n_ctx, max_sequences, n_gpu_layers,
        )  # fmt: skip

    @classmethod
    def from_catalogue(
        cls, entry: models.CatalogueEntry, path: Path | None = None, **kwargs: Any
    ) -> LlamaBatchEngine:
        """An engine on the catalogue entry's file, refusing one whose sha256 differs."""
        path = path or models.local_path(entry)
        models.verify_file(entry, path)
        return cls(path, **kwargs)

    @property
    def model_path(self) -> Path:
        return self._path

    def health(self) -> dict[str, Any]:
        return {"engine": "llama", "ok": not self._closed, "model_file": self._path.name}

    @property
    def n_ctx(self) -> int:
        return self._rt.n_ctx_seq

    @property
    def tokens_generated(self) -> int:
        """Tokens decoded since start, over all requests (what the hardware spent)."""
        return self._worker.tokens_generated

    def count_tokens(self, text: str) -> int:
        with self._open_model():
            return len(self._rt.tokenize(text, add_bos=False, special=False))

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._prompt_tokens(messages))

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
        check_sampling(max_tokens, temperature, top_p)
        tokens = self._prompt_tokens(messages)
        if len(tokens) + max_tokens > self.n_ctx:
            raise PromptTooLongError(len(tokens), max_tokens, self.n_ctx)
        # llama.cpp treats seed 0xFFFFFFFF as "pick one at random"; keep seeds deterministic.
        seed = secrets.randbits(31) if seed is None else seed % 0xFFFFFFFF
        stops = tuple(s for s in stop if s)
        job = _Job(tokens, max_tokens, temperature, top_p, seed, stops, cache_key)
        return self._stream(job)

    async def _stream(self, job: _Job) -> AsyncIterator[TokenChunk]:
        inbox: asyncio.Queue[TokenChunk | BaseException] = asyncio.Queue()
        req = _Request(next(self._ids), job, _emitter(asyncio.get_running_loop(), inbox))
        self._worker.submit(req)
        finished = False
        try:
            while not finished:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                if not finished:
                    self._worker.read(req.id, item.n_tokens)
                yield item
        finally:
            if not finished:
                self._worker.cancel(req.id)

    def _prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        if not messages:
            raise InvalidRequestError("no messages: the prompt is empty")
        if not any(m.content.strip() for m in messages):
            raise InvalidRequestError("every message is empty: the prompt is empty")
        rendered: ChatFormatterResponse = self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]  # type: ignore[misc]
        )
        # special=True so the template's control tokens (<|im_start|>...) are parsed as such.
        with self._open_model():
            return self._rt.tokenize(
                rendered.prompt, add_bos=not rendered.added_special, special=True
            )

    @contextlib.contextmanager
    def _open_model(self) -> Iterator[None]:
        with self._model_lock:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            yield

    def close(self) -> None:
        """Stop the worker (open streams get EngineClosedError) and free the model."""
        self._worker.stop()
        self._thread.join()
        with self._model_lock:
            self._closed = True
            self._rt.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


async def build(spec: EngineSpec) -> Engine:
    """The configured llama.cpp engine, on the model file once it matches the registry."""
    cfg = spec.config
    await verify_model_file(spec.model_path, spec.sha256, spec.size)
    return await asyncio.to_thread(
        LlamaBatchEngine,
        spec.model_path,
        n_ctx=cfg.n_ctx,
        max_sequences=cfg.max_sequences,
        n_gpu_layers=cfg.n_gpu_layers,
        n_threads=cfg.n_threads,
    )
