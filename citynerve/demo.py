"""`citynerve demo`: the demo junction of boards.toml, emulated end to end, shown live.

All three boards run the real firmware (air-pico on the MicroPython WebAssembly VM, the others under
CPython, unless --runtime says otherwise) against emulated devices on timed virtual wires: the
signal controller and the loop detectors of cab-pico with traffic on both approaches, the PMS5003
and SenseAir S8 of air-esp32, the SDS011 of air-pico. `citynerve gateway run` links them, spools
and publishes to an embedded broker (amqtt, in this process) or to --broker URL; a subscriber
decodes the stream for the live view (hil/demo_view.py) until Ctrl-C. Traffic, signal plan and air
profile are hil/scenarios/demo.toml's.

--once-summary runs for --duration seconds without the live screen and prints what was decoded
per node (for scripts and tests): exit status 0 when every node's readings arrived, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

DEMO_SCENARIO = "demo"
FOREVER_S = 7 * 24 * 3600.0  # "until Ctrl-C": the traffic is generated for this long


def run_demo(*, broker: str | None = None, duration: float | None = None, once_summary: bool = False,
             runtimes: dict[str, str] | None = None, workdir: Path | None = None) -> int:
    """Run the demo; the exit status."""
    from hil.junction import JunctionError
    from hil.junction_devices import FieldError
    from hil.junction_gateway import GatewayRunError
    from hil.scenario import ScenarioError, load_scenario

    console = Console()
    if once_summary and duration is None:
        duration = 20.0
    try:
        scenario = load_scenario(DEMO_SCENARIO).with_runtimes(runtimes or {})
    except ScenarioError as error:
        console.print(f"[red]{error}[/]")
        return 2
    scenario = scenario.with_changes(duration_s=duration or FOREVER_S)
    folder = workdir or Path(tempfile.mkdtemp(prefix="citynerve-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    # Library chatter (amqtt, paho, the harness) goes to a file: the terminal is the live view's.
    logging.basicConfig(filename=str(folder / "demo.log"), level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return asyncio.run(_demo(console, scenario, folder, broker, duration, once_summary))
    except KeyboardInterrupt:
        console.print("stopped: every node, the gateway and the broker were shut down")
        return 0
    except (ScenarioError, JunctionError, FieldError, GatewayRunError) as error:
        console.print(f"[red]{error}[/]")
        return 2
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


async def _demo(console: Console, scenario: object, folder: Path, broker: str | None,
                duration: float | None, once_summary: bool) -> int:
    from hil.demo_view import DemoView
    from hil.junction import Junction
    from hil.scenario import Scenario

    assert isinstance(scenario, Scenario)
    runtimes = ", ".join(f"{b} on {scenario.runtime_of(b)}" for b in ("cab-pico", "air-esp32", "air-pico"))
    console.rule(f"[bold]citynerve demo junction[/] ({runtimes})")
    async with Junction(scenario, workdir=folder, broker_url=broker,
                        on_event=lambda line: console.print(line, style="dim")) as junction:
        view = DemoView(junction)
        if once_summary:
            assert duration is not None
            await junction.clock.sleep_until(junction.t0_us + round(duration * 1e6))  # type: ignore[operator]
            console.print(view.summary())
            missing = [b for b in junction.nodes if not view.state.counts.get(b)]
            if missing:
                console.print(f"[red]no decoded readings from {', '.join(missing)}[/]")
                return 1
            return 0
        await view.run_live(duration_s=duration)
        console.line()  # the live view's last frame may end mid-line when output is not a terminal
        console.print(view.summary())
    return 0
