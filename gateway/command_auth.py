"""Signed commands from the city brain: the wire format, its canonical bytes, signing and
verification. docs/commands.md is the specification, byte for byte; this module is its reference.

A command on `citynerve/v1/{site}/{gateway}/cmd/{node}` is one JSON object

    {"v": 1, "id": str, "node": str, "op": str, "args": {...}, "iat": int, "exp": int,
     "nonce": str, "sig": str}

signed with HMAC-SHA256 under the gateway's key over the canonical bytes of every field but "sig"
(sorted keys, no whitespace, UTF-8). Only integers, strings, booleans, null, lists and objects may
appear, and strings carry no control characters, so every language produces the same bytes.

`CommandVerifier` is sans-IO: it takes the payload and the topic's node and reads time from the
clock it was given. It checks, in this order, and counts each rejection under its reason:
size, JSON, presence of "sig", schema, signature (hmac.compare_digest, current key then the
previous one while rotation allows it), node, lifetime, not-yet-valid, expiry, the restart fence,
replay. Time and replay checks come after the signature, so an unauthenticated sender learns
nothing about them and cannot fill the nonce cache.

Restarts: the nonce cache lives in memory. Instead of persisting it, a verifier refuses every
command issued before its start plus the clock skew (reason "issued_before_start"): any command an
earlier gateway process could have accepted was issued before that instant, so none can be
replayed after a restart or a kill -9, and nothing is written to the Pi's SD card. The cost: a
command queued by the broker while the gateway was down is answered, not run, and the brain
re-signs it (the result carries "retry_at").

Keys come from a private file or CITYNERVE_COMMAND_KEY (hex or base64, >= 32 bytes). They are
never logged: `CommandKey` hides its bytes in repr, errors name the source and never its content,
and results never echo a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from gateway.topics import TopicError, validate_id

__all__ = [
    "ENV_KEY",
    "ENV_PREVIOUS_KEY",
    "ENV_PREVIOUS_UNTIL",
    "MAX_PAYLOAD_BYTES",
    "REASONS",
    "CommandError",
    "CommandFormatError",
    "CommandKey",
    "CommandKeyError",
    "CommandKeys",
    "CommandOutcome",
    "CommandVerifier",
    "NonceCache",
    "Rejection",
    "VerifiedCommand",
    "canonical_bytes",
    "key_from_env",
    "load_command_keys",
    "parse_key",
    "read_key_file",
    "result_for",
    "sign_command",
    "signature",
]

log = logging.getLogger("gateway.commands")

WIRE_VERSION = 1
MAX_PAYLOAD_BYTES = 8192
MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 1024
MAX_INT = 2**53 - 1  # integers a JavaScript brain holds exactly
MAX_DEPTH = 8
ENV_KEY = "CITYNERVE_COMMAND_KEY"
ENV_PREVIOUS_KEY = "CITYNERVE_COMMAND_KEY_PREVIOUS"
ENV_PREVIOUS_UNTIL = "CITYNERVE_COMMAND_KEY_PREVIOUS_UNTIL"

# Every rejection reason, in the order the verifier checks; each has its own counter.
REASONS: dict[str, str] = {
    "too_large": "the payload is larger than 8192 bytes",
    "not_json": "the payload is not UTF-8 JSON",
    "unsigned": "the command has no sig field",
    "schema": "a field is missing, unknown or of the wrong type",
    "bad_signature": "the signature does not match under any accepted key",
    "node_mismatch": "the body names another node than the topic",
    "lifetime_too_long": "exp - iat exceeds the gateway's maximum lifetime",
    "not_yet_valid": "iat is in the future beyond the clock skew",
    "expired": "exp has passed beyond the clock skew",
    "issued_before_start": "iat is before the gateway's start fence",
    "replayed": "this nonce was already accepted",
    "nonce_cache_full": "too many live commands to remember; refused to stay safe",
}

_FIELDS = ("v", "id", "node", "op", "args", "iat", "exp", "nonce")
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_OP_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{43}=?")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")
_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\ud800-\udfff]")
_LOG_EVERY_MS = 60_000  # unauthenticated rejections: one WARNING per reason a minute, then DEBUG


def _utc_ms() -> int:
    return time.time_ns() // 1_000_000


# -- errors -------------------------------------------------------------------------------------


class CommandError(ValueError):
    """Something about commands at `where` is unusable for `reason` (one sentence)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class CommandKeyError(CommandError):
    """The command key from `where` (a file or variable, never its content) cannot be used."""


class CommandFormatError(CommandError):
    """A command given to `sign_command` would not verify: `where` names the field."""


# -- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class CommandKey:
    """An HMAC key and where it came from; repr and str never show the bytes."""

    secret: bytes
    source: str = "given"

    def __post_init__(self) -> None:
        if not MIN_KEY_BYTES <= len(self.secret) <= MAX_KEY_BYTES:
            raise CommandKeyError(self.source, f"holds {len(self.secret)} bytes; a command key "
                                  f"needs {MIN_KEY_BYTES}..{MAX_KEY_BYTES} random bytes")

    @property
    def fingerprint(self) -> str:
        """8 hex digits naming the key in logs and on both ends, revealing nothing of it."""
        return hashlib.sha256(b"citynerve command key\x00" + self.secret).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"CommandKey(fingerprint={self.fingerprint!r}, source={self.source!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class CommandKeys:
    """The current key, and during a rotation the previous key, accepted until `previous_until_ms`
    (UTC ms, exclusive)."""

    current: CommandKey
    previous: CommandKey | None = None
    previous_until_ms: int | None = None

    def __post_init__(self) -> None:
        if (self.previous is None) != (self.previous_until_ms is None):
            raise CommandKeyError("previous command key", "needs both the key and the instant "
                                  f"until which it is accepted ({ENV_PREVIOUS_UNTIL})")

    def accepted(self, now_ms: int) -> list[tuple[str, CommandKey]]:
        keys = [("current", self.current)]
        if self.previous is not None and self.previous_until_ms is not None \
                and now_ms < self.previous_until_ms:
            keys.append(("previous", self.previous))
        return keys


def parse_key(text: str, *, source: str) -> CommandKey:
    """A key from hex (tried first) or base64/base64url text; errors never quote the text."""
    text = text.strip()
    if not text:
        raise CommandKeyError(source, "is empty")
    if _HEX_RE.fullmatch(text):
        secret = bytes.fromhex(text)
    elif _B64_RE.fullmatch(text):
        padded = text.rstrip("=")
        padded += "=" * (-len(padded) % 4)
        try:
            secret = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except binascii.Error:
            raise CommandKeyError(source, "is neither hex nor base64 text") from None
    else:
        raise CommandKeyError(source, "is neither hex nor base64 text (one line, no spaces)")
    return CommandKey(secret, source)


def read_key_file(path: str | os.PathLike[str]) -> CommandKey:
    """The key in `path` (hex or base64 text), refusing a file its group or others can read."""
    path = Path(path)
    where = f"command key file {path}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CommandKeyError(where, "does not exist") from None
    except PermissionError:
        raise CommandKeyError(where, "cannot be read by this user") from None
    try:
        # Checked on the opened file, so a swap between check and read cannot slip past.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CommandKeyError(where, "is not a regular file")
        if mode & 0o077:
            raise CommandKeyError(where, f"has mode {stat.S_IMODE(mode):04o}, so its group or "
                                         "other users can read the key; make it private with: "
                                         f"chmod 600 {path}")
        raw = os.read(fd, 4 * MAX_KEY_BYTES)
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CommandKeyError(where, "is not hex or base64 text") from None
    return parse_key(text, source=where)


def key_from_env(env: Mapping[str, str] | None = None, name: str = ENV_KEY) -> CommandKey | None:
    """The key in environment variable `name`, or None if it is unset."""
    value = (os.environ if env is None else env).get(name)
    return None if value is None else parse_key(value, source=f"environment variable {name}")


def _until_ms(value: str | int | datetime | date, source: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = (date.fromisoformat(value) if len(value.strip()) == 10
                     else datetime.fromisoformat(value.strip()))
        except ValueError:
            raise CommandKeyError(source, f"{value!r} is not an ISO 8601 date or date-time") \
                from None
    if not isinstance(value, datetime):  # a date: from 00:00 UTC that day
        value = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if value.tzinfo is None:
        raise CommandKeyError(source, "has no UTC offset; write e.g. 2025-07-01T00:00Z")
    return int(value.timestamp() * 1000)


def load_command_keys(
    *,
    key_file: str | os.PathLike[str] | None = None,
    previous_key_file: str | os.PathLike[str] | None = None,
    previous_until: str | int | datetime | date | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandKeys:
    """The gateway's keys: `key_file` or CITYNERVE_COMMAND_KEY; for a rotation, the previous key
    from `previous_key_file` or CITYNERVE_COMMAND_KEY_PREVIOUS, accepted until `previous_until`
    (or CITYNERVE_COMMAND_KEY_PREVIOUS_UNTIL; UTC ms or ISO 8601)."""
    env = os.environ if env is None else env
    current = read_key_file(key_file) if key_file is not None else key_from_env(env)
    if current is None:
        raise CommandKeyError("command key", f"none configured; give a key file or set {ENV_KEY} "
                                             "(create one with: citynerve cmd keygen PATH)")
    previous = (read_key_file(previous_key_file) if previous_key_file is not None
                else key_from_env(env, ENV_PREVIOUS_KEY))
    until_source = "previous_until" if previous_until is not None else ENV_PREVIOUS_UNTIL
    until = previous_until if previous_until is not None else env.get(ENV_PREVIOUS_UNTIL)
    return CommandKeys(current, previous,
                       None if until is None else _until_ms(until, until_source))


# -- canonical form and signing -----------------------------------------------------------------


def canonical_bytes(command: Mapping[str, Any]) -> bytes:
    """The signed bytes: every field but "sig", sorted keys, no whitespace, UTF-8, non-ASCII as
    is (docs/commands.md, "Canonical bytes")."""
    body = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _mac(secret: bytes, command: Mapping[str, Any]) -> bytes:
    return hmac.new(secret, canonical_bytes(command), hashlib.sha256).digest()


def signature(key: CommandKey, command: Mapping[str, Any]) -> str:
    """base64url (no padding) of HMAC-SHA256(key, canonical_bytes(command))."""
    return base64.urlsafe_b64encode(_mac(key.secret, command)).rstrip(b"=").decode("ascii")


def _value_problem(value: object, where: str, depth: int) -> str | None:
    """The first value that breaks the rules that make canonical bytes portable, or None."""
    if depth > MAX_DEPTH:
        return f"{where} nests deeper than {MAX_DEPTH} levels"
    if isinstance(value, dict):
        for k, v in value.items():
            if not _KEY_RE.fullmatch(k):
                return f"{where or 'the command'} has a key that is not 1..64 of A-Z a-z 0-9 _ . -"
            problem = _value_problem(v, f"{where}.{k}" if where else k, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problem = _value_problem(v, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
    elif isinstance(value, str):
        if _CONTROL_RE.search(value):
            return f"{where} holds a control character or a lone surrogate"
    elif isinstance(value, float):
        return f"{where} is a fraction or exponent; numbers must be integers"
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -MAX_INT <= value <= MAX_INT:
            return f"{where} is outside -(2^53-1)..2^53-1"
    elif value is not None and not isinstance(value, bool):
        return f"{where} is not a JSON value"
    return None


def _schema_problem(obj: Mapping[str, Any]) -> str | None:
    """One sentence naming the first field at fault (never quoting a value), or None."""
    problem = _value_problem({k: v for k, v in obj.items() if k != "sig"}, "", 0)
    if problem:
        return problem
    unknown = sorted(set(obj) - set(_FIELDS) - {"sig"})
    if unknown:  # the walk above has checked the keys, so quoting one is safe
        return f"unknown field {unknown[0]!r}; a command has exactly {', '.join(_FIELDS)}, sig"
    for name in _FIELDS:
        if name not in obj:
            return f"field {name!r} is missing"
    v, ident, node, op, args = obj["v"], obj["id"], obj["node"], obj["op"], obj["args"]
    if type(v) is not int or v != WIRE_VERSION:
        return f"field 'v' must be {WIRE_VERSION}"
    if not isinstance(ident, str) or not 1 <= len(ident) <= 64:
        return "field 'id' must be a string of 1..64 characters"
    if not isinstance(node, str):
        return "field 'node' must be a string"
    try:
        validate_id("node id", node)
    except TopicError as error:
        return f"field 'node' is not a node id: it {error.reason}"
    if not isinstance(op, str) or not _OP_RE.fullmatch(op):
        return "field 'op' must be 1..32 of a-z 0-9 _ starting with a letter"
    if not isinstance(args, dict):
        return "field 'args' must be an object"
    for name in ("iat", "exp"):
        if type(obj[name]) is not int or obj[name] < 0:
            return f"field {name!r} must be a whole number of UTC milliseconds"
    if obj["exp"] <= obj["iat"]:
        return "field 'exp' must be later than 'iat'"
    if not isinstance(obj["nonce"], str) or not _NONCE_RE.fullmatch(obj["nonce"]):
        return "field 'nonce' must be 16..64 of A-Z a-z 0-9 _ -"
    return None


def sign_command(
    key: CommandKey,
    *,
    node: str,
    op: str,
    args: Mapping[str, Any] | None = None,
    now_ms: int,
    lifetime_ms: int = 60_000,
    command_id: str | None = None,
    nonce: str | None = None,
) -> bytes:
    """The signed wire payload of a command issued at `now_ms` and valid for `lifetime_ms`; a new
    random id and nonce unless given. CommandFormatError if it would not pass the schema."""
    command: dict[str, Any] = {
        "v": WIRE_VERSION,
        "id": command_id if command_id is not None else secrets.token_hex(8),
        "node": node,
        "op": op,
        "args": dict(args or {}),
        "iat": now_ms,
        "exp": now_ms + lifetime_ms,
        "nonce": nonce if nonce is not None else secrets.token_urlsafe(16),
    }
    problem = _schema_problem(command)
    if problem:
        raise CommandFormatError("command to sign", problem)
    command["sig"] = signature(key, command)
    return json.dumps(command, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedCommand:
    """A command whose signature, time window and nonce passed; `key` is "current" or
    "previous". It holds no signature."""

    id: str
    node: str
    op: str
    args: dict[str, Any]
    iat_ms: int
    exp_ms: int
    nonce: str
    key: str = "current"


@dataclass(frozen=True)
class Rejection:
    """Why a command was not accepted: `reason` (a REASONS code) and one sentence."""

    reason: str
    msg: str
    id: str | None = None
    node: str | None = None
    retry_at: int | None = None  # issued_before_start: the earliest iat the gateway will accept

    ok = False


@dataclass(frozen=True)
class CommandOutcome:
    """What became of an accepted command (the node's answer, a policy refusal, a timeout), for
    `result_for`. `reason` is "ok" when `ok`, else a short code."""

    id: str
    ok: bool
    msg: str
    reason: str = ""
    data: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.reason:
            object.__setattr__(self, "reason", "ok" if self.ok else "failed")


class NonceCache:
    """Nonces of accepted commands, each held until its `until_ms`; at most `max_entries` live at
    once. Full means refuse (never forget a live nonce, which would let it be replayed)."""

    def __init__(self, *, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise CommandError("NonceCache max_entries", "must be at least 1")
        self.max_entries = max_entries
        self._until: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._until)

    def purge(self, now_ms: int) -> None:
        while self._heap and self._heap[0][0] < now_ms:
            _, nonce = heapq.heappop(self._heap)
            self._until.pop(nonce, None)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._until

    def add(self, nonce: str, until_ms: int, now_ms: int) -> bool:
        """Remember `nonce` until `until_ms`; False (nothing stored) when the cache is full."""
        self.purge(now_ms)
        if len(self._until) >= self.max_entries:
            return False
        self._until[nonce] = until_ms
        heapq.heappush(self._heap, (until_ms, nonce))
        return True


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


@dataclass(eq=False)
class CommandVerifier:
    """Checks command payloads against `keys` (docs/commands.md "Verification"); counters in
    `counters`. `accept_from_ms` defaults to the verifier's start plus `clock_skew_ms`."""

    keys: CommandKeys | CommandKey
    now: Callable[[], int] = field(default=_utc_ms, kw_only=True)
    max_lifetime_ms: int = field(default=300_000, kw_only=True)
    clock_skew_ms: int = field(default=30_000, kw_only=True)
    nonce_cache: NonceCache = field(default_factory=NonceCache, kw_only=True)
    accept_from_ms: int | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        self._keys = CommandKeys(self.keys) if isinstance(self.keys, CommandKey) else self.keys
        if self.max_lifetime_ms <= 0:
            raise CommandError("CommandVerifier max_lifetime_ms", "must be positive")
        if self.clock_skew_ms < 0:
            raise CommandError("CommandVerifier clock_skew_ms", "must not be negative")
        if self.accept_from_ms is None:
            self.accept_from_ms = self.now() + self.clock_skew_ms
        self._counts = dict.fromkeys(("accepted", "accepted_previous_key", *REASONS), 0)
        self._last_logged: dict[str, int] = {}

    @property
    def counters(self) -> dict[str, int]:
        """accepted, accepted_previous_key and one count per REASONS code, since the start."""
        return dict(self._counts)

    def _reject(self, reason: str, msg: str, obj: Mapping[str, Any] | None = None,
                now: int | None = None, *, authentic: bool = False,
                retry_at: int | None = None) -> Rejection:
        ident = node = None
        if obj is not None:
            # Echoed so the brain can match the answer; only when it is a plain short string.
            raw_id, raw_node = obj.get("id"), obj.get("node")
            if isinstance(raw_id, str) and 0 < len(raw_id) <= 64 and not _CONTROL_RE.search(raw_id):
                ident = raw_id
            if isinstance(raw_node, str) and 0 < len(raw_node) <= 64 \
                    and not _CONTROL_RE.search(raw_node):
                node = raw_node
        self._counts[reason] += 1
        level = logging.WARNING
        if not authentic:  # anyone can publish junk: do not let it flood the journal
            now = self.now() if now is None else now
            if now - self._last_logged.get(reason, -_LOG_EVERY_MS) < _LOG_EVERY_MS:
                level = logging.DEBUG
            else:
                self._last_logged[reason] = now
        log.log(level, "command %r for node %r rejected (%s): %s", ident, node, reason, msg)
        return Rejection(reason, msg, ident, node, retry_at)

    def verify(self, payload: bytes, topic_node: str) -> VerifiedCommand | Rejection:
        """Check one payload that arrived on cmd/{topic_node}."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return self._reject("too_large", f"the command is {len(payload)} bytes; the limit is "
                                             f"{MAX_PAYLOAD_BYTES}")
        try:
            obj = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates,
                             parse_constant=_refuse_constant)
        except _Duplicate:
            return self._reject("schema", "the command repeats a key")
        except (UnicodeDecodeError, ValueError, RecursionError):
            return self._reject("not_json", "the command is not UTF-8 JSON")
        if not isinstance(obj, dict):
            return self._reject("schema", "the command is not a JSON object")
        if "sig" not in obj:
            return self._reject("unsigned", "the command has no sig; every command must be signed",
                                obj)
        problem = _schema_problem(obj)
        if problem:
            return self._reject("schema", f"the command is malformed: {problem}", obj)
        sig = obj["sig"]
        if not isinstance(sig, str) or not _SIG_RE.fullmatch(sig):
            return self._reject("bad_signature", "sig is not 43 base64url characters", obj)
        given = base64.urlsafe_b64decode(sig.rstrip("=") + "=")
        now = self.now()
        matched = None
        for name, key in self._keys.accepted(now):
            if hmac.compare_digest(_mac(key.secret, obj), given) and matched is None:
                matched = name
        if matched is None:
            return self._reject("bad_signature", "the signature does not match this gateway's key",
                                obj, now)
        return self._check_authentic(obj, topic_node, now, matched)

    def _check_authentic(self, obj: dict[str, Any], topic_node: str, now: int,
                         key: str) -> VerifiedCommand | Rejection:
        iat, exp, skew = obj["iat"], obj["exp"], self.clock_skew_ms
        self.nonce_cache.purge(now)

        def reject(reason: str, msg: str, retry_at: int | None = None) -> Rejection:
            return self._reject(reason, msg, obj, now, authentic=True, retry_at=retry_at)

        if obj["node"] != topic_node:
            return reject("node_mismatch", "the command names another node than its topic")
        if exp - iat > self.max_lifetime_ms:
            return reject("lifetime_too_long", f"the command lives {exp - iat} ms; this gateway "
                                               f"accepts at most {self.max_lifetime_ms} ms")
        if iat > now + skew:
            return reject("not_yet_valid", f"the command is issued {iat - now} ms in the future; "
                                           f"check the brain's clock")
        if exp < now - skew:
            return reject("expired", f"the command expired {now - exp} ms ago")
        assert self.accept_from_ms is not None
        if iat < self.accept_from_ms:
            return reject("issued_before_start", "the command was issued before this gateway "
                                                 "started; sign it again", self.accept_from_ms)
        if obj["nonce"] in self.nonce_cache:
            return reject("replayed", "this command's nonce was already used")
        # Held until the last instant the expiry check would still let the command through.
        if not self.nonce_cache.add(obj["nonce"], exp + skew, now):
            return reject("nonce_cache_full", f"{self.nonce_cache.max_entries} commands are still "
                                              "live; try again when some have expired")
        self._counts["accepted"] += 1
        if key == "previous":
            self._counts["accepted_previous_key"] += 1
        log.info("command %r for node %r accepted: %s (%s key)", obj["id"], obj["node"], obj["op"],
                 key)
        return VerifiedCommand(obj["id"], obj["node"], obj["op"], obj["args"], iat, exp,
                               obj["nonce"], key)


# -- results ------------------------------------------------------------------------------------


class Outcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def msg(self) -> str: ...


def result_for(outcome: Outcome, *, command_id: str | None = None,
               now_ms: int | None = None) -> bytes:
    """The JSON answered on cmd/{node}/result: v, id, ok, reason, msg, and t (gateway UTC ms),
    retry_at and data when there are some. Never a key or a signature."""
    ident = getattr(outcome, "id", None) or command_id
    result: dict[str, Any] = {"v": WIRE_VERSION, "id": ident, "ok": bool(outcome.ok),
                              "reason": outcome.reason, "msg": outcome.msg}
    if now_ms is not None:
        result["t"] = now_ms
    retry_at = getattr(outcome, "retry_at", None)
    if retry_at is not None:
        result["retry_at"] = retry_at
    data = getattr(outcome, "data", None)
    if data is not None:
        result["data"] = dict(data)
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8")
