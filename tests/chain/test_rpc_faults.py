"""The RPC provider against a misbehaving endpoint: 429 with Retry-After, 5xx,
timeouts, truncated answers, a dead URL ahead of a live one, and all of them down."""

from __future__ import annotations

import time
from typing import Any

import pytest
from support.rpc_proxy import FaultProxy

from fabstir.chain.client import ChainClient, ChainUnavailable, RetryPolicy
from fabstir.chain.local import free_port
from fabstir.chain.rpc import FailoverHTTPProvider, RpcRetry, RpcUnavailable, retry_after_seconds


def test_429_waits_what_retry_after_asks(proxy: FaultProxy, make_client: Any) -> None:
    client = make_client(proxy.url)
    proxy.fail_next(2, status=429, retry_after=0.6)
    started = time.monotonic()
    assert client.chain_id == 31337
    # Our own backoff would have retried after 0.2 + 0.4 s; the endpoint asked for 0.6 each.
    assert time.monotonic() - started >= 1.2
    assert proxy.injected["status"] == 2


@pytest.mark.parametrize("fault", ["503", "truncate", "hang"])
def test_transient_faults_are_retried(fault: str, proxy: FaultProxy, make_client: Any) -> None:
    client = make_client(proxy.url)
    if fault == "503":
        proxy.fail_next(2, status=503)
    elif fault == "truncate":
        proxy.truncate_next(2)
    else:
        proxy.hang_next(1, seconds=3.0)  # the client's timeout is 2 s
    assert client.w3.eth.block_number >= 0
    assert sum(proxy.injected.values()) >= 1


def test_failover_to_the_next_url(proxy: FaultProxy, make_client: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = make_client([dead, proxy.url])
    assert client.chain_id == 31337
    assert client.provider.endpoint_uri == proxy.url
    # The live one starts failing with 5xx: back to the first (now also tried) and on.
    with FaultProxy(proxy.upstream) as second:
        client = make_client(f"{proxy.url},{second.url}")
        proxy.fail_next(-1, status=502)
        for _ in range(3):
            assert client.w3.eth.block_number >= 0
        assert second.calls["eth_blockNumber"] == 3


def test_every_url_down_is_one_line_unavailable(make_client: Any) -> None:
    client = ChainClient(
        [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"],
        {},
        timeout=1.0,
        retry=RetryPolicy(attempts=2, first_delay=0.01),
    )
    started = time.monotonic()
    with pytest.raises(ChainUnavailable) as info:
        client.chain_id  # noqa: B018 - the property is the call
    assert time.monotonic() - started < 10
    assert "\n" not in str(info.value) and "unreachable" in str(info.value)


def test_provider_gives_up_after_its_tries(proxy: FaultProxy) -> None:
    provider = FailoverHTTPProvider(
        proxy.url, timeout=1.0, retry=RpcRetry(attempts=3, first_delay=0.01), sleep=lambda s: None
    )
    proxy.fail_next(-1, status=429, retry_after=100)
    with pytest.raises(RpcUnavailable, match="HTTP 429"):
        provider.make_request("eth_chainId", [])  # type: ignore[arg-type]
    assert proxy.calls["eth_chainId"] == 3


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds("-3") == 0.0
