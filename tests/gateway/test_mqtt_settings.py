"""MQTT settings: URL rules, credentials from a private file or the environment, TLS files,
and a password that never shows in a repr or an error."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from gateway.mqtt_errors import MqttSettingsError
from gateway.mqtt_settings import (
    ENV_PASSWORD,
    ENV_USERNAME,
    Credentials,
    MqttSettings,
    credentials_from_env,
    read_credentials_file,
)
from tests.gateway.certs import TestPki, make_pki, openssl_available

SECRET = "pa55-w0rd-XYZZY"


def write_creds(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_url_defaults_and_broker_name() -> None:
    assert MqttSettings().broker == "mqtt://127.0.0.1:1883"
    tls = MqttSettings(url="mqtts://broker.example")
    assert (tls.host, tls.port, tls.tls, tls.broker) == (
        "broker.example",
        8883,
        True,
        "mqtts://broker.example:8883",
    )
    assert MqttSettings(url="mqtt://[::1]:1999").broker == "mqtt://[::1]:1999"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x", "mqtt:// or mqtts://"),
        ("mqtt://", "no host"),
        ("mqtt://x/path", "only scheme://host"),
        ("mqtt://x:99999", "not a valid URL"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(MqttSettingsError, match=message) as caught:
        MqttSettings(url=url)
    assert caught.value.source == "url"


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(MqttSettingsError, match="credentials file") as caught:
        MqttSettings(url=f"mqtt://alice:{SECRET}@host")
    assert SECRET not in str(caught.value)


def test_other_settings_are_validated() -> None:
    with pytest.raises(MqttSettingsError, match="protocol"):
        MqttSettings(protocol="4.0")  # type: ignore[arg-type]
    assert MqttSettings(protocol="v5").protocol == "5"  # type: ignore[arg-type]
    assert MqttSettings(protocol="311").protocol == "3.1.1"  # type: ignore[arg-type]
    with pytest.raises(MqttSettingsError, match="use mqtts://"):
        MqttSettings(url="mqtt://x", ca_file=Path("/ca.pem"))
    with pytest.raises(MqttSettingsError, match="without cert_file"):
        MqttSettings(url="mqtts://x", key_file=Path("/k.pem"))
    with pytest.raises(MqttSettingsError, match="keepalive"):
        MqttSettings(keepalive=0)
    with pytest.raises(MqttSettingsError, match="reconnect_min"):
        MqttSettings(reconnect_min=5, reconnect_max=1)


def test_credentials_file_is_read(tmp_path: Path) -> None:
    path = write_creds(tmp_path / "creds", f"gateway-7\n{SECRET}\n\n")
    creds = read_credentials_file(path)
    assert (creds.username, creds.password) == ("gateway-7", SECRET)
    assert str(path) in creds.source
    settings = MqttSettings.load(credentials_file=path, env={})
    assert settings.credentials == creds


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_credentials_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_creds(tmp_path / "creds", f"gw\n{SECRET}\n", mode)
    with pytest.raises(MqttSettingsError) as caught:
        read_credentials_file(path)
    message = str(caught.value)
    assert str(path) in message and f"chmod 600 {path}" in message and f"{mode:04o}" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("only-a-user\n", "exactly two lines"),
        ("a\nb\nc\n", "exactly two lines"),
        (f"\n{SECRET}\n", "empty user name"),
    ],
)
def test_malformed_credentials_file_is_refused(tmp_path: Path, text: str, reason: str) -> None:
    path = write_creds(tmp_path / "creds", text)
    with pytest.raises(MqttSettingsError, match=reason) as caught:
        read_credentials_file(path)
    assert SECRET not in str(caught.value)


def test_missing_credentials_file(tmp_path: Path) -> None:
    with pytest.raises(MqttSettingsError, match="does not exist"):
        read_credentials_file(tmp_path / "nope")


def test_credentials_from_the_environment() -> None:
    assert credentials_from_env({}) is None
    creds = credentials_from_env({ENV_USERNAME: "gw", ENV_PASSWORD: SECRET})
    assert creds is not None and (creds.username, creds.password) == ("gw", SECRET)
    with pytest.raises(MqttSettingsError, match=ENV_USERNAME):
        credentials_from_env({ENV_PASSWORD: SECRET})
    settings = MqttSettings.load(env={ENV_USERNAME: "gw", ENV_PASSWORD: SECRET})
    assert settings.credentials is not None and settings.credentials.username == "gw"


def test_a_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = write_creds(tmp_path / "creds", "from-file\nfile-pw\n")
    settings = MqttSettings.load(
        credentials_file=path, env={ENV_USERNAME: "env", ENV_PASSWORD: "x"}
    )
    assert settings.credentials is not None and settings.credentials.username == "from-file"


def test_password_is_masked_in_repr_and_str() -> None:
    settings = MqttSettings(credentials=Credentials("gw", SECRET, source="test"))
    for text in (
        repr(settings),
        str(settings),
        repr(settings.credentials),
        str(settings.credentials),
    ):
        assert SECRET not in text
        assert "'***'" in text
    assert "username='gw'" in repr(settings)


def test_plain_url_has_no_ssl_context() -> None:
    assert MqttSettings().ssl_context() is None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    if not openssl_available():
        pytest.skip("openssl CLI not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_ssl_context_loads_ca_and_client_certificate(pki: TestPki) -> None:
    settings = MqttSettings(
        url="mqtts://127.0.0.1",
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
    )
    context = settings.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    insecure = MqttSettings(
        url="mqtts://127.0.0.1", ca_file=pki.ca_cert, insecure=True
    ).ssl_context()
    assert insecure is not None
    assert not insecure.check_hostname and insecure.verify_mode == ssl.CERT_REQUIRED


def test_tls_file_errors_name_the_file(pki: TestPki, tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(MqttSettingsError, match="does not exist") as caught:
        MqttSettings(url="mqtts://h", ca_file=missing).ssl_context()
    assert str(missing) in str(caught.value)
    with pytest.raises(MqttSettingsError, match="key belongs to the certificate") as caught:
        MqttSettings(
            url="mqtts://h",
            ca_file=pki.ca_cert,
            cert_file=pki.client_cert,
            key_file=pki.other_client_key,
        ).ssl_context()
    assert str(pki.client_cert) in str(caught.value)
