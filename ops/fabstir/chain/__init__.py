"""On-chain side shared by the SDK, host worker, deploy scripts and benchmarks.

Part of the core (DESIGN.md, layering): `marketplace` is the contracts' data
model (enums, decoded session, settleBatch items, constants), `client` the
web3 client; nothing here imports the SDK, the host or the CLI.
"""
