"""Signed commands: the doc's worked examples, every rejection with its counter and its result,
the restart fence, key files and rotation, secrets kept out of logs and errors, and the `citynerve
cmd` tool run as a real process (sign; send through a real mosquitto to a verifying gateway)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway import command_policy
from gateway.command_auth import (
    ENV_KEY,
    ENV_PREVIOUS_KEY,
    ENV_PREVIOUS_UNTIL,
    MAX_PAYLOAD_BYTES,
    REASONS,
    CommandFormatError,
    CommandKey,
    CommandKeyError,
    CommandKeys,
    CommandOutcome,
    CommandVerifier,
    NonceCache,
    Rejection,
    VerifiedCommand,
    canonical_bytes,
    load_command_keys,
    parse_key,
    read_key_file,
    result_for,
    sign_command,
    signature,
)
from gateway.topics import GatewayTopics
from hil.broker import Mosquitto, mosquitto_executable

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "commands.md"
KEY = CommandKey(bytes(range(32)))
OTHER_KEY = CommandKey(bytes(range(100, 132)))
T0 = 1_750_000_000_000
NONCE = "q3Vb1qYp0G8l6Zr2xK4wTg"


class Clock:
    """A settable UTC-milliseconds clock."""

    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> CommandVerifier:
    return CommandVerifier(KEY, now=clock, accept_from_ms=0)


def command(**fields: Any) -> dict[str, Any]:
    """A valid command dict (unsigned) with `fields` replaced."""
    base: dict[str, Any] = {"v": 1, "id": "c-1", "node": "cab-pico", "op": "set_interval",
                            "args": {"interval_s": 60}, "iat": T0, "exp": T0 + 60_000,
                            "nonce": NONCE}
    base.update(fields)
    return base


def signed(key: CommandKey = KEY, **fields: Any) -> dict[str, Any]:
    cmd = command(**fields)
    cmd["sig"] = signature(key, cmd)
    return cmd


def wire(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def only_counter(verifier: CommandVerifier, name: str) -> None:
    counts = verifier.counters
    assert counts[name] == 1, counts
    assert sum(counts.values()) == 1, counts


# -- the doc's worked examples --------------------------------------------------------------------


def doc_blocks() -> dict[str, str]:
    """Fenced blocks of docs/commands.md that carry a name after their language."""
    text = DOC.read_text(encoding="utf-8")
    return {m[1]: m[2] for m in re.finditer(r"^```\w+ ([\w-]+)\n(.*?)\n```$", text, re.M | re.S)}


@pytest.mark.parametrize("example", ["example-1", "example-2"])
def test_the_docs_worked_example_verifies_against_the_docs_signature(example: str) -> None:
    blocks = doc_blocks()
    key = parse_key(blocks["test-key"], source="docs/commands.md")
    assert key.secret == bytes(range(32))
    payload = blocks[f"{example}-wire"].encode("utf-8")
    obj = json.loads(payload)
    assert canonical_bytes(obj) == blocks[f"{example}-canonical"].encode("utf-8")
    assert signature(key, obj) == blocks[f"{example}-sig"] == obj["sig"]
    verifier = CommandVerifier(key, now=Clock(obj["iat"]), accept_from_ms=0)
    verified = verifier.verify(payload, obj["node"])
    assert isinstance(verified, VerifiedCommand), verified
    assert (verified.id, verified.op, verified.args) == (obj["id"], obj["op"], obj["args"])


def test_the_docs_hmac_length_and_fingerprint_are_right() -> None:
    blocks = doc_blocks()
    canonical = blocks["example-1-canonical"].encode()
    tag = hmac.new(bytes(range(32)), canonical, hashlib.sha256)
    assert tag.hexdigest() == blocks["example-1-hmac"]
    assert f"Its canonical bytes ({len(canonical)} bytes of ASCII)" in DOC.read_text()
    assert f"fingerprint is `{KEY.fingerprint}`" in DOC.read_text()
    # The non-ASCII example really writes ü as UTF-8, not as an escape.
    assert "Süd".encode() in blocks["example-2-canonical"].encode() and "\\u00fc" not in \
        blocks["example-2-canonical"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed")
def test_the_docs_javascript_signer_gives_the_same_signatures() -> None:
    blocks = doc_blocks()
    script = blocks["canonical-js"] + (
        "\nconst key = Buffer.from(process.argv[1], 'hex');"
        "\nfor (const line of process.argv.slice(2)) console.log(sign(key, JSON.parse(line)));\n"
    )
    wires = [blocks["example-1-wire"], blocks["example-2-wire"],
             wire(signed(args={"list": [3, -1, {"b": True, "a": None}], "s": "a\\b\"c é"}))
             .decode()]
    out = subprocess.run(["node", "-e", script, blocks["test-key"], *wires], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert out == [json.loads(w)["sig"] for w in wires]


# -- acceptance -----------------------------------------------------------------------------------


def test_a_signed_command_verifies_once(verifier: CommandVerifier) -> None:
    payload = sign_command(KEY, node="cab-pico", op="set_interval", args={"interval_s": 60},
                           now_ms=T0, command_id="c-42")
    verified = verifier.verify(payload, "cab-pico")
    assert isinstance(verified, VerifiedCommand)
    assert (verified.id, verified.node, verified.op, verified.args, verified.key) == (
        "c-42", "cab-pico", "set_interval", {"interval_s": 60}, "current")
    assert verified.exp_ms - verified.iat_ms == 60_000
    only_counter(verifier, "accepted")


def test_field_order_and_spacing_on_the_wire_do_not_matter(verifier: CommandVerifier) -> None:
    obj = signed()
    reordered = json.dumps(dict(reversed(list(obj.items()))), indent=2).encode()
    assert isinstance(verifier.verify(reordered, "cab-pico"), VerifiedCommand)


def test_the_edges_of_the_time_window_are_accepted(clock: Clock) -> None:
    verifier = CommandVerifier(KEY, now=clock, accept_from_ms=0)
    skew = verifier.clock_skew_ms
    edges = [
        signed(nonce="edge-expiry-0000", iat=T0 - 90_000, exp=T0 - skew),
        signed(nonce="edge-future-0000", iat=T0 + skew, exp=T0 + skew + 1),
        signed(nonce="edge-lifetime-00", iat=T0, exp=T0 + verifier.max_lifetime_ms),
    ]
    for obj in edges:
        assert isinstance(verifier.verify(wire(obj), "cab-pico"), VerifiedCommand), obj
    assert verifier.counters["accepted"] == 3


def test_an_exactly_8192_byte_command_is_accepted(verifier: CommandVerifier) -> None:
    obj = signed(args={"pad": ""})
    pad = MAX_PAYLOAD_BYTES - len(wire(obj))
    obj = signed(args={"pad": "x" * pad})
    payload = wire(obj)
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert isinstance(verifier.verify(payload, "cab-pico"), VerifiedCommand)


# -- every rejection, its counter and its result --------------------------------------------------


def _tampered() -> bytes:
    obj = signed()
    obj["args"]["interval_s"] = 5
    return wire(obj)


def _flipped_sig() -> bytes:
    obj = signed()
    obj["sig"] = ("A" if obj["sig"][0] != "A" else "B") + obj["sig"][1:]
    return wire(obj)


def _oversize() -> bytes:
    obj = signed(args={"pad": ""})
    return wire(signed(args={"pad": "x" * (MAX_PAYLOAD_BYTES + 1 - len(wire(obj)))}))


def _without_sig() -> bytes:
    obj = command()
    return wire(obj)


REJECTIONS: list[tuple[str, Callable[[], bytes], str, str | None]] = [
    # (case, payload, reason, id echoed in the result)
    ("unsigned", _without_sig, "unsigned", "c-1"),
    ("bad-signature", _flipped_sig, "bad_signature", "c-1"),
    ("sig-not-base64url", lambda: wire({**command(), "sig": "not a signature"}), "bad_signature",
     "c-1"),
    ("tampered-args", _tampered, "bad_signature", "c-1"),
    ("wrong-key", lambda: wire(signed(OTHER_KEY)), "bad_signature", "c-1"),
    ("expired", lambda: wire(signed(iat=T0 - 100_000, exp=T0 - 30_001)), "expired", "c-1"),
    ("future", lambda: wire(signed(iat=T0 + 30_001, exp=T0 + 60_000)), "not_yet_valid", "c-1"),
    ("lifetime-too-long", lambda: wire(signed(exp=T0 + 300_001)), "lifetime_too_long", "c-1"),
    ("node-mismatch", lambda: wire(signed(node="air-esp32")), "node_mismatch", "c-1"),
    ("malformed-json", lambda: b'{"v":1,"id":', "not_json", None),
    ("not-utf8", lambda: b'{"v":1,"id":"\xff"}', "not_json", None),
    ("deep-nesting", lambda: b"[" * 5000, "not_json", None),
    ("nan", lambda: wire(command()).replace(b'"interval_s": 60', b'"interval_s": NaN'),
     "not_json", None),
    ("oversize", _oversize, "too_large", None),
    ("not-an-object", lambda: b"[1, 2]", "schema", None),
    ("duplicate-key", lambda: wire(signed()).replace(b'{"v": 1,', b'{"v": 1, "op": "reboot",'),
     "schema", None),
    ("fraction", lambda: wire(signed(args={"interval_s": 60.0})), "schema", "c-1"),
    ("unknown-field", lambda: wire({**signed(), "kid": "k1"}), "schema", "c-1"),
    ("missing-field", lambda: wire({k: v for k, v in signed().items() if k != "nonce"}), "schema",
     "c-1"),
    ("short-nonce", lambda: wire(signed(nonce="abc")), "schema", "c-1"),
    ("control-char", lambda: wire(signed(args={"s": "a\nb"})), "schema", "c-1"),
    ("exp-before-iat", lambda: wire(signed(exp=T0 - 1)), "schema", "c-1"),
    ("bool-version", lambda: wire(signed(v=True)), "schema", "c-1"),
]


@pytest.mark.parametrize(("payload", "reason", "echoed"),
                         [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_each_rejection_is_counted_and_answered(
    verifier: CommandVerifier, payload: Callable[[], bytes], reason: str, echoed: str | None
) -> None:
    data = payload()
    rejection = verifier.verify(data, "cab-pico")
    assert isinstance(rejection, Rejection), rejection
    assert rejection.reason == reason, rejection
    assert reason in REASONS
    only_counter(verifier, reason)
    answer = json.loads(result_for(rejection, now_ms=T0))
    assert answer == {"v": 1, "id": echoed, "ok": False, "reason": reason, "msg": rejection.msg,
                      "t": T0}
    assert rejection.msg and "\n" not in rejection.msg
    sig = re.search(rb'"sig": ?"([^"]+)"', data)
    if sig:
        assert sig[1] not in result_for(rejection), "a result must not echo the signature"


def test_a_replayed_nonce_is_refused_until_the_command_expires(
    verifier: CommandVerifier, clock: Clock
) -> None:
    payload = wire(signed())
    assert isinstance(verifier.verify(payload, "cab-pico"), VerifiedCommand)
    again = verifier.verify(payload, "cab-pico")
    assert isinstance(again, Rejection) and again.reason == "replayed"
    # The same nonce in a differently signed command (new id) is a replay too.
    other = verifier.verify(wire(signed(id="c-2")), "cab-pico")
    assert isinstance(other, Rejection) and other.reason == "replayed"
    assert verifier.counters["replayed"] == 2
    assert json.loads(result_for(again))["reason"] == "replayed"
    # Once exp + skew has passed, the nonce is forgotten and the expiry check takes over.
    clock.t = T0 + 60_000 + verifier.clock_skew_ms + 1
    late = verifier.verify(payload, "cab-pico")
    assert isinstance(late, Rejection) and late.reason == "expired"
    assert len(verifier.nonce_cache) == 0


def test_a_full_nonce_cache_refuses_rather_than_forgets(clock: Clock) -> None:
    verifier = CommandVerifier(KEY, now=clock, accept_from_ms=0,
                               nonce_cache=NonceCache(max_entries=2))
    for n in range(2):
        assert isinstance(verifier.verify(wire(signed(nonce=f"nonce-{n:011d}")), "cab-pico"),
                          VerifiedCommand)
    full = verifier.verify(wire(signed(nonce="nonce-99999999999")), "cab-pico")
    assert isinstance(full, Rejection) and full.reason == "nonce_cache_full"
    # The remembered nonces are still refused: nothing was evicted to make room.
    replay = verifier.verify(wire(signed(nonce="nonce-00000000000")), "cab-pico")
    assert isinstance(replay, Rejection) and replay.reason == "replayed"
    clock.t = T0 + 60_000 + verifier.clock_skew_ms + 1  # both expired: room again
    fresh = signed(nonce="nonce-fresh-00000", iat=clock.t, exp=clock.t + 1000)
    assert isinstance(verifier.verify(wire(fresh), "cab-pico"), VerifiedCommand)


# -- restarts -------------------------------------------------------------------------------------


def test_a_restarted_gateway_refuses_commands_issued_before_it_started(clock: Clock) -> None:
    payload = wire(signed())
    clock.t = T0 - 60_000
    first = CommandVerifier(KEY, now=clock)  # started a minute before the command
    clock.t = T0
    assert isinstance(first.verify(payload, "cab-pico"), VerifiedCommand)
    clock.t = T0 + 2_000  # kill -9 and a restart: the nonce cache is gone
    second = CommandVerifier(KEY, now=clock)
    assert second.accept_from_ms == clock.t + second.clock_skew_ms
    replay = second.verify(payload, "cab-pico")
    assert isinstance(replay, Rejection) and replay.reason == "issued_before_start"
    assert replay.retry_at == second.accept_from_ms
    only_counter(second, "issued_before_start")
    answer = json.loads(result_for(replay, now_ms=clock.t))
    assert answer["retry_at"] == second.accept_from_ms and answer["ok"] is False
    # Signed again at retry_at (the brain's clock may lead by up to the skew), it is accepted.
    fresh = signed(nonce="after-restart-000", iat=replay.retry_at, exp=replay.retry_at + 60_000)
    assert isinstance(second.verify(wire(fresh), "cab-pico"), VerifiedCommand)


# -- keys and rotation ----------------------------------------------------------------------------


def test_the_previous_key_is_accepted_only_until_its_date(clock: Clock) -> None:
    keys = CommandKeys(OTHER_KEY, KEY, previous_until_ms=T0 + 1)
    verifier = CommandVerifier(keys, now=clock, accept_from_ms=0)
    old = verifier.verify(wire(signed(KEY)), "cab-pico")
    assert isinstance(old, VerifiedCommand) and old.key == "previous"
    new = verifier.verify(wire(signed(OTHER_KEY, nonce="new-key-nonce-00")), "cab-pico")
    assert isinstance(new, VerifiedCommand) and new.key == "current"
    assert verifier.counters["accepted_previous_key"] == 1
    clock.t = T0 + 1
    late = verifier.verify(wire(signed(KEY, nonce="late-nonce-00000", iat=clock.t,
                                       exp=clock.t + 1000)), "cab-pico")
    assert isinstance(late, Rejection) and late.reason == "bad_signature"


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "command.key", KEY.secret.hex() + "\n", mode)
    with pytest.raises(CommandKeyError, match="chmod 600") as caught:
        read_key_file(path)
    assert str(path) in str(caught.value) and f"{mode:04o}" in str(caught.value)
    assert KEY.secret.hex() not in str(caught.value)


@pytest.mark.parametrize("text", [
    bytes(range(32)).hex(),
    bytes(range(32)).hex().upper() + "\n",
    base64.b64encode(bytes(range(32))).decode(),
    base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=") + "\n",
])
def test_key_files_hold_hex_or_base64(tmp_path: Path, text: str) -> None:
    key = read_key_file(write_key(tmp_path / "k", text))
    assert key.secret == bytes(range(32))
    assert key.source == f"command key file {tmp_path / 'k'}"


@pytest.mark.parametrize(("text", "message"), [
    ("00" * 31, "holds 31 bytes"),
    ("", "is empty"),
    ("not a key!", "neither hex nor base64"),
    ("zz" * 40 + "=====", "neither hex nor base64"),
])
def test_bad_key_files_are_refused_without_quoting_them(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(CommandKeyError, match=message) as caught:
        read_key_file(write_key(tmp_path / "k", text))
    assert not text or text not in str(caught.value)


def test_missing_and_unreadable_key_sources(tmp_path: Path) -> None:
    with pytest.raises(CommandKeyError, match="does not exist"):
        read_key_file(tmp_path / "nope")
    with pytest.raises(CommandKeyError, match="not a regular file"):
        read_key_file(tmp_path)
    with pytest.raises(CommandKeyError, match="none configured"):
        load_command_keys(env={})


def test_keys_from_the_environment_with_a_rotation() -> None:
    env = {ENV_KEY: OTHER_KEY.secret.hex(), ENV_PREVIOUS_KEY: KEY.secret.hex(),
           ENV_PREVIOUS_UNTIL: "2025-06-15T16:00:00Z"}
    keys = load_command_keys(env=env)
    assert keys.current.secret == OTHER_KEY.secret and keys.current.source.endswith(ENV_KEY)
    assert keys.previous is not None and keys.previous.secret == KEY.secret
    assert keys.previous_until_ms == T0 + 53 * 60_000 + 20_000  # T0 is 2025-06-15T15:06:40Z
    assert load_command_keys(env={**env, ENV_PREVIOUS_UNTIL: "2025-06-16"}).previous_until_ms == \
        T0 + 8 * 3600_000 + 53 * 60_000 + 20_000  # a date means 00:00 UTC
    with pytest.raises(CommandKeyError, match="UTC offset"):
        load_command_keys(env={**env, ENV_PREVIOUS_UNTIL: "2025-06-15T16:00"})
    with pytest.raises(CommandKeyError, match="needs both"):
        load_command_keys(env={ENV_KEY: KEY.secret.hex(), ENV_PREVIOUS_KEY: KEY.secret.hex()})


def test_keys_and_signatures_never_reach_logs_errors_or_results(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = {KEY.secret.hex(), base64.b64encode(KEY.secret).decode().rstrip("="),
               base64.urlsafe_b64encode(KEY.secret).decode().rstrip("=")}
    caplog.set_level(logging.DEBUG)
    verifier = CommandVerifier(KEY, now=clock, accept_from_ms=0)
    shown: list[str] = [repr(KEY), str(KEY), repr(CommandKeys(KEY, KEY, 0)), repr(verifier)]
    sigs = set()
    payloads = [wire(signed()), wire(signed()), *(make() for _, make, _, _ in REJECTIONS)]
    for payload in payloads:
        outcome = verifier.verify(payload, "cab-pico")
        if isinstance(outcome, Rejection):
            shown += [outcome.msg, result_for(outcome).decode()]
        sig = re.search(rb'"sig": ?"([^"]+)"', payload)
        if sig:
            sigs.add(sig[1].decode())
    failures: list[Callable[[], object]] = [
        lambda: read_key_file(write_key(tmp_path / "short", KEY.secret.hex()[:-2])),
        lambda: read_key_file(write_key(tmp_path / "open", KEY.secret.hex(), 0o644)),
        lambda: load_command_keys(env={ENV_KEY: KEY.secret.hex() + "!"}),
        lambda: load_command_keys(env={ENV_KEY: KEY.secret.hex(),
                                       ENV_PREVIOUS_KEY: "x" + KEY.secret.hex()}),
    ]
    for fail in failures:
        with pytest.raises(CommandKeyError) as caught:
            fail()
        shown.append(str(caught.value))
    assert len(sigs) > 10 and len(shown) > 20
    assert "rejected" in caplog.text and "accepted" in caplog.text
    everything = caplog.text + "\n".join(shown)
    for secret in secrets | sigs:
        assert secret not in everything, secret


def test_junk_floods_log_one_warning_a_minute_per_reason(
    verifier: CommandVerifier, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.commands")
    for _ in range(50):
        verifier.verify(b"junk", "cab-pico")
    clock.t += 60_000
    verifier.verify(b"junk", "cab-pico")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and verifier.counters["not_json"] == 51
    # An authentic command's rejection is always a warning.
    for _ in range(3):
        verifier.verify(wire(signed(node="air-esp32")), "cab-pico")
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 5


# -- signing and results --------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"args": {"x": 0.5}}, "must be integers"),
    ({"node": "a/b"}, "node"),
    ({"op": "Reboot"}, "'op'"),
    ({"command_id": "x" * 65}, "'id'"),
    ({"lifetime_ms": 0}, "later than 'iat'"),
    ({"nonce": "short"}, "'nonce'"),
    ({"args": {"bad key": 1}}, "key"),
])
def test_sign_command_refuses_what_would_not_verify(fields: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {"node": "cab-pico", "op": "ping", "now_ms": T0, **fields}
    with pytest.raises(CommandFormatError, match=message):
        sign_command(KEY, **kwargs)


def test_sign_command_makes_fresh_ids_and_nonces() -> None:
    a, b = (json.loads(sign_command(KEY, node="n", op="ping", now_ms=T0)) for _ in range(2))
    assert a["id"] != b["id"] and a["nonce"] != b["nonce"] and len(a["sig"]) == 43


def test_results_for_outcomes_and_policy_refusals() -> None:
    done = json.loads(result_for(CommandOutcome("c-1", True, "pong", data={"tick": 5}), now_ms=9))
    assert done == {"v": 1, "id": "c-1", "ok": True, "reason": "ok", "msg": "pong", "t": 9,
                    "data": {"tick": 5}}
    failed = json.loads(result_for(CommandOutcome("c-2", False, "device did not answer")))
    assert (failed["ok"], failed["reason"], "t" in failed) == (False, "failed", False)
    refusal = command_policy.check("write_register", {"device": "ctrl", "register": "greens",
                                                      "value": 1}, {"ctrl": {"writable": []}})
    answer = json.loads(result_for(refusal, command_id="c-3"))
    assert (answer["id"], answer["ok"], answer["reason"]) == ("c-3", False, "not_writable")


# -- the `citynerve cmd` tool as a process --------------------------------------------------------


def run_cmd(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citynerve.sign", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "160", **(env or {})})


def test_cmd_sign_output_verifies(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "command.key", KEY.secret.hex() + "\n")
    proc = run_cmd("sign", "cab-pico", "set_interval", "-a", "interval_s=60", "-a", "note=hi",
                   "--key-file", str(key_file), "--id", "op-7", "--lifetime", "30")
    assert proc.returncode == 0, proc.stderr
    payload = proc.stdout.strip().encode()
    verifier = CommandVerifier(KEY, accept_from_ms=0)  # the real clock: it was signed just now
    verified = verifier.verify(payload, "cab-pico")
    assert isinstance(verified, VerifiedCommand), verified
    assert (verified.id, verified.args) == ("op-7", {"interval_s": 60, "note": "hi"})
    assert verified.exp_ms - verified.iat_ms == 30_000
    # The same from the environment, and the wrong key does not verify.
    env_proc = run_cmd("sign", "cab-pico", "ping", env={ENV_KEY: OTHER_KEY.secret.hex()})
    assert env_proc.returncode == 0, env_proc.stderr
    refused = verifier.verify(env_proc.stdout.strip().encode(), "cab-pico")
    assert isinstance(refused, Rejection) and refused.reason == "bad_signature"


def test_cmd_sign_refuses_a_readable_key_file_without_printing_it(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "command.key", KEY.secret.hex(), 0o644)
    proc = run_cmd("sign", "cab-pico", "ping", "--key-file", str(key_file))
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr and "Traceback" not in proc.stderr
    assert KEY.secret.hex() not in proc.stderr + proc.stdout
    bad = run_cmd("sign", "cab-pico", "ping", "-a", "x=1.5", env={ENV_KEY: KEY.secret.hex()})
    assert bad.returncode == 2 and "must be integers" in bad.stderr


def test_cmd_keygen_writes_a_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / "command.key"
    proc = run_cmd("keygen", str(path))
    assert proc.returncode == 0, proc.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = read_key_file(path)
    assert len(key.secret) == 32 and key.fingerprint in proc.stdout
    assert key.secret.hex() not in proc.stdout
    again = run_cmd("keygen", str(path))
    assert again.returncode == 2 and "exists already" in again.stderr
    assert read_key_file(path).secret == key.secret


@pytest.fixture
async def broker() -> AsyncIterator[Mosquitto]:
    if mosquitto_executable() is None:
        pytest.skip("mosquitto not installed")
    async with Mosquitto() as running:
        yield running


async def test_cmd_send_reaches_a_verifying_gateway_and_prints_its_result(
    broker: Mosquitto, tmp_path: Path
) -> None:
    topics = GatewayTopics("demo-city", "jn-main-1st")
    verifier = CommandVerifier(KEY, accept_from_ms=0)
    devices = {"ctrl": {"profile": "nema-phase-status", "writable": []}}
    seen: list[VerifiedCommand | Rejection] = []
    subscribed = asyncio.Event()

    async def gateway() -> None:
        async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
            await client.subscribe(topics.commands_filter, qos=1)
            subscribed.set()
            async for message in client.messages:
                node = topics.command_node(str(message.topic))
                assert node is not None
                outcome = verifier.verify(bytes(message.payload), node)  # type: ignore[arg-type]
                seen.append(outcome)
                if isinstance(outcome, VerifiedCommand):
                    decision = command_policy.check(outcome.op, outcome.args, devices)
                    answer = (result_for(decision, command_id=outcome.id)
                              if isinstance(decision, command_policy.PolicyRefusal)
                              else result_for(CommandOutcome(outcome.id, True, "pong")))
                else:
                    answer = result_for(outcome)
                await client.publish(topics.command_result(node), answer, qos=1)

    task = asyncio.create_task(gateway())
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()

        async def send(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "citynerve.sign", "send", *args, "--broker", broker.url,
                "--site", "demo-city", "--gateway", "jn-main-1st", "--wait", "10",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", ENV_KEY: KEY.secret.hex()})
            try:
                out, err = await asyncio.wait_for(proc.communicate(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await send("cab-pico", "ping", "--id", "send-1")
        assert code == 0, err
        assert json.loads(out) == {"v": 1, "id": "send-1", "ok": True, "reason": "ok",
                                   "msg": "pong"}
        code, out, err = await send("cab-pico", "write_register", "-a", "device=ctrl",
                                    "-a", "register=greens", "-a", "value=255", "--id", "send-2")
        assert code == 1, err
        assert json.loads(out)["reason"] == "not_writable"
        assert [type(s) for s in seen] == [VerifiedCommand, VerifiedCommand]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
