"""The hardware abstraction layer: one small interface, two backends.

`machine` (firmware/hal_machine.py) drives a real ESP32 or RP2040; `host` (firmware/hal_host.py)
runs the same firmware in the test harness, under CPython or the MicroPython WebAssembly VM, with
UARTs and the node link on loopback sockets and input pins driven by the harness. Nothing above
this module knows which one it runs on. Every backend provides:

  ticks_ms(), ticks_us(), ticks_diff(a, b), ticks_add(t, d)  wrap-safe ticks (period 2**30)
  Uart(bus)                 async read(max_bytes) -> bytes (waits for at least one byte),
                            async write(data) (drives an RS-485 DE pin when the bus has one and
                            returns once the last bit is on the wire), discard_input(), close()
  InputPins(pins, queue, flag)  edge interrupts on `pins` push (index, level, t_us) into an
                            EdgeQueue and set `flag`
  OutputPin(pin)            value(v)
  Flag()                    an asyncio flag an interrupt handler may set: set(), async wait()
  Watchdog(timeout_ms)      feed(); resets the node when not fed in time
  async open_link(link)     the node link's byte stream (UART or TCP; hal_machine has no USB CDC
                            link yet, the REPL owns that port): read/write/close
  SAFE_LINK                 the link safe mode opens when neither config.json nor /link.json
                            gives one (firmware/safe_boot.py): UART 0 at 115200 on the board's pins
  unique_id() -> bytes, random_u32(), mem_free(), mem_alloc(), collect(), reset(reason)
  read_file(path) -> bytes or None, write_file(path, data)
"""

try:
    import machine  # noqa: F401 - only present on a real board

    from firmware import hal_machine as backend
except ImportError:
    from firmware import hal_host as backend

NAME = backend.NAME
