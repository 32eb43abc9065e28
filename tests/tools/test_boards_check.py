"""`citynerve boards check`: the demo checks clean, every broken file in broken_boards/ gives
exactly the lines its `# expect:` comments say (line numbers included) and exit 1, unreadable files
exit 2, --json is machine-readable, and nothing the node's own boot check refuses gets through."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citynerve.boards_check import check_file, check_text
from citynerve.check_report import EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNREADABLE
from citynerve.inventory import InventoryError, board_config, load_profiles
from citynerve.json_locations import json_locations
from citynerve.toml_locations import toml_locations
from firmware.config import FatalConfigError, validate

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "boards.toml"
PROFILES = REPO / "profiles"
CORPUS = Path(__file__).resolve().parent / "broken_boards"
CITYNERVE = Path(sys.executable).parent / "citynerve"
DEMO_SUMMARY = "boards.toml: 3 boards, 6 devices, no problems"


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CITYNERVE), "boards", "check", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def problem_lines(path: Path) -> list[str]:
    """The check's lines for `path` without the summary and without the "FILE:" prefix."""
    report = check_file(path, name=path.name)
    return [p.text().removeprefix(f"{path.name}:") for p in report.problems]


def expectations(path: Path) -> list[tuple[str, str]]:
    """("exact" | "regex", text) for each leading `# expect:` / `# expect-re:` comment."""
    found = []
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            found.append(("exact", line.removeprefix("# expect: ")))
        elif line.startswith("# expect-re: "):
            found.append(("regex", line.removeprefix("# expect-re: ")))
        else:
            break
    return found


# --- the demo ----------------------------------------------------------------------------------

def test_demo_checks_clean() -> None:
    report = check_file(DEMO, name="boards.toml")
    assert [p.text() for p in report.problems] == []
    assert report.exit_code == EXIT_CLEAN
    assert report.summary() == DEMO_SUMMARY


def test_demo_checks_clean_from_the_command_line() -> None:
    proc = run_cli("boards.toml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [DEMO_SUMMARY]


def test_default_file_is_the_repository_boards_toml() -> None:
    proc = run_cli()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [DEMO_SUMMARY]


# --- the corpus of broken files ----------------------------------------------------------------

CORPUS_FILES = sorted(CORPUS.glob("*.toml"))


def test_corpus_is_big_enough_and_every_file_says_what_it_expects() -> None:
    assert len(CORPUS_FILES) >= 20
    for path in CORPUS_FILES:
        assert expectations(path), f"{path.name} has no # expect: line"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus_file_gives_exactly_its_expected_lines(path: Path) -> None:
    got = problem_lines(path)
    expected = expectations(path)
    assert len(got) == len(expected), "\n".join(got)
    for line, (kind, text) in zip(got, expected):
        if kind == "exact":
            assert line == text
        else:
            assert re.fullmatch(text, line), f"{line!r} does not match {text!r}"
    assert check_file(path).exit_code == EXIT_PROBLEMS


def test_corpus_file_from_the_command_line() -> None:
    path = CORPUS / "many_problems_one_pass.toml"
    proc = run_cli(str(path.relative_to(REPO)))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    prefix = f"{path.relative_to(REPO)}:"
    assert [line.removeprefix(prefix) for line in lines[:-1]] == [t for _, t in expectations(path)]
    assert lines[-1] == f"{path.relative_to(REPO)}: 1 board, 1 device, 4 problems"


# --- unreadable files ----------------------------------------------------------------------------

def test_toml_syntax_error_exits_2_with_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "boards.toml"
    bad.write_text('[site]\nid = "x"\n\n[[board]]\nid = "unclosed\ntype = "rp2040"\n')
    proc = run_cli(str(bad))
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        f"{bad}:5:15: not valid TOML: a string is not closed before the end of the line — fix the "
        "syntax there (a missing quote, bracket, comma or =, or a key given twice)"]


def test_duplicate_key_is_a_syntax_error() -> None:
    report = check_text('[site]\nid = "a"\nid = "b"\n', name="b.toml")
    assert report.exit_code == EXIT_UNREADABLE
    assert report.unreadable is not None
    assert (report.unreadable.line, report.unreadable.column) == (3, 9)
    assert report.lines() == ["b.toml:3:9: not valid TOML: a key is given twice — fix the syntax "
                              "there (a missing quote, bracket, comma or =, or a key given twice)"]


def test_missing_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli(str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert proc.stdout.strip() == f"{tmp_path / 'nope.toml'}: no such file — give the path to boards.toml"


# --- JSON output -------------------------------------------------------------------------------

def test_json_output_is_machine_readable() -> None:
    path = CORPUS / "shared_pin.toml"
    proc = run_cli(str(path), "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["ok"] is False and result["exit_code"] == 1
    assert (result["boards"], result["devices"], result["errors"]) == (1, 2, 1)
    [problem] = result["problems"]
    assert problem["file"] == str(path)
    assert problem["line"] == 32
    assert problem["board"] == "pico"
    assert problem["key"] == "device nb-lane1.pins"
    assert problem["severity"] == "error"
    assert problem["what"] == "GP4 is already used by bus rs485.tx (line 17)"
    assert problem["message"].startswith(f"{path}:32: board pico, device nb-lane1.pins: GP4")

    clean = json.loads(run_cli("boards.toml", "--json").stdout)
    assert clean["ok"] is True and clean["problems"] == [] and clean["unreadable"] is None


def test_json_output_of_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "b.toml"
    bad.write_text("[site\n")
    proc = run_cli(str(bad), "--json")
    assert proc.returncode == 2
    result = json.loads(proc.stdout)
    assert result["unreadable"]["line"] == 1
    assert result["unreadable"]["column"] == 6


# --- line numbers --------------------------------------------------------------------------------

def test_toml_locations_track_array_of_tables_occurrences() -> None:
    text = (
        '[site]\n'                                 # 1
        'id = "x"\n'                               # 2
        '[[board]]\n'                              # 3
        'id = "a"\n'                               # 4
        '  [[board.device]]\n'                     # 5
        '  id = "d1"\n'                            # 6
        '  [[board.device]]\n'                     # 7
        '  id = "d2"\n'                            # 8
        '  note = """\n'                           # 9
        'id = "not a key"\n'                       # 10
        '[[board]]"""\n'                           # 11
        '  pins = [\n'                             # 12
        '    1,  # id = 3\n'                       # 13
        '  ]\n'                                    # 14
        '[[board]]\n'                              # 15
        "'quoted key' = 1\n"                       # 16
        'link = { transport = "usb" }\n'           # 17
        'a.b = 2\n'                                # 18
        '  [[board.device]]\n'                     # 19
        '  address = 7\n'                          # 20
    )
    tomllib.loads(text)  # the scan assumes valid TOML
    loc = toml_locations(text)
    assert loc.line(("site", "id")) == 2
    assert loc.line(("board", 0)) == 3
    assert loc.line(("board", 0, "device", 1)) == 7
    assert loc.line(("board", 0, "device", 1, "id")) == 8
    assert loc.line(("board", 0, "device", 1, "pins")) == 12
    assert loc.line(("board", 0, "device", 1, "pins", 0)) == 12
    assert ("board", 0, "id") in loc and loc[("board", 0, "id")] == 4
    assert loc.line(("board", 1)) == 15  # the """ string did not start a board
    assert loc.line(("board", 1, "quoted key")) == 16
    assert loc.line(("board", 1, "link", "transport")) == 17  # inside an inline table
    assert loc.line(("board", 1, "a", "b")) == 18
    assert loc.line(("board", 1, "device", 0)) == 19
    assert loc.line(("board", 1, "device", 0, "address")) == 20
    assert loc.line(("nothing",)) == 1  # a missing top-level key: the start of the file


def test_json_locations() -> None:
    text = '{\n  "a": 1,\n  "list": [\n    {"x": true,\n     "y": "s"},\n    2\n  ]\n}\n'
    loc = json_locations(text)
    assert loc.line(("a",)) == 2
    assert loc.line(("list", 0)) == 4
    assert loc.line(("list", 0, "y")) == 5
    assert loc.line(("list", 1)) == 6
    assert loc.line(("list", 0, "y", "deeper")) == 5


# --- profiles ----------------------------------------------------------------------------------

@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES, folder)
    return folder


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_broken_profiles_are_reported_at_their_json_lines(profiles: Path) -> None:
    _edit(profiles / "pms5003.json", '"bauds": [9600],', '"bauds": [9600]')  # line 5
    _edit(profiles / "senseair-s8.json", '"turnaround_ms"', '"turnaroud_ms"')
    _edit(profiles / "senseair-s8.json", '"type": "u16", "scale": 1', '"type": "u24", "scale": 1')
    _edit(profiles / "sds011.json", '"profile": "sds011"', '"profile": "sds-011"')
    _edit(profiles / "nema-phase-status.json", '"name": "greens"', '"name": "green"')
    report = check_file(DEMO, profiles=profiles, name="boards.toml")
    got = [p.text().replace(f"{profiles}/", "") for p in report.problems]
    assert got == [
        "nema-phase-status.json:12: profile nema-phase-status, registers: has no phase_bitmap "
        'register for greens — add {"name": ..., "role": "phase_bitmap"} entries for them',
        "pms5003.json:5: profile pms5003: not valid JSON: a comma is missing at the end of this "
        "line — add the comma",
        'sds011.json:2: profile sds011, profile: "sds-011" does not match the file name '
        'sds011.json — write "profile": "sds011" or rename the file',
        "senseair-s8.json:8: profile senseair-s8, turnaroud_ms: unknown key — did you mean "
        "turnaround_ms?",
        "senseair-s8.json:14: profile senseair-s8, registers[co2_ppm].type: 'u24' is not one of "
        "u16, i16, u32, i32, f32, bool — use u16, i16, u32, i32 or f32 for registers, bool for "
        "coils and discrete inputs",
    ]
    assert report.exit_code == EXIT_PROBLEMS


def test_a_profile_used_twice_is_reported_once_and_unused_ones_not_at_all(profiles: Path) -> None:
    _edit(profiles / "loop-presence.json", '"name": "speed"', '"name": "speeed"')
    (profiles / "unused.json").write_text("{ not json")
    report = check_file(DEMO, profiles=profiles, name="boards.toml")
    assert [p.text().replace(f"{profiles}/", "") for p in report.problems] == [
        'loop-presence.json:15: profile loop-presence, streams[speeed].name: "speeed" is not a '
        "loop measure — use one of volume, flow, occupancy, speed, headway, gap, length (or name "
        'the measure with "field")']


def test_profile_missing_required_keys(profiles: Path) -> None:
    (profiles / "sds011.json").write_text('{\n  "profile": "sds011",\n  "bauds": [9600]\n}\n')
    report = check_file(DEMO, profiles=profiles, name="boards.toml")
    assert [p.text().replace(f"{profiles}/", "") for p in report.problems] == [
        'sds011.json:1: profile sds011, interface: missing — add "interface": "modbus-rtu"']


# --- single checks -------------------------------------------------------------------------------

HEAD = '[site]\nid = "x"\n[gateway]\nid = "g"\nbroker = "mqtt://127.0.0.1"\n'


def test_esp32_uart0_is_a_warning_and_the_file_still_passes() -> None:
    text = HEAD + (
        '[[board]]\nid = "e"\ntype = "esp32"\n'                                     # 6..8
        'link = { transport = "uart", uart = 0, tx = 1, rx = 3, baud = 115200, '    # 9
        'gateway_port = "/dev/ttyUSB0" }\n')
    report = check_text(text, name="b.toml")
    assert report.lines() == [
        "b.toml:9: warning: board e, link.uart: UART 0 is MicroPython's REPL on the ESP32: boot "
        "messages and the REPL will talk on this line — use UART 1 or 2",
        "b.toml: 1 board, 0 devices, 1 warning"]
    assert report.exit_code == EXIT_CLEAN


def test_two_any_address_devices_collide() -> None:
    text = HEAD + (
        '[[board]]\nid = "e"\ntype = "esp32"\nlink = { transport = "tcp", gateway_port = 7700 }\n'
        '[[board.bus]]\nid = "s8"\nuart = 2\ntx = 17\nrx = 35\nbaud = 9600\n'        # 10..15
        '[[board.device]]\nid = "a"\nprofile = "senseair-s8"\nbus = "s8"\naddress = 5\n'   # 16..20
        '[[board.device]]\nid = "b"\nprofile = "senseair-s8"\nbus = "s8"\naddress = 254\n')  # 21..25
    assert [p.text() for p in check_text(text, name="b.toml").problems] == [
        'b.toml:25: board e, device b.address: device a on bus "s8" (line 20) and this one both '
        "answer 254 (any address), so both would reply at once — give the one at 254 its own "
        "address 1..247"]


def test_tls_files_need_mqtts_and_metrics_must_not_take_a_node_port() -> None:
    text = ('[site]\nid = "x"\n[gateway]\nid = "g"\nbroker = "mqtt://broker"\n'
            'ca_file = "/etc/ca.pem"\nmetrics = "0.0.0.0:7700"\n'                       # 6, 7
            '[[board]]\nid = "e"\ntype = "esp32"\nlink = { transport = "tcp", gateway_port = 7700 }\n')
    assert [p.text() for p in check_text(text, name="b.toml").problems] == [
        "b.toml:6: gateway, ca_file: is set but the broker is plain mqtt:// — use an mqtts:// "
        "broker URL, or remove the TLS files",
        "b.toml:11: board e, link.gateway_port: 7700 is also the gateway's metrics port — use "
        "another port for the node link or for [gateway] metrics"]


# --- a superset of the node's own boot check ---------------------------------------------------

# Edits of the demo that the node refuses: at boot (firmware/config.py validate, or a profile
# board_config cannot find), or when the driver starts (the last two).
REFUSED_BY_NODE = [
    ("interval_s = 30 ", "interval_s = 2 "),
    ("baud = 19200", "baud = 0"),
    ('framing = "8E1"', 'framing = "7E1"'),
    ("address = 1\n", "address = 0\n"),
    ("address = 254 ", "address = 300 "),
    ('bus = "sds-uart"', 'bus = "nope"'),
    ("pins = [10, 11] ", "pins = [] "),
    ('profile = "sds011"', 'profile = "sds012"'),
    ('id = "pms-uart"\n  uart = 1\n  tx = 17\n  rx = 16\n  baud = 9600',
     'id = "pms-uart"\n  uart = 1\n  tx = 17\n  rx = 16\n  baud = 19200'),
    ('id = "sb-lane1"', 'id = "nb-lane1"'),
    ('mode = "active"\n  set_pin', 'mode = "sleepy"\n  set_pin'),
    ("detector = [1, 2] ", "detector = [1] "),
]


def _node_refuses(text: str) -> bool:
    inventory = tomllib.loads(text)
    profiles = load_profiles(PROFILES)
    for board in inventory["board"]:
        try:
            _devices, errors = validate(board_config(inventory, board["id"], profiles))
        except (InventoryError, FatalConfigError):
            return True
        if errors:
            return True
    return False


@pytest.mark.parametrize("old,new", REFUSED_BY_NODE, ids=[n for _, n in REFUSED_BY_NODE])
def test_what_the_node_refuses_does_not_pass(old: str, new: str) -> None:
    demo = DEMO.read_text()
    assert demo.count(old) >= 1, old
    text = demo.replace(old, new, 1)
    if new not in ('mode = "sleepy"\n  set_pin', "detector = [1] "):  # driver-level refusals
        assert _node_refuses(text), "the edit should be one the node's boot check refuses"
    report = check_text(text, name="boards.toml")
    assert report.exit_code == EXIT_PROBLEMS, report.lines()


def test_the_demo_is_also_clean_for_the_node() -> None:
    assert not _node_refuses(DEMO.read_text())


# --- no input makes it crash ---------------------------------------------------------------------

_VALUES = ["0", "-1", '"x"', "true", "[]", "[1, 2]", "{}", "1.5", '""', "999999", '["a"]',
           "[{a = 1}]", '"8N1"', "254", '"/"', '{ transport = "tcp" }', "1979-05-27"]
_EDITS = st.lists(st.tuples(st.sampled_from(["delete", "value", "copy"]), st.integers(0, 10_000),
                            st.integers(0, 10_000), st.sampled_from(_VALUES)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(edits=_EDITS)
def test_any_edit_of_the_demo_gives_lines_not_a_traceback(edits: list[tuple[str, int, int, str]]) -> None:
    lines = DEMO.read_text().splitlines()
    for op, i, j, value in edits:
        i %= len(lines)
        if op == "delete":
            del lines[i]
        elif op == "value" and "=" in lines[i] and not lines[i].lstrip().startswith("#"):
            lines[i] = lines[i].split("=", 1)[0] + "= " + value
        else:
            lines.insert(i, lines[j % len(lines)])
    report = check_text("\n".join(lines) + "\n", name="b.toml")
    assert report.exit_code in (EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNREADABLE)
    if report.unreadable is None:
        for problem in report.problems:
            assert problem.file != "b.toml" or 1 <= problem.line <= len(lines), problem
            assert " — " in problem.text()


# --- the gateway's own buses and devices -------------------------------------------------------

def test_gateway_devices_are_checked_like_the_gateway_plans_them() -> None:
    text = (
        '[site]\nid = "x"\n[gateway]\nid = "g"\n'                                        # 1..4
        '[[gateway.bus]]\nid = "cab"\nport = "/dev/ttyUSB0"\nbaud = 9600\n'              # 5..8
        'framing = "8N1"\ntimeout_s = 0.01\n'                                             # 9, 10
        '[[gateway.bus]]\nid = "lan"\nhost = "10.0.0.9"\nbaud = 9600\n'                  # 11..14
        '[[gateway.device]]\nid = "co2"\nprofile = "senseair-s8"\nbus = "cab"\n'         # 15..18
        'address = 254\nstream_policy = { co2 = { deadband = 1 } }\n'                    # 19, 20
        '[[gateway.device]]\nid = "pm"\nprofile = "pms5003"\nbus = "cab"\naddress = 3\n'  # 21..25
        '[[gateway.device]]\nid = "t"\nprofile = "generic-modbus-sensor"\nbus = "lam"\n'  # 26..29
        'address = 3\n')
    assert [p.text() for p in check_text(text, name="b.toml").problems] == [
        "b.toml:10: gateway, bus cab.timeout_s: device co2 (profile senseair-s8): its longest read "
        "takes 49.2 ms on the wire, longer than the 10 ms reply timeout — raise timeout_s",
        "b.toml:14: gateway, bus lan.baud: does not apply to a Modbus TCP bus — remove it",
        "b.toml:20: gateway, device co2.stream_policy.co2: co2 is not a quantity of this device — "
        "did you mean co2_ppm?",
        "b.toml:23: gateway, device pm.profile: pms5003 is a uart-frames device; the gateway polls "
        "only Modbus devices — wire it to a node instead",
        'b.toml:29: gateway, device t.bus: no [[gateway.bus]] "lam" — did you mean lan?']


def test_gateway_poll_plan_too_slow_is_reported_at_poll_ms() -> None:
    text = ('[site]\nid = "x"\n[gateway]\nid = "g"\n'
            '[[gateway.bus]]\nid = "cab"\nport = "/dev/ttyUSB0"\nbaud = 9600\nframing = "8N1"\n'  # 5..9
            '[[gateway.device]]\nid = "co2"\nprofile = "senseair-s8"\nbus = "cab"\n'             # 10..13
            'address = 254\npoll_ms = 40\n')                                                     # 14, 15
    assert [p.text() for p in check_text(text, name="b.toml").problems] == [
        'b.toml:15: gateway, device co2.poll_ms: 40 ms is too short for bus "cab" at 9600 8N1: one '
        "poll of co2 takes 49.2 ms on the wire, 9.2 ms more — set poll_ms = 50 or more, raise the "
        "bus baud rate or move a device to another bus"]


def test_profiles_folder_is_found_as_the_gateway_finds_it(tmp_path: Path) -> None:
    shutil.copytree(PROFILES, tmp_path / "profiles")
    (tmp_path / "profiles" / "sds011.json").write_text("[]")
    shutil.copy(DEMO, tmp_path / "boards.toml")
    report = check_file(tmp_path / "boards.toml", name="boards.toml")
    assert [p.text().replace(f"{tmp_path}/", "") for p in report.problems] == [
        'profiles/sds011.json:1: profile sds011: is not a JSON object — write it as {"profile": '
        '..., "interface": ...}']


def test_the_format_document_names_every_key() -> None:
    from citynerve import (
        board_check, board_device_check, gateway_devices_check, profile_check, site_gateway_check)

    doc = (REPO / "docs" / "boards-toml.md").read_text()
    tables = [board_check.BOARD_KEYS, board_check.LINK_KEYS, board_check.BUS_KEYS,
              board_device_check.DEVICE_KEYS, *board_device_check.DEVICE_KEYS_BY_INTERFACE.values(),
              *board_device_check.DEVICE_KEYS_BY_DRIVER.values(), site_gateway_check.SITE_KEYS,
              site_gateway_check.GATEWAY_KEYS, gateway_devices_check.BUS_KEYS,
              gateway_devices_check.DEVICE_KEYS, *profile_check.PROFILE_KEYS.values(),
              profile_check.REGISTER_KEYS, profile_check.STREAM_KEYS]
    missing = sorted({key for table in tables for key in table
                      if f"`{key}`" not in doc and key not in ("bus", "device", "board")})
    assert missing == []
