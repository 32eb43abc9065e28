"""The gateway service: one asyncio process wiring the spool, node links, Modbus poller, batcher,
MQTT publisher, command path and health (DESIGN.md "Gateway").

    config = load_gateway_config("boards.toml")
    async with GatewayService(config) as service:
        await service.wait_stopped()          # until service.stop() (SIGTERM/SIGINT in the CLI)

Data path. Node frames -> NodeSession (UTC readings, duplicate drop, ACK after the spool commit) ->
spool -> Batcher (sealed cnb1/JSON batches) -> Publisher.drain, which acknowledges each batch to
the spool only after its PUBACK. The publish feed reads unacknowledged batches from the spool in
seal order, so batches a previous run left (a kill -9, a power cut) go first, byte for byte under
their original batch ids. Modbus devices wired to the gateway itself are polled and their samples
spooled as readings of [gateway] local_node.

Commands. MQTT .../cmd/{node} -> verify_command(payload) -> CMD frame -> the node's RESULT ->
.../cmd/{node}/result (JSON). Verifying (signature, expiry, nonce) is gateway/command_auth.py's
job; until a verifier is plugged in, the default `verify_command` REJECTS every command as
"command signing not configured". Retained command messages are refused before any verifier.

Health. Every health_interval_s: the gateway's counters (spool, publisher, batcher, links, poller)
on .../health, and the gateway's view of each node on .../{node}/health ("source": "gateway"; the
node's own HEALTH frames go through the spool to the same topic with "source": "node"). Health is
published only while connected: it describes now, a backlog of it helps nobody.

Shutdown (stop(), or leaving `async with`): links close first (nodes keep what is unacknowledged),
then the poller, every pending frame is sealed, the publisher gets `shutdown_grace_s` to publish
the backlog, and the spool closes. Whatever is unpublished stays in the spool for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Self

from citynerve import __version__
from gateway import fast_codec
from gateway.batcher import Batcher, BatcherSettings
from gateway.config import GatewayConfig
from gateway.modbus_poller import ModbusPoller, Sample
from gateway.mqtt_errors import BrokerError
from gateway.mqtt_publisher import Command, Publisher
from gateway.mqtt_settings import MqttSettings
from gateway.node_link import LinkError, NodeLinks
from gateway.node_session import NodeSession, StoredFrame, utc_now_ms
from gateway.readings import Measurement, pack_readings
from gateway.spool_async import AsyncSpool
from gateway.spool_errors import SpoolError
from gateway.spool_types import BatchId, SealedBatch
from gateway.topics import GatewayTopics, TopicError

__all__ = ["CommandVerifier", "GatewayService", "verify_command"]

log = logging.getLogger("gateway.service")

CommandVerifier = Callable[[bytes], tuple[bool, str, Mapping[str, Any] | None]]

PUBLISH_WINDOW = 64  # batches in flight at once
MAX_COMMANDS = 16  # commands handled at once
SAMPLE_FLUSH_S = 0.25  # Modbus samples are spooled at least this often
SAMPLE_FLUSH_COUNT = 256  # ... or once this many are waiting


def verify_command(payload: bytes) -> tuple[bool, str, Mapping[str, Any] | None]:
    """The command check hook: (ok, reason, command {"id"?, "op", "args"}). This default rejects
    every command: unsigned commands are never accepted. gateway/command_auth.py provides the
    real one (HMAC-SHA256, expiry, nonce); pass it as GatewayService(verify_command=...)."""
    return False, "command signing not configured", None


class GatewayService:
    """The running gateway; an async context manager. See the module doc."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        mqtt: MqttSettings | None = None,
        verify_command: CommandVerifier = verify_command,
        version: str = __version__,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        self.config = config
        self.mqtt = mqtt or config.mqtt_settings()
        self.verify_command = verify_command
        self.version = version
        self.shutdown_grace_s = shutdown_grace_s
        self.topics = GatewayTopics(config.site, config.gateway)
        self.gateway_boot: int | None = None
        self.spool: AsyncSpool | None = None
        self.publisher: Publisher | None = None
        self.batcher: Batcher | None = None
        self.links: NodeLinks | None = None
        self.poller: ModbusPoller | None = None
        self.metrics: Any = None  # gateway.metrics.MetricsServer when [gateway] metrics is set
        self.sessions: dict[str, NodeSession] = {}
        self.counters = {"commands_received": 0, "commands_rejected": 0, "commands_failed": 0,
                         "commands_answered": 0, "health_published": 0, "health_skipped": 0,
                         "samples_spooled": 0}
        self._sealed = asyncio.Event()
        self._draining = False
        self._stopped = asyncio.Event()
        self.failure: BaseException | None = None  # the task failure that stopped the service
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._command_tasks: set[asyncio.Task[None]] = set()
        self._command_slots = asyncio.Semaphore(MAX_COMMANDS)
        self._samples: list[Sample] = []
        self._sample_wake = asyncio.Event()
        self._sample_seq = 0
        self._sample_streams: dict[str, tuple[str, str, int | None]] = {}
        self._started_ms = utc_now_ms()
        fast_codec.install()  # cnb1 bodies packed by the msgpack C package: the same bytes

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stop(self) -> None:
        """Ask the service to stop (wait_stopped() returns; leaving `async with` shuts down)."""
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _start(self) -> None:
        cfg = self.config
        try:
            cfg.spool.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SpoolError(cfg.spool, f"its folder cannot be created ({error.strerror}); "
                                        "create it for the gateway's user or pass --spool")
        self.spool = spool = await AsyncSpool(cfg.spool, max_bytes=cfg.spool_max_bytes).__aenter__()
        # Seeded from the clock so batch ids stay unique even if the spool file is replaced.
        self.gateway_boot = await spool.next_gateway_boot(at_least=int(time.time()))
        self.batcher = Batcher(
            spool, self.topics,
            settings=BatcherSettings(
                event_window_ms=cfg.event_window_ms,
                measurement_interval_s=cfg.measurement_interval_s,
                max_readings=cfg.batch_max_readings,
                batch_format=cfg.batch_format, codec=cfg.codec),
            policy=cfg.policy_for, on_sealed=self._on_sealed)
        left = await self.batcher.load_pending()
        backlog = (await spool.stats()).unacked_batches
        log.info("gateway starting site=%s gateway=%s boot=%d version=%s spool=%s "
                 "pending_frames=%d unacked_batches=%d broker=%s", cfg.site, cfg.gateway,
                 self.gateway_boot, self.version, cfg.spool, left, backlog, self.mqtt.broker)
        self.sessions = {
            n.node: NodeSession(n.node, spool=spool, on_stored=self.batcher.note)
            for n in cfg.nodes
        }
        # Links first: nodes are served (and spooled) even while the first broker attempt runs.
        self.links = NodeLinks(cfg, self.sessions)
        await self.links.start()
        self._spawn("batcher", self.batcher.run())
        self.publisher = await Publisher(
            self.mqtt, topics=self.topics, boot_id=self.gateway_boot, version=self.version,
            status={"nodes": sorted(self.sessions)}, max_inflight=max(PUBLISH_WINDOW, 256),
        ).__aenter__()
        self._spawn("publish", self._publish())
        self._spawn("commands", self._commands())
        self._spawn("health", self._health_loop())
        if cfg.modbus:
            for plan in cfg.modbus:
                for device in plan.devices:
                    for spec in device.registers:
                        for name in spec.stream_names(device.device.id):
                            self._sample_streams[name] = (spec.unit or "", spec.kind or "gauge",
                                                          spec.dec)
            self.poller = ModbusPoller(cfg.modbus, sink=self._on_sample)
            await self.poller.start()
            self._spawn("samples", self._spool_samples())
        if cfg.metrics:
            await self._start_metrics(cfg.metrics)
        log.info("gateway running boot=%d nodes=%d modbus_buses=%d", self.gateway_boot,
                 len(self.sessions), len(cfg.modbus))

    async def _start_metrics(self, address: str) -> None:
        """The Prometheus endpoint. A metrics problem (port taken, say) is logged, not fatal: the
        data path matters more than its dashboard."""
        from gateway.metrics import MetricsError, MetricsServer, parse_metrics_address, service_health

        try:
            host, port = parse_metrics_address(address)
            self.metrics = await MetricsServer(lambda: service_health(self), host=host, port=port).__aenter__()
            log.info("metrics endpoint url=%s", self.metrics.url)
        except MetricsError as error:
            log.error("metrics endpoint not started: %s", error)

    def _spawn(self, name: str, coro: Any) -> None:
        task = asyncio.create_task(coro, name=f"gateway-{name}")
        task.add_done_callback(self._task_done)
        self._tasks[name] = task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.failure = self.failure or error
            log.error("gateway task failed task=%s error=%r; stopping", task.get_name(), error,
                      exc_info=error)
            self.stop()

    async def _cancel(self, *names: str) -> None:
        tasks = [self._tasks.pop(n) for n in names if n in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Shut down in order (see the module doc); safe to call twice."""
        self._stopped.set()
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
        if self.links is not None:
            await self.links.close()
        if self.poller is not None:
            with contextlib.suppress(Exception):
                await self.poller.close()
            self.poller = None
        await self._cancel("samples")
        if self.spool is not None and self._samples:
            await self._flush_samples()
        await self._cancel("batcher")
        if self.batcher is not None and self.spool is not None:
            with contextlib.suppress(Exception):
                await self.batcher.flush_all()
        if "publish" in self._tasks:
            self._draining = True
            self._sealed.set()
            publishing = self._tasks["publish"]
            connected = self.publisher is not None and self.publisher.connected
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(publishing),
                                       self.shutdown_grace_s if connected else 0.1)
        await self._cancel("publish", "commands", "health")
        for task in list(self._command_tasks):
            task.cancel()
        await asyncio.gather(*self._command_tasks, return_exceptions=True)
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()
            self.publisher = None
        if self.spool is not None:
            await self.spool.aclose()
            self.spool = None
        log.info("gateway stopped boot=%s", self.gateway_boot)

    # -- publishing --------------------------------------------------------------------------------

    def _on_sealed(self, _batch: SealedBatch) -> None:
        self._sealed.set()

    async def _publish(self) -> None:
        """Feed every unacknowledged batch to the publisher, oldest first, for ever (or, once
        draining, until nothing is left to feed)."""
        assert self.spool is not None and self.publisher is not None
        spool = self.spool
        fed: set[BatchId] = set()

        async def ack(batch_id: BatchId) -> None:
            try:
                await spool.acknowledge(batch_id)
            finally:
                fed.discard(batch_id)

        async def feed() -> AsyncIterator[SealedBatch]:
            last: tuple[int, ...] = (-1, -1)
            while True:
                self._sealed.clear()
                # Fed batches still here are the oldest unacknowledged ones (fed in seal
                # order), so this reads a bounded head of the spool, never the whole backlog.
                # Batch ids grow in seal order (boot ids only grow), so "after the last one
                # fed" is exact.
                batches = await spool.unacked_batches(limit=len(fed) + PUBLISH_WINDOW)
                fresh = [b for b in batches if tuple(b.batch_id) > last]
                for batch in fresh:
                    fed.add(batch.batch_id)
                    last = tuple(batch.batch_id)
                    yield batch
                if fresh:
                    continue
                if self._draining:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._sealed.wait()

        await self.publisher.drain(feed(), ack, window=PUBLISH_WINDOW)

    # -- Modbus samples ----------------------------------------------------------------------------

    def _on_sample(self, sample: Sample) -> None:
        self._samples.append(sample)
        if len(self._samples) >= SAMPLE_FLUSH_COUNT:
            self._sample_wake.set()

    async def _spool_samples(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAMPLE_FLUSH_S):
                    await self._sample_wake.wait()
            self._sample_wake.clear()
            if self._samples:
                await self._flush_samples()

    async def _flush_samples(self) -> None:
        assert self.spool is not None and self.gateway_boot is not None
        samples, self._samples = self._samples, []
        node = self.config.local_node
        measurements = []
        for s in samples:
            unit, kind, dec = self._sample_streams.get(s.stream, ("", "gauge", None))
            measurements.append(Measurement(s.stream, unit, kind, dec, s.utc_ms, s.value,
                                            s.fault))
        payload = pack_readings(node, self.gateway_boot, measurements, ())
        now = utc_now_ms()
        seq = self._sample_seq
        self._sample_seq += 1
        try:
            await self.spool.add_frame(node, self.gateway_boot, seq, "m", payload, now)
        except Exception as error:  # noqa: BLE001 - a full disk loses these samples, counted
            self.counters.setdefault("samples_lost", 0)
            self.counters["samples_lost"] += len(samples)
            log.error("modbus samples not spooled count=%d error=%s", len(samples), error)
            return
        self.counters["samples_spooled"] += len(samples)
        if self.batcher is not None:
            self.batcher.note(StoredFrame(node, "m", now, len(samples)))

    # -- commands ----------------------------------------------------------------------------------

    async def _commands(self) -> None:
        assert self.publisher is not None
        async for command in self.publisher.commands():
            self.counters["commands_received"] += 1
            await self._command_slots.acquire()
            task = asyncio.create_task(self._command(command))
            self._command_tasks.add(task)
            task.add_done_callback(self._command_done)

    def _command_done(self, task: asyncio.Task[None]) -> None:
        self._command_tasks.discard(task)
        self._command_slots.release()

    async def _command(self, command: Command) -> None:
        node = command.node
        try:
            topic = self.topics.command_result(node)
        except TopicError as error:
            self.counters["commands_rejected"] += 1
            log.warning("command rejected node=%r reason=%s", node, error)
            return
        if command.retained:
            ok, reason, parsed = False, "retained commands are refused; publish with retain=0", None
        else:
            try:
                ok, reason, parsed = self.verify_command(command.payload)
            except Exception as error:  # noqa: BLE001 - a verifier bug rejects, never accepts
                ok, reason, parsed = False, f"command check failed ({type(error).__name__})", None
        if not ok or parsed is None:
            self.counters["commands_rejected"] += 1
            log.warning("command rejected node=%s reason=%s", node, reason)
            await self._answer(topic, {"node": node, "ok": False, "error": reason})
            return
        command_id = parsed.get("id")
        op, args = parsed.get("op"), parsed.get("args", {})
        if parsed.get("node", node) != node:
            self.counters["commands_rejected"] += 1
            await self._answer(topic, {"id": command_id, "node": node, "ok": False,
                                       "error": "the command names another node than its topic"})
            return
        if not isinstance(op, str) or not isinstance(args, Mapping):
            self.counters["commands_rejected"] += 1
            await self._answer(topic, {"id": command_id, "node": node, "ok": False,
                                       "error": "a command needs op (a string) and args (a map)"})
            return
        if node not in self.sessions or self.links is None:
            self.counters["commands_rejected"] += 1
            await self._answer(topic, {"id": command_id, "node": node, "ok": False,
                                       "error": f"node {node} is not linked to this gateway"})
            return
        log.info("command sent node=%s op=%s id=%s", node, op, command_id)
        try:
            result = await self.links.command(node, op, args,
                                              timeout=self.config.command_timeout_s)
        except LinkError as error:
            self.counters["commands_failed"] += 1
            log.warning("command failed node=%s op=%s reason=%s", node, op, error.reason)
            await self._answer(topic, {"id": command_id, "node": node, "ok": False,
                                       "error": error.reason})
            return
        self.counters["commands_answered"] += 1
        answer = {"id": command_id, "node": node, "ok": bool(result.get("ok")),
                  "msg": result.get("msg")}
        if "data" in result:
            answer["data"] = result["data"]
        await self._answer(topic, answer)

    async def _answer(self, topic: str, body: Mapping[str, Any]) -> None:
        assert self.publisher is not None
        try:
            await self.publisher.publish(topic, _json(body), timeout=self.config.command_timeout_s)
        except BrokerError as error:
            log.warning("command result not published topic=%s error=%s", topic, error)

    # -- health ------------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """The gateway health document (what .../health carries)."""
        assert self.spool is not None
        stats = await self.spool.stats()
        return {
            "site": self.config.site,
            "gateway": self.config.gateway,
            "boot_id": self.gateway_boot,
            "version": self.version,
            "utc_ms": utc_now_ms(),
            "uptime_ms": utc_now_ms() - self._started_ms,
            "spool": stats.as_dict(),
            "publisher": None if self.publisher is None else self.publisher.stats().as_dict(),
            "batcher": None if self.batcher is None else self.batcher.counters.as_dict(),
            "links": None if self.links is None else self.links.stats(),
            "modbus": None if self.poller is None else {
                k: vars(v) for k, v in self.poller.counters().items()},
            "service": dict(self.counters),
        }

    async def publish_health(self) -> bool:
        """Publish gateway and per-node health now; False (and nothing sent) when offline."""
        publisher = self.publisher
        if publisher is None or not publisher.connected:
            self.counters["health_skipped"] += 1
            return False
        timeout = max(1.0, self.config.health_interval_s)
        try:
            await publisher.publish(self.topics.health, _json(await self.health()),
                                    timeout=timeout)
            for node, session in self.sessions.items():
                body = session.health()
                body["connected"] = self.links is not None and self.links.connected(node)
                body["utc_ms"] = utc_now_ms()
                await publisher.publish(self.topics.node_health(node), _json(body),
                                        timeout=timeout)
        except BrokerError as error:
            log.warning("health not published error=%s", error)
            return False
        self.counters["health_published"] += 1
        return True

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.publish_health()


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str).encode()
