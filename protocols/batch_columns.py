"""The body of a cnb1 batch, read side: check a decoded msgpack body against the schema and
flatten it into readings (README.md, "Batch format (cnb1)", "Body"). The write side is protocols/batch_builder.py.

The body is a msgpack map
    {"n": node, "b": node boot, "t": t0 (UTC ms),
     "m": [[prefix, leaves | template index, rows], ...],     measurements, one group per device
     "e": [times, codes, params]}                             events
with leaves = [[leaf, unit, kind, dec], ...] (stream name = prefix + leaf) and one row per leaf:
[times, values] or [times, values, faults]. Times are a delta chain (the first relative to t0,
each next relative to the one before, ms, >= 0) or the index of an earlier row whose times are the
same. With `dec` set, values are round(v * 10**dec) delta-encoded from the previous non-faulted
value; without, raw numbers; nil where faulted. Faults are [sample index, fault code, ...] pairs.

Every way a body can miss the schema raises BatchFormatError naming the place ("m"[1] rows[2] ...),
never KeyError, IndexError or TypeError.
"""

from protocols.batch_codes import MAX_EVENT_CODE, MAX_EVENT_PARAM, MAX_FAULT_CODE
from protocols.batch_codes import event_name, fault_name
from protocols.errors import ProtocolError

# Times and scaled values stay exact in a float64, and any delta between them fits an int64.
MAX_EXACT = 2 ** 53
MAX_DEC = 9  # decimal exponents -9..9
INF = float("inf")


class BatchFormatError(ProtocolError):
    """A cnb1 payload that does not follow README.md, "Batch format (cnb1)"; `offset` when a byte is to blame."""

    def __init__(self, reason, offset=None):
        # Not ProtocolError.__init__: it calls ValueError.__init__, which MicroPython 1.27 lacks.
        self.reason = reason
        self.offset = offset
        super(ProtocolError, self).__init__(
            reason if offset is None else "%s (at byte %d)" % (reason, offset))


def is_number(v):
    t = type(v)
    return t is int or t is float


def _show(v):
    # An error message names the bad value, but never a megabyte of it.
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(what):
    raise BatchFormatError("body does not follow the cnb1 schema: " + what)


def _int_in(v, lo, hi, what):
    if type(v) is not int or not lo <= v <= hi:
        _fail("%s must be an int in %d..%d, got %s" % (what, lo, hi, _show(v)))
    return v


def _list(v, what, n=None):
    if type(v) is not list:
        _fail("%s must be an array, got %s" % (what, type(v).__name__))
    if n is not None and len(v) != n:
        _fail("%s must have %d items, got %d" % (what, n, len(v)))
    return v


def _times(chain, t0, what):
    _list(chain, what)
    out = []
    t = t0
    for d in chain:
        t += _int_in(d, 0, MAX_EXACT, what + " delta")
        if t >= MAX_EXACT:
            _fail("%s reaches past 2**53 ms" % what)
        out.append(t)
    return out


def _leaves(leaves, what):
    out = []
    for i, entry in enumerate(_list(leaves, what)):
        where = "%s[%d]" % (what, i)
        _list(entry, where, 4)
        leaf, unit, kind, dec = entry
        if type(leaf) is not str or type(unit) is not str or type(kind) is not str:
            _fail("%s leaf, unit and kind must be str" % where)
        if dec is not None:
            _int_in(dec, -MAX_DEC, MAX_DEC, where + " dec")
        out.append((leaf, unit, kind, dec))
    return out


def _faults(pairs, n, what):
    faults = {}
    _list(pairs, what)
    if len(pairs) % 2:
        _fail("%s must hold (index, code) pairs" % what)
    last = -1
    for k in range(0, len(pairs), 2):
        i = pairs[k]
        if type(i) is not int or not last < i < n:
            _fail("%s sample indexes must ascend and be below %d, got %s" % (what, n, _show(i)))
        faults[i] = _int_in(pairs[k + 1], 1, MAX_FAULT_CODE, what + " code")
        last = i
    return faults


def _earlier(ref, count, what):
    # A reference must name something already read: no forward or self references, no cycles.
    if type(ref) is not int or not 0 <= ref < count:
        _fail("%s %s must be the index of one of the %d before it" % (what, _show(ref), count))
    return ref


def _row(entry, stream, columns, t0, what, out):
    name, unit, kind, dec = stream
    _list(entry, what)
    if len(entry) not in (2, 3):
        _fail("%s must have 2 or 3 items, got %d" % (what, len(entry)))
    if type(entry[0]) is int:
        times = columns[_earlier(entry[0], len(columns), what + " times reference (a row)")]
    else:
        times = _times(entry[0], t0, what + " times")
    columns.append(times)
    values = _list(entry[1], what + " values", len(times))
    faults = _faults(entry[2], len(times), what + " faults") if len(entry) == 3 else {}
    acc = 0
    for i in range(len(times)):
        v = values[i]
        code = faults.get(i)
        if code is not None:
            if v is not None:
                _fail("%s value %d is faulted but not nil" % (what, i))
        elif v is None:
            _fail("%s value %d is nil but has no fault" % (what, i))
        elif dec is not None:
            acc += _int_in(v, -2 * MAX_EXACT, 2 * MAX_EXACT, "%s value %d" % (what, i))
            if not -MAX_EXACT <= acc <= MAX_EXACT:
                _fail("%s value %d adds up beyond 2**53" % (what, i))
            v = acc if dec == 0 else acc / 10 ** dec if dec > 0 else acc * 10 ** -dec
        elif not is_number(v) or v != v or v == INF or v == -INF:
            _fail("%s value %d must be a finite number, got %s" % (what, i, _show(v)))
        out.append({"stream": name, "unit": unit, "kind": kind, "t": times[i], "value": v,
                    "fault": None if code is None else fault_name(code)})


def _measurements(groups, t0, streams, out):
    templates = []
    columns = []  # every row's times, in row order, for "same times as row k"
    for g, group in enumerate(_list(groups, '"m"')):
        what = '"m"[%d]' % g
        _list(group, what, 3)
        prefix, leaves, rows = group
        if type(prefix) is not str:
            _fail("%s prefix must be a str" % what)
        if type(leaves) is int:
            leaves = templates[_earlier(leaves, g, what + " leaves reference (a group)")]
        else:
            leaves = _leaves(leaves, what + " leaves")
        templates.append(leaves)
        _list(rows, what + " rows", len(leaves))
        for i in range(len(leaves)):
            leaf, unit, kind, dec = leaves[i]
            stream = (prefix + leaf, unit, kind, dec)
            streams.append({"name": stream[0], "unit": unit, "kind": kind, "dec": dec})
            _row(rows[i], stream, columns, t0, "%s rows[%d]" % (what, i), out)


def _events(columns, t0):
    _list(columns, '"e"', 3)
    times = _times(columns[0], t0, '"e" times')
    codes = _list(columns[1], '"e" codes', len(times))
    params = _list(columns[2], '"e" params', len(times))
    out = []
    for i in range(len(times)):
        code = _int_in(codes[i], 0, MAX_EVENT_CODE, '"e" code %d' % i)
        param = _int_in(params[i], 0, MAX_EVENT_PARAM, '"e" param %d' % i)
        out.append({"t": times[i], "code": code, "name": event_name(code), "param": param})
    return out


def read_body(body):
    """The decoded body as plain dicts and lists (see decode_batch); BatchFormatError if it is not
    a cnb1 body. Unknown keys are ignored (README.md, "Batch format (cnb1)", "Versioning")."""
    if type(body) is not dict:
        _fail("the body must be a map, got %s" % type(body).__name__)
    for key in ("n", "b", "t"):
        if key not in body:
            _fail('key "%s" is missing' % key)
    if type(body["n"]) is not str:
        _fail('"n" (node) must be a str')
    t0 = _int_in(body["t"], 0, MAX_EXACT - 1, '"t" (t0)')
    streams = []
    measurements = []
    _measurements(body.get("m", []), t0, streams, measurements)
    return {
        "node": body["n"],
        "node_boot": _int_in(body["b"], 0, 2 ** 64 - 1, '"b" (node boot)'),
        "t0": t0,
        "streams": streams,
        "measurements": measurements,
        "events": _events(body["e"], t0) if "e" in body else [],
    }
