"""The `fabstir` command line (console entry point `fabstir.cli:main`).

One module per command group; each is a thin layer over fabstir.chain, the SDK
and fabstir.models. Shared conventions (network, account, output, errors) live in
`fabstir.cli.context` and `fabstir.cli.output`; docs/cli.md lists every command.
"""

from __future__ import annotations

from typing import Any

import click

from fabstir import __version__
from fabstir.cli import (
    chain,
    demo,
    deploy,
    gateway,
    host,
    models,
    operator,
    serve,
    session,
    treasury,
    wallet,
)
from fabstir.cli.context import (
    ENV_ACCOUNT,
    ENV_NETWORK,
    CliError,
    CliState,
    check_account_spec,
    check_network_spec,
    describe,
    is_user_error,
)

HELP = """\
Operate and use the Fabstir pay-per-token LLM marketplace.

\b
Quick start on a local chain:
  fabstir chain up                      # anvil in ./.fabstir/chain (or $FABSTIR_HOME)
  fabstir deploy --seed                 # contracts + test tokens + catalogue models
  fabstir models fetch                  # the bundled model file
  fabstir host register --account test:5 --url ws://127.0.0.1:8080
  fabstir deposit 5 --account test:8
  fabstir session start --account test:8
  fabstir session send 1 "Hello!" --account test:8
  fabstir session close 1 --account test:8

\b
Every command takes --network (local | base-sepolia | http(s)://URL),
--account (test:N on local chains | an ape account alias | $FABSTIR_KEY_FILE)
and --json (one JSON document on stdout), here or after the command name.
Exit status: 0 ok, 1 error (one line on stderr; --debug for a traceback),
2 usage error. Live networks ask before sending anything unless --yes.
"""


class FabstirGroup(click.Group):
    """Turns user errors (SDK, chain, deploy, files, network) into one line on
    stderr and exit status 1; with --debug they keep their traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            obj = ctx.find_object(CliState)
            if (obj is not None and obj.debug) or not is_user_error(exc):
                raise
            raise CliError(describe(exc)) from exc


def _network(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return check_network_spec(value)


def _account(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_account_spec(value)


@click.group(
    cls=FabstirGroup,
    help=HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="fabstir")
@click.option(
    "--network",
    default="local",
    envvar=ENV_NETWORK,
    show_default=True,
    callback=_network,
    help=f"local, base-sepolia, or an http(s):// RPC URL (${ENV_NETWORK}).",
)
@click.option(
    "--account",
    envvar=ENV_ACCOUNT,
    callback=_account,
    help=f"test:N, an ape account alias, or unset for $FABSTIR_KEY_FILE (${ENV_ACCOUNT}).",
)
@click.option("--json", "json_mode", is_flag=True, help="One JSON document on stdout.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before sending on a live network.")
@click.option("--debug", is_flag=True, help="Show tracebacks and SDK debug logs.")
@click.pass_context
def main(
    ctx: click.Context,
    network: str,
    account: str | None,
    json_mode: bool,
    yes: bool,
    debug: bool,
) -> None:
    ctx.obj = CliState(
        json=json_mode, debug=debug, network_spec=network, account_spec=account, yes=yes
    )


main.add_command(chain.chain)
main.add_command(deploy.deploy)
main.add_command(deploy.deployments)
main.add_command(models.models)
main.add_command(host.host)
main.add_command(session.session)
main.add_command(wallet.balance)
main.add_command(wallet.deposit)
main.add_command(wallet.withdraw)
main.add_command(treasury.treasury)

host.host.add_command(serve.serve)
host.host.add_command(operator.settle)
session.session.add_command(operator.finalize)
main.add_command(operator.admin)
main.add_command(demo.demo)
main.add_command(gateway.gateway)
