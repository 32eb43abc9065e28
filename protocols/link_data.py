"""A decoded DATA message (protocols/link_messages.py) read back as samples and events: the
receiving side's, kept apart so a node, which only writes DATA, does not carry it."""


def data_samples(message):
    """Iterate a DATA message's measurements as (sid, dt, value, fault code or None, detail)."""
    faults = {}
    f = message.get("f", ())
    for i in range(0, len(f), 3):
        faults[f[i]] = (f[i + 1], f[i + 2])
    m = message["m"]
    for n in range(len(m) // 3):
        fault = faults.get(n)
        yield (m[3 * n], m[3 * n + 1], m[3 * n + 2],
               fault[0] if fault else None, fault[1] if fault else None)


def data_events(message):
    """Iterate a DATA message's events as (dt, code, param)."""
    e = message.get("e", ())
    for i in range(0, len(e), 3):
        yield (e[i], e[i + 1], e[i + 2])
