"""The MQTT side's errors: each names the broker (its URL, never a password) or the settings
source, and says in one sentence what to do.

MqttSettingsError          the MQTT settings cannot be used (`source`: file, variable or key)
BrokerError                something the broker did or did not do (`broker`, `reason`)
  BrokerConnectError       a connection attempt failed; `permanent` says whether retrying helps
    BrokerAuthError        the broker refused the credentials (or the client id)
    BrokerTlsError         the TLS session failed: certificate, CA or key mismatch
  PublishRefusedError      the broker answered a publish with a negative PUBACK (MQTT 5 only)
  PublishTimeoutError      no PUBACK within the caller's timeout
  PublisherClosedError     the publisher was shut down while the call waited
"""

from __future__ import annotations


class MqttSettingsError(ValueError):
    """The MQTT settings from `source` (a file, an environment variable, a key) are unusable."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"MQTT settings, {source}: {reason}")


class BrokerError(Exception):
    """The broker at `broker` (a URL without credentials) did not do what was asked."""

    def __init__(self, broker: str, reason: str) -> None:
        self.broker = broker
        self.reason = reason
        super().__init__(f"MQTT broker {broker}: {reason}")


class BrokerConnectError(BrokerError):
    """A connection attempt failed. `permanent` errors (credentials, certificates) will fail the
    same way until the configuration changes; the others (refused, timed out) may pass."""

    permanent: bool = False


class BrokerAuthError(BrokerConnectError):
    """The broker refused the CONNECT: bad user name or password, or not authorised."""

    permanent = True


class BrokerTlsError(BrokerConnectError):
    """The TLS handshake failed or the broker dropped the session over our certificate."""

    permanent = True


class PublishRefusedError(BrokerError):
    """The broker refused a message to `topic` with MQTT 5 reason `reason_code` (>= 0x80)."""

    def __init__(self, broker: str, *, topic: str, reason_code: int, reason_name: str) -> None:
        self.topic = topic
        self.reason_code = reason_code
        super().__init__(
            broker,
            f"refused a message to {topic!r} with reason 0x{reason_code:02X} ({reason_name}); "
            "check the broker's ACL for this gateway's user",
        )


class PublishTimeoutError(BrokerError):
    """No PUBACK for a message to `topic` within `timeout` seconds (it may still be delivered)."""

    def __init__(self, broker: str, *, topic: str, timeout: float) -> None:
        self.topic = topic
        self.timeout = timeout
        super().__init__(broker, f"no PUBACK for a message to {topic!r} within {timeout:g} s")


class PublisherClosedError(BrokerError):
    """The publisher was closed while the call was waiting; unacknowledged data stays spooled."""
