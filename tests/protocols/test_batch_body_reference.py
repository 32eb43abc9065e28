"""protocols/batch_builder.py body_fields, sped up for the gateway (comprehensions, sorted() for the
order check), still gives the body the first version gave, field for field and byte for byte, on
generated batches of every shape (unsorted times, faults, shared time columns, templates)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from protocols import batch_builder
from protocols.batch_builder import Batch, body_fields, pack_body
from tests.protocols.test_batch_cnb1 import batches

# The body_fields of commit 6d1b744, verbatim but for its name.
# fmt: off

def _delta_chain(times, base):
    out = []
    prev = base
    for t in times:
        out.append(t - prev)
        prev = t
    return out


def _time_order(times):
    """Sample positions in time order (stable), or None when they already are."""
    prev = -1
    for t in times:
        if t < prev:
            # (time, position): ties keep their add order, and MicroPython's sort is not stable.
            return sorted(range(len(times)), key=lambda i: (times[i], i))
        prev = t
    return None


def _split_name(name):
    # "loop/3/occupancy" -> ("loop/3/", "occupancy"): lanes and devices of one profile then share
    # the same leaves, which a group writes once and later groups refer to.
    cut = name.rfind("/") + 1
    return name[:cut], name[cut:]


def _sorted_samples(s):
    times, values, faults = s.times, s.values, s.faults
    order = _time_order(times)
    if order is None:
        return times, values, faults
    moved = {}
    for new, old in enumerate(order):
        if old in faults:
            moved[new] = faults[old]
    return [times[i] for i in order], [values[i] for i in order], moved


def _value_column(s, values):
    if s.dec is None:
        return list(values)
    out = []
    prev = 0
    for v in values:  # delta from the previous non-faulted value; nil stays nil
        if v is None:
            out.append(None)
        else:
            out.append(v - prev)
            prev = v
    return out


def reference_body_fields(batch):
    """The body as ordered (key, value) pairs of plain lists and ints, ready to pack."""
    streams = batch.streams_with_samples()
    starts = [min(s.times) for s in streams]
    if batch.event_times:
        starts.append(min(batch.event_times))
    t0 = min(starts) if starts else 0
    by_prefix = {}
    prefixes = []
    for s in streams:
        prefix, leaf = _split_name(s.name)
        if prefix not in by_prefix:
            by_prefix[prefix] = []
            prefixes.append(prefix)
        by_prefix[prefix].append((leaf, s))
    groups = []
    templates = []  # (leaves, group index) of groups that wrote their leaves out
    seen_times = {}
    row = 0
    for prefix in prefixes:
        leaves = []
        rows = []
        for leaf, s in by_prefix[prefix]:
            leaves.append([leaf, s.unit, s.kind, s.dec])
            times, values, faults = _sorted_samples(s)
            chain = tuple(_delta_chain(times, t0))
            column = seen_times.get(chain)
            if column is None:  # else: the same instants as an earlier row, written as its index
                seen_times[chain] = row
                column = list(chain)
            entry = [column, _value_column(s, values)]
            if faults:
                pairs = []
                for i in sorted(faults):
                    pairs.append(i)
                    pairs.append(faults[i])
                entry.append(pairs)
            rows.append(entry)
            row += 1
        ref = None
        for known, index in templates:
            if known == leaves:
                ref = index
                break
        if ref is None:
            templates.append((leaves, len(groups)))
        groups.append([prefix, leaves if ref is None else ref, rows])
    fields = [("n", batch.node), ("b", batch.node_boot), ("t", t0)]
    if groups:
        fields.append(("m", groups))
    if batch.event_times:
        order = _time_order(batch.event_times)
        times, codes, params = batch.event_times, batch.event_codes, batch.event_params
        if order is not None:
            times = [times[i] for i in order]
            codes = [codes[i] for i in order]
            params = [params[i] for i in order]
        fields.append(("e", [_delta_chain(times, t0), list(codes), list(params)]))
    return fields


# fmt: on


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_body_fields_as_the_first_version_wrote_them(made: tuple[Batch, dict]) -> None:
    batch, _ = made
    fields = body_fields(batch)
    assert fields == reference_body_fields(batch)
    assert pack_body(fields) == pack_body(reference_body_fields(batch))


def test_out_of_order_samples_and_faults_take_the_slow_paths() -> None:
    batch = Batch("n", 1, [("a/x", "", "gauge", 1), ("a/y", "", "gauge", None)])
    for t, v, fault in ((30, 1.5, None), (10, None, 3), (20, 2.25, None), (10, 7.0, None)):
        batch.add_measurement("a/x", t, v, fault)
        batch.add_measurement("a/y", t, v, fault)
    batch.add_event(5, 1, 2)
    batch.add_event(3, 1, 1)
    batch.add_event(5, 1, 3)  # a tie: add order decides
    assert body_fields(batch) == reference_body_fields(batch)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_the_portable_time_order_is_the_same(made: tuple[Batch, dict]) -> None:
    """MicroPython's path (no stable sort, no operator module), run here on CPython."""
    batch, _ = made
    fast = body_fields(batch)
    saved = batch_builder._gt  # noqa: SLF001
    batch_builder._gt = None  # noqa: SLF001
    try:
        assert body_fields(batch) == fast == reference_body_fields(batch)
    finally:
        batch_builder._gt = saved  # noqa: SLF001
