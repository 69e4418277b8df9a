"""deployments/<chainId>.json (atomic write, loader, directory override) and the
checked-in params files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabstir.chain.deployments import (
    ContractRecord,
    Deployment,
    DeploymentError,
    TokenRecord,
    deployments_dir,
    load_deployment,
    read_deployment,
    write_deployment,
)
from fabstir.chain.params import (
    PARAMS_DIR,
    DeployParams,
    ParamsError,
    ParamsFile,
    default_params_name,
    load_params,
    load_params_file,
)

ADDR = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _deployment(complete: bool = True) -> Deployment:
    return Deployment(
        chain_id=31337,
        network="ethereum:local:foundry",
        deployer=ADDR,
        contracts={"JobMarketplace": ContractRecord(ADDR, 7, "0xab", "0xcd", "JobMarketplace")},
        params=DeployParams().to_dict(),
        roles={"admin": ADDR},
        complete=complete,
    )


def test_write_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = write_deployment(_deployment(), tmp_path)
    assert path == tmp_path / "31337.json"
    assert [p.name for p in tmp_path.iterdir()] == ["31337.json"]  # no temp file left
    dep = load_deployment(31337, tmp_path)
    assert dep.address("JobMarketplace") == dep.address("jobmarketplace") == ADDR
    assert dep.to_dict() == json.loads(path.read_text())
    with pytest.raises(DeploymentError, match="has no 'NodeRegistry'"):
        dep.address("NodeRegistry")


def test_a_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_deployment(_deployment(), tmp_path)
    before = (tmp_path / "31337.json").read_text()

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_deployment(_deployment(complete=False), tmp_path)
    assert (tmp_path / "31337.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["31337.json"]


def test_loader_refuses_missing_and_unfinished(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="run `ape run deploy`"):
        load_deployment(31337, tmp_path)
    write_deployment(_deployment(complete=False), tmp_path)
    assert read_deployment(31337, tmp_path) is not None
    with pytest.raises(DeploymentError, match="unfinished"):
        load_deployment(31337, tmp_path)


def test_directory_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABSTIR_DEPLOYMENTS_DIR", raising=False)
    assert deployments_dir() == PARAMS_DIR.parent
    monkeypatch.setenv("FABSTIR_DEPLOYMENTS_DIR", str(tmp_path))
    assert deployments_dir() == tmp_path
    assert deployments_dir(tmp_path / "x") == tmp_path / "x"
    write_deployment(_deployment())
    assert load_deployment(31337).address("JobMarketplace") == ADDR


def test_checked_in_params_files() -> None:
    local = load_params_file("local")
    assert local.chain_id == 31337 and local.params == DeployParams()
    assert local.params.fab_address is None
    assert [(t.symbol, t.decimals, t.address) for t in local.params.tokens] == [
        ("ETH", 18, "native"),
        ("USDC", 6, "mock"),
    ]
    assert load_params("local") == local.params
    live = load_params_file("base-sepolia")
    assert live.chain_id == 84532 and live.network == "base:sepolia:node"
    assert [(t.symbol, t.decimals, t.address) for t in live.params.tokens] == [
        ("ETH", 18, "native"),
        ("USDC", 6, "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
    ]
    assert live.gas.max_priority_fee_wei > 0 and live.gas.confirmations >= 1
    assert live.comment and local.comment
    assert default_params_name(31337) == "local" and default_params_name(84532) == "base-sepolia"
    for path in PARAMS_DIR.glob("*.json"):  # every file parses, and documents itself
        assert json.loads(path.read_text())["comment"], path


def test_params_validation() -> None:
    with pytest.raises(ParamsError, match="unknown deployment parameters"):
        ParamsFile.from_dict("x", {"chain_id": 1, "fee": 3})
    with pytest.raises(ParamsError, match="chain_id"):
        ParamsFile.from_dict("x", {})
    with pytest.raises(ParamsError, match="fab_address must be a 0x address"):
        ParamsFile.from_dict("x", {"chain_id": 1, "fab_address": "FAB"})
    with pytest.raises(ParamsError, match="role admin"):
        ParamsFile.from_dict("x", {"chain_id": 1, "roles": {"admin": "alice"}})
    with pytest.raises(ParamsError, match="no default params file for chain id 5"):
        default_params_name(5)


ETH_ROW = {"symbol": "ETH", "decimals": 18, "address": "native", "min_deposit": 1}


def _tokens(*rows: dict[str, object]) -> dict[str, object]:
    return {"chain_id": 1, "tokens": [ETH_ROW, *rows]}


def test_token_table_reads_any_number_of_tokens_in_order() -> None:
    rows = [
        {"symbol": "USDC", "decimals": 6, "address": "mock", "min_deposit": 10**6},
        {"symbol": "XYZ", "decimals": 18, "address": ADDR, "min_deposit": 10**18},
    ]
    params = ParamsFile.from_dict("x", _tokens(*rows)).params
    assert params.native_token.symbol == "ETH" and params.native_token.native
    assert [t.symbol for t in params.erc20_tokens] == ["USDC", "XYZ"]
    assert [(t.mock, t.external) for t in params.erc20_tokens] == [(True, False), (False, True)]
    assert params.to_dict()["tokens"] == [ETH_ROW, *rows]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"chain_id": 1, "usdc_min_deposit": 1}, 'moved into the "tokens" table'),
        ({"chain_id": 1, "usdc_address": ADDR}, 'moved into the "tokens" table'),
        ({"chain_id": 1, "tokens": []}, "non-empty list"),
        ({"chain_id": 1, "tokens": "ETH"}, "non-empty list"),
        (_tokens("USDC"), "tokens\\[1\\] must be an object"),
        (
            _tokens({"symbol": "X", "decimals": 6, "address": "mock"}),
            "missing keys \\['min_deposit'\\]",
        ),
        (_tokens({**ETH_ROW, "symbol": "X", "extra": 1}), "unknown keys \\['extra'\\]"),
        (_tokens({**ETH_ROW, "symbol": "1X"}), "symbol must be a letter"),
        (_tokens({**ETH_ROW, "symbol": "A-B"}), "symbol must be a letter"),
        (_tokens({**ETH_ROW, "symbol": "FAB", "address": "mock"}), "'FAB' is reserved"),
        (_tokens({**ETH_ROW, "symbol": "X", "decimals": 78}), "decimals must be an integer"),
        (_tokens({**ETH_ROW, "symbol": "X", "decimals": True}), "decimals must be an integer"),
        (_tokens({**ETH_ROW, "symbol": "X", "min_deposit": -1}), "min_deposit must be"),
        (_tokens({**ETH_ROW, "symbol": "X", "min_deposit": 2**96}), "min_deposit must be"),
        (_tokens({**ETH_ROW, "symbol": "X", "address": "0x12"}), "address must be 'native'"),
        (_tokens({**ETH_ROW, "symbol": "X"}), 'exactly one row with address "native"'),
        ({"chain_id": 1, "tokens": [{**ETH_ROW, "address": "mock"}]}, "exactly one row"),
        (_tokens({**ETH_ROW, "symbol": "X", "decimals": 6}), "native coin has 18 decimals"),
        (
            _tokens({"symbol": "eth", "decimals": 6, "address": "mock", "min_deposit": 1}),
            "lists 'eth' twice",
        ),
        (
            _tokens(
                {"symbol": "A", "decimals": 6, "address": ADDR, "min_deposit": 1},
                {"symbol": "B", "decimals": 6, "address": ADDR.lower(), "min_deposit": 1},
            ),
            "one address under two symbols",
        ),
    ],
)
def test_token_table_refuses_bad_rows(data: dict[str, object], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        ParamsFile.from_dict("x", data)


def test_deployment_record_round_trips_the_token_table(tmp_path: Path) -> None:
    dep = _deployment()
    dep.tokens = [
        TokenRecord("ETH", 18, "0x" + "00" * 20, mock=False, min_deposit=5),
        TokenRecord("XYZ", 18, ADDR, mock=True, min_deposit=10**18),
    ]
    write_deployment(dep, tmp_path)
    loaded = load_deployment(31337, tmp_path)
    assert loaded.tokens == dep.tokens
    assert loaded.token("xyz") == dep.tokens[1] and loaded.token("ABC") is None
    assert loaded.address("XYZ") == ADDR  # a token is addressed by its symbol


def test_a_record_from_before_the_token_table_still_loads(tmp_path: Path) -> None:
    data = _deployment().to_dict()
    del data["tokens"]
    (tmp_path / "31337.json").write_text(json.dumps(data))
    assert load_deployment(31337, tmp_path).tokens == []


def test_params_refuse_sessions_that_outlive_the_unbonding_period() -> None:
    # Audit finding 1: sessions last at most unbonding_period - settlement_window; at
    # least one shortest (60 s) session must fit, so 0 and anything below window + 60 go.
    for unbonding in (0, 1, 3600, 3659):
        with pytest.raises(ParamsError, match="unbonding_period"):
            ParamsFile.from_dict("x", {"chain_id": 1, "unbonding_period": unbonding})
    edge = ParamsFile.from_dict("x", {"chain_id": 1, "unbonding_period": 3660}).params
    assert edge.max_session_duration == 60
    assert load_params("local").max_session_duration == 7 * 24 * 3600 - 3600
    assert load_params("base-sepolia").max_session_duration == 23 * 3600
    long = ParamsFile.from_dict("x", {"chain_id": 1, "unbonding_period": 400 * 24 * 3600})
    assert long.params.max_session_duration == 30 * 24 * 3600
    # Audit finding 5: a slash takes 1..100 % of the stake, and goes to nobody.
    for bps in (0, 10_001):
        with pytest.raises(ParamsError, match="max_slash_bps"):
            ParamsFile.from_dict("x", {"chain_id": 1, "max_slash_bps": bps})
    with pytest.raises(ParamsError, match="unknown roles"):
        ParamsFile.from_dict("x", {"chain_id": 1, "roles": {"slash_recipient": "deployer"}})
