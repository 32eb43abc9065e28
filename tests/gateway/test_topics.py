"""The v1 topic scheme: every topic the gateway uses, id validation, and parsing back."""

from __future__ import annotations

import pytest

from gateway.topics import GatewayTopics, ParsedTopic, TopicError, parse_topic, validate_id

T = GatewayTopics("riverside", "gw-1")


def test_every_topic_of_the_scheme() -> None:
    assert T.status == "citynerve/v1/riverside/gw-1/status"
    assert T.health == "citynerve/v1/riverside/gw-1/health"
    assert T.measurements("air1") == "citynerve/v1/riverside/gw-1/air1/m"
    assert T.events("sig") == "citynerve/v1/riverside/gw-1/sig/e"
    assert T.node_health("air1") == "citynerve/v1/riverside/gw-1/air1/health"
    assert T.command("sig") == "citynerve/v1/riverside/gw-1/cmd/sig"
    assert T.command_result("sig") == "citynerve/v1/riverside/gw-1/cmd/sig/result"
    assert T.commands_filter == "citynerve/v1/riverside/gw-1/cmd/+"
    assert [T.for_kind("n", k) for k in ("m", "e", "h")] == [
        T.measurements("n"),
        T.events("n"),
        T.node_health("n"),
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "non-empty"),
        ("a/b", "level separator"),
        ("a+", "wildcard"),
        ("#", "wildcard"),
        ("a\x00b", "control character"),
        ("$SYS", "reserve"),
        ("x" * 65, "longer than 64"),
    ],
)
def test_bad_ids_are_refused_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(TopicError, match="node id") as caught:
        T.measurements(value)
    assert reason in str(caught.value)
    assert caught.value.value == value
    with pytest.raises(TopicError, match="site id"):
        GatewayTopics(value, "gw")
    with pytest.raises(TopicError, match="gateway id"):
        GatewayTopics("site", value)


@pytest.mark.parametrize("node", ["cmd", "status", "health"])
def test_reserved_node_ids_are_refused(node: str) -> None:
    # ".../cmd/m" would otherwise be both node cmd's measurements and a command to node m.
    with pytest.raises(TopicError, match="reserved"):
        T.measurements(node)
    with pytest.raises(TopicError, match="reserved"):
        T.command(node)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(TopicError, match="frame kind 'x'"):
        T.for_kind("n", "x")


def test_ids_may_hold_dots_dashes_and_unicode() -> None:
    assert validate_id("node id", "pole-12.east_ü") == "pole-12.east_ü"


def test_parse_topic_round_trips_every_topic() -> None:
    cases = {
        T.status: ParsedTopic("riverside", "gw-1", None, "status"),
        T.health: ParsedTopic("riverside", "gw-1", None, "health"),
        T.measurements("n1"): ParsedTopic("riverside", "gw-1", "n1", "m"),
        T.events("n1"): ParsedTopic("riverside", "gw-1", "n1", "e"),
        T.node_health("n1"): ParsedTopic("riverside", "gw-1", "n1", "health"),
        T.command("n1"): ParsedTopic("riverside", "gw-1", "n1", "cmd"),
        T.command_result("n1"): ParsedTopic("riverside", "gw-1", "n1", "result"),
    }
    for topic, parsed in cases.items():
        assert parse_topic(topic) == parsed


@pytest.mark.parametrize(
    "topic",
    [
        "citynerve/v2/s/g/status",
        "other/v1/s/g/status",
        "citynerve/v1/s/g",
        "citynerve/v1/s/g/n1/x",
        "citynerve/v1//g/status",
        "citynerve/v1/s/g/cmd/n/result/more",
        "citynerve/v1/s/g/status/m",  # "status" is never a node
    ],
)
def test_parse_topic_rejects_other_shapes(topic: str) -> None:
    assert parse_topic(topic) is None


def test_cmd_level_is_always_a_command() -> None:
    assert parse_topic("citynerve/v1/s/g/cmd/m") == ParsedTopic("s", "g", "m", "cmd")


def test_command_node_only_for_this_gateway() -> None:
    assert T.command_node(T.command("sig")) == "sig"
    assert T.command_node(T.command_result("sig")) is None
    assert T.command_node(GatewayTopics("riverside", "gw-2").command("sig")) is None
    assert T.command_node(T.measurements("sig")) is None
