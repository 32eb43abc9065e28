"""How the gateway reaches its broker: URL, client id, protocol, TLS files and credentials.

Credentials come from a file (first line the user name, second line the password; the file must
be readable by its owner only, like an ssh key) or from the environment (CITYNERVE_MQTT_USERNAME,
CITYNERVE_MQTT_PASSWORD, e.g. from a systemd credential or an EnvironmentFile). They never come
from the URL, which appears in logs and error messages. Nothing here ever prints the password:
`Credentials` and `MqttSettings` mask it in repr/str, and errors name the file, never its content.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from gateway.mqtt_errors import MqttSettingsError

__all__ = [
    "ENV_PASSWORD",
    "ENV_USERNAME",
    "Credentials",
    "MqttSettings",
    "credentials_from_env",
    "read_credentials_file",
]

ENV_USERNAME = "CITYNERVE_MQTT_USERNAME"
ENV_PASSWORD = "CITYNERVE_MQTT_PASSWORD"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_PROTOCOLS: dict[str, Literal["3.1.1", "5"]] = {
    "3.1.1": "3.1.1", "311": "3.1.1", "4": "3.1.1", "v3.1.1": "3.1.1", "mqttv311": "3.1.1",
    "5": "5", "5.0": "5", "v5": "5", "mqttv5": "5",
}  # fmt: skip
_MASK = "'***'"


@dataclass(frozen=True, repr=False)
class Credentials:
    """A user name and password for the broker; `source` says where they came from."""

    username: str
    password: str
    source: str = "given"

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={_MASK}, source={self.source!r})"

    __str__ = __repr__


def read_credentials_file(path: str | os.PathLike[str]) -> Credentials:
    """Read "username\\npassword\\n" from `path`, refusing a file others can read."""
    path = Path(path)
    where = f"credentials file {path}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise MqttSettingsError(where, "does not exist") from None
    except PermissionError:
        raise MqttSettingsError(where, "cannot be read by this user") from None
    with os.fdopen(fd, "rb") as fh:
        # Checked on the opened file, so a swap between check and read cannot slip past.
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise MqttSettingsError(where, "is not a regular file")
        if mode & 0o077:
            raise MqttSettingsError(
                where,
                f"has mode {stat.S_IMODE(mode):04o}, so its group or other users can read or "
                f"change the password; make it private with: chmod 600 {path}",
            )
        raw = fh.read(64 * 1024)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MqttSettingsError(where, "is not UTF-8 text") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != 2:
        raise MqttSettingsError(
            where,
            f"must hold exactly two lines, the user name then the password (found {len(lines)})",
        )
    username, password = lines[0].strip(), lines[1]
    if not username:
        raise MqttSettingsError(where, "has an empty user name on its first line")
    return Credentials(username, password, source=where)


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials from CITYNERVE_MQTT_USERNAME / CITYNERVE_MQTT_PASSWORD, or None if unset."""
    env = os.environ if env is None else env
    username, password = env.get(ENV_USERNAME), env.get(ENV_PASSWORD)
    if username is None and password is None:
        return None
    if not username:
        raise MqttSettingsError(
            f"environment variable {ENV_USERNAME}", f"is empty or unset while {ENV_PASSWORD} is set"
        )
    return Credentials(username, password or "", source=f"environment ({ENV_USERNAME})")


@dataclass(frozen=True, kw_only=True, repr=False)
class MqttSettings:
    """Everything needed to connect; validated on construction (MqttSettingsError).

    `insecure` skips the check that the broker's certificate names the host in `url` (paho's
    tls_insecure, mosquitto_pub's --insecure); the certificate must still chain to `ca_file`.
    """

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str | None = None  # None: the publisher derives a stable id from site and gateway
    # Seconds between PINGREQs when idle; a broker that stays silent for 1.5-2 keepalives is
    # given up (paho checks once a second). This is what catches a half-open connection.
    keepalive: int = 30
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    # MQTT 5 only: how long the broker keeps our session (subscriptions, queued commands) while
    # we are away. 3.1.1 sessions (clean_session=0) last as long as the broker's own policy.
    session_expiry: int = 86_400
    ca_file: Path | None = None  # None with mqtts://: the system's CA store
    cert_file: Path | None = None
    key_file: Path | None = None  # None: the key is in cert_file
    insecure: bool = False
    credentials: Credentials | None = field(default=None)
    connect_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    # A connection that lasted this long resets the backoff; one that drops sooner (a broker that
    # accepts then kicks us, e.g. a second gateway with our client id) keeps backing off.
    reconnect_stable: float = 10.0

    def __post_init__(self) -> None:
        scheme, _host, _port = self._split()
        protocol = _PROTOCOLS.get(str(self.protocol).strip().lower())
        if protocol is None:
            raise MqttSettingsError("protocol", f"{self.protocol!r} is not one of '3.1.1' or '5'")
        object.__setattr__(self, "protocol", protocol)
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if scheme == "mqtt" and (self.ca_file or self.cert_file or self.key_file):
            raise MqttSettingsError(
                "url", f"{self.broker} is plain mqtt:// but TLS files are set; use mqtts://"
            )
        if self.key_file is not None and self.cert_file is None:
            raise MqttSettingsError("key_file", f"{self.key_file} is set without cert_file")
        if not 1 <= self.keepalive <= 65535:
            raise MqttSettingsError("keepalive", f"{self.keepalive} s is outside 1..65535")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise MqttSettingsError("reconnect_min", "must be positive and at most reconnect_max")
        if self.connect_timeout <= 0:
            raise MqttSettingsError("connect_timeout", "must be positive")
        if self.client_id is not None and not self.client_id:
            raise MqttSettingsError("client_id", "is empty; leave it unset to derive one")

    def _split(self) -> tuple[str, str, int]:
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as error:
            raise MqttSettingsError("url", f"is not a valid URL ({error})") from None
        if parts.username is not None or parts.password is not None:
            # Do not echo the URL: it holds a password.
            raise MqttSettingsError(
                "url",
                "carries credentials; put them in a credentials file or in "
                f"{ENV_USERNAME}/{ENV_PASSWORD} instead",
            )
        if parts.scheme not in _DEFAULT_PORTS:
            raise MqttSettingsError("url", f"{self.url!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise MqttSettingsError("url", f"{self.url!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise MqttSettingsError("url", f"{self.url!r} must be only scheme://host[:port]")
        return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]

    @property
    def host(self) -> str:
        return self._split()[1]

    @property
    def port(self) -> int:
        return self._split()[2]

    @property
    def tls(self) -> bool:
        return self._split()[0] == "mqtts"

    @property
    def broker(self) -> str:
        """The broker as errors and logs name it: scheme://host:port, never credentials."""
        scheme, host, port = self._split()
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"

    @classmethod
    def load(
        cls,
        *,
        credentials_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> Self:
        """Settings with credentials from `credentials_file` if given, else the environment
        (CITYNERVE_MQTT_USERNAME / CITYNERVE_MQTT_PASSWORD), else none (anonymous)."""
        if "credentials" in settings:
            raise MqttSettingsError("credentials", "pass credentials_file or use the environment")
        credentials = (
            read_credentials_file(credentials_file)
            if credentials_file is not None
            else credentials_from_env(env)
        )
        return cls(credentials=credentials, **settings)

    def with_credentials(self, credentials: Credentials | None) -> MqttSettings:
        return replace(self, credentials=credentials)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for mqtts:// (None for mqtt://), files loaded now."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
            )
        except FileNotFoundError:
            raise MqttSettingsError(f"ca_file {self.ca_file}", "does not exist") from None
        except (ssl.SSLError, OSError) as error:
            raise MqttSettingsError(
                f"ca_file {self.ca_file}", f"is not a PEM CA certificate ({error})"
            ) from None
        if self.cert_file is not None:
            try:
                context.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
            except FileNotFoundError:
                raise MqttSettingsError(
                    f"cert_file {self.cert_file} / key_file {self.key_file}", "does not exist"
                ) from None
            except (ssl.SSLError, OSError) as error:
                raise MqttSettingsError(
                    f"cert_file {self.cert_file}",
                    f"cannot be loaded with key_file {self.key_file} ({error}); check the key "
                    "belongs to the certificate and is not encrypted",
                ) from None
        if self.insecure:
            context.check_hostname = False
        return context

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"MqttSettings({shown})"

    __str__ = __repr__
