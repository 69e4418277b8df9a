"""The set-up's outputs are ignored also when they are symlinks (a shared .venv,
node_modules or .solcx linked into a second checkout or worktree): a pattern with a
trailing slash matches directories only, never a link."""

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ignored(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    proc = subprocess.run(["git", "check-ignore", "-q", str(rel)], cwd=ROOT, check=False)
    return proc.returncode == 0


@pytest.mark.parametrize("name", [".venv", "node_modules", ".solcx"])
def test_setup_outputs_are_ignored_as_directories_and_as_symlinks(
    name: str, tmp_path: Path
) -> None:
    # A scratch folder inside the checkout (git only judges paths in its tree).
    scratch = ROOT / f"gitignore-check-{uuid.uuid4().hex}"
    scratch.mkdir()
    try:
        (scratch / "as-dir").mkdir()
        (scratch / "as-dir" / name).mkdir()
        (scratch / "as-link").mkdir()
        (scratch / "as-link" / name).symlink_to(tmp_path)
        assert _ignored(scratch / "as-dir" / name)
        assert _ignored(scratch / "as-link" / name), f"a symlink named {name} is not ignored"
    finally:
        shutil.rmtree(scratch)
