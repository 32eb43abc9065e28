"""deploy/citynerve-gateway.service and docs/raspberry-pi-install.md: the unit parses (systemd's own
verifier in a scratch root when it is installed, and always a key-by-key check), and the guide only
names files, commands and paths that exist and that the unit and boards.toml agree on."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "citynerve-gateway.service"
GUIDE = REPO / "docs" / "raspberry-pi-install.md"
INSTALL_ROOT = "/opt/citynerve/"
CITYNERVE = Path(sys.executable).with_name("citynerve")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}}; keys may repeat, comments and blank
    lines are skipped, a line outside a section or without "=" fails."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key), (
            f"{UNIT.name}:{number}: not a key=value line in a section: {line!r}")
        current.setdefault(key, []).append(value.strip())
    return sections


def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


def test_the_unit_has_the_keys_the_gateway_needs() -> None:
    u = unit()
    assert set(u) == {"Unit", "Service", "Install"}
    assert {"network-online.target", "time-sync.target"} <= set(words(u["Unit"]["After"]))
    assert "network-online.target" in words(u["Unit"]["Wants"])  # After= alone pulls nothing in
    s = u["Service"]
    assert s["ExecStart"] == [
        "/opt/citynerve/.venv/bin/citynerve gateway run --config /etc/citynerve/boards.toml"]
    assert s["User"] == ["citynerve"] and s["Group"] == ["citynerve"]
    assert "dialout" in words(s["SupplementaryGroups"])
    assert s["Restart"] == ["always"]
    assert s["EnvironmentFile"] == ["/etc/citynerve/gateway.env"]  # required: no "-" prefix
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/citynerve"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert s[key] == ["yes"], key
    assert s["CapabilityBoundingSet"] == [""]
    # Serial node links need /dev/tty*: no private /dev and no device allow-list.
    assert not {"PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock"} & set(s)
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_parser_refuses_what_systemd_would_not_read() -> None:
    with pytest.raises(AssertionError, match="not a key=value line"):
        parse_unit("[Service]\nExecStart /bin/true\n")
    with pytest.raises(AssertionError, match="not a key=value line"):
        parse_unit("User=x\n")


def _scratch_root(root: Path, unit_text: str) -> str:
    """A file system root for `systemd-analyze verify --root`: the standard targets, an
    executable where ExecStart points, and the unit."""
    for source in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if source.is_dir():
            target = root / "usr/lib/systemd/system"
            target.mkdir(parents=True, exist_ok=True)
            for path in source.glob("*.target"):
                shutil.copy(path, target / path.name)
            break
    exe = root / "opt/citynerve/.venv/bin/citynerve"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    return f"/etc/systemd/system/{UNIT.name}"


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the key-by-key check still ran)")
    path = _scratch_root(tmp_path, text)
    return subprocess.run([analyze, "verify", "--man=no", f"--root={tmp_path}", path],
                          capture_output=True, text=True, timeout=60)


def test_systemd_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    result = _verify(tmp_path, UNIT.read_text())
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr + result.stdout, result.stderr


def test_systemd_verify_does_catch_a_bad_value(tmp_path: Path) -> None:
    # The check above is only worth something if systemd reports what it ignores.
    result = _verify(tmp_path, UNIT.read_text().replace("ProtectSystem=strict",
                                                        "ProtectSystem=strcit"))
    assert "strcit" in result.stderr


# -- the guide ------------------------------------------------------------------------------------


def code_blocks() -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", GUIDE.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    out = []
    for block in code_blocks():
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "SUBSYSTEM==", "CITYNERVE_")):
                out.append(shlex.split(line))
    return out


def test_the_guide_names_only_files_the_checkout_has() -> None:
    text = GUIDE.read_text()
    installed = set(re.findall(r"/opt/citynerve/([\w./-]+)", text))
    repo_files = {p.rstrip(".") for p in installed if not p.startswith(".venv")}
    assert {"deploy/citynerve-gateway.service", "boards.toml", "profiles"} <= repo_files
    for relative in repo_files:
        assert (REPO / relative).exists(), f"the guide names /opt/citynerve/{relative}"
    for link in re.findall(r"\]\(([\w./-]+\.md)\)", text):
        assert (GUIDE.parent / link).is_file(), f"the guide links to {link}"


def test_the_guide_runs_citynerve_commands_that_exist() -> None:
    invoked = {tuple(argv[argv.index(w) + 1:argv.index(w) + 3])
               for argv in commands() for w in argv if w.endswith(".venv/bin/citynerve")}
    invoked.discard(("--help",))
    assert ("boards", "check") in invoked and ("cmd", "keygen") in invoked
    for sub in sorted(invoked):
        result = subprocess.run([str(CITYNERVE), *sub, "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, (sub, result.stderr)
    exec_start = shlex.split(unit()["Service"]["ExecStart"][0])
    result = subprocess.run([str(CITYNERVE), *exec_start[1:3], "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--config" in result.stdout, result.stderr


def test_the_guide_the_unit_and_boards_toml_agree_on_paths_and_ports() -> None:
    text = GUIDE.read_text()
    service = unit()["Service"]
    exec_start = shlex.split(service["ExecStart"][0])
    config = exec_start[exec_start.index("--config") + 1]
    env_file = service["EnvironmentFile"][0]
    state = service["ReadWritePaths"][0]
    argv = [" ".join(a) for a in commands()]
    # The guide installs the unit where systemd looks, and creates what the unit reads.
    assert any(a.startswith("sudo install -m 644 /opt/citynerve/deploy/citynerve-gateway.service"
                            " /etc/systemd/system/") for a in argv)
    assert f"sudo install -m 644 /opt/citynerve/boards.toml {config}" in argv
    assert f"sudo install -m 600 /dev/null {env_file}" in argv
    assert "sudo systemctl enable --now citynerve-gateway.service" in argv
    # The demo inventory's spool lives where the unit lets the service write, and its metrics
    # port is the one the guide scrapes.
    gateway = tomllib.loads((REPO / "boards.toml").read_text())["gateway"]
    assert Path(gateway["spool"]).parent == Path(state)
    assert f'spool = "{gateway["spool"]}"' in text
    assert f"curl -s http://{gateway['metrics']}/metrics" in text
    # The secrets the guide puts in the environment file are the names the gateway reads.
    from gateway.command_auth import ENV_KEY
    from gateway.mqtt_settings import ENV_PASSWORD, ENV_USERNAME
    for name in (ENV_USERNAME, ENV_PASSWORD, ENV_KEY):
        assert f"{name}=" in text, name
