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


#: Environment variable naming the fabstir home (default ~/.fabstir).
ENV_HOME = "FABSTIR_HOME"


def option(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A config field with what its command-line option needs (see fabstir.host.options):
    the help text and the flag (default: --field-name)."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class Limits:
    """Per-connection and per-request limits (all enforced with an `error` frame)."""

    max_connections_per_ip: int = option(
        8,
        "Connections at once from one IP address that hold no session yet "
        "(TOO_MANY_CONNECTIONS); a connection with a paid session counts against its wallet.",
    )
    max_sessions_per_wallet: int = option(
        64, "Sessions served at once for one depositor (TOO_MANY_CONNECTIONS)."
    )
    max_connections: int = option(512, "WebSocket connections at once in total.")
    max_frame_bytes: int = option(
        MAX_FRAME_BYTES,
        "Largest frame parsed (MESSAGE_TOO_LARGE); frames above twice this close the socket.",
    )
    max_prompt_chars: int = option(16_384, "Longest prompt text in characters.")
    max_tokens_per_request: int = option(
        1024, "Most tokens generated for one prompt (a larger max_tokens is clamped)."
    )
    prompts_per_minute: int = option(30, "Prompts one connection may send per rolling minute.")
    init_timeout: float = option(15.0, "Seconds a new connection has to send session_init.")
    receipt_timeout: float = option(
        30.0, "Seconds a paused generation waits for the receipt it asked for."
    )

    def __post_init__(self) -> None:
        for name in (
            "max_connections_per_ip",
            "max_sessions_per_wallet",
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
    """Everything the worker needs. Fields made with `option` are the command-line
    options of both `python -m fabstir.host` and `fabstir host serve`."""

    # How to reach the chain: each entry point has its own way (key file or account).
    rpc_url: str
    private_key: str = field(repr=False)
    #: Contract name -> address; when None, loaded from the deployment of `chain_id`.
    addresses: Mapping[str, str] | None = None
    chain_id: int | None = None
    deployments_dir: Path | None = None

    engine: str = option("llama", "Inference engine: llama (in process) or upstream.")
    model: str | None = option(
        None, "Catalogue key, model id or file of the model served (default: bundled)."
    )
    model_path: Path | None = option(
        None, "The GGUF to serve (default: the catalogue file in the model cache)."
    )
    bind_host: str = option("127.0.0.1", "Address to listen on.", flag="--bind")
    port: int = option(8080, "Port of the WebSocket and HTTP server (0: any free).")
    public_url: str | None = option(None, "The URL clients use (the one you registered).")
    db_path: Path | None = option(
        None,
        "SQLite file of receipts and settlement state (keep it: it is what you are paid "
        "from). Default: one per chain under $FABSTIR_HOME/host (~/.fabstir/host).",
        flag="--db",
    )
    #: Its fields are options too (flattened: --max-connections, ...).
    limits: Limits = field(default_factory=Limits)
    settlement_interval: float = option(
        30.0, "Seconds between settlement passes (a close wakes the loop at once)."
    )
    settlement_coalesce: float = option(
        2.0, "After a wake-up, seconds to wait for more closes to share the transaction."
    )
    chain_poll_interval: float = option(
        30.0, "Seconds between polls of open sessions' on-chain status (close requests)."
    )
    idle_session_timeout: float = option(
        900.0,
        "An unconnected session without activity this long is settled.",
        flag="--idle-timeout",
    )
    expiry_margin: float = option(
        30.0, "Stop serving, and settle, a session this many seconds before its end."
    )
    shutdown_timeout: float = option(60.0, "Longest the final settlement pass may take.")
    # Value at risk: when a session's receipted but unposted tokens are worth at least
    # this much, the newest receipt is posted on chain (submitCheckpoint) without ending
    # the session, so a host offline past the settlement window loses at most this.
    post_receipt_value: int | None = option(
        None,
        "Post a session's newest receipt on chain once its unposted tokens are worth this "
        "much (payment token's smallest unit); bounds what an offline host can lose.",
    )
    # Value at risk by time: the same posting once a session's deadline (its end plus
    # the settlement window, after which anyone may finalize with what the chain holds)
    # is this close, so a host that goes offline near the end keeps what it served.
    post_receipt_before: float | None = option(
        None,
        "Post a session's newest unposted receipt on chain once the time left until the "
        "session's end plus the settlement window is below this many seconds (0: off; "
        "default: off on local chains, the settlement window plus one hour elsewhere).",
    )
    # Batching: on Base most of a small settlement's cost can be the L1 data fee; a cap
    # per session lets closes accumulate into one transaction while that is high.
    max_settle_fee: int | None = option(
        None,
        "Hold a settlement batch back while its estimated cost per session (L2 gas at the "
        "max fee plus, on Base, the L1 data fee; wei) is above this, so later closes share "
        "the transaction; a session's end, an on-chain close request, shutdown or "
        "--settle-defer-max sends it anyway (default: off).",
    )
    settle_defer_max: float = option(
        3600.0, "Longest a closed session is held back for a cheaper batch (--max-settle-fee)."
    )
    confirmations: int | None = option(
        None,
        "Blocks on top of a settlement before the store calls it settled; a reorg before "
        "then re-sends the same transaction (default: the network's, deployments/params).",
    )
    settled_recheck_window: float = option(
        3600.0,
        "Seconds after a settlement during which each chain poll checks that the chain "
        "still holds it; one a reorg deeper than --confirmations undid is sent again "
        "with the stored receipt (0: never re-check).",
        flag="--recheck-settled",
    )
    rpc_retry_attempts: int = option(
        6,
        "Attempts of each RPC call before the chain counts as unavailable.",
        flag="--rpc-retries",
    )
    rpc_timeout: float = option(30.0, "Seconds per RPC call.")
    system_prompt: str | None = option(
        "You are a helpful assistant.", "System prompt kept in every context window."
    )
    temperature: float = option(0.0, "Sampling temperature (0: greedy).")
    # llama engine: n_ctx per sequence; n_gpu_layers None = all when the build supports
    # a GPU; n_threads None = every usable core (on a CPU shared with other busy
    # processes fewer is faster).
    n_ctx: int = option(2048, "llama: context tokens per sequence (prompt plus answer).")
    max_sequences: int = option(8, "llama: sequences decoded together.")
    n_gpu_layers: int | None = option(None, "llama: layers on the GPU (default: all if CUDA).")
    n_threads: int | None = option(None, "llama: CPU threads (default: all usable cores).")
    # upstream engine: an OpenAI-compatible server (vLLM, llama.cpp's server, SGLang).
    upstream_url: str | None = option(
        None, "upstream: the server's base URL, e.g. http://127.0.0.1:8000 (/v1 optional)."
    )
    upstream_model: str | None = option(
        None, "upstream: the model name the server serves (an id in its /v1/models)."
    )
    upstream_key_file: Path | None = option(
        None, "upstream: file holding its API key (else $FABSTIR_UPSTREAM_API_KEY)."
    )
    upstream_connect_timeout: float = option(5.0, "upstream: seconds to connect.")
    upstream_read_timeout: float = option(
        60.0, "upstream: longest silence in an answer before the upstream counts as down."
    )
    upstream_max_concurrent: int = option(
        16, "upstream: most requests at once (more wait for one to finish)."
    )
    upstream_n_ctx: int | None = option(
        None, "upstream: context window (default: what the server reports, else --n-ctx)."
    )
    upstream_attested: bool = option(
        False,
        "upstream: serve although the model file cannot be checked against the registry "
        "(identity operator-attested, shown in /health).",
    )

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
        if self.confirmations is not None and self.confirmations < 1:
            raise ConfigError("confirmations must be at least 1")
        if not self.settled_recheck_window >= 0:
            raise ConfigError("settled_recheck_window (--recheck-settled) must not be negative")
        if self.post_receipt_before is not None and not self.post_receipt_before >= 0:
            raise ConfigError("post_receipt_before (--post-receipt-before) must not be negative")
        if self.max_settle_fee is not None and self.max_settle_fee <= 0:
            raise ConfigError("max_settle_fee (--max-settle-fee) must be positive (or None)")
        if not self.settle_defer_max >= 0:
            raise ConfigError("settle_defer_max (--settle-defer-max) must not be negative")
        if self.post_receipt_value is not None and self.post_receipt_value <= 0:
            raise ConfigError("post_receipt_value must be positive (or None)")
        if self.expiry_margin < 0 or self.settlement_coalesce < 0:
            raise ConfigError("expiry_margin and settlement_coalesce must not be negative")
        if self.rpc_retry_attempts < 1:
            raise ConfigError("rpc_retry_attempts must be at least 1")
        if self.temperature < 0:
            raise ConfigError("temperature must not be negative")
        if self.engine == "upstream" and not (self.upstream_url and self.upstream_model):
            raise ConfigError("--engine upstream needs --upstream-url and --upstream-model")
        if self.upstream_max_concurrent < 1:
            raise ConfigError("upstream_max_concurrent must be at least 1")
        for name in ("upstream_connect_timeout", "upstream_read_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")

    def with_(self, **changes: Any) -> HostConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def store_dir(self) -> Path:
        """Where per-chain stores live when no db_path is given."""
        home = os.environ.get(ENV_HOME)
        return (Path(home) if home else Path.home() / ".fabstir").expanduser() / "host"

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
