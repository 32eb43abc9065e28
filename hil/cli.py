"""`citynerve hil run SCENARIO`: run a scenario on the emulated junction, print the accounting
table, and write the report folder (accounting, what the harness did, ground truth, logs and a
picture: timeline.svg, a hand-written SVG since matplotlib is not a dependency).

    citynerve hil run faults                      # hil/scenarios/faults.toml
    citynerve hil run my.toml --out report/ --runtime cab-pico=micropython

Exit status: 0 when the run met the scenario's expectations, 1 when it did not, 2 when the
scenario or the junction could not be used (the message says where).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer

hil_app = typer.Typer(
    name="hil",
    help="The hardware-in-the-loop harness: scenarios on the emulated junction, with accounting.",
    no_args_is_help=True,
    add_completion=False,
)

EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def parse_runtimes(values: list[str]) -> dict[str, str]:
    """["cab-pico=micropython", ...] -> {"cab-pico": "micropython"}."""
    out = {}
    for value in values:
        board, sep, runtime = value.partition("=")
        if not sep or not board or not runtime:
            raise typer.BadParameter(f"{value!r} is not BOARD=RUNTIME (e.g. cab-pico=micropython)",
                                     param_hint="--runtime")
        out[board] = runtime
    return out


@hil_app.command("run")
def run(
    scenario: str = typer.Argument(
        ..., help="A scenario in hil/scenarios (demo, faults, faults_long) or a TOML file."),
    out: Path = typer.Option(None, "--out", help="Report folder (default hil-reports/<scenario>-<time>)."),
    runtime: list[str] = typer.Option(
        [], "--runtime", help="BOARD=cpython|micropython, overriding the scenario."),
    duration: float = typer.Option(None, "--duration", help="Scenario seconds, overriding the scenario's."),
) -> None:
    """Run SCENARIO, print its accounting and write its report."""
    from rich.console import Console
    from rich.table import Table

    from hil.junction import JunctionError, run_scenario
    from hil.junction_devices import FieldError
    from hil.junction_gateway import GatewayRunError
    from hil.report import write_report
    from hil.scenario import ScenarioError, load_scenario

    console = Console()
    try:
        sc = load_scenario(scenario).with_runtimes(parse_runtimes(runtime))
        if duration is not None:
            sc = sc.with_changes(duration_s=duration)
    except ScenarioError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(EXIT_UNUSABLE) from None
    folder = out or Path("hil-reports") / f"{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"scenario [bold]{sc.name}[/]: {sc.description} ({sc.duration_s:g} s); "
                  f"report in {folder}")
    try:
        result = asyncio.run(run_scenario(sc, workdir=folder, on_event=lambda line: console.print(line)))
    except (ScenarioError, JunctionError, FieldError, GatewayRunError) as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(EXIT_UNUSABLE) from None
    rows = result.accounting.rows()
    table = Table(*rows[0], title=f"accounting: {sc.name}")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    for line in result.accounting.text().splitlines()[len(rows):]:
        console.print(line)
    paths = write_report(result, folder)
    violations = result.accounting.violations(sc.expect)
    console.print(f"report: {paths['accounting']}, picture: {paths['picture']}")
    if violations:
        for text in violations:
            console.print(f"[red]✗ {text}[/]")
        for text in result.accounting.problems[:10]:
            console.print(f"  {text}")
        raise typer.Exit(EXIT_FAILED)
    console.print("[green]✓ nothing lost, duplicated, corrupted or late beyond what the scenario expects[/]")
