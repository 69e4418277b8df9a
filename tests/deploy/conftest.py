"""Fixtures for the deploy suite: every deploy writes to a temporary directory, never
to the checked-in deployments/ tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fabstir.chain.deploy import DeployResult, deploy
from fabstir.chain.params import ParamsFile, load_params_file


@pytest.fixture
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "deployments"
    # Anything that forgets out_dir still lands in the temporary directory.
    monkeypatch.setenv("FABSTIR_DEPLOYMENTS_DIR", str(d))
    return d


@pytest.fixture
def local_params() -> ParamsFile:
    return load_params_file("local")


@pytest.fixture
def deployer(accounts: Any) -> Any:
    return accounts[0]


@pytest.fixture
def deployed(project: Any, deployer: Any, local_params: ParamsFile, out_dir: Path) -> DeployResult:
    return deploy(project, deployer, local_params, out_dir=out_dir)
