# Board entry point: `citynerve flash` copies this file to the board's root as /main.py.
#
# The flash hold. Once the firmware has armed the hardware watchdog (firmware/app.py, 8.3 s on
# RP2040), nothing but a hard reset stops it: not Ctrl-C, not a soft reset. mpremote copies files
# over the raw REPL after interrupting the firmware, so the watchdog would reset the board in the
# middle of the copy. So `citynerve flash` first writes /flash_hold ("hold") and hard-resets the
# board (which stops the watchdog); this boot then finds the hold, marks it "held" and returns to
# the REPL without starting the firmware, and the copy runs with no watchdog. flash removes the
# file before its final reset. The hold lasts one boot: a later boot that finds "held" (flash did
# not finish: the cable was pulled) or any power-on boot removes the file and starts the firmware.
import os

HOLD = "/flash_hold"


def _flash_hold():
    try:
        with open(HOLD) as f:
            state = f.read().strip()
    except OSError:
        return False
    power_on = False
    try:
        import machine

        power_on = machine.reset_cause() == machine.PWRON_RESET
    except (ImportError, AttributeError):  # the harness's emulated board has no machine module
        pass
    if state == "hold" and not power_on:
        with open(HOLD, "w") as f:
            f.write("held")
        print("[boot] held for citynerve flash: the firmware is not started, the watchdog is off")
        return True
    try:
        os.remove(HOLD)
    except OSError:
        pass
    print("[boot] an unfinished flash hold was removed: starting the firmware")
    return False


if not _flash_hold():
    from firmware.app import run

    run()
