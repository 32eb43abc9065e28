"""citynerve's MQTT topic scheme, version 1.

    citynerve/v1/{site}/{gateway}/status             retained gateway state (birth / last will)
    citynerve/v1/{site}/{gateway}/health             gateway health and counters
    citynerve/v1/{site}/{gateway}/{node}/m           measurement batches of one node
    citynerve/v1/{site}/{gateway}/{node}/e           event batches of one node
    citynerve/v1/{site}/{gateway}/{node}/health      node health
    citynerve/v1/{site}/{gateway}/cmd/{node}         commands down to a node (the gateway subscribes
                                                     to cmd/+)
    citynerve/v1/{site}/{gateway}/cmd/{node}/result  the command's result, back up

Ids are single topic levels: never empty, no "/" (a level separator), no "+" or "#" (wildcards
that a publisher may not use), no control characters. A node may not be called "cmd", "status"
or "health": `.../cmd/m` would then mean both "measurements of node cmd" and "a command to node
m", and a consumer subscribing to `.../+/m` would receive commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "PREFIX",
    "RESERVED_NODE_IDS",
    "GatewayTopics",
    "ParsedTopic",
    "TopicError",
    "parse_topic",
    "validate_id",
]

PREFIX = "citynerve/v1"
RESERVED_NODE_IDS = frozenset({"cmd", "status", "health"})
# The spool's frame kinds (gateway/spool_types.py NewFrame.kind) and the node topic each goes to.
_KIND_CHANNELS = {"m": "m", "e": "e", "h": "health"}
_MAX_ID_CHARS = 64


class TopicError(ValueError):
    """`value` cannot be a `what` (site, gateway or node id; or a topic) for `reason`."""

    def __init__(self, what: str, value: str, reason: str) -> None:
        self.what = what
        self.value = value
        self.reason = reason
        super().__init__(f"{what} {value!r}: {reason}")


def validate_id(what: str, value: str) -> str:
    """Return `value` if it can be the single topic level `what`; else raise TopicError."""
    if not isinstance(value, str) or not value:
        raise TopicError(what, str(value), "must be a non-empty string")
    for bad, why in (("/", "is the MQTT level separator"), ("+", "is an MQTT wildcard"),
                     ("#", "is an MQTT wildcard")):  # fmt: skip
        if bad in value:
            raise TopicError(what, value, f"contains {bad!r}, which {why}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise TopicError(what, value, "contains a control character")
    if value.startswith("$"):
        raise TopicError(what, value, "starts with '$', which brokers reserve for their own topics")
    if len(value) > _MAX_ID_CHARS:
        raise TopicError(what, value, f"is longer than {_MAX_ID_CHARS} characters")
    return value


def _node(node: str) -> str:
    validate_id("node id", node)
    if node in RESERVED_NODE_IDS:
        raise TopicError(
            "node id",
            node,
            f"is reserved for gateway topics ({', '.join(sorted(RESERVED_NODE_IDS))})",
        )
    return node


@dataclass(frozen=True)
class GatewayTopics:
    """The topics of one gateway at one site."""

    site: str
    gateway: str

    def __post_init__(self) -> None:
        validate_id("site id", self.site)
        validate_id("gateway id", self.gateway)

    @property
    def base(self) -> str:
        return f"{PREFIX}/{self.site}/{self.gateway}"

    @property
    def status(self) -> str:
        """Retained gateway state: the birth message, the last will, the orderly goodbye."""
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        """The gateway's own health and counters."""
        return f"{self.base}/health"

    def measurements(self, node: str) -> str:
        return f"{self.base}/{_node(node)}/m"

    def events(self, node: str) -> str:
        return f"{self.base}/{_node(node)}/e"

    def node_health(self, node: str) -> str:
        return f"{self.base}/{_node(node)}/health"

    def for_kind(self, node: str, kind: str) -> str:
        """The topic for a spool frame kind: "m" measurements, "e" events, "h" health."""
        try:
            channel = _KIND_CHANNELS[kind]
        except KeyError:
            raise TopicError(
                "frame kind", kind, f"is not one of {sorted(_KIND_CHANNELS)}"
            ) from None
        return f"{self.base}/{_node(node)}/{channel}"

    def command(self, node: str) -> str:
        return f"{self.base}/cmd/{_node(node)}"

    def command_result(self, node: str) -> str:
        return f"{self.base}/cmd/{_node(node)}/result"

    @property
    def commands_filter(self) -> str:
        """The subscription that receives every node's commands (not their results)."""
        return f"{self.base}/cmd/+"

    def command_node(self, topic: str) -> str | None:
        """The node a command topic is addressed to, or None if `topic` is not one of ours."""
        parsed = parse_topic(topic)
        if parsed is None or parsed.channel != "cmd":
            return None
        if (parsed.site, parsed.gateway) != (self.site, self.gateway):
            return None
        return parsed.node


class ParsedTopic(NamedTuple):
    """A citynerve topic taken apart; `node` is None for gateway-level topics. `channel` is one of
    "status", "health" (gateway), "m", "e", "health" (node), "cmd", "result"."""

    site: str
    gateway: str
    node: str | None
    channel: str


def parse_topic(topic: str) -> ParsedTopic | None:
    """Take a citynerve v1 topic apart; None for anything else (other prefixes, bad shapes)."""
    levels = topic.split("/")
    if len(levels) < 5 or "/".join(levels[:2]) != PREFIX or "" in levels:
        return None
    site, gateway, rest = levels[2], levels[3], levels[4:]
    match rest:
        case ["status" | "health" as channel]:
            return ParsedTopic(site, gateway, None, channel)
        case ["cmd", node]:
            return ParsedTopic(site, gateway, node, "cmd")
        case ["cmd", node, "result"]:
            return ParsedTopic(site, gateway, node, "result")
        case [node, "m" | "e" | "health" as channel] if node not in RESERVED_NODE_IDS:
            return ParsedTopic(site, gateway, node, channel)
    return None
