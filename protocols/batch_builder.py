"""The body of a cnb1 batch, write side: the Batch builder and the body's encoder.

README.md, "Batch format (cnb1)" describes the body byte for byte (protocols/batch_columns.py reads it back).

Why this shape: a batch is mostly slowly changing numbers sampled at near-regular times, so values
travel as small int deltas (one msgpack byte each); streams sampled together (a PMS5003 frame,
a loop interval's measures) share one time column; stream names are split at the last "/" so the
lanes and devices of one profile write their leaves (name, unit, kind, dec) once and refer to
them after; and what is left compresses well.
"""

from protocols.batch_codes import MAX_EVENT_CODE, MAX_EVENT_PARAM, fault_code
from protocols.batch_columns import MAX_DEC, MAX_EXACT
from protocols.msgpack_lite import packb as packb_lite


def _check_time(t_ms, what):
    if type(t_ms) is not int or not 0 <= t_ms < MAX_EXACT:
        raise ValueError("%s must be an int of UTC milliseconds in 0..2**53, not %r" % (what, t_ms))


try:
    import sys as _sys

    if _sys.implementation.name != "cpython":
        raise ImportError("the portable path")
    # CPython's sort is stable (MicroPython's is not) and its operator module is in C: the
    # gateway orders a batch's samples with them (the same order; see _time_order).
    from operator import gt as _gt
except ImportError:
    _gt = None


def _not_finite(stream, value):
    raise ValueError("stream %s: value must be a finite number (or pass a fault), not %r"
                     % (stream, value))


class _Stream:
    __slots__ = ("name", "unit", "kind", "dec", "scale", "times", "values", "faults")

    def __init__(self, name, unit, kind, dec):
        self.name = name
        self.unit = unit
        self.kind = kind
        self.dec = dec
        self.scale = None if dec is None else 10 ** dec if dec >= 0 else 10.0 ** dec
        self.times = []
        self.values = []  # scaled ints for a dec stream, raw numbers otherwise; None if faulted
        self.faults = {}  # sample position (in add order) -> fault code


class Batch:
    """Readings of one node boot, to be encoded as one cnb1 batch.

    `streams` is an iterable of (name, unit, kind, dec) as in a device profile; dec is the number
    of decimals kept (values travel as round(v * 10**dec)) or None to keep raw numbers.
    """

    def __init__(self, node, node_boot, streams=()):
        if type(node) is not str:
            raise ValueError("node must be a str, not %r" % (node,))
        if type(node_boot) is not int or not 0 <= node_boot < 2 ** 64:
            raise ValueError("node_boot must be an int in 0..2**64-1, not %r" % (node_boot,))
        self.node = node
        self.node_boot = node_boot
        self._streams = {}
        self._order = []
        self.event_times = []
        self.event_codes = []
        self.event_params = []
        self.measurement_count = 0
        for spec in streams:
            self.add_stream(spec[0], spec[1], spec[2], spec[3])

    def add_stream(self, name, unit="", kind="gauge", dec=None):
        old = self._streams.get(name)
        if (old is not None and old.unit == unit and old.kind == kind and old.dec == dec
                and type(name) is str and type(unit) is str and type(kind) is str
                and (dec is None or type(dec) is int)):
            return  # declared already, the same way (the common case: once per sample)
        if type(name) is not str or type(unit) is not str or type(kind) is not str:
            raise ValueError("stream name, unit and kind must be str")
        if dec is not None and (type(dec) is not int or not -MAX_DEC <= dec <= MAX_DEC):
            raise ValueError("stream %s: dec must be None or an int in -9..9, not %r" % (name, dec))
        if old is not None:
            raise ValueError("stream %s is already declared with other unit/kind/dec" % name)
        self._streams[name] = _Stream(name, unit, kind, dec)
        self._order.append(name)

    def add_measurement(self, stream, t_ms, value, fault=None):
        """One sample; with a fault (a code or name, protocols.batch_codes) the value is dropped."""
        # Called once per reading: the checks are inline and in the order of the common case.
        s = self._streams.get(stream)
        if s is None:
            raise ValueError("stream %r is not declared in this batch" % (stream,))
        if type(t_ms) is not int or not 0 <= t_ms < MAX_EXACT:
            _check_time(t_ms, "t_ms")
        if fault is not None:
            s.faults[len(s.times)] = fault_code(fault)
            value = None
        else:
            t = type(value)
            if t is float:
                if value - value != 0.0:  # inf - inf and nan - nan are nan
                    _not_finite(stream, value)
            elif t is bool:
                value = int(value)
            elif t is not int:
                _not_finite(stream, value)
            elif s.scale is None and not -(2 ** 63) <= value < 2 ** 64:
                raise ValueError("stream %s: value %d does not fit msgpack's 64 bits"
                                 % (stream, value))
            scale = s.scale
            if scale is not None:
                if type(value) is int and s.dec >= 0:
                    value = value * scale
                else:
                    value = int(round(value * scale))
                if not -MAX_EXACT <= value <= MAX_EXACT:
                    raise ValueError("stream %s: value scaled by 10**%d is beyond 2**53"
                                     % (stream, s.dec))
        s.times.append(t_ms)
        s.values.append(value)
        self.measurement_count += 1

    def add_readings(self, measurements=(), events=()):
        """Many readings at once: each measurement (stream, unit, kind, dec, t_ms, value, fault)
        as add_stream(stream, unit, kind, dec) then add_measurement(stream, t_ms, value, fault),
        each event (t_ms, code, param) as add_event; the same result, without two method calls
        a reading. A reading those calls refuse is left out and returned with its ValueError:
        [(reading, error), ...]."""
        refused = []
        streams = self._streams
        for m in measurements:
            stream, unit, kind, dec, t_ms, value, fault = m
            s = streams.get(stream)
            # The common case inline (declared the same way, plain time and value, no fault);
            # anything else through the two calls, which decide and raise as they always do.
            if (s is not None and fault is None and s.unit == unit and s.kind == kind
                    and s.dec == dec and type(stream) is str and type(unit) is str
                    and type(kind) is str and (dec is None or type(dec) is int)
                    and type(t_ms) is int and 0 <= t_ms < MAX_EXACT):
                t = type(value)
                scale = s.scale
                if scale is None:
                    if (t is float and value - value == 0.0) or (
                            t is int and -(2 ** 63) <= value < 2 ** 64):
                        s.times.append(t_ms)
                        s.values.append(value)
                        self.measurement_count += 1
                        continue
                elif t is int or (t is float and value - value == 0.0):
                    v = value * scale if t is int and s.dec >= 0 else int(round(value * scale))
                    if -MAX_EXACT <= v <= MAX_EXACT:
                        s.times.append(t_ms)
                        s.values.append(v)
                        self.measurement_count += 1
                        continue
            try:
                self.add_stream(stream, unit, kind, dec)
                self.add_measurement(stream, t_ms, value, fault)
            except ValueError as error:
                refused.append((m, error))
        times, codes, params = self.event_times, self.event_codes, self.event_params
        for e in events:
            t_ms, code, param = e
            if (type(t_ms) is int and 0 <= t_ms < MAX_EXACT and type(code) is int
                    and 0 <= code <= MAX_EVENT_CODE and type(param) is int
                    and 0 <= param <= MAX_EVENT_PARAM):
                times.append(t_ms)
                codes.append(code)
                params.append(param)
                continue
            try:
                self.add_event(t_ms, code, param)
            except ValueError as error:
                refused.append((e, error))
        return refused

    def add_event(self, t_ms, code, param=0):
        """One Indiana hi-res event (REFERENCE.md §6): code and parameter 0..255."""
        if type(t_ms) is not int or not 0 <= t_ms < MAX_EXACT:
            _check_time(t_ms, "t_ms")
        if type(code) is not int or not 0 <= code <= MAX_EVENT_CODE:
            raise ValueError("event code must be an int in 0..255, not %r" % (code,))
        if type(param) is not int or not 0 <= param <= MAX_EVENT_PARAM:
            raise ValueError("event param must be an int in 0..255, not %r" % (param,))
        self.event_times.append(t_ms)
        self.event_codes.append(code)
        self.event_params.append(param)

    def __len__(self):
        return self.measurement_count + len(self.event_times)

    def streams_with_samples(self):
        return [self._streams[name] for name in self._order if self._streams[name].times]


def _delta_chain(times, base):
    # Comprehensions over zip, not an append loop: this runs once per reading on the gateway.
    if not times:
        return []
    return [t - p for p, t in zip([base] + times[:-1], times)]


def _time_order(times):
    """Sample positions in time order (stable), or None when they already are."""
    if _gt is not None:  # CPython: both steps in C, no Python code per sample
        if not any(map(_gt, times, times[1:])):
            return None
        return sorted(range(len(times)), key=times.__getitem__)  # a stable sort: ties in order
    if sorted(times) == times:  # most streams arrive in order
        return None
    # Sorted (time, position) pairs: ties keep their add order (MicroPython's sort is not
    # stable), and no key function runs per sample.
    return [i for _, i in sorted(zip(times, range(len(times))))]


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
    if None not in values:  # no fault: each value as a delta from the one before
        return _delta_chain(values, 0)
    out = []
    prev = 0
    for v in values:  # delta from the previous non-faulted value; nil stays nil
        if v is None:
            out.append(None)
        else:
            out.append(v - prev)
            prev = v
    return out


def body_fields(batch):
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


_packer = None  # a faster packb with the same bytes, installed by a CPython host (set_packer)


def set_packer(packb):
    """Pack bodies with `packb(obj) -> bytes` from now on, or with msgpack_lite again when None.
    It must write msgpack_lite's bytes for lists, str, int, float and nil: the gateway installs
    the `msgpack` C package's (gateway/fast_codec.py, tests/gateway/test_fast_codec.py)."""
    global _packer
    _packer = packb


def pack_body(fields, packb=None):
    """msgpack bytes of the body map, keys in the documented order on every runtime; with
    `packb` (or the one set_packer installed) packing each key and value."""
    pack = packb or _packer or packb_lite
    out = bytearray()
    out.append(0x80 | len(fields))  # fixmap: at most 6 keys
    for key, value in fields:
        out += pack(key)
        out += pack(value)
    return bytes(out)
