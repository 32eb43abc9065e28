"""`citynerve boards ...`: the inventory tools a technician runs before touching a board."""

from __future__ import annotations

from pathlib import Path

import typer

from citynerve.inventory import DEFAULT_BOARDS

boards_app = typer.Typer(
    name="boards",
    help="Check boards.toml, the junction's inventory of boards, buses, devices and broker.",
    no_args_is_help=True,
    add_completion=False,
)


@boards_app.command("check")
def check(
    file: Path = typer.Argument(DEFAULT_BOARDS, help="The boards.toml to check.", show_default="boards.toml"),
    profiles: Path = typer.Option(
        None, "--profiles", show_default=False,
        help="Folder of device profiles (*.json). Default: [gateway] profiles, else profiles/ "
             "beside FILE, else the ones shipped with citynerve (as the gateway finds them)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Check FILE and the profiles it names; every problem on one line with its file and line.

    Exit code 0: no problems (warnings allowed); 1: problems; 2: FILE cannot be read or is not TOML.
    """
    from citynerve.boards_check import check_file
    from citynerve.profile_check import display_path

    report = check_file(file, profiles=profiles, name=display_path(file) if file == DEFAULT_BOARDS else None)
    if as_json:
        typer.echo(report.json_text())
    else:
        for line in report.lines():
            typer.echo(line)
    raise typer.Exit(report.exit_code)
