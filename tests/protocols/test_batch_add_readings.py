"""Batch.add_readings (many readings in one call, for the gateway's batcher) builds the batch that
add_stream + add_measurement and add_event, reading by reading, build, and refuses the same
readings with the same errors."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.batch_builder import Batch, body_fields

NAMES = st.sampled_from(["a/x", "a/y", "b/x", "c/z"])
UNITS = st.sampled_from(["", "%", "ug/m3"])
KINDS = st.sampled_from(["gauge", "count"])
DECS = st.one_of(st.none(), st.integers(-3, 5), st.sampled_from([10, True, 1.0]))
TIMES = st.one_of(st.integers(0, 10_000), st.sampled_from([-1, 2**53, 2**53 - 1, 1.5, None]))
VALUES = st.one_of(
    st.integers(-(2**64), 2**64), st.floats(), st.sampled_from([True, None, "1", 2**60]))
FAULTS = st.one_of(st.none(), st.none(), st.integers(0, 70_000), st.sampled_from(["timeout"]))
MEASUREMENTS = st.tuples(NAMES, UNITS, KINDS, DECS, TIMES, VALUES, FAULTS)
EVENTS = st.tuples(TIMES, st.integers(-1, 300), st.one_of(st.integers(-1, 300), st.just(True)))


def one_by_one(batch: Batch, measurements: list[Any], events: list[Any]) -> list[Any]:
    refused = []
    for m in measurements:
        stream, unit, kind, dec, t_ms, value, fault = m
        try:
            batch.add_stream(stream, unit, kind, dec)
            batch.add_measurement(stream, t_ms, value, fault)
        except ValueError as error:
            refused.append((m, str(error)))
    for e in events:
        try:
            batch.add_event(*e)
        except ValueError as error:
            refused.append((e, str(error)))
    return refused


@settings(max_examples=300, deadline=None)
@given(st.lists(MEASUREMENTS, max_size=25), st.lists(EVENTS, max_size=8))
def test_add_readings_is_one_call_per_reading(measurements: list[Any], events: list[Any]) -> None:
    bulk, single = Batch("n", 1), Batch("n", 1)
    refused = [(r, str(e)) for r, e in bulk.add_readings(measurements, events)]
    assert refused == one_by_one(single, measurements, events)
    assert len(bulk) == len(single)
    assert body_fields(bulk) == body_fields(single)
