"""`citynerve gateway run`: the gateway service from a boards.toml, until SIGTERM or SIGINT.

    citynerve gateway run --config /etc/citynerve/boards.toml [--broker URL] [--spool PATH]
                          [--log-format text|json] [--log-level info]

An invalid file is refused before anything starts: every problem is printed (file:line, board,
key, fix) and the exit status is 2 (also for a TCP port that cannot be bound). A broker that
refuses our credentials or certificates at the first attempt exits 3; a broker that is merely down
does not stop the gateway (the spool keeps the data). A spool file that cannot be used exits 4; a
service task that fails stops the gateway with status 1. Logs go to stderr as key=value text or JSON lines; they never carry credentials.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
import time
from pathlib import Path

import typer

gateway_app = typer.Typer(
    name="gateway",
    help="The junction gateway: node links, spool, batches to MQTT, commands.",
    no_args_is_help=True,
    add_completion=False,
)

_FIELD = re.compile(r"(\w+)=(\S+)")
EXIT_CONFIG = 2
EXIT_BROKER = 3
EXIT_SPOOL = 4
EXIT_FAILED = 1


class JsonLines(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg and the msg's key=value pairs as fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        body: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        for key, value in _FIELD.findall(message):
            body.setdefault(key, value.rstrip(":;,."))
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, separators=(",", ":"))


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Route every logger to stderr in `log_format` ("text": key=value lines; "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        formatter = logging.Formatter("ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s "
                                      "logger=%(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho/aiomqtt chatter stays at warning: the publisher reports what matters in a sentence.
    for noisy in ("paho", "aiomqtt", "pymodbus", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _command_hook(config_path: Path, key_file: Path | None) -> object | None:
    """The signed-command check when a key is configured (--command-key-file or
    CITYNERVE_COMMAND_KEY), else None: the service's default refuses every command."""
    import os

    from gateway.command_auth import load_command_keys
    from gateway.command_gate import make_verify, node_devices

    if key_file is None and not os.environ.get("CITYNERVE_COMMAND_KEY"):
        return None
    keys = load_command_keys(key_file=key_file)
    return make_verify(keys, node_devices(str(config_path)))


async def _serve(config_path: Path, broker: str | None, spool: Path | None,
                 command_key_file: Path | None = None) -> int:
    from gateway.config import ConfigError, load_gateway_config
    from gateway.mqtt_errors import BrokerConnectError, MqttSettingsError
    from gateway.node_link import LinkError
    from gateway.service import GatewayService
    from gateway.spool_errors import SpoolError

    log = logging.getLogger("gateway.cli")
    try:
        config = load_gateway_config(config_path, spool=spool)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return EXIT_CONFIG
    try:
        mqtt = config.mqtt_settings(broker=broker)
    except MqttSettingsError as error:
        print(f"{config_path}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    from gateway.command_auth import CommandKeyError

    try:
        hook = _command_hook(config_path, command_key_file)
    except CommandKeyError as error:
        print(f"command key: {error}", file=sys.stderr)
        return EXIT_CONFIG
    extra = {} if hook is None else {"verify_command": hook}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failed = False
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with GatewayService(config, mqtt=mqtt, **extra) as service:
            waiter = asyncio.create_task(stop.wait())
            stopped = asyncio.create_task(service.wait_stopped())
            await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopped.cancel()
            log.info("gateway stopping reason=%s", "signal" if stop.is_set() else "failure")
            failed = service.failure is not None
    except (BrokerConnectError, MqttSettingsError) as error:
        log.error("%s", error)
        return EXIT_BROKER
    except LinkError as error:
        log.error("%s", error)
        return EXIT_CONFIG
    except SpoolError as error:
        log.error("%s", error)
        return EXIT_SPOOL
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    # A task failure exits non-zero so that systemd (Restart=on-failure) starts us again.
    return EXIT_FAILED if failed else 0


@gateway_app.command("run")
def run(
    config: Path = typer.Option(Path("boards.toml"), "--config", help="The junction's boards.toml."),
    broker: str = typer.Option(None, "--broker", help="Broker URL, overriding broker in the gateway table."),
    spool: Path = typer.Option(None, "--spool", help="Spool file, overriding spool in the gateway table."),
    log_format: str = typer.Option("text", "--log-format", help="text (key=value) or json."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    command_key_file: Path = typer.Option(
        None, "--command-key-file",
        help="The per-gateway HMAC key for signed commands (mode 600); or set CITYNERVE_COMMAND_KEY. "
             "Without one every command is refused."),
) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter("must be debug, info, warning or error", param_hint="--log-level")
    configure_logging(log_format, log_level)
    raise typer.Exit(asyncio.run(_serve(config, broker, spool, command_key_file)))
