"""The `citynerve` command: field tools, the gateway, the demo and the test harness.

Each subcommand imports its implementation lazily, so `citynerve --help` stays fast on a Pi.
"""

from __future__ import annotations

from pathlib import Path

import typer

from citynerve import __version__
from citynerve.boards_cli import boards_app
from citynerve.flash_cli import flash_command
from citynerve.sign import app as cmd_app
from citynerve.status import status_command
from citynerve.tap import tap_command
from gateway.cli import gateway_app
from hil.cli import hil_app

app = typer.Typer(
    name="citynerve",
    help="citynerve: MicroPython sensor nodes, a junction gateway and an emulated junction, end to end.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(boards_app, name="boards")
app.add_typer(cmd_app, name="cmd")
app.add_typer(gateway_app, name="gateway")
app.add_typer(hil_app, name="hil")
app.command("flash")(flash_command)
app.command("tap")(tap_command)
app.command("status")(status_command)


@app.command()
def version() -> None:
    """Print citynerve's version."""
    typer.echo(__version__)


@app.command()
def demo(
    broker: str = typer.Option(None, "--broker", help="Publish to this broker URL instead of an embedded one."),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds (default: Ctrl-C)."),
    once_summary: bool = typer.Option(False, "--once-summary",
                                      help="No live screen: run --duration seconds (20 by default), print what "
                                           "was decoded per node, exit 1 if a node sent nothing."),
    runtime: list[str] = typer.Option([], "--runtime", help="BOARD=cpython|micropython (default: air-pico on "
                                                              "MicroPython, the others on CPython)."),
    workdir: Path = typer.Option(None, "--workdir", help="Keep the run's logs and ground truth here."),
) -> None:
    """Run the demo junction of boards.toml, emulated end to end, with a live view until Ctrl-C."""
    from citynerve.demo import run_demo
    from hil.cli import parse_runtimes

    raise typer.Exit(run_demo(broker=broker, duration=duration, once_summary=once_summary,
                              runtimes=parse_runtimes(runtime), workdir=workdir))


def main() -> None:
    app()
