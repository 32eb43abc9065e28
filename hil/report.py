"""A scenario run's report folder: the accounting (text and JSON), what the harness did, and the
picture (timeline.svg: phases, detector actuations and air quality, fault windows shaded). The run's
own files stay beside them: truth.jsonl (ground truth), decoded.jsonl (what the subscriber
decoded), gateway/gateway.log and the gateway's boards.toml, nodes/<board>.log.
"""

from __future__ import annotations

import json
from pathlib import Path

from hil.junction import RunResult
from hil.timeline_svg import timeline_svg

__all__ = ["write_report"]


def write_report(result: RunResult, folder: Path | None = None) -> dict[str, Path]:
    """Write the report into `folder` (default: the run's work folder); the paths written."""
    folder = Path(folder or result.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    truth = result.truth
    start_ms = truth.utc_ms(truth.t0_us)
    end_ms = truth.utc_ms(truth.end_us)
    faults = [(truth.utc_ms(s), truth.utc_ms(e), kind) for s, e, kind in truth.fault_windows]
    violations = result.accounting.violations(result.scenario.expect)
    paths = {
        "accounting": folder / "accounting.txt",
        "json": folder / "accounting.json",
        "events": folder / "harness-events.txt",
        "picture": folder / "timeline.svg",
    }
    verdict = "PASS" if not violations else "FAIL: " + "; ".join(violations)
    paths["accounting"].write_text(
        f"scenario {result.scenario.name}: {result.scenario.description}\n{verdict}\n\n"
        + result.accounting.text() + "\n\nproblems:\n" + "\n".join(result.accounting.problems) + "\n")
    body = {"scenario": result.scenario.name, "runtimes": {b: i.runtime for b, i in truth.boards.items()},
            "violations": violations, "drained_s": result.drained_s, "accounting": result.accounting.as_dict()}
    paths["json"].write_text(json.dumps(body, indent=2, default=str) + "\n")
    paths["events"].write_text("\n".join(result.events) + "\n")
    runtimes = ", ".join(f"{b} {i.runtime}" for b, i in truth.boards.items())
    paths["picture"].write_text(timeline_svg(
        result.readings, start_ms=start_ms, end_ms=end_ms, faults=faults,
        title=f"citynerve scenario {result.scenario.name} ({runtimes})"))
    return paths
