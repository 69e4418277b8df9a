"""A local anvil chain the CLI and the demo start, stop and look at.

Its state directory holds `chain.json` (pid, port, chain id) and anvil's own state
file, so `fabstir chain up` after `down` comes back with the same contracts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fabstir.models import REPO_ROOT

#: The standard test mnemonic: anvil's and ape's default accounts (local only).
TEST_MNEMONIC = "test test test test test test test test test test test junk"
LOCAL_CHAIN_ID = 31337


class LocalChainError(Exception):
    """anvil is missing, would not start, or is not running."""


def anvil_binary() -> str:
    """The native anvil: on PATH, else the one npm installed in this checkout."""
    found = shutil.which("anvil")
    if found:
        return found
    bundled = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if bundled.is_file():
        return str(bundled)
    raise LocalChainError("anvil not found: run `make setup` (or put anvil on PATH)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    # Reap it first if it is our own child, or a zombie would look alive.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ChainInfo:
    pid: int
    port: int
    chain_id: int
    state_file: str | None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalChain:
    """Start/stop/inspect one anvil whose bookkeeping lives in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.info_file = self.state_dir / "chain.json"
        self.log_file = self.state_dir / "anvil.log"

    def status(self) -> ChainInfo | None:
        """The running chain, or None (a stale record of a dead anvil is removed)."""
        try:
            info = ChainInfo(**json.loads(self.info_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if _alive(info.pid) and _port_open(info.port):
            return info
        self.info_file.unlink(missing_ok=True)
        return None

    def up(
        self,
        *,
        port: int | None = None,
        chain_id: int = LOCAL_CHAIN_ID,
        persist: bool = True,
        timeout: float = 15.0,
    ) -> ChainInfo:
        """Start anvil in the background (or return the one already running)."""
        running = self.status()
        if running is not None:
            return running
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        if _port_open(port):
            raise LocalChainError(f"port {port} is already in use")
        state = self.state_dir / "anvil-state.json" if persist else None
        cmd = [
            anvil_binary(),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--chain-id", str(chain_id),
            "--mnemonic", TEST_MNEMONIC,
            "--accounts", "10",
            "--gas-limit", "100000000",
            "--base-fee", "0",
        ]  # fmt: skip
        if state is not None:
            cmd += ["--state", str(state)]
        log = self.log_file.open("ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not _port_open(port):
            if proc.poll() is not None:
                raise LocalChainError(
                    f"anvil exited at start (code {proc.returncode}); see {self.log_file}"
                )
            if time.monotonic() > deadline:
                proc.kill()
                raise LocalChainError(f"anvil did not open port {port} within {timeout}s")
            time.sleep(0.05)
        info = ChainInfo(proc.pid, port, chain_id, str(state) if state else None)
        self.info_file.write_text(json.dumps(asdict(info)))
        return info

    def down(self, timeout: float = 10.0) -> bool:
        """Stop the chain (anvil dumps its state on SIGTERM). False if none was running."""
        info = self.status()
        if info is None:
            return False
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        self.info_file.unlink(missing_ok=True)
        return True


def test_private_key(index: int) -> str:
    """Private key of anvil's standard test account `index` (local chains only:
    these keys are public knowledge)."""
    from eth_account import Account

    if not 0 <= index < 1000:
        raise ValueError(f"test account index must be 0..999, got {index}")
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(TEST_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()
