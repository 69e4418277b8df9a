"""The ABIs shipped in the Python package match the contracts as compiled now."""

import json

from fabstir.chain.abi import CONTRACTS, load_abi


def test_shipped_abis_match_compiled(project):
    for name in CONTRACTS:
        compiled = [
            json.loads(item.model_dump_json(by_alias=True))
            for item in project.get_contract(name).contract_type.abi
        ]
        shipped = load_abi(name)
        key = lambda item: json.dumps(item, sort_keys=True)  # noqa: E731
        assert sorted(map(key, compiled)) == sorted(map(key, shipped)), (
            f"{name}: ABI drifted; run `python tools/export_abis.py`"
        )
