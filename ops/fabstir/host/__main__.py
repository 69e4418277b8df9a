"""`python -m fabstir.host`: run the reference host worker.

    FABSTIR_HOST_KEY_FILE=~/.fabstir/host.key \\
    python -m fabstir.host --rpc-url http://127.0.0.1:8545 --chain-id 31337

The key is read from the file named by $FABSTIR_HOST_KEY_FILE (or --key-file),
never from the command line. Contract addresses come from
deployments/<chainId>.json (--chain-id, --deployments-dir) or from a JSON file
of name -> address (--addresses). Exit status: 0 after a clean shutdown,
2 for a configuration error, 3 when the model does not match the registry,
1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fabstir.host.config import ENV_KEY_FILE, ConfigError, HostConfig, Limits, read_key_file
from fabstir.host.metrics import configure_logging, kv
from fabstir.host.worker import ModelVerificationError, serve

log = logging.getLogger("fabstir.host")

EXIT_CONFIG = 2
EXIT_MODEL = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fabstir.host",
        description="Reference host worker: serve LLM sessions over WebSocket and settle them.",
    )
    chain = p.add_argument_group("chain")
    chain.add_argument("--rpc-url", default=os.environ.get("FABSTIR_RPC_URL"), help="JSON-RPC URL")
    chain.add_argument("--chain-id", type=int, help="load addresses from deployments/<id>.json")
    chain.add_argument("--deployments-dir", type=Path, help="where <chainId>.json lives")
    chain.add_argument("--addresses", type=Path, help="JSON file: contract name -> address")
    chain.add_argument(
        "--key-file",
        type=Path,
        help=f"file holding the host's private key (default ${ENV_KEY_FILE})",
    )
    chain.add_argument("--rpc-retries", type=int, default=6, help="attempts per RPC call")

    model = p.add_argument_group("model and engine")
    model.add_argument("--model", help="catalogue key, model id or file (default: catalogue's)")
    model.add_argument("--model-path", type=Path, help="GGUF file (default: the model cache)")
    model.add_argument("--n-ctx", type=int, default=2048, help="context tokens per sequence")
    model.add_argument("--max-sequences", type=int, default=8, help="sequences decoded together")
    model.add_argument("--n-gpu-layers", type=int, help="layers on the GPU (default: all if CUDA)")
    model.add_argument("--n-threads", type=int, help="CPU threads (default: all usable cores)")
    model.add_argument("--system-prompt", default="You are a helpful assistant.")
    model.add_argument("--temperature", type=float, default=0.0)

    net = p.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="bind address")
    net.add_argument("--port", type=int, default=8080)
    net.add_argument("--public-url", help="URL clients use (as registered)")
    net.add_argument("--db", type=Path, default=Path("fabstir-host.db"), help="SQLite file")

    lim = p.add_argument_group("limits")
    d = Limits()
    lim.add_argument("--max-connections-per-ip", type=int, default=d.max_connections_per_ip)
    lim.add_argument("--max-connections", type=int, default=d.max_connections)
    lim.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars)
    lim.add_argument("--max-tokens-per-request", type=int, default=d.max_tokens_per_request)
    lim.add_argument("--prompts-per-minute", type=int, default=d.prompts_per_minute)
    lim.add_argument("--receipt-timeout", type=float, default=d.receipt_timeout)
    lim.add_argument("--init-timeout", type=float, default=d.init_timeout)

    st = p.add_argument_group("settlement")
    st.add_argument("--settlement-interval", type=float, default=30.0)
    st.add_argument("--settlement-coalesce", type=float, default=2.0)
    st.add_argument("--chain-poll-interval", type=float, default=30.0)
    st.add_argument("--idle-timeout", type=float, default=900.0)
    st.add_argument("--expiry-margin", type=float, default=30.0)
    st.add_argument(
        "--post-receipt-value",
        type=int,
        default=None,
        help="post the newest receipt once a session's unposted value reaches this "
        "(token's smallest unit): bounds what is lost if the host stays offline",
    )
    st.add_argument("--shutdown-timeout", type=float, default=60.0)

    lg = p.add_argument_group("logging")
    lg.add_argument("--log-level", default="INFO")
    lg.add_argument("--log-json", action="store_true", help="JSON lines instead of key=value")
    return p


def config_from_args(args: argparse.Namespace) -> HostConfig:
    if not args.rpc_url:
        raise ConfigError("--rpc-url (or $FABSTIR_RPC_URL) is required")
    key = read_key_file(args.key_file) if args.key_file else None
    if key is None:
        path = os.environ.get(ENV_KEY_FILE)
        if not path:
            raise ConfigError(f"set {ENV_KEY_FILE} (or --key-file) to the host key's file")
        key = read_key_file(path)
    addresses = None
    if args.addresses is not None:
        try:
            addresses = json.loads(args.addresses.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {args.addresses}: {exc}") from None
        if not isinstance(addresses, dict):
            raise ConfigError(f"{args.addresses} must hold a JSON object name -> address")
    return HostConfig(
        rpc_url=args.rpc_url,
        private_key=key,
        addresses=addresses,
        chain_id=args.chain_id,
        deployments_dir=args.deployments_dir,
        model=args.model,
        model_path=args.model_path,
        bind_host=args.host,
        port=args.port,
        public_url=args.public_url,
        db_path=args.db,
        limits=Limits(
            max_connections_per_ip=args.max_connections_per_ip,
            max_connections=args.max_connections,
            max_prompt_chars=args.max_prompt_chars,
            max_tokens_per_request=args.max_tokens_per_request,
            prompts_per_minute=args.prompts_per_minute,
            receipt_timeout=args.receipt_timeout,
            init_timeout=args.init_timeout,
        ),
        settlement_interval=args.settlement_interval,
        settlement_coalesce=args.settlement_coalesce,
        chain_poll_interval=args.chain_poll_interval,
        idle_session_timeout=args.idle_timeout,
        expiry_margin=args.expiry_margin,
        post_receipt_value=args.post_receipt_value,
        shutdown_timeout=args.shutdown_timeout,
        rpc_retry_attempts=args.rpc_retries,
        system_prompt=args.system_prompt or None,
        temperature=args.temperature,
        n_ctx=args.n_ctx,
        max_sequences=args.max_sequences,
        n_gpu_layers=args.n_gpu_layers,
        n_threads=args.n_threads,
    )


def run(config: HostConfig) -> int:
    """Serve until SIGINT/SIGTERM; the exit status (the click command calls this too)."""
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        log.error(kv("config_error", error=str(exc)))
        return EXIT_CONFIG
    except ModelVerificationError as exc:
        log.error(kv("model_refused", code=exc.code.value, error=exc.message))
        return EXIT_MODEL
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        log.exception(kv("worker_failed", error=repr(exc)))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level.upper(), json_lines=args.log_json)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        log.error(kv("config_error", error=str(exc)))
        return EXIT_CONFIG
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
