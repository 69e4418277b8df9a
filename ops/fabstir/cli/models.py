"""`fabstir models list|fetch|id|approve|validate`: the catalogue and the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fabstir import models as catalogue
from fabstir.cli.context import CliError, common_options, json_option, read_options, state
from fabstir.cli.output import key_values, table

_APPROVED = 2  # ModelRegistry.Status.Approved

MODEL_ARG = click.argument("model", required=False, metavar="[MODEL]")


def _entry_data(entry: catalogue.CatalogueEntry) -> dict[str, Any]:
    path = catalogue.local_path(entry)
    return {
        "key": entry.key,
        "model_id": entry.model_id,
        "repo": entry.repo,
        "file": entry.file,
        "sha256": entry.sha256,
        "size": entry.size,
        "metadata": entry.metadata,
        "path": str(path),
        "cached": path.is_file(),
    }


@click.group()
def models() -> None:
    """The model catalogue (models/catalogue.json) and the on-chain ModelRegistry.

    \b
    Examples:
      fabstir models list
      fabstir models list --on-chain
      fabstir models fetch
      fabstir models id HuggingFaceTB/SmolLM2-135M-Instruct SmolLM2-135M-Instruct.Q4_1.gguf
      fabstir models approve smollm2-135m-instruct-q4_1 --account test:0
      fabstir models validate
    """


@models.command("list")
@click.option(
    "--on-chain", is_flag=True, help="List the models the registry approves (needs --network)."
)
@read_options
def list_(on_chain: bool) -> None:
    """Catalogue models (key, id, size, cached here?), or the registry's approved ones."""
    st = state()
    entries = catalogue.load_catalogue()
    if not on_chain:
        data = [_entry_data(e) for e in entries]
        rows = [
            (d["key"], d["model_id"][:18] + "...", f"{d['size'] / 1e6:.1f} MB", d["cached"])
            for d in data
        ]
        st.out.result(data, table(["key", "model id", "size", "cached"], rows))
        return
    known = {e.model_id.lower(): e for e in entries}
    approved = st.sdk().get_model_manager().get_all_approved_models()
    chain_data: list[dict[str, Any]] = []
    for info in approved:
        entry = known.get(info.id.lower())
        chain_data.append(
            {
                "model_id": info.id,
                "repo": info.huggingface_repo,
                "file": info.file_name,
                "sha256": info.model_hash,
                "size": info.size,
                "catalogue_key": entry.key if entry else None,
                "cached": bool(entry and catalogue.local_path(entry).is_file()),
            }
        )
    chain_rows = [
        (d["model_id"][:18] + "...", f"{d['repo']}/{d['file']}", d["catalogue_key"], d["cached"])
        for d in chain_data
    ]
    st.out.result(
        chain_data,
        table(["model id", "model", "catalogue key", "cached"], chain_rows)
        if chain_rows
        else "no approved models on this chain (curators: `fabstir models approve`)",
    )


@models.command()
@MODEL_ARG
@json_option
def fetch(model: str | None) -> None:
    """Download a catalogue model into the cache and verify its sha256.

    The cache is $FABSTIR_MODEL_DIR, else ~/.cache/fabstir/models. A file already
    there is only verified.

    MODEL is a catalogue key, model id or file name (default: the bundled model).
    """
    st = state()
    entry = catalogue.find(model)
    with st.out.progress(f"fetching {entry.key} ({entry.size / 1e6:.0f} MB)"):
        path = catalogue.fetch(entry)
    data = _entry_data(entry)
    st.out.result(data, f"{entry.key}: {path} (sha256 verified)")


@models.command("id")
@click.argument("model_or_repo", metavar="MODEL | REPO FILE")
@click.argument("file", required=False)
@json_option
def id_(model_or_repo: str, file: str | None) -> None:
    """The on-chain model id: keccak256(repo + "/" + file).

    \b
    Examples:
      fabstir models id smollm2-135m-instruct-q4_1
      fabstir models id HuggingFaceTB/SmolLM2-135M-Instruct SmolLM2-135M-Instruct.Q4_1.gguf
    """
    st = state()
    if file is None:
        entry = catalogue.find(model_or_repo)
        repo, name = entry.repo, entry.file
    else:
        repo, name = model_or_repo, file
    mid = catalogue.model_id(repo, name)
    st.out.result({"model_id": mid, "repo": repo, "file": name}, mid)


@models.command()
@MODEL_ARG
@common_options
def approve(model: str | None) -> None:
    """Curator: add a catalogue model to the ModelRegistry and approve it.

    Idempotent: a model already added or approved is left as it is. The account
    needs the registry's CURATOR_ROLE (test:0 on a local deployment).

    MODEL is a catalogue key, model id or file name (default: the bundled model).
    """
    from fabstir.chain.system import role_id
    from fabstir.chain.transactions import TxSender

    st = state()
    entry = catalogue.find(model)
    sdk = st.sdk(sign=True)
    me = str(sdk.address)
    chain = sdk.chain
    registry = chain.contract("ModelRegistry", sdk.get_contract_address("ModelRegistry"))
    if not chain.call(registry.functions.hasRole(role_id("CURATOR_ROLE"), me), "hasRole"):
        raise CliError(f"{me} lacks CURATOR_ROLE on the ModelRegistry {registry.address}")
    mid = bytes.fromhex(entry.model_id[2:])
    sender = TxSender(chain, sdk.require_signer().key, receipt_timeout=sdk.config.receipt_timeout)
    done: dict[str, str] = {}
    if not chain.call(registry.functions.exists(mid), "exists"):
        st.confirm(f"add model {entry.key} to the ModelRegistry")
        metadata = json.dumps(entry.metadata, separators=(",", ":"), sort_keys=True)
        fn = registry.functions.addModel(
            entry.repo, entry.file, bytes.fromhex(entry.sha256), entry.size, metadata
        )
        done["added"] = sender.send(fn, what="ModelRegistry.addModel").tx_hash
    record = chain.call(registry.functions.getModel(mid), "getModel")
    if bytes(record[0]).hex() != entry.sha256:
        raise CliError(
            f"{entry.key} is registered with sha256 {bytes(record[0]).hex()}, but the catalogue "
            f"says {entry.sha256}; not approving"
        )
    if int(record[3]) != _APPROVED:
        st.confirm(f"approve model {entry.key}")
        fn = registry.functions.approveModel(mid)
        done["approved"] = sender.send(fn, what="ModelRegistry.approveModel").tx_hash
    data = {"key": entry.key, "model_id": entry.model_id, "approved": True, "transactions": done}
    what = ", ".join(f"{k} (tx {v})" for k, v in done.items()) or "already approved; nothing sent"
    st.out.result(data, f"{entry.key} ({entry.model_id}): {what}")


@models.command()
@MODEL_ARG
@click.option(
    "--file",
    "file_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file to hash (default: the cached copy, when there is one).",
)
@read_options
def validate(model: str | None, file_path: Path | None) -> None:
    """Check a model against the registry: registered, approved, and the file's
    sha256 equal to the registry's. Exits 1 when it is not valid.

    MODEL is a catalogue key, model id or file name (default: the bundled model).
    """
    st = state()
    entry = catalogue.find(model)
    cached = catalogue.local_path(entry)
    path = file_path or (cached if cached.is_file() else None)
    if file_path is not None and not file_path.is_file():
        raise CliError(f"{file_path} does not exist")
    spec = {"huggingfaceRepo": entry.repo, "fileName": entry.file, "modelHash": entry.sha256}
    mm = st.sdk().get_model_manager()
    with st.out.progress(f"hashing {path}" if path else "checking the registry"):
        result = mm.validate_model(spec, path)
    data = {
        "key": entry.key,
        "model_id": entry.model_id,
        "valid": result.is_valid,
        "approved": result.is_approved,
        "file": str(path) if path else None,
        "hash_matches": result.hash_matches,
        "errors": list(result.errors),
    }
    human = key_values(
        [
            ("model", f"{entry.key} ({entry.model_id})"),
            ("approved", result.is_approved),
            ("file", path or "(not checked: not cached; `fabstir models fetch`)"),
            ("hash matches", result.hash_matches),
            ("valid", result.is_valid),
        ]
    )
    st.out.result(data, human)
    if not result.is_valid:
        raise CliError(f"{entry.key} is not valid: {'; '.join(result.errors)}")
