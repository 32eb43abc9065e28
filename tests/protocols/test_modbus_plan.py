"""protocols/modbus_plan.py under CPython: every wanted register is covered exactly where the plan
says, reads respect the limits and gaps, the count is minimal (against brute force on small cases),
and the bus time agrees with the frames actually built."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols import modbus_rtu as rtu
from protocols import modbus_server as server
from protocols.modbus_plan import TABLES, plan_reads
from protocols.modbus_plan_time import plan_bus_time_us
from tests.protocols.fuzz import fuzz_settings

EXAMPLES = 300
TABLE_NAMES = tuple(TABLES)


def wanted_entries(top: int = 0x10000, longest: int = 300) -> st.SearchStrategy[list]:
    entry = st.tuples(st.sampled_from(TABLE_NAMES), st.integers(0, top - 1), st.integers(1, longest))
    return st.lists(entry.filter(lambda e: e[1] + e[2] <= top), max_size=12)


OPTIONS = st.fixed_dictionaries({
    "max_gap": st.one_of(st.integers(0, 20), st.just({"holding": 3})),
    "max_quantity": st.one_of(st.none(), st.integers(1, 130), st.just({"coil": 16, "input": 4})),
    "one_register_per_request": st.booleans(),
})


def limit_for(table: str, options: dict) -> int:
    if options["one_register_per_request"]:
        return 1
    spec = rtu.READ_LIMITS[TABLES[table]]
    mq = options["max_quantity"]
    mq = mq.get(table) if isinstance(mq, dict) else mq
    return spec if mq is None else min(spec, mq)


def gap_for(table: str, options: dict) -> int:
    g = options["max_gap"]
    return g.get(table, 0) if isinstance(g, dict) else g


def memory(table: str, address: int) -> object:
    """A device whose every register holds a value derived from where it is."""
    if table in ("coil", "discrete"):
        return (address * 2654435761 + len(table)) % 7 < 3
    return (address * 40503 + TABLES[table]) & 0xFFFF


@fuzz_settings(EXAMPLES)
@given(wanted_entries(), OPTIONS)
def test_plan_covers_every_wanted_register_within_limits(wanted: list, options: dict) -> None:
    plan = plan_reads(wanted, **options)
    assert plan.wanted == [tuple(w) for w in wanted]
    for r in plan.reads:
        assert 1 <= r.count <= limit_for(r.table, options)
        assert 0 <= r.start and r.start + r.count <= 0x10000
    covered: dict[int, set[int]] = {i: set() for i in range(len(plan.reads))}
    for i, (table, address, count) in enumerate(plan.wanted):
        segs = plan.segments(i)
        at = address
        for read_index, offset, n in segs:
            r = plan.reads[read_index]
            assert r.table == table and r.start + offset == at and offset + n <= r.count
            covered[read_index].update(range(at, at + n))
            at += n
        assert at == address + count
        if count <= limit_for(table, options):
            assert len(segs) == 1, "a value that fits one read is never torn"
    gap_limits = {r: gap_for(plan.reads[r].table, options) for r in covered}
    for read_index, regs in covered.items():
        r = plan.reads[read_index]
        assert min(regs) == r.start and max(regs) == r.start + r.count - 1
        hole = 0
        for a in range(r.start, r.start + r.count):
            hole = 0 if a in regs else hole + 1
            assert hole <= gap_limits[read_index]


@fuzz_settings(EXAMPLES)
@given(wanted_entries(), OPTIONS, st.sets(st.integers(0, 11), max_size=3))
def test_extract_returns_each_wanted_value(wanted: list, options: dict, failed: set) -> None:
    plan = plan_reads(wanted, **options)
    responses = []
    for i, r in enumerate(plan.reads):
        if i in failed:
            responses.append(None)
            continue
        values = [memory(r.table, a) for a in range(r.start, r.start + r.count)]
        # Through the real frames: the response a device would send, parsed as the master does.
        req = r.request(1)
        reply = server.build_response(req, values)
        responses.append(rtu.parse_response(req, reply))
    got = plan.extract(responses)
    for i, (table, address, count) in enumerate(plan.wanted):
        if any(s[0] in failed for s in plan.segments(i)):
            assert got[i] is None
        else:
            assert got[i] == [memory(table, a) for a in range(address, address + count)]


def brute_force_reads(pieces: list[tuple[int, int]], limit: int, gap: int) -> int:
    """The fewest reads that hold these pieces, each whole, by trying every partition."""
    def ok(group: list[tuple[int, int]]) -> bool:
        start, end = min(a for a, _ in group), max(b for _, b in group)
        if end - start > limit:
            return False
        reach = start
        for a, b in sorted(group):
            if a - reach > gap:
                return False
            reach = max(reach, b)
        return True

    best = len(pieces)

    def rec(i: int, groups: list[list[tuple[int, int]]]) -> None:
        nonlocal best
        if len(groups) >= best:
            return
        if i == len(pieces):
            if all(ok(g) for g in groups):
                best = len(groups)
            return
        for g in groups:
            g.append(pieces[i])
            if max(b for _, b in g) - min(a for a, _ in g) <= limit:  # span only grows
                rec(i + 1, groups)
            g.pop()
        groups.append([pieces[i]])
        rec(i + 1, groups)
        groups.pop()

    rec(0, [])
    return best


@fuzz_settings(EXAMPLES)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 6)), min_size=1, max_size=6),
       st.integers(1, 12), st.integers(0, 5))
def test_plan_is_minimal_on_small_cases(entries: list, limit: int, gap: int) -> None:
    wanted = [("holding", a, c) for a, c in entries]
    plan = plan_reads(wanted, max_gap=gap, max_quantity=limit)
    pieces = []
    for _, a, c in wanted:  # the planner splits only entries longer than the limit
        pieces += [(s, min(s + limit, a + c)) for s in range(a, a + c, limit)]
    assume(len(pieces) <= 9)  # the brute force tries every partition
    assert len(plan.reads) == brute_force_reads(pieces, limit, gap)


@fuzz_settings(EXAMPLES)
@given(wanted_entries(top=200, longest=5))
def test_one_register_per_request(wanted: list) -> None:
    plan = plan_reads(wanted, max_gap=50, one_register_per_request=True)
    distinct = {(t, a) for t, start, n in wanted for a in range(start, start + n)}
    assert sorted((r.table, r.start) for r in plan.reads) == sorted(distinct)
    assert all(r.count == 1 for r in plan.reads)


@fuzz_settings(EXAMPLES)
@given(wanted_entries(longest=200), st.sampled_from((9600, 19200, 115200)),
       st.sampled_from(("8E1", "8N1", "8O1", "8N2")), st.integers(0, 20000))
def test_bus_time_matches_the_frames(wanted: list, baud: int, framing: str, turnaround: int) -> None:
    plan = plan_reads(wanted, max_gap=4)
    total = 0.0
    for r in plan.reads:
        req = r.request(1)
        values = [False] * r.count if r.table in ("coil", "discrete") else [0] * r.count
        reply = server.build_response(req, values)
        assert len(reply) == r.response_length()
        total += rtu.transaction_time_us(len(req), len(reply), baud, framing, turnaround)
    assert plan_bus_time_us(plan, baud, framing, turnaround) == pytest.approx(total)
    assert plan_bus_time_us(plan.reads, baud, framing, turnaround) == pytest.approx(total)


def test_empty_plan() -> None:
    plan = plan_reads([])
    assert plan.reads == [] and plan.extract([]) == [] and plan_bus_time_us(plan, 9600) == 0
