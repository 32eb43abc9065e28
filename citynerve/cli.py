"""The `citynerve` command: field tools, the gateway, the demo and the test harness.

Each subcommand imports its implementation lazily, so `citynerve --help` stays fast on a Pi.
"""

from __future__ import annotations

import typer

from citynerve import __version__
from citynerve.boards_cli import boards_app
from citynerve.sign import app as cmd_app
from gateway.cli import gateway_app

app = typer.Typer(
    name="citynerve",
    help="citynerve: MicroPython sensor nodes, a junction gateway and an emulated junction, end to end.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(boards_app, name="boards")
app.add_typer(cmd_app, name="cmd")
app.add_typer(gateway_app, name="gateway")


@app.command()
def version() -> None:
    """Print citynerve's version."""
    typer.echo(__version__)


@app.command()
def demo(
    broker: str = typer.Option(None, "--broker", help="Publish to this broker URL instead of an embedded one."),
) -> None:
    """Run the demo junction: what exists of it so far, and a plain list of what does not yet."""
    from citynerve.demo import run_demo

    raise typer.Exit(run_demo(broker=broker))


def main() -> None:
    app()
