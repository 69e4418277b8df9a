"""Inference engines, built from the host configuration through one factory.

A new engine is a module in this package with `async def build(spec: EngineSpec) ->
Engine` plus one line in `ENGINES`. Modules are imported only when their engine is
built, so a host that forwards to an upstream server never loads llama.cpp.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

from fabstir.host.config import ConfigError
from fabstir.host.engines.base import Engine

if TYPE_CHECKING:
    from fabstir.host.config import HostConfig
    from fabstir.host.metrics import HostMetrics

#: Engine name (HostConfig.engine) -> the module that builds it.
ENGINES: Final[dict[str, str]] = {
    "llama": "fabstir.host.engines.llama",
    "upstream": "fabstir.host.engines.upstream",
}


@dataclass(frozen=True)
class EngineSpec:
    """What a builder gets: the configuration and the registry's view of the model."""

    config: HostConfig
    #: The model file the worker verified against the registry (in-process engines).
    model_path: Path
    #: The registry entry's sha256 (hex, no 0x) and size of the model file.
    sha256: str
    size: int
    #: The worker's metrics, for engines that count things of their own.
    metrics: HostMetrics | None = None


class UnknownEngineError(ConfigError):
    """No engine of that name is registered (a configuration error: exit status 2)."""


async def build_engine(spec: EngineSpec) -> Engine:
    """The engine named by `spec.config.engine`, ready to serve."""
    name = spec.config.engine
    if name not in ENGINES:
        raise UnknownEngineError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    module = importlib.import_module(ENGINES[name])
    builder = cast("Callable[[EngineSpec], Awaitable[Engine]]", module.build)
    return await builder(spec)
