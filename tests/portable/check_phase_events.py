"""Vector checks for firmware/phase_events.py (portable: CPython and MicroPython).

A script's steps carry their state forward: each step gives only what changes (G greens, Y yellows,
W walks, PC ped clears, P preempts, D detectors as phase / channel lists; None = map absent). Reds
are every phase neither green nor yellow; don't walk is every ped phase neither walking nor clearing.
"fail" polls None, "bad" sends a malformed poll, "poll" calls poll() instead of update(). Times are
ms offsets from the case's "t0" tick (just below the 2**30 wrap).
"""

from firmware.phase_events import PhaseEventDetector, conflicting_greens
from protocols.ticks import ticks_add
from vectorlib import expect_equal

_ALL_PHASES = 0xFF


def _bits(numbers):
    bits = 0
    for n in numbers:
        bits |= 1 << (n - 1)
    return bits


def _bitmaps(state, ped_phases):
    g = _bits(state["G"])
    y = _bits(state["Y"])
    w = _bits(state["W"])
    pc = _bits(state["PC"])
    maps = {"greens": g, "yellows": y, "reds": _ALL_PHASES & ~(g | y), "walks": w,
            "ped_clears": pc, "dont_walks": _bits(ped_phases) & ~(w | pc)}
    if state["P"] is not None:
        maps["preempts"] = _bits(state["P"])
    if state["D"] is not None:
        maps["detectors"] = _bits(state["D"])
    return maps


def _malformed(maps, how):
    if how == "missing_reds":
        del maps["reds"]
    elif how == "negative_greens":
        maps["greens"] = -1
    elif how == "text_detectors":
        maps["detectors"] = "x"
    else:
        raise AssertionError("unknown malformation %r" % how)
    return maps


def check_phase_script(case):
    t0 = case["t0"]
    det = PhaseEventDetector(max_red_clear_us=case["max_red_clear_ms"] * 1000)
    state = {"G": [], "Y": [], "W": [], "PC": [], "P": None, "D": None}
    events = []
    for step in case["steps"]:
        for key in state:
            if key in step:
                state[key] = step[key]
        t = ticks_add(t0, step["ms"] * 1000)
        if step.get("poll"):
            det.poll(t, events)
        elif step.get("fail"):
            expect_equal(det.update(None, t), [], "events from a failed poll")
        elif "bad" in step:
            maps = _malformed(_bitmaps(state, case["ped_phases"]), step["bad"])
            expect_equal(det.update(maps, t), [], "events from a malformed poll")
        else:
            det.update(_bitmaps(state, case["ped_phases"]), t, events)
    expected = [(ticks_add(t0, e[0] * 1000), e[1], e[2]) for e in case["expect"]]
    expect_equal(events, expected, "event list")


def check_conflicting_greens(case):
    got = conflicting_greens(_bits(case["greens"]), _bits(case["yellows"]))
    want = None if case["expect"] is None else tuple(case["expect"])
    expect_equal(got, want, "conflicting pair")


CHECKS = {
    "phase_script": check_phase_script,
    "conflicting_greens": check_conflicting_greens,
}
