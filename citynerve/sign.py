"""`citynerve cmd`: make a command key, sign a command, send one and wait for its result.

For an operator at the cabinet and for tests; the city brain signs the same way (docs/commands.md).
The key comes from --key-file (private: mode 600) or CITYNERVE_COMMAND_KEY and is never printed;
`keygen` prints only the key's fingerprint, which the gateway logs too, so both ends can be matched.

    citynerve cmd keygen /etc/citynerve/command.key
    citynerve cmd sign cab-pico set_interval -a interval_s=60 --key-file command.key
    citynerve cmd send cab-pico ping --key-file command.key --broker mqtt://127.0.0.1:1883

This module imports asyncio and the MQTT client only inside `send`, so registering the sub-app
keeps `citynerve --help` fast.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import typer

from gateway.command_auth import (
    ENV_KEY,
    CommandError,
    CommandKey,
    key_from_env,
    read_key_file,
    sign_command,
)

__all__ = ["app", "load_key", "parse_args", "sign"]

app = typer.Typer(
    name="cmd",
    help="Signed commands for a gateway: make a key, sign a command, send it, wait for the result.",
    no_args_is_help=True,
    add_completion=False,
)

_KEY_FILE = typer.Option(None, "--key-file", "-k", help=f"The gateway's command key (mode 600); "
                                                        f"default: ${ENV_KEY}.")
_ARG = typer.Option([], "--arg", "-a", help="An argument KEY=VALUE, repeatable; VALUE is read "
                                            "as JSON (60, true, \"x\") or else as a string.")
_ARGS_JSON = typer.Option(None, "--args", help="All arguments as one JSON object.")
_LIFETIME = typer.Option(60, "--lifetime", min=1, max=300, help="Seconds the command stays valid.")
_ID = typer.Option(None, "--id", help="The command id (default: random).")


def load_key(key_file: Path | None) -> CommandKey:
    """The key from `key_file`, else from CITYNERVE_COMMAND_KEY; CommandError if neither works."""
    key = read_key_file(key_file) if key_file is not None else key_from_env()
    if key is None:
        raise CommandError("command key", f"none given; pass --key-file or set {ENV_KEY}")
    return key


def parse_args(pairs: list[str], args_json: str | None = None) -> dict[str, Any]:
    """Command arguments from `--args` JSON and KEY=VALUE pairs (pairs win)."""
    args: dict[str, Any] = {}
    if args_json:
        try:
            loaded = json.loads(args_json)
        except ValueError:
            raise CommandError("--args", "is not valid JSON") from None
        if not isinstance(loaded, dict):
            raise CommandError("--args", "must be a JSON object")
        args.update(loaded)
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--arg {pair!r}", "must be KEY=VALUE")
        try:
            args[name] = json.loads(text)
        except ValueError:
            args[name] = text
    return args


def sign(key: CommandKey, *, node: str, op: str, args: dict[str, Any] | None = None,
         lifetime_s: int = 60, command_id: str | None = None, now_ms: int | None = None) -> bytes:
    """The signed wire payload, issued now (or at `now_ms`)."""
    return sign_command(key, node=node, op=op, args=args,
                        now_ms=time.time_ns() // 1_000_000 if now_ms is None else now_ms,
                        lifetime_ms=lifetime_s * 1000, command_id=command_id)


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"citynerve cmd: {error}", err=True)
    return typer.Exit(2)


@app.command()
def keygen(
    path: Path = typer.Argument(..., help="Where to write the new key (created with mode 600)."),
) -> None:
    """Write a new random 32-byte command key as hex; refuses to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _fail(CommandError(str(path), "exists already; move it away first")) from None
    except OSError as error:
        raise _fail(CommandError(str(path), f"cannot be created ({error.strerror})")) from None
    key = CommandKey(secrets.token_bytes(32), str(path))
    with os.fdopen(fd, "w") as fh:
        fh.write(key.secret.hex() + "\n")
    typer.echo(f"wrote a new command key to {path} (fingerprint {key.fingerprint})")


@app.command("sign")
def sign_cmd(
    node: str = typer.Argument(..., help="The node the command is for."),
    op: str = typer.Argument(..., help="The operation: ping, set_interval, reboot, ..."),
    arg: list[str] = _ARG,
    args_json: str | None = _ARGS_JSON,
    key_file: Path | None = _KEY_FILE,
    lifetime: int = _LIFETIME,
    command_id: str | None = _ID,
) -> None:
    """Print a signed command (one line of JSON) for cmd/NODE."""
    try:
        payload = sign(load_key(key_file), node=node, op=op, args=parse_args(arg, args_json),
                       lifetime_s=lifetime, command_id=command_id)
    except CommandError as error:
        raise _fail(error) from None
    sys.stdout.buffer.write(payload + b"\n")


async def _send(payload: bytes, *, node: str, command_id: str, broker: str,
                credentials_file: Path | None, site: str, gateway: str,
                wait: float) -> bytes | None:
    import aiomqtt

    from gateway.mqtt_settings import MqttSettings
    from gateway.topics import GatewayTopics

    import asyncio

    settings = MqttSettings.load(credentials_file=credentials_file, url=broker)
    creds = settings.credentials
    topics = GatewayTopics(site, gateway)
    async with aiomqtt.Client(settings.host, settings.port, timeout=wait,
                              username=creds.username if creds else None,
                              password=creds.password if creds else None,
                              tls_context=settings.ssl_context()) as client:
        # Subscribed before publishing, so even an instant answer is not missed.
        await client.subscribe(topics.command_result(node), qos=1)
        await client.publish(topics.command(node), payload, qos=1)
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages:
                    body = bytes(message.payload)  # type: ignore[arg-type]
                    try:
                        answer = json.loads(body)
                    except ValueError:
                        continue
                    if isinstance(answer, dict) and answer.get("id") == command_id:
                        return body
        except TimeoutError:
            return None
    return None


@app.command()
def send(
    node: str = typer.Argument(..., help="The node the command is for."),
    op: str = typer.Argument(..., help="The operation: ping, set_interval, reboot, ..."),
    arg: list[str] = _ARG,
    args_json: str | None = _ARGS_JSON,
    key_file: Path | None = _KEY_FILE,
    lifetime: int = _LIFETIME,
    command_id: str | None = _ID,
    broker: str | None = typer.Option(None, "--broker", help="mqtt://host:port (default: the "
                                                             "inventory's gateway broker)."),
    credentials_file: Path | None = typer.Option(None, "--credentials-file",
                                          help="Broker user name and password (mode 600)."),
    site: str | None = typer.Option(None, "--site", help="Site id (default: the inventory's)."),
    gateway: str | None = typer.Option(None, "--gateway",
                                       help="Gateway id (default: the inventory's)."),
    boards: Path | None = typer.Option(None, "--boards",
                                       help="The inventory (default: boards.toml)."),
    wait: float = typer.Option(10.0, "--wait", min=0.1, help="Seconds to wait for the result."),
) -> None:
    """Sign a command, publish it on cmd/NODE and print the gateway's result.

    Exit 0 when the command succeeded, 1 when it was refused or failed, 2 on a usage, key or
    broker error, 3 when no result came in time.
    """
    try:
        if broker is None or site is None or gateway is None:
            from citynerve.inventory import DEFAULT_BOARDS, InventoryError, load_inventory

            try:
                inventory = load_inventory(boards or DEFAULT_BOARDS)
            except InventoryError as error:
                raise CommandError("--boards", str(error)) from None
            site = site or inventory.get("site", {}).get("id")
            gateway = gateway or inventory.get("gateway", {}).get("id")
            broker = broker or inventory.get("gateway", {}).get("broker")
        if not (broker and site and gateway):
            raise CommandError("send", "needs --broker, --site and --gateway (or an inventory "
                                       "that names them)")
        import asyncio

        command_id = command_id or secrets.token_hex(8)
        payload = sign(load_key(key_file), node=node, op=op, args=parse_args(arg, args_json),
                       lifetime_s=lifetime, command_id=command_id)
        result = asyncio.run(_send(payload, node=node, command_id=command_id, broker=broker,
                                   credentials_file=credentials_file, site=site, gateway=gateway,
                                   wait=wait))
    except (CommandError, ValueError) as error:  # MqttSettingsError and TopicError are ValueErrors
        raise _fail(error) from None
    except Exception as error:  # noqa: BLE001 - aiomqtt.MqttError: one sentence, not a traceback
        raise _fail(CommandError(f"broker {broker}", f"{type(error).__name__}: {error}")) from None
    if result is None:
        typer.echo(f"no result for command {command_id} within {wait:g} s", err=True)
        raise typer.Exit(3)
    sys.stdout.buffer.write(result + b"\n")
    ok = json.loads(result).get("ok") is True
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":
    app()
