"""Host workers on real loopback sockets: in a thread with their own event loop
(`WorkerThread`, so a test drives clients with `asyncio.run(...)` and the chain with ape
in the main thread, like separate processes), or as a child process (`WorkerProcess`,
for kill -9); and reading their HTTP endpoints."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from fabstir.host.config import HostConfig
from fabstir.host.worker import HostWorker

T = TypeVar("T")


class WorkerThread:
    """A HostWorker on its own event loop in a thread."""

    def __init__(self, config: HostConfig, engine: Any) -> None:
        self.config = config
        self.engine = engine
        self.worker: HostWorker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="host-worker", daemon=True)

    def start(self, timeout: float = 60.0) -> WorkerThread:
        self.thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("worker did not start")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        asyncio.run(self._amain())

    async def _amain(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.worker = HostWorker(self.config, engine=self.engine)
        try:
            await self.worker.start()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            await self.worker.stop()
            return
        self._ready.set()
        await self._stop.wait()
        await self.worker.stop()

    @property
    def url(self) -> str:
        assert self.worker is not None
        return self.worker.url

    @property
    def http(self) -> str:
        assert self.worker is not None
        return f"http://127.0.0.1:{self.worker.port}"

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60.0) -> T:
        """Run a coroutine on the worker's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def record(self, session_id: int) -> Any:
        assert self.worker is not None and self.worker.store is not None
        store = self.worker.store
        return self.call(lambda: store.get(session_id))

    def stop(self, timeout: float = 120.0) -> None:
        if self.loop is not None and self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"


def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0.0 when absent), read with
    prometheus-client's own parser."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


class WorkerProcess:
    """`python -m fabstir.host` as a child process (for kill -9)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fabstir.host", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            m = re.search(r"event=ready url=(ws://\S+)", text)
            if m:
                self.url = m[1]
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        raise AssertionError("worker did not become ready:\n" + self.log_path.read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
