// Zero-delay timers as setImmediate, for the MicroPython VM's asyncio scheduler.
//
// The WebAssembly port runs its asyncio loop through setTimeout(fn, 0), which Node stretches to
// at least 1 ms. Every task hand-off (a reader task waking the task that waits for its reply,
// `await asyncio.sleep(0)`) then costs a whole millisecond that no board pays: bench/modbus_rate.py
// measured the firmware's Modbus master at 50-60 % of the wire's physical rate at 115200 baud
// because of it. A timer with a positive delay is untouched; setImmediate still lets sockets and
// the host bridge's I/O run between turns, so nothing is starved.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

class Immediate {
  constructor(handle) {
    this.handle = handle;
  }
  // Node's Timeout objects have these; callers that hold on to a handle may use them.
  ref() { this.handle.ref(); return this; }
  unref() { this.handle.unref(); return this; }
  hasRef() { return this.handle.hasRef(); }
}

globalThis.setTimeout = (fn, ms, ...args) =>
  (ms > 0 ? realSetTimeout(fn, ms, ...args) : new Immediate(setImmediate(fn, ...args)));

globalThis.clearTimeout = (handle) =>
  (handle instanceof Immediate ? clearImmediate(handle.handle) : realClearTimeout(handle));
