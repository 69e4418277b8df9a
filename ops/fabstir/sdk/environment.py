"""EnvironmentDetector: what this Python process can do.

The reference's detector tells a browser from Node.js; here the questions are
whether this process can run inference (llama-cpp-python importable, a GPU it
can offload to), speak the WebSocket protocol (`websockets` importable), and
what it runs on. Nothing is imported or run until asked, and each probe is
done once per detector.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Final

_NVIDIA_SMI_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class Capabilities:
    """What the process can do (the reference's getCapabilities() result).

    has_p2p is always False: peer-to-peer networking is not part of this
    SDK (the reference's libp2p layer); hosts are reached over WebSocket.
    """

    environment: str
    python_version: str
    platform: str
    machine: str
    has_websockets: bool
    has_llama_cpp: bool
    llama_cpp_version: str | None
    llama_gpu_offload: bool
    has_gpu: bool
    gpus: tuple[str, ...]
    has_file_system: bool = True
    has_p2p: bool = False

    @property
    def can_host(self) -> bool:
        """True when this process can run the reference host worker's inference."""
        return self.has_llama_cpp and self.has_websockets

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "environment": self.environment,
            "python_version": self.python_version,
            "platform": self.platform,
            "machine": self.machine,
            "has_websockets": self.has_websockets,
            "has_llama_cpp": self.has_llama_cpp,
            "llama_cpp_version": self.llama_cpp_version,
            "llama_gpu_offload": self.llama_gpu_offload,
            "has_gpu": self.has_gpu,
            "gpus": list(self.gpus),
            "has_file_system": self.has_file_system,
            "has_p2p": self.has_p2p,
            "can_host": self.can_host,
        }


class EnvironmentDetector:
    """Probes the runtime (the reference's EnvironmentDetector)."""

    def detect_environment(self) -> str:
        """Always "python" (the reference answers "browser" or "node")."""
        return "python"

    def python_version(self) -> str:
        """e.g. "3.11.7"."""
        return platform.python_version()

    def is_importable(self, module: str) -> bool:
        """Whether `module` can be imported (found without importing it)."""
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    def has_websockets(self) -> bool:
        """The `websockets` package (the SDK's WebSocket client) is installed."""
        return self.is_importable("websockets")

    def has_llama_cpp(self) -> bool:
        """llama-cpp-python (the host worker's inference binding) is installed."""
        return self.is_importable("llama_cpp")

    def __init__(self) -> None:
        self._llama_result: tuple[str | None, bool] | None = None
        self._gpus: tuple[str, ...] | None = None

    def _llama(self) -> tuple[str | None, bool]:
        if self._llama_result is None:
            self._llama_result = self._probe_llama()
        return self._llama_result

    def _probe_llama(self) -> tuple[str | None, bool]:
        if not self.has_llama_cpp():
            return None, False
        try:
            llama_cpp = importlib.import_module("llama_cpp")
        except Exception:  # a broken native library: treat as absent
            return None, False
        version = getattr(llama_cpp, "__version__", None)
        probe = getattr(llama_cpp, "llama_supports_gpu_offload", None)
        try:
            offload = bool(probe()) if callable(probe) else False
        except Exception:
            offload = False
        return (str(version) if version else None), offload

    def llama_cpp_version(self) -> str | None:
        """The installed llama-cpp-python version, or None."""
        return self._llama()[0]

    def llama_gpu_offload(self) -> bool:
        """Whether the installed llama.cpp build can offload layers to a GPU."""
        return self._llama()[1]

    def gpus(self) -> tuple[str, ...]:
        """Names of the NVIDIA GPUs `nvidia-smi` lists (empty without one)."""
        if self._gpus is None:
            self._gpus = self._probe_gpus()
        return self._gpus

    def _probe_gpus(self) -> tuple[str, ...]:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return ()
        try:
            out = subprocess.run(
                [exe, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=_NVIDIA_SMI_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return ()
        if out.returncode != 0:
            return ()
        return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())

    def has_gpu(self) -> bool:
        """A GPU is usable: nvidia-smi lists one."""
        return bool(self.gpus())

    def get_capabilities(self) -> Capabilities:
        """Everything above in one record."""
        version, offload = self._llama()
        return Capabilities(
            environment=self.detect_environment(),
            python_version=self.python_version(),
            platform=sys.platform,
            machine=platform.machine(),
            has_websockets=self.has_websockets(),
            has_llama_cpp=self.has_llama_cpp(),
            llama_cpp_version=version,
            llama_gpu_offload=offload,
            has_gpu=self.has_gpu(),
            gpus=self.gpus(),
        )
