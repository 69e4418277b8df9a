"""A client that puts its own receipt on chain (`submitCheckpoint`) behind the host's
back, then comes back to the host: the host never saw that receipt and must continue
from the chain's. The resilience and capped-log worker tests both drive this."""

from __future__ import annotations

from support.host_env import HostEnv, Opened
from support.protocol_client import ProtocolClient, start_session
from support.waits import run

from fabstir.protocol.receipts import Receipt


def serve_unsigned_then_checkpoint(
    hostenv: HostEnv, url: str, opened: Opened
) -> tuple[ProtocolClient, Receipt]:
    """Ask one prompt without signing, hang up, then sign a receipt for every token and
    submit it on chain as the client. Returns the client and that receipt."""
    sid = opened.session_id

    async def serve() -> ProtocolClient:
        client = await start_session(url, opened)
        await client.ask("Name a mountain.", 10, sign=False)
        await client.aclose()
        return client

    client = run(serve())
    assert client.signer is not None
    receipt = client.signer.sign(sid, client.tokens, client.hasher.hexdigest)
    client.signed[receipt.tokens_used] = receipt.content_hash
    hostenv.mk.submitCheckpoint(
        sid, receipt.tokens_used, bytes.fromhex(receipt.content_hash[2:]),
        receipt.signature_bytes, sender=hostenv.client,
    )  # fmt: skip
    return client, receipt


def resume_and_close(client: ProtocolClient, url: str, opened: Opened, receipt: Receipt) -> int:
    """Reconnect, check the host resumes at the on-chain receipt, ask once more and close
    the session. Returns the session's tokens."""

    async def resume() -> int:
        again = await client.reconnect(url, opened)
        assert again.tokens == receipt.tokens_used
        await again.ask("And a lake.", 6)
        await again.close_session()
        return again.tokens

    return run(resume())
