"""The worker's command-line options, generated from the `HostConfig` dataclass.

Every `HostConfig` and `Limits` field made with `config.option` becomes one click option
(its flag, type, default and help all come from the field), so `python -m fabstir.host`
and `fabstir host serve` offer the same options with the same defaults and a new field
is a new option everywhere.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from fabstir.host.config import HostConfig, Limits

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ConfigOption:
    """One generated option: which dataclass and field it sets."""

    owner: type[Any]
    name: str
    flag: str
    kind: type[Any]
    default: Any
    help: str


def config_options_table() -> list[ConfigOption]:
    """The options in declaration order (HostConfig's, then Limits')."""
    return list(_options())


def _options() -> Iterator[ConfigOption]:
    for owner in (HostConfig, Limits):
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            if "help" not in f.metadata:
                continue
            kind = _base_type(hints[f.name])
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            yield ConfigOption(owner, f.name, flag, kind, f.default, f.metadata["help"])


def _base_type(hint: Any) -> type[Any]:
    """int for `int | None`, and so on."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"option type {hint} is not T or T | None")
        hint = args[0]
    if not isinstance(hint, type):
        raise TypeError(f"option type {hint} is not a class")
    return hint


def _click_type(kind: type[Any]) -> Any:
    if kind is Path:
        return click.Path(path_type=Path)
    return kind


def config_options(fn: F) -> F:
    """Decorate a click command with every config option (parameters named as fields)."""
    for opt in reversed(config_options_table()):
        if opt.kind is bool:
            decl = [f"{opt.flag}/--no-{opt.flag.removeprefix('--')}", opt.name]
        else:
            decl = [opt.flag, opt.name]
        fn = click.option(
            *decl,
            type=None if opt.kind is bool else _click_type(opt.kind),
            default=opt.default,
            show_default=opt.default is not None,
            help=opt.help,
        )(fn)
    return fn


def config_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """HostConfig keyword arguments from a command's parameters; the options are removed
    from `values` (what is left is the command's own)."""
    out: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for opt in config_options_table():
        value = values.pop(opt.name)
        (limits if opt.owner is Limits else out)[opt.name] = value
    out["limits"] = Limits(**limits)
    if out.get("system_prompt") == "":
        out["system_prompt"] = None  # --system-prompt "": no system prompt
    return out
