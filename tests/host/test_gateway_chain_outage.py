"""Found by the soak (issue 15): during an RPC outage the gateway failed to open a
session (the chain's fault, not the host's) and set the host aside for
`host_cooldown`; once the RPC was back, every request still ended as
`no_host_available` until the cooldown ran out. A chain outage now sets no host aside
(the request gets 503 chain_unavailable); a host that really fails still is set aside.

Real gateway, real host workers and llama.cpp, real anvil, with the fault-injecting RPC
proxy between the gateway and anvil (the workers reach anvil directly)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import test_gateway as tg
from support.host_env import HOST_MIN_PRICE
from support.rpc_proxy import FaultProxy

from fabstir.chain.local import free_port
from fabstir.gateway.server import ServerSettings

# The two-host market and its second engine, shared with test_gateway.py.
market = tg.market
second_engine = tg.second_engine
gateway = tg.gateway


def _health(g: tg.GatewayThread) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(g.url.removesuffix("/v1") + "/health", timeout=10).json()
    return body


def test_a_chain_outage_sets_no_host_aside_and_the_host_serves_once_the_chain_is_back(
    market: tg.Market, tmp_path: Path
) -> None:
    with FaultProxy(market.env.rpc_url) as proxy:
        g = tg.GatewayThread(
            tg._proxied_sdk(market, tmp_path, proxy.url, rpc_retries=1),
            tmp_path / "gateway.db",
            # The model list stays cached through the outage, so the request gets as far
            # as opening a session (the chain read that used to set the host aside).
            replace(tg.POOL, models_ttl=600.0, host_cooldown=600.0),
            ServerSettings(port=0),
        ).start()
        try:
            client = g.client()
            assert tg.MODEL in [m.id for m in client.models.list().data]
            assert g.ledger.sessions() == []  # no session yet: the next request opens one

            proxy.fail_next(-1, status=503)  # the RPC is down
            with pytest.raises(openai.APIStatusError) as down:
                client.chat.completions.create(model=tg.MODEL, messages=tg.HELLO, max_tokens=4)
            assert down.value.status_code == 503
            assert down.value.code == "chain_unavailable"  # not no_host_available
            health = _health(g)
            assert health["hosts_set_aside"] == []

            proxy.clear()  # the RPC is back: served at once, by the cheapest host
            reply = client.chat.completions.create(model=tg.MODEL, messages=tg.HELLO, max_tokens=4)
            assert reply.choices[0].message.content
            [served] = g.ledger.sessions()  # the outage opened none
            assert served.host == market.env.host.address
        finally:
            proxy.clear()
            g.stop()


def test_a_host_that_cannot_be_reached_is_still_set_aside(
    market: tg.Market, gateway: Callable[..., tg.GatewayThread]
) -> None:
    env = market.env
    dead = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    tg._announce(env, env.host, dead, HOST_MIN_PRICE)
    g = gateway()
    reply = g.client().chat.completions.create(model=tg.MODEL, messages=tg.HELLO, max_tokens=4)
    assert reply.choices[0].message.content
    health = _health(g)
    assert health["hosts_set_aside"] == [env.host.address]
    hosts = {s.session_id: s.host for s in g.ledger.sessions()}
    assert hosts[max(hosts)] == env.other_host.address, "the request went to the next host"
