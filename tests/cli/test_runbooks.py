"""The operator runbooks (docs/runbooks/) run on a local chain: docs that drift are bugs.

Every ```sh block of the pages in PAGES is preceded by a marker:

- `<!-- runbook-test: NAME -->`: run by a test below, by name, with `bash -euo
  pipefail` in the module's FABSTIR_HOME (also the working directory, so `host.db`
  and `deployments/` land there); `<!-- runbook-test: NAME background -->` is a
  long-running one-line command (the host worker), started in the background and
  stopped (SIGTERM, like Ctrl-C) or killed (SIGKILL, a crash) by the test;
- `<!-- runbook-skip: REASON -->`: not run (live network, keystore, multisig).

Shell variables a block sets are kept for the page's later blocks, as in one
terminal. The only substitutions: the ports 8080/8081 become free ports, and the
tests set `$SESSION_ID` / `$OLD_SESSION_ID` where a page is about "a session".
What happens outside the commands is done here: a worker crashing, its RPC going
down (a small proxy), the chain's clock moving (`evm_increaseTime`).

One chain for the module. The tests run in file order and share it: the
client-session page deploys and starts the worker (fixture `host`); the rollout
deploys a new set; the role rotation, which takes the deployer's roles, is last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.cli import CLIENT, DEPLOYER, HOST, REPO, address_of, invoke, ok, ok_json

from fabstir.chain.local import ChainInfo, anvil_binary, free_port
from fabstir.sdk.config import SDKConfig
from fabstir.sdk.sdk import FabstirSDK

RUNBOOKS = REPO / "docs" / "runbooks"
#: Pages whose every sh block is marked (deploy.md and host.md are tested elsewhere).
PAGES = (
    "client-session.md",
    "stuck-session.md",
    "settlement-lag.md",
    "withdraw.md",
    "pause-and-rollout.md",
    "rotate-roles.md",
)
PORTS = (8080, 8081)
OTHER_CLIENT = 7
MULTISIG = 9  # the stand-in multisig of rotate-roles.md
PRICE = 200  # USDC units per token: the host's minimum in client-session.md

_MARKER = re.compile(r"^\s*<!--\s*runbook-(test|skip):\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


# --------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str
    name: str | None  # None: runbook-skip
    background: bool = False
    skip_reason: str = ""

    @property
    def where(self) -> str:
        return f"docs/runbooks/{self.page}:{self.line}"


def parse_page(page: str) -> list[Block]:
    """The page's sh blocks with their markers (a missing marker is an error)."""
    lines = (RUNBOOKS / page).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence[1], fence[2]
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang not in ("sh", "bash"):
            continue
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _MARKER.match(lines[prev]) if prev >= 0 else None
        where = f"docs/runbooks/{page}:{start + 1}"
        assert marker, f"{where}: sh block without <!-- runbook-test: NAME --> or -skip marker"
        code = "\n".join(body) + "\n"
        if marker[1] == "skip":
            assert marker[2], f"{where}: runbook-skip needs a reason"
            blocks.append(Block(page, start + 1, code, None, skip_reason=marker[2]))
            continue
        words = marker[2].split()
        assert words and len(words) <= 2, f"{where}: runbook-test: NAME [background]"
        assert len(words) == 1 or words[1] == "background", f"{where}: unknown flag {words[1]}"
        blocks.append(Block(page, start + 1, code, words[0], background=len(words) == 2))
    return blocks


# ------------------------------------------------------------------ the lab


class RpcProxy:
    """Forwards JSON-RPC to the chain; with `reject_sends` it refuses every transaction
    the way a node refuses a key without ETH for gas (reads still work)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.reject_sends = False
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def up(self) -> None:
        if self._server is not None:
            return
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = json.loads(body)
                if proxy.reject_sends and call.get("method") == "eth_sendRawTransaction":
                    error = {
                        "code": -32003,
                        "message": "insufficient funds for gas * price + value",
                    }
                    data = json.dumps({"jsonrpc": "2.0", "id": call.get("id"), "error": error})
                    self._answer(data.encode())
                    return
                request = urllib.request.Request(
                    proxy.upstream, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    self._answer(response.read())

            def _answer(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Lab:
    """The module's working directory, environment, background workers and chain clock."""

    def __init__(self, home: Path, chain: ChainInfo) -> None:
        self.home = home
        self.chain = chain
        self.ports = {p: free_port() for p in PORTS}
        self.logs = home / "runbook-logs"
        self.logs.mkdir(exist_ok=True)
        (home / "tmp").mkdir(exist_ok=True)
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.pages: dict[str, Page] = {}
        self.proxy = RpcProxy(chain.rpc_url)
        self._runs = 0
        path = [str(Path(sys.executable).parent), str(Path(anvil_binary()).parent)]
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([*path, os.environ.get("PATH", "")]),
            "TMPDIR": str(home / "tmp"),
            "PYTHONUNBUFFERED": "1",
        }

    def page(self, name: str) -> Page:
        if name not in self.pages:
            self.pages[name] = Page(self, name)
        return self.pages[name]

    def script_path(self, block: Block) -> Path:
        self._runs += 1
        return self.logs / f"{self._runs:03d}-{block.page[:-3]}-{block.name}.sh"

    def substitute(self, code: str) -> str:
        for port, free in self.ports.items():
            code = re.sub(rf"\b{port}\b", str(free), code)
        return code

    # -- ad-hoc commands (checks the pages do not show)

    def sh(
        self, command: str, *, expect_fail: bool = False, env: dict[str, str] | None = None
    ) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=self.home,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (proc.returncode != 0) == expect_fail, (
            f"{command}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        return proc.stdout + proc.stderr

    # -- workers

    def running(self, port: int) -> bool:
        proc = self.workers.get(port)
        return proc is not None and proc.poll() is None

    def start(self, port: int, script: Path, env: dict[str, str], log: Path) -> None:
        assert not self.running(port), f"a worker already runs on {port}: stop it first"
        with log.open("ab") as out:
            self.workers[port] = subprocess.Popen(
                [*_one_cpu(), "bash", str(script)],
                cwd=self.home,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(port, log)

    def wait_ready(self, port: int, log: Path, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.workers[port]
            if proc.poll() is not None:
                raise AssertionError(f"worker on {port} exited ({proc.returncode}):\n{_tail(log)}")
            if self.health(port) is not None:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker on {port} not ready in {timeout} s:\n{_tail(log)}")

    def health(self, port: int = 8080) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.ports[port]}/health"
            with urllib.request.urlopen(url, timeout=5) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            return None

    def stop(self, port: int) -> None:
        """SIGTERM (Ctrl-C): the worker settles what it can, then exits."""
        proc = self.workers.pop(port)
        proc.send_signal(signal.SIGTERM)  # the wrapper forwards it and waits
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self, port: int) -> None:
        """SIGKILL (a crash): nothing settled, every acknowledged receipt on disk."""
        proc = self.workers.pop(port)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while self.health(port) is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.proxy.reject_sends = False  # a worker's last pass may still use it
        for port in list(self.workers):
            if self.running(port):
                self.stop(port)
        self.proxy.down()

    # -- chain

    def rpc(self, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        request = urllib.request.Request(
            self.chain.rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert "error" not in answer, answer
        return answer["result"]

    def travel(self, seconds: int) -> None:
        """Move the chain's clock on (what waiting out a window does on a live chain)."""
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine", [])


class Page:
    """One runbook: its blocks by name, the shell variables set so far, what ran."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.blocks = {b.name: b for b in parse_page(name) if b.name is not None}
        self.vars: dict[str, str] = {}
        self.ran: set[str] = set()

    def run(
        self,
        *names: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        expect_fail: bool = False,
        **variables: str | int,
    ) -> str:
        """Run blocks in order; returns their stdout + stderr."""
        self.vars.update({k: str(v) for k, v in variables.items()})
        return "".join(self._run(name, env or {}, cwd, expect_fail) for name in names)

    def _run(self, name: str, extra: dict[str, str], cwd: Path | None, expect_fail: bool) -> str:
        block = self.blocks[name]
        self.ran.add(name)
        lab = self.lab
        code = lab.substitute(block.code)
        env = {**lab.env, **self.vars, **extra}
        script = lab.script_path(block)
        log = script.with_suffix(".log")
        if block.background:
            lines = [ln for ln in code.splitlines() if ln.strip()]
            assert len(lines) == 1 and "#" not in lines[0], f"{block.where}: one command"
            port = int(re.findall(r"--port (\d+)", block.code)[0])
            script.write_text(
                "set -euo pipefail\n"
                'trap \'kill -TERM "$child" 2>/dev/null; wait "$child"\' TERM INT\n'
                f'{lines[0]} &\nchild=$!\nwait "$child"\n'
            )
            lab.start(port, script, env, log)
            return ""
        env_out = script.with_suffix(".env")
        script.write_text(f"set -euo pipefail\nset -a\n{code}env -0 > {env_out}\n")
        with log.open("w") as out, script.with_suffix(".err").open("w") as err:
            proc = subprocess.run(
                ["bash", str(script)],
                cwd=cwd or lab.home,
                env=env,
                stdout=out,
                stderr=err,
                timeout=240,
            )
        stdout, stderr = log.read_text(), script.with_suffix(".err").read_text()
        assert (proc.returncode != 0) == expect_fail, (
            f"{block.where} ({name}): exit {proc.returncode}\n--- script\n{code}"
            f"--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
        )
        if env_out.exists():
            for item in env_out.read_text().split("\0"):
                key, _, value = item.partition("=")
                if re.fullmatch(r"[A-Z][A-Z0-9_]*", key) and env.get(key) != value:
                    self.vars[key] = value
        return stdout + stderr

    def assert_all_run(self) -> None:
        missing = sorted(set(self.blocks) - self.ran)
        assert not missing, f"{self.name}: runnable blocks no test ran: {missing}"


def _one_cpu() -> list[str]:
    """A prefix that gives a worker one CPU, so llama.cpp runs one thread: its threads
    synchronise by spinning, which is many times slower on a 2-core machine busy with
    the client, anvil and the test (docs/runbooks/host.md, "Running on a GPU")."""
    taskset = shutil.which("taskset")
    if taskset is None or not hasattr(os, "sched_getaffinity"):
        return []
    return [taskset, "-c", str(max(os.sched_getaffinity(0)))]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab(local_chain: ChainInfo, cli_home: Path, model_path: Path) -> Iterator[Lab]:
    missing = [tool for tool in ("bash", "curl", "jq", "sqlite3") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"the runbooks need {', '.join(missing)} on PATH")
    the_lab = Lab(cli_home, local_chain)
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture(scope="module")
def host(lab: Lab) -> Lab:
    """client-session.md step 0: deploy + seed, fetch the model, register, serve."""
    page = lab.page("client-session.md")
    page.run("setup", "serve", "health")
    return lab


@pytest.fixture(scope="module")
def client_session(host: Lab) -> dict[str, Any]:
    """client-session.md steps 1-9, with the balances before and after."""
    page = host.page("client-session.md")
    before = _balance(CLIENT)
    out = page.run("find", "fund", "start", "talk", "history", "pause-resume", "close", "check")
    after_close = _balance(CLIENT)
    out += page.run("withdraw")
    return {
        "session_id": int(page.vars["SESSION_ID"]),
        "before": before,
        "after_close": after_close,
        "after": _balance(CLIENT),
        "output": out,
    }


def _balance(account: int, **env: str) -> dict[str, Any]:
    data: dict[str, Any] = ok_json(
        invoke("balance", "--account", f"test:{account}", "--json", env=env or None)
    )
    return data


def _status(session_id: int, **env: str) -> dict[str, Any]:
    data: dict[str, Any] = ok_json(
        invoke("session", "status", str(session_id), "--json", env=env or None)
    )
    return data


def _open_session(account: int = CLIENT, prompt: str = "Say hi.", **env: str) -> int:
    """A session with one answered prompt (what the pages take as given)."""
    me = ("--account", f"test:{account}")
    started = ok_json(
        invoke("session", "start", *me, "--deposit", "1.0", "--json", env=env or None)
    )
    sid = int(started["session_id"])
    ok(invoke("session", "send", str(sid), prompt, "--max-tokens", "12", *me, env=env or None))
    return sid


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _host_up(lab: Lab) -> None:
    """The host's worker on 8080, started as client-session.md says (if it is not up)."""
    if not lab.running(8080):
        lab.page("client-session.md").run("serve")


def _d(value: str) -> Decimal:
    return Decimal(value)


# --------------------------------------------------------------------- tests


def test_every_sh_block_is_marked_and_indexed() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for page in sorted(p.name for p in RUNBOOKS.glob("*.md") if p.name != "README.md"):
        assert f"]({page})" in index, f"docs/runbooks/README.md does not link {page}"
    for page in PAGES:
        blocks = parse_page(page)
        names = [b.name for b in blocks if b.name]
        assert names, f"{page}: no runnable block"
        assert len(names) == len(set(names)), f"{page}: duplicate block names"
        for b in blocks:
            if b.background:
                assert re.search(r"--port \d+", b.code), f"{b.where}: background needs --port"


def test_client_session_runbook(client_session: dict[str, Any], host: Lab) -> None:
    sid = client_session["session_id"]
    status = _status(sid)
    assert status["status"] == "SETTLED" and status["depositor"] == address_of(CLIENT)
    assert status["host"] == address_of(HOST) and status["tokens_used"] > 0
    cost = Decimal(status["tokens_used"] * PRICE) / 10**6
    before, after_close, after = (
        client_session["before"],
        client_session["after_close"],
        client_session["after"],
    )
    # deposit 5, pay the cost, refund the rest of the 1.0 escrow, withdraw 2
    assert _d(after_close["deposited"]) == _d(before["deposited"]) + 5 - cost
    assert _d(after_close["wallet"]) == _d(before["wallet"]) - 5
    assert _d(after_close["escrowed"]) == 0
    assert _d(after["deposited"]) == _d(after_close["deposited"]) - 2
    assert _d(after["wallet"]) == _d(after_close["wallet"]) + 2
    out = client_session["output"]
    assert "settled by host  yes" in out and "Name three colours." in out
    host.page("client-session.md").assert_all_run()


def test_withdraw_runbook(client_session: dict[str, Any], host: Lab) -> None:
    page = host.page("withdraw.md")
    earned = ok_json(invoke("host", "status", "--account", f"test:{HOST}", "--json"))
    host_wallet = _balance(HOST)["wallet"]
    fees = ok_json(invoke("treasury", "info", "--json"))["balance"]
    treasurer_wallet = _balance(DEPLOYER)["wallet"]
    client = _balance(CLIENT)
    assert _d(earned["earnings"]) > 0 and _d(fees) > 0 and _d(client["deposited"]) > 0

    out = page.run("host", "treasury", "client")

    assert ok_json(invoke("host", "status", "--account", f"test:{HOST}", "--json"))["earnings"] in (
        "0",
        "0.0",
    )
    assert _d(_balance(HOST)["wallet"]) == _d(host_wallet) + _d(earned["earnings"])
    assert _d(ok_json(invoke("treasury", "info", "--json"))["balance"]) == 0
    assert _d(_balance(DEPLOYER)["wallet"]) == _d(treasurer_wallet) + _d(fees)
    after = _balance(CLIENT)
    assert _d(after["deposited"]) == 0
    assert _d(after["wallet"]) == _d(client["wallet"]) + _d(client["deposited"])
    assert f"withdrew {earned['earnings']} USDC" in out
    page.assert_all_run()


def test_settlement_lag_runbook(host: Lab) -> None:
    lab, page = host, host.page("settlement-lag.md")
    if lab.running(8080):
        lab.stop(8080)
    lab.proxy.up()
    through_proxy = {"FABSTIR_RPC_URL": lab.proxy.url}
    page.run("serve", env=through_proxy)
    sid = _open_session()

    lab.proxy.reject_sends = True  # the host key "runs out of gas": settlements fail
    closed = ok_json(
        invoke("session", "close", str(sid), "--settle-timeout", "3", "--json", "--account",
               f"test:{CLIENT}")
    )  # fmt: skip
    assert closed["status"] == "CLOSING" and closed["settled_by_host"] is False
    _wait_for(lambda: (lab.health() or {}).get("status") == "degraded", "a failed pass")

    out = page.run("health", "metrics", "db", "chain")
    assert '"degraded"' in out and "settlement transaction failed" in out
    assert "fabstir_host_settlement_lag_seconds" in out
    assert page.vars["SESSION_ID"] == str(sid)
    assert _status(sid)["status"] == "CLOSING"

    lab.kill(8080)  # SIGKILL, so the restart has to find the session in its database
    lab.proxy.reject_sends = False  # the key is funded; force settlement now:
    assert _status(sid)["status"] == "CLOSING"
    page.run("restart", env=through_proxy)
    _wait_for(lambda: _status(sid)["status"] == "SETTLED", "the restarted worker to settle")
    out = page.run("check")
    assert '"status": "ok"' in out and "settled" in out
    assert _status(sid)["tokens_used"] == closed["tokens_used"] > 0
    page.assert_all_run()


def test_stuck_session_runbook(host: Lab) -> None:
    lab, page = host, host.page("stuck-session.md")
    _host_up(lab)
    by_hand, by_worker, by_anyone = _open_session(), _open_session(), _open_session()
    lab.kill(8080)  # the host disappears

    # A: the client closes on chain; the host settles by hand from its database.
    out = page.run("inspect", "close", "window", SESSION_ID=by_hand)
    assert "host not reachable" in out and "status           closing" in out
    paid = _status(by_hand)
    assert paid["status"] == "CLOSING" and paid["tokens_used"] > 0
    page.run("settle-by-hand")
    assert _status(by_hand)["status"] == "SETTLED"
    assert _status(by_hand)["tokens_used"] == paid["tokens_used"]

    # C: the client closes on chain; the restarted worker settles inside the window.
    page.run("close", "window", SESSION_ID=by_worker)
    assert _status(by_worker)["status"] == "CLOSING"
    page.run("serve")
    _wait_for(lambda: _status(by_worker)["status"] == "SETTLED", "the worker to settle")
    out = page.run("host-check")
    assert "settled" in out

    # B: the host is gone for good; anyone finalizes after the window.
    lab.kill(8080)
    page.run("close", "window", SESSION_ID=by_anyone)
    closing = _status(by_anyone)
    assert closing["status"] == "CLOSING" and closing["tokens_used"] > 0
    early = page.run("finalize", expect_fail=True)
    assert "can be finalized after" in early
    before = _balance(CLIENT)
    lab.travel(3600 + 5)
    out = page.run("finalize")
    assert "finalized" in out
    final = _status(by_anyone)
    assert final["status"] == "SETTLED" and final["tokens_used"] == closing["tokens_used"]
    refund = Decimal(10**6 - closing["tokens_used"] * PRICE) / 10**6
    after = _balance(CLIENT)
    assert _d(after["deposited"]) == _d(before["deposited"]) + refund
    assert _d(after["escrowed"]) == _d(before["escrowed"]) - 1
    _host_up(lab)
    page.assert_all_run()


def test_pause_and_rollout_runbook(host: Lab) -> None:
    lab, page = host, host.page("pause-and-rollout.md")
    _host_up(lab)
    old_id = _open_session(OTHER_CLIENT)
    old_dir = {"FABSTIR_DEPLOYMENTS_DIR": str(lab.home / "deployments" / "previous")}

    # 1. pause: new sessions refused, the open one still answers; unpause
    out = page.run("pause")
    assert re.search(r"paused=False.*marketplace paused \(tx 0x.*paused=True", out, re.S)
    refused = invoke("session", "start", "--account", f"test:{CLIENT}")
    assert refused.exit_code == 1 and "paused" in refused.stderr
    ok(invoke("session", "send", str(old_id), "Still there?", "--max-tokens", "8",
              "--account", f"test:{OTHER_CLIENT}"))  # fmt: skip
    assert re.search(rf"^{old_id}\s+active", page.run("open-sessions"), re.M)
    out = page.run("unpause")
    assert re.search(r"marketplace unpaused \(tx 0x.*paused=False", out, re.S)

    # 2. a new set; the old one paused; the host moves; a session on the new set
    old_market = json.loads((lab.home / "deployments" / "31337.json").read_text())
    page.run("keep-old", "deploy", "pause-old")
    new_market = json.loads((lab.home / "deployments" / "31337.json").read_text())
    market = "JobMarketplace"
    assert new_market["contracts"][market]["address"] != old_market["contracts"][market]["address"]
    assert "paused=True" in lab.sh("fabstir admin status", env=old_dir)
    assert "paused=False" in lab.sh("fabstir admin status")
    page.run("register-new", "serve-new")
    assert (lab.health(8081) or {})["marketplace"] == new_market["contracts"][market]["address"]
    page.run("client-new")
    new_id = int(page.vars["SESSION_ID"])
    new_session = _status(new_id)
    assert new_session["status"] == "SETTLED" and new_session["tokens_used"] > 0

    # the old worker crashes and is restarted on the old file; the old session finishes
    lab.kill(8080)
    page.run("serve-old")
    assert (lab.health(8080) or {})["marketplace"] == old_market["contracts"][market]["address"]
    assert _status(old_id, **old_dir)["status"] == "ACTIVE"
    out = page.run("old-sessions", OLD_SESSION_ID=old_id)
    assert "settled by host  yes" in out
    assert _status(old_id, **old_dir)["status"] == "SETTLED"

    # 2.6 the old contracts are emptied; the stake comes back after unbonding
    page.run("old-withdraw")
    assert _d(_balance(OTHER_CLIENT, **old_dir)["deposited"]) == 0
    old_host = ok_json(invoke("host", "status", "--account", f"test:{HOST}", "--json", env=old_dir))
    assert _d(old_host["earnings"]) == 0 and old_host["stake"] > 0
    assert _d(ok_json(invoke("treasury", "info", "--json", env=old_dir))["balance"]) == 0
    lab.travel(7 * 24 * 3600 + 60)
    page.run("old-stake")
    old_host = ok_json(invoke("host", "status", "--account", f"test:{HOST}", "--json", env=old_dir))
    assert old_host["stake"] == 0
    page.assert_all_run()


def test_rotate_roles_runbook(host: Lab) -> None:
    lab, page = host, host.page("rotate-roles.md")
    out = page.run("rehearsal-setup", cwd=REPO)
    assert "to grant:  JobMarketplace.grantRole(PAUSER_ROLE" in out and "(check only)" in out
    out = page.run("rehearsal-grant", cwd=REPO)
    assert "granted 5 roles" in out
    assert "to grant" not in out.split("granted 5 roles")[1]
    out = page.run("rehearsal-prove")
    assert re.search(
        r"marketplace paused.*paused=True.*marketplace unpaused.*paused=False", out, re.S
    )
    out = page.run("rehearsal-finish", cwd=REPO)
    assert "roles OK" in out and "nothing to change" in out and "reused" in out

    refused = lab.sh("fabstir admin pause --account test:0", expect_fail=True)
    assert "does not hold PAUSER_ROLE" in refused
    roles = json.loads((lab.home / "deployments" / "31337.json").read_text())["roles"]
    assert roles["admin"] == roles["pauser"] == address_of(MULTISIG)
    market = _marketplace(lab)
    admin, pauser = (
        market.functions.DEFAULT_ADMIN_ROLE().call(),
        market.functions.PAUSER_ROLE().call(),
    )
    for role in (admin, pauser):
        assert market.functions.hasRole(role, address_of(MULTISIG)).call()
        assert not market.functions.hasRole(role, address_of(DEPLOYER)).call()
    page.assert_all_run()


def _marketplace(lab: Lab) -> Any:
    sdk = FabstirSDK(SDKConfig(rpc_url=lab.chain.rpc_url, chain_id=lab.chain.chain_id))
    return sdk.chain.contract("JobMarketplace", sdk.get_contract_address("JobMarketplace"))
