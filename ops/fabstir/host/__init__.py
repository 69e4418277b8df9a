"""Reference host worker: inference engine, WebSocket sessions, receipts and settlement."""
