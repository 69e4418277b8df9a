"""Configuration of the reference host worker.

The private key never comes from a command line: it is read from a file named by
`$FABSTIR_HOST_KEY_FILE` (or `--key-file`), or handed in by code (tests). Contract
addresses come either explicitly (`addresses`) or from the deployment record of
`chain_id` (deployments/<chainId>.json, see fabstir.chain.deployments).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fabstir.protocol.messages import MAX_FRAME_BYTES

log = logging.getLogger(__name__)

#: Environment variable naming the file that holds the host's private key.
ENV_KEY_FILE = "FABSTIR_HOST_KEY_FILE"

_KEY_RE = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")


class ConfigError(ValueError):
    """The configuration is incomplete or inconsistent."""


@dataclass(frozen=True)
class Limits:
    """Per-connection and per-request limits (all enforced with an `error` frame)."""

    #: WebSocket connections at once from one IP address (TOO_MANY_CONNECTIONS).
    max_connections_per_ip: int = 8
    #: WebSocket connections at once in total (SERVICE_UNAVAILABLE).
    max_connections: int = 512
    #: Largest frame parsed (MESSAGE_TOO_LARGE); frames above twice this close the socket.
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: Longest prompt text in characters (PROMPT_TOO_LARGE).
    max_prompt_chars: int = 16_384
    #: Most tokens generated for one prompt (a larger `max_tokens` is clamped).
    max_tokens_per_request: int = 1024
    #: Prompts one connection may send per rolling minute (RATE_LIMITED).
    prompts_per_minute: int = 30
    #: Seconds a new connection has to send a valid session_init.
    init_timeout: float = 15.0
    #: Seconds a paused generation waits for the receipt it asked for.
    receipt_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "max_connections_per_ip",
            "max_connections",
            "max_frame_bytes",
            "max_prompt_chars",
            "max_tokens_per_request",
            "prompts_per_minute",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"limits.{name} must be at least 1")
        for name in ("init_timeout", "receipt_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"limits.{name} must be positive")


@dataclass(frozen=True)
class HostConfig:
    """Everything the worker needs; see `python -m fabstir.host --help` for the flags."""

    rpc_url: str
    private_key: str = field(repr=False)
    #: Contract name -> address; when None, loaded from the deployment of `chain_id`.
    addresses: Mapping[str, str] | None = None
    chain_id: int | None = None
    deployments_dir: Path | None = None
    #: Catalogue key, model id or file name (None: the catalogue's default).
    model: str | None = None
    #: The GGUF to serve (None: the catalogue entry's file in the model cache).
    model_path: Path | None = None
    bind_host: str = "127.0.0.1"
    port: int = 8080
    #: The URL clients use (what the host registered in the NodeRegistry); informational.
    public_url: str | None = None
    db_path: Path = Path("fabstir-host.db")
    limits: Limits = field(default_factory=Limits)
    #: Seconds between settlement passes (a close wakes the loop at once).
    settlement_interval: float = 30.0
    #: After a wake-up, seconds to wait for more closes to settle in the same batch.
    settlement_coalesce: float = 2.0
    #: Seconds between polls of open sessions' on-chain status (a client's on-chain
    #: close request must be answered within the marketplace's settlement window).
    chain_poll_interval: float = 30.0
    #: An unconnected session without activity for this long is settled.
    idle_session_timeout: float = 900.0
    #: A session stops being served, and is settled, this many seconds before its
    #: on-chain end (sessions shorter than this cannot be served).
    expiry_margin: float = 30.0
    #: Longest the final settlement pass may take on shutdown.
    shutdown_timeout: float = 60.0
    #: Value at risk: when a session's receipted but unposted tokens are worth at least
    #: this much (in its payment token's smallest unit), the newest receipt is posted
    #: on chain (submitCheckpoint) without ending the session, so a host that goes
    #: offline past the settlement window loses at most this per session. None: only
    #: at settlement.
    post_receipt_value: int | None = None
    #: Attempts of each RPC call before the chain counts as unavailable.
    rpc_retry_attempts: int = 6
    rpc_timeout: float = 30.0
    system_prompt: str | None = "You are a helpful assistant."
    temperature: float = 0.0
    #: Engine: context window per sequence, sequences decoded together, GPU layers
    #: (None: all when the build supports a GPU, else 0), CPU threads (None: every core
    #: this process may use; on a CPU shared with other busy processes fewer is faster).
    n_ctx: int = 2048
    max_sequences: int = 8
    n_gpu_layers: int | None = None
    n_threads: int | None = None

    def __post_init__(self) -> None:
        if not self.rpc_url:
            raise ConfigError("rpc_url is required")
        object.__setattr__(self, "private_key", normalise_key(self.private_key))
        if self.addresses is None and self.chain_id is None:
            raise ConfigError("give either contract addresses or a chain id to load them from")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        for name in (
            "settlement_interval",
            "chain_poll_interval",
            "idle_session_timeout",
            "shutdown_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if self.post_receipt_value is not None and self.post_receipt_value <= 0:
            raise ConfigError("post_receipt_value must be positive (or None)")
        if self.expiry_margin < 0 or self.settlement_coalesce < 0:
            raise ConfigError("expiry_margin and settlement_coalesce must not be negative")
        if self.rpc_retry_attempts < 1:
            raise ConfigError("rpc_retry_attempts must be at least 1")
        if self.temperature < 0:
            raise ConfigError("temperature must not be negative")

    def with_(self, **changes: Any) -> HostConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def resolve_addresses(self) -> dict[str, str]:
        """Contract addresses: the explicit ones, or those of the recorded deployment."""
        if self.addresses is not None:
            missing = {"JobMarketplace", "ModelRegistry", "NodeRegistry"} - set(self.addresses)
            if missing:
                raise ConfigError(f"addresses lack {sorted(missing)}")
            return dict(self.addresses)
        from fabstir.chain.deployments import load_deployment

        assert self.chain_id is not None
        return load_deployment(self.chain_id, self.deployments_dir).addresses


def normalise_key(value: str) -> str:
    """0x + 64 lowercase hex digits, or ConfigError (the key is never echoed)."""
    text = value.strip() if isinstance(value, str) else ""
    if not _KEY_RE.fullmatch(text):
        raise ConfigError("the host key must be 32 bytes of hex (0x + 64 hex digits)")
    return "0x" + text.removeprefix("0x").lower()


def read_key_file(path: str | os.PathLike[str]) -> str:
    """Read the host's private key from `path` (one line of hex).

    Warns when the file is readable by group or others: it holds the key that
    is paid for every session.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the host key file {p}: {exc.strerror}") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("event=key_file_permissive path=%s hint='chmod 600 %s'", p, p)
    return normalise_key(text)


def key_from_env(env: Mapping[str, str] | None = None) -> str:
    """The key from the file named by $FABSTIR_HOST_KEY_FILE."""
    env = os.environ if env is None else env
    path = env.get(ENV_KEY_FILE)
    if not path:
        raise ConfigError(f"set {ENV_KEY_FILE} to the path of a file holding the host's key")
    return read_key_file(path)
