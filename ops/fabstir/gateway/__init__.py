"""`fabstir gateway`: OpenAI's chat-completions API in front of the marketplace.

Any OpenAI client pointed at the gateway is served by marketplace hosts and pays
per token with signed receipts. The modules, edge inwards:

- `api`: OpenAI's request, response, chunk and error shapes (no I/O);
- `server`: the aiohttp application (routes, auth, SSE) and its lifecycle;
- `pool`: host choice, sessions reused across requests, budget, failover;
- `ledger`: the local SQLite record of sessions and spending.

The gateway is an edge like the CLI: it uses the SDK and never the host worker.
"""
