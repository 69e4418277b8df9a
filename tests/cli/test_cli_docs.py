"""docs/cli.md shows every command of the CLI with an example (docs that drift are bugs)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
from support.cli import REPO

from fabstir.cli import main

DOC = REPO / "docs" / "cli.md"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)
        else:
            yield path


def _examples() -> str:
    return "\n".join(re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S))


def test_every_command_has_an_example() -> None:
    examples = _examples()
    missing = [
        " ".join(path)
        for path in _commands(main)
        if not re.search(rf"^(?:\S+=\S+ )*fabstir {' '.join(path)}\b", examples, re.M)
    ]
    assert not missing, f"docs/cli.md has no example for: {', '.join(missing)}"


def test_documented_commands_exist() -> None:
    known = {" ".join(p) for p in _commands(main)}
    groups = {name for name, cmd in main.commands.items() if isinstance(cmd, click.Group)}
    for line in _examples().splitlines():
        m = re.search(r"\bfabstir ((?:[a-z-]+ ?){1,2})", line)
        if not m or line.lstrip().startswith("#"):
            continue
        words = [w for w in m[1].split() if not w.startswith("-")]
        cmd = " ".join(words[:2]) if words[0] in groups and len(words) > 1 else words[0]
        runnable = known | {g for g in groups if main.commands[g].invoke_without_command}
        assert cmd in runnable, f"docs/cli.md shows an unknown command: {line.strip()}"
