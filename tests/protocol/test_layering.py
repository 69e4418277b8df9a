"""The package's layering (DESIGN.md): the core imports no edge, the edges never
import each other, and `fabstir.sdk` exports its public names lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ops" / "fabstir"
EDGES = ("sdk", "host", "cli")


def _imports(path: Path) -> set[str]:
    """Every fabstir module `path` imports, at any depth (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fabstir")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fabstir"):
            found.add(node.module)
    return found


def _offenders(modules: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in modules:
        for name in sorted(_imports(path)):
            if name.split(".")[1:2] and name.split(".")[1] in forbidden:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return bad


def test_core_imports_no_edge() -> None:
    core = [
        *sorted((PACKAGE / "protocol").rglob("*.py")),
        *sorted((PACKAGE / "chain").rglob("*.py")),
        PACKAGE / "errors.py",
    ]
    assert len(core) > 5
    assert _offenders(core, EDGES) == []


@pytest.mark.parametrize(("edge", "other"), [("host", "sdk"), ("sdk", "host")])
def test_edges_do_not_import_each_other(edge: str, other: str) -> None:
    modules = sorted((PACKAGE / edge).rglob("*.py"))
    assert modules
    assert _offenders(modules, (other, "cli")) == []


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_sdk_exports_are_lazy() -> None:
    out = _python(
        "import sys, fabstir.sdk as s\n"
        "print('web3' in sys.modules, 'fabstir.sdk.sdk' in sys.modules)\n"
        "from fabstir.sdk import FabstirSDK, SDKErrorCode, SessionPlan\n"
        "print(FabstirSDK.__module__, SessionPlan.__module__, SDKErrorCode.AUTH_FAILED.value)\n"
        "print(sorted(set(s.__all__) - set(dir(s))))\n"
        "try:\n"
        "    s.NoSuchThing\n"
        "except AttributeError as e:\n"
        "    print('AttributeError', e)\n"
    )
    assert out.splitlines() == [
        "False False",
        "fabstir.sdk.sdk fabstir.sdk.preflight AUTH_FAILED",
        "[]",
        "AttributeError module 'fabstir.sdk' has no attribute 'NoSuchThing'",
    ]


def test_host_runs_without_the_sdk() -> None:
    out = _python(
        "import sys, fabstir.host.server, fabstir.host.settlement, fabstir.host.worker\n"
        "print(sorted(m for m in sys.modules if m.startswith('fabstir.sdk')))\n"
    )
    assert out == "[]"
