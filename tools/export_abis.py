"""Copy the ABIs of the deployable contracts from ape's build into the Python package.

The SDK and host worker ship these JSON files, so they run without ape or a compiler.
tests/test_abis.py fails when a contract changed and this was not re-run:
    python tools/export_abis.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ops"))

from fabstir.chain.abi import ABI_DIR, CONTRACTS  # noqa: E402


def compiled_abis(manifest: Path = ROOT / ".build" / "__local__.json") -> dict[str, list[object]]:
    types = json.loads(manifest.read_text())["contractTypes"]
    return {name: types[name]["abi"] for name in CONTRACTS}


def main() -> None:
    for name, abi in compiled_abis().items():
        (ABI_DIR / f"{name}.json").write_text(json.dumps(abi, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(CONTRACTS)} ABIs to {ABI_DIR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
