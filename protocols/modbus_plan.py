"""Read planning: the registers a device profile wants, merged into the fewest Modbus read requests.

Each wanted entry is (table, address, count) with table one of "coil", "discrete", "holding",
"input" (or its read function code 1..4). Entries of one table are merged left to right into reads
while the unwanted registers between them number at most `max_gap` and the read stays within
`max_quantity` (default the spec's limit: 2000 bits, 125 registers; application spec §6.1-6.4).
An entry is split across reads only when it is itself longer than the limit (or the device takes
one register per request), so a multi-register value is otherwise read in one piece.

Some devices answer unmapped registers with exception 02 (illegal data address), which is why gap
filling is off unless a profile sets `max_gap`.

A plan's wire time (the gateway's bus budget) is protocols/modbus_plan_time.py: a node does not
carry it.
"""

from protocols.modbus_adu import (
    ANY_ADDRESS, ILLEGAL_DATA_VALUE, MAX_UNIT, READ_LIMITS, reply_length, request_error, short_request)

TABLES = {"coil": 0x01, "discrete": 0x02, "holding": 0x03, "input": 0x04}
_TABLE_NAMES = {0x01: "coil", 0x02: "discrete", 0x03: "holding", 0x04: "input"}


class ModbusPlanError(ValueError):
    """A wanted entry or an option the planner cannot honour."""


class PlannedRead:
    """One read request of a plan: table, start, count (unpacks like a tuple)."""

    def __init__(self, table, start, count):
        self.table = table
        self.start = start
        self.count = count
        self._adu = None  # (unit, any_address, ADU) of the last request(): a poll repeats it

    @property
    def function(self):
        return TABLES[self.table]

    def request(self, unit, any_address=False):
        """The request ADU for this read at `unit` (built once per unit: a node polls the same
        read many times a second, and each build allocated ~160 bytes on MicroPython)."""
        last = self._adu
        if last is not None and last[0] == unit and last[1] == any_address:
            return last[2]
        # Only plan_reads makes PlannedReads, and it has checked their ranges: the unit is left
        # (modbus_fields.check_unit's check for a read, in one sentence).
        if not isinstance(unit, int) or not (1 <= unit <= MAX_UNIT or (any_address and unit == ANY_ADDRESS)):
            request_error("unit %r is outside 1..247 (0xFE needs any_address=True)" % (unit,),
                          ILLEGAL_DATA_VALUE)
        adu = short_request(unit, self.function, self.start, self.count)
        self._adu = (unit, any_address, adu)
        return adu

    def response_length(self):
        return reply_length((1, self.function, self.start, self.count))

    def __iter__(self):
        return iter((self.table, self.start, self.count))

    def __eq__(self, other):
        try:
            return tuple(self) == tuple(other)
        except TypeError:
            return False

    def __repr__(self):
        return "PlannedRead(%r, %d, %d)" % (self.table, self.start, self.count)


class ReadPlan:
    """`reads` (PlannedRead, by table then address) and, for each entry of `wanted` (normalised
    (table, address, count) tuples in the caller's order), the response slices that hold it."""

    def __init__(self, reads, wanted, segments):
        self.reads = reads
        self.wanted = wanted
        self._segments = segments

    def segments(self, index):
        """[(read index, offset in that read's values, count), ...] for wanted entry `index`."""
        return self._segments[index]

    def extract(self, responses):
        """For each wanted entry, its values from `responses` (one list of values per read, as
        parse_response returns them, or for a read that failed None or the exception that failed
        it); where a read the entry needs failed, that read's None or exception instead, so the
        caller reports that stream's fault instead of a number."""
        out = []
        for segs in self._segments:
            values = []
            for read_index, offset, count in segs:
                got = responses[read_index]
                if got is None or isinstance(got, Exception):
                    values = got
                    break
                values.extend(got[offset:offset + count])
            out.append(values)
        return out


def _table_name(table, where):
    if table in TABLES:
        return table
    if table in _TABLE_NAMES:
        return _TABLE_NAMES[table]
    raise ModbusPlanError("%s: table %r is not coil, discrete, holding or input" % (where, table))


def _option(option, table, default, name, least):
    value = option.get(table, default) if isinstance(option, dict) else option
    if value is None:
        return default
    if not isinstance(value, int) or value < least:
        raise ModbusPlanError("%s %r for %s must be an int >= %d" % (name, value, table, least))
    return value


def _limit(table, max_quantity, one_register_per_request):
    if one_register_per_request:
        return 1
    spec = READ_LIMITS[TABLES[table]]
    return min(spec, _option(max_quantity, table, spec, "max_quantity", 1))


def plan_reads(wanted, max_gap=0, max_quantity=None, one_register_per_request=False):
    """A ReadPlan for `wanted` [(table, address, count), ...]. `max_gap` and `max_quantity` are an
    int or a {table: int} dict; `max_quantity` is capped at the spec limit of each table."""
    wanted = list(wanted)
    norm = []
    pieces = {}
    for i in range(len(wanted)):
        try:
            entry = tuple(wanted[i])
        except TypeError:
            entry = ()
        if len(entry) != 3:
            raise ModbusPlanError("wanted entry %d, %r, is not (table, address, count)"
                                  % (i, wanted[i]))
        where = "wanted entry %d" % i
        table = _table_name(entry[0], where)
        address, count = entry[1], entry[2]
        if not isinstance(address, int) or not 0 <= address <= 0xFFFF:
            raise ModbusPlanError("%s: address %r is outside 0..65535" % (where, address))
        if not isinstance(count, int) or count < 1 or address + count > 0x10000:
            raise ModbusPlanError("%s: count %r must be >= 1 and end by address 65535"
                                  % (where, count))
        norm.append((table, address, count))
        limit = _limit(table, max_quantity, one_register_per_request)
        # Pieces no longer than the limit; a shorter entry stays whole.
        lst = pieces.setdefault(table, [])
        at = address
        while at < address + count:
            end = min(at + limit, address + count)
            lst.append((at, end, i))
            at = end
    segments = [[] for _ in norm]
    reads = []
    for table in sorted(pieces, key=TABLES.get):  # by function code: coils first, inputs last
        limit = _limit(table, max_quantity, one_register_per_request)
        gap = _option(max_gap, table, 0, "max_gap", 0)
        start = end = -1
        assigned = []
        for at, stop, i in sorted(pieces[table]):
            if start >= 0 and at <= end + gap and max(end, stop) - start <= limit:
                end = max(end, stop)
            else:
                if start >= 0:
                    reads.append(PlannedRead(table, start, end - start))
                start, end = at, stop
            assigned.append((len(reads), at - start, stop - at, i))
        reads.append(PlannedRead(table, start, end - start))
        for read_index, offset, count, i in assigned:
            segments[i].append((read_index, offset, count))
    return ReadPlan(reads, norm, segments)
