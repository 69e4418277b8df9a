"""The `fabstir` command line."""

from __future__ import annotations

import click

from fabstir import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fabstir")
def main() -> None:
    """Operate and use the Fabstir pay-per-token LLM marketplace."""
