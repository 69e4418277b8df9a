"""The gateway against the SDK, same run, same host: speed and gas per request.

    python bench/gateway.py [--max-tokens N] [--reps N] [--requests N] [--settle S]
                                        # table on stdout, bench/results/gateway.json

A local chain, the contracts deployed and seeded, one host worker (its own process)
serving the bundled model. Then, once a session is open on each path:
- SDK: `send_prompt_streaming` on a session of this process's SDK;
- gateway: `fabstir gateway` as its own process, streamed with httpx as raw
  server-sent events (the gateway's SDK signs the receipts); the gas figure's
  requests go through the official `openai` client.
Each figure is the best of --reps runs, SDK and gateway interleaved, each run started
once the CPU has been idle for a second (--settle caps that wait). Decode tokens/s
excludes the first token; first-token time is from the request to the first text.

Gas: --requests short requests through a fresh gateway, then SIGTERM (every session
closed, the host settles): all gas the gateway's wallet and the host spent on the
marketplace from the first request on, divided by the requests. Targets (issue 13):
gateway >= 95% of the SDK's tokens/s, first token within 15 ms of the SDK's, <= 3,000
gas per request (the original system spent ~1.9 million gas per conversation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from _common import machine, save, table  # noqa: E402
from host import PROMPTS, wait_quiet  # noqa: E402
from openai import OpenAI  # noqa: E402

from fabstir import models  # noqa: E402
from fabstir.chain.local import LocalChain, free_port, test_private_key  # noqa: E402
from fabstir.demo import CLIENT, HOST, deploy_and_seed, register_host, sdk_for  # noqa: E402

FABSTIR = str(Path(sys.executable).parent / "fabstir")
TARGET_TPS_RATIO = 0.95
TARGET_TTFT_OVERHEAD_MS = 15.0
TARGET_GAS_PER_REQUEST = 3_000
ORIGINAL_GAS_PER_CONVERSATION = 1_881_797


def _listening(port: int) -> bool:
    import socket

    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 90
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="fabstir-bench-gw-"))
        self.chain = LocalChain(self.workdir / "chain")
        self.procs: list[subprocess.Popen[bytes]] = []

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(60)
        self.chain.down()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def up(self) -> None:
        info = self.chain.up(persist=False)
        self.rpc_url = info.rpc_url
        self.chain_id = deploy_and_seed(info.rpc_url, self.workdir / "deployments")
        self.entry = models.find()
        self.model_name = f"{self.entry.repo}/{self.entry.file}"
        port = free_port()
        self.host_url = f"ws://127.0.0.1:{port}"
        self.host_sdk = sdk_for(HOST, info.rpc_url, self.chain_id, self.workdir)
        register_host(self.host_sdk, self.entry.model_id, self.host_url)
        key_file = self.workdir / "host.key"
        key_file.write_text(test_private_key(HOST))
        cmd = [
            sys.executable, "-m", "fabstir.host", "--rpc-url", info.rpc_url,
            "--chain-id", str(self.chain_id), "--deployments-dir", str(self.workdir / "deployments"),
            "--key-file", str(key_file), "--port", str(port), "--db", str(self.workdir / "host.db"),
            "--max-tokens-per-request", str(self.args.max_tokens), "--prompts-per-minute", "100000",
            "--system-prompt", "", "--log-level", "WARNING", "--settlement-interval", "1",
        ]  # fmt: skip
        self.procs.append(
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        _wait_port(port, self.procs[-1], "the host worker")
        self.client_sdk = sdk_for(CLIENT, info.rpc_url, self.chain_id, self.workdir)
        self.client_sdk.get_payment_manager().deposit("50", "USDC")

    def gateway(self, deposit: str, max_tokens: int) -> tuple[subprocess.Popen[bytes], OpenAI]:
        port = free_port()
        env = {
            **os.environ,
            "FABSTIR_HOME": str(self.workdir / f"gw-{port}"),
            "FABSTIR_DEPLOYMENTS_DIR": str(self.workdir / "deployments"),
        }
        cmd = [
            FABSTIR, "gateway", "--network", self.rpc_url, "--account", f"test:{CLIENT}",
            "--budget", "20", "--deposit", deposit, "--max-tokens", str(max_tokens),
            "--proof-interval", "32", "--port", str(port),
        ]  # fmt: skip
        log = (self.workdir / f"gateway-{port}.log").open("wb")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        _wait_port(port, proc, "the gateway")
        return proc, OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

    # ---------------------------------------------------------------- speed

    async def speed(self) -> dict[str, Any]:
        args = self.args
        sessions = self.client_sdk.get_session_manager()
        terms = {"deposit_amount": "2.0", "price_per_token": 200, "proof_interval": 32}
        started = await sessions.start_session(
            self.entry.model_id, self.host_sdk.address, terms, self.host_url
        )
        sid = started.session_id
        _, client = await asyncio.to_thread(self.gateway, "2.0", args.max_tokens)
        await asyncio.to_thread(self._gateway_run, client, "Hello.")  # opens its session
        async for _ in sessions.send_prompt_streaming(sid, "Hello.", max_tokens=8):
            pass

        async def sdk_run(prompt: str) -> tuple[float, float, int]:
            t0 = time.perf_counter()
            first = 0.0
            before = sessions.tokens_received(sid)
            async for _ in sessions.send_prompt_streaming(sid, prompt, max_tokens=args.max_tokens):
                first = first or time.perf_counter() - t0
            return first, time.perf_counter() - t0, sessions.tokens_received(sid) - before

        sdk, gw = [], []
        for rep in range(args.reps):
            prompt = PROMPTS[rep % len(PROMPTS)]
            wait_quiet(args.settle)
            sdk.append(await sdk_run(prompt))
            wait_quiet(args.settle)
            gw.append(await asyncio.to_thread(self._gateway_run, client, prompt))
        await sessions.complete_session(sid)
        return {"sdk": _summary(sdk), "gateway": _summary(gw)}

    def _gateway_run(self, client: OpenAI, prompt: str) -> tuple[float, float, int]:
        """One streamed request, read as raw server-sent events with httpx: the figure is
        the gateway's, not the client library's per-chunk parsing (the openai package
        builds a pydantic object per chunk, which on 2 shared cores shows)."""
        body = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.args.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t0 = time.perf_counter()
        first = 0.0
        tokens = 0
        with httpx.stream(
            "POST", f"{client.base_url}chat/completions", json=body, timeout=300
        ) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if not first and any(c["delta"].get("content") for c in chunk["choices"]):
                    first = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return first, time.perf_counter() - t0, tokens

    # ------------------------------------------------------------------ gas

    def gas(self) -> dict[str, Any]:
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(self.rpc_url))
        proc, client = self.gateway("1.0", 16)
        start = w3.eth.block_number + 1
        answered = 0
        for i in range(self.args.requests):
            r = client.chat.completions.create(
                model=self.model_name,
                messages=[{"role": "user", "content": f"Say a number ({i})."}],
                max_tokens=8,
            )
            answered += bool(r.choices[0].message.content is not None)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        time.sleep(3)  # the host's settlement loop
        payers = {self.client_sdk.address.lower(), self.host_sdk.address.lower()}
        total, txs = 0, 0
        for n in range(start, w3.eth.block_number + 1):
            for tx in w3.eth.get_block(n, full_transactions=True)["transactions"]:
                if str(tx["from"]).lower() in payers:
                    total += w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"]
                    txs += 1
        return {
            "requests": self.args.requests,
            "answered": answered,
            "transactions": txs,
            "gas_total": total,
            "gas_per_request": total / max(answered, 1),
        }


def _summary(runs: list[tuple[float, float, int]]) -> dict[str, Any]:
    tps = [(n - 1) / (total - first) for first, total, n in runs if n > 1 and total > first]
    return {
        "ttft_s": min(first for first, _, _ in runs),
        "decode_tps": max(tps) if tps else 0.0,
        "tokens": [n for _, _, n in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3, help="runs per figure; the best is kept")
    parser.add_argument("--requests", type=int, default=100, help="requests for the gas figure")
    parser.add_argument("--settle", type=float, default=20.0, help="idle-CPU wait cap (s)")
    args = parser.parse_args()
    models.fetch(models.find())
    bench = Bench(args)
    load_before = os.getloadavg()[0]
    try:
        bench.up()
        speed = asyncio.run(bench.speed())
        gas = bench.gas()
    finally:
        bench.close()
    sdk, gw = speed["sdk"], speed["gateway"]
    ratio = gw["decode_tps"] / sdk["decode_tps"] if sdk["decode_tps"] else 0.0
    overhead_ms = (gw["ttft_s"] - sdk["ttft_s"]) * 1000
    results = {
        "machine": {**machine(), "loadavg_1m": [load_before, os.getloadavg()[0]]},
        "max_tokens": args.max_tokens,
        "speed": speed,
        "gas": gas,
        "targets": {
            "tps_ratio": ratio,
            "tps_ok": ratio >= TARGET_TPS_RATIO,
            "ttft_overhead_ms": overhead_ms,
            "ttft_ok": overhead_ms <= TARGET_TTFT_OVERHEAD_MS,
            "gas_ok": gas["gas_per_request"] <= TARGET_GAS_PER_REQUEST,
        },
    }
    rows = [
        ["decode tokens/s", f"{sdk['decode_tps']:.1f}", f"{gw['decode_tps']:.1f}",
         f"{ratio:.1%} (target >= {TARGET_TPS_RATIO:.0%})"],
        ["first token (ms)", f"{sdk['ttft_s'] * 1000:.1f}", f"{gw['ttft_s'] * 1000:.1f}",
         f"{overhead_ms:+.1f} ms (target <= +{TARGET_TTFT_OVERHEAD_MS:.0f})"],
        ["gas per request", "", f"{gas['gas_per_request']:,.0f}",
         f"{gas['transactions']} txs / {gas['answered']} requests (target <= "
         f"{TARGET_GAS_PER_REQUEST:,}; original ~{ORIGINAL_GAS_PER_CONVERSATION:,}/conversation)"],
    ]  # fmt: skip
    print(table(["gateway vs SDK", "SDK", "gateway", ""], rows))
    print(f"\nload average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"wrote {save('gateway', results)}")


if __name__ == "__main__":
    main()
