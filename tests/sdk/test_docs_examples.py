"""docs/sdk.md's examples run, in page order, against a fresh deployment (conftest.py).

The examples configure the SDK the way a user on a local chain would: chain id
31337, the RPC from $FABSTIR_RPC_URL and the addresses from the deployment file
(here a temporary one). They use anvil's well-known keys, which are ape's test
accounts too (#6 is a funded client, #8 a FAB holder that registers as a host).
Blocks that need a running host worker say so and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from fabstir.chain.deployments import ContractRecord, Deployment, write_deployment

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
SKIP_MARK = "not run by the docs test"

pytestmark = pytest.mark.usefixtures("env")


def examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    return [b for b in blocks if SKIP_MARK not in b]


def test_docs_examples_run(
    env: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = {n: ContractRecord(address=a, block=0) for n, a in env.addresses.items()}
    write_deployment(
        Deployment(env.chain_id, "local", env.deployer.address, records, {}, {}), tmp_path
    )
    monkeypatch.setenv("FABSTIR_DEPLOYMENTS_DIR", str(tmp_path))
    monkeypatch.setenv("FABSTIR_RPC_URL", env.rpc_url)
    blocks = examples()
    assert len(blocks) >= 9
    for index, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/sdk.md example {index + 1}", "exec"), {})
        except Exception as exc:
            raise AssertionError(
                f"docs/sdk.md example {index + 1} failed: {exc!r}\n{code}"
            ) from exc
    out = capsys.readouterr().out
    assert "SETTLED" in out and "[AUTH_REQUIRED]" in out
