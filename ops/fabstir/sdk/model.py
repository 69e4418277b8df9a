"""ModelManager: model ids, approval, details and file-hash checks (ModelRegistry).

A model's id is keccak256(repo + "/" + file) (the original SDK's ids); its
registry record holds the sha256 of the file, which hosts and clients check
their copy against.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fabstir.models import ModelError, sha256_file
from fabstir.models import model_id as _model_id
from fabstir.sdk._base import ManagerBase, check_bytes32, fail
from fabstir.sdk.errors import SDKError, SDKErrorCode
from fabstir.sdk.types import ModelInfo, ModelSpec, ModelStatus, ModelValidation

_SHA256_RE: Final = re.compile(r"(?:0[xX])?[0-9a-fA-F]{64}")


def normalise_sha256(value: str | bytes, name: str = "expected_hash") -> str:
    """64 lowercase hex digits (no 0x) from 0x-hex, bare hex or 32 bytes."""
    if isinstance(value, bytes | bytearray) and len(value) == 32:
        return bytes(value).hex()
    if isinstance(value, str) and _SHA256_RE.fullmatch(value):
        return value[-64:].lower()
    raise SDKError(
        SDKErrorCode.INVALID_MODEL_HASH,
        f"{name} must be a sha256: 64 hex digits (0x optional) or 32 bytes, got {value!r}",
    )


def _sha256_of(content: bytes | bytearray | memoryview | str | Path) -> str:
    if isinstance(content, bytes | bytearray | memoryview):
        return hashlib.sha256(content).hexdigest()
    path = Path(content)
    if not path.is_file():
        raise SDKError(
            SDKErrorCode.INVALID_ARGUMENT,
            f"model file {str(path)!r} does not exist",
            {"path": str(path)},
        )
    return sha256_file(path)


class ModelManager(ManagerBase):
    """Model governance reads (the reference's ModelManager). Read-only: works
    before authenticate."""

    def get_model_id(self, huggingface_repo: str, file_name: str) -> str:
        """keccak256(repo + "/" + file) as 0x-hex; `repo` must be `owner/name`
        and `file` a bare file name (SDKError(INVALID_ARGUMENT) otherwise).
        Computed locally: no chain access."""
        if not isinstance(huggingface_repo, str) or not isinstance(file_name, str):
            fail(SDKErrorCode.INVALID_ARGUMENT, "repo and file name must be strings")
        try:
            return _model_id(huggingface_repo, file_name)
        except ModelError as exc:
            raise SDKError(SDKErrorCode.INVALID_ARGUMENT, str(exc)) from None

    def is_model_approved(self, model_id: str) -> bool:
        """Whether new sessions may use the model (unknown ids: False)."""
        mid = check_bytes32(model_id, "model_id")
        registry = self._contract("ModelRegistry")
        return bool(self._call(registry.functions.isApproved(mid), "isApproved"))

    def get_model_details(self, model_id: str) -> ModelInfo | None:
        """The registry record of a model, or None when the id is unknown."""
        mid = check_bytes32(model_id, "model_id")
        registry = self._contract("ModelRegistry")
        if not self._call(registry.functions.exists(mid), "exists"):
            return None
        sha, size, _index, status, repo, file, metadata = self._call(
            registry.functions.getModel(mid), "getModel"
        )
        state = ModelStatus(int(status))
        return ModelInfo(
            id=mid,
            huggingface_repo=str(repo),
            file_name=str(file),
            model_hash="0x" + bytes(sha).hex(),
            size=int(size),
            approved=state == ModelStatus.APPROVED,
            status=state,
            metadata=_parse_metadata(str(metadata)),
        )

    def get_all_approved_models(self) -> list[ModelInfo]:
        """Every approved model, in registry order."""
        registry = self._contract("ModelRegistry")
        ids = [
            "0x" + bytes(m).hex()
            for m in self._call(registry.functions.approvedModels(), "approvedModels")
        ]
        models = [m for m in (self.get_model_details(i) for i in ids) if m is not None]
        return sorted(models, key=lambda m: (m.huggingface_repo, m.file_name))

    def require_approved(self, model_id: str) -> ModelInfo:
        """The model's record; SDKError(MODEL_NOT_FOUND) for an unknown id,
        SDKError(MODEL_NOT_APPROVED) when it is pending or deactivated."""
        mid = check_bytes32(model_id, "model_id")
        info = self.get_model_details(mid)
        if info is None:
            fail(
                SDKErrorCode.MODEL_NOT_FOUND,
                f"model {mid} is not registered; list approved models with "
                "get_all_approved_models()",
                model_id=mid,
            )
        if not info.approved:
            fail(
                SDKErrorCode.MODEL_NOT_APPROVED,
                f"model {info.huggingface_repo}/{info.file_name} ({mid}) is "
                f"{info.status.name.lower()}, not approved; pick one from get_all_approved_models()",
                model_id=mid,
                status=info.status.name,
            )
        return info

    def validate_model(
        self,
        model_spec: ModelSpec | Mapping[str, Any],
        file_content: bytes | str | Path | None = None,
    ) -> ModelValidation:
        """Check a model spec against the registry, and optionally a local file.

        Valid means: repo/file give a well-formed id, the model is registered
        and approved, the spec's `model_hash` (if any) equals the registry's
        sha256, and `file_content` (bytes, or a path to the file) hashes to it.
        Problems are listed in `errors`; nothing is raised for them.
        """
        spec = ModelSpec.from_value(model_spec)
        errors: list[str] = []
        try:
            mid = self.get_model_id(spec.huggingface_repo, spec.file_name)
        except SDKError as exc:
            return ModelValidation(False, False, None, (exc.message,))
        info = self.get_model_details(mid)
        if info is None:
            return ModelValidation(False, False, None, (f"model {mid} is not registered",), mid)
        if not info.approved:
            errors.append(f"model is {info.status.name.lower()}, not approved")
        registry_hash = info.model_hash[2:]
        if spec.model_hash:
            try:
                if normalise_sha256(spec.model_hash, "model_hash") != registry_hash:
                    errors.append("model_hash differs from the registry's sha256")
            except SDKError as exc:
                errors.append(exc.message)
        hash_matches: bool | None = None
        if file_content is not None:
            try:
                hash_matches = _sha256_of(file_content) == registry_hash
            except SDKError as exc:
                errors.append(exc.message)
                hash_matches = False
            else:
                if not hash_matches:
                    errors.append("the file's sha256 differs from the registry's")
        return ModelValidation(not errors, info.approved, hash_matches, tuple(errors), mid)

    def verify_model_hash(
        self, file_content: bytes | str | Path, expected_hash: str | bytes
    ) -> bool:
        """Whether `file_content` (bytes, or a path to the file, hashed in
        chunks) has sha256 `expected_hash` (0x-hex, bare hex or 32 bytes).

        Raises SDKError(INVALID_MODEL_HASH) for a malformed expected hash and
        INVALID_ARGUMENT for a missing file.
        """
        expected = normalise_sha256(expected_hash)
        return _sha256_of(file_content) == expected


def _parse_metadata(text: str) -> dict[str, Any] | str | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text
