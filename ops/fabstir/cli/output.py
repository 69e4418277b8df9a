"""What the CLI prints: human tables by default, one JSON document with `--json`.

Rules every command follows:

- stdout carries the result only: a table / key-value block for people, or with
  `--json` exactly one JSON document (nothing else on stdout), so scripts can do
  `fabstir --json balance --account test:8 | jq .deposited`.
- Notes, progress and prompts go to stderr. Spinners run only when stderr is a TTY,
  so logs and captured output stay clean.
- Errors are one line on stderr (see `fabstir.cli.errors`).
"""

from __future__ import annotations

import enum
import io
import itertools
import json
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import click
from rich.box import Box
from rich.console import Console
from rich.table import Table
from rich.text import Text

_SPIN = "|/-\\"
#: rich box with no borders and a dashed rule under the header (plain ASCII, so the
#: output pastes into any terminal or log).
_RULED = Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)
#: Console width for rendering tables: wide enough that rich never wraps a cell.
_UNBOUNDED = 10_000


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of `value`: dataclasses become objects, enums their names,
    bytes 0x-hex, tuples lists, paths strings; anything else unknown becomes str."""
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value) if f.repr}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (rich.table): header, a dashed rule, rows; columns padded to fit.

    Cells never wrap or shrink (the console is as wide as the table needs), so an address
    stays on one line and can be copied; no colours or markup, so text is printed as is.
    """
    grid = Table(box=_RULED, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header in headers:
        grid.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        grid.add_row(*(Text(_cell(c)) for c in row))
    buf = io.StringIO()
    console = Console(
        file=buf, width=_UNBOUNDED, color_system=None, markup=False, emoji=False, highlight=False
    )
    console.print(grid)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def short_hash(value: str, head: int = 4, tail: int = 4) -> str:
    """0x1234…abcd, as block explorers shorten a hash or address (--json keeps it whole)."""
    if len(value) <= 2 + head + tail + 1:
        return value
    return f"{value[: 2 + head]}…{value[-tail:]}"


def key_values(pairs: Sequence[tuple[str, Any]] | Mapping[str, Any]) -> str:
    """`key   value` lines, keys padded to the longest."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    if not items:
        return ""
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in items)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


class Output:
    """The printer a command gets from its context (`state.out`)."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode

    def result(self, data: Any, human: str | None = None) -> None:
        """Print the command's result: `data` as JSON with --json, else `human`
        (or `data` as key-value lines when no text is given)."""
        if self.json_mode:
            click.echo(json.dumps(jsonable(data), indent=2, sort_keys=False))
            return
        if human is None:
            plain = jsonable(data)
            human = key_values(plain) if isinstance(plain, Mapping) else str(plain)
        if human:
            click.echo(human)

    def note(self, message: str) -> None:
        """A side remark for people (stderr; kept quiet with --json)."""
        if not self.json_mode:
            click.echo(message, err=True)

    def log(self, message: str) -> None:
        """Progress lines of long operations (stderr, also with --json)."""
        click.echo(message, err=True)

    def stream(self, text: str) -> None:
        """A piece of a streamed answer, written as it arrives (human mode only)."""
        if not self.json_mode:
            sys.stdout.write(text)
            sys.stdout.flush()

    @contextmanager
    def progress(self, message: str) -> Iterator[None]:
        """A spinner on stderr while the block runs, only when stderr is a TTY."""
        if not _stderr_is_tty():
            yield
            return
        stop = threading.Event()

        def spin() -> None:
            for ch in itertools.cycle(_SPIN):
                sys.stderr.write(f"\r{ch} {message}")
                sys.stderr.flush()
                if stop.wait(0.1):
                    break

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        ok = False
        try:
            yield
            ok = True
        finally:
            stop.set()
            thread.join()
            sys.stderr.write(f"\r{'done' if ok else 'failed'}: {message}\x1b[K\n")
            sys.stderr.flush()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
