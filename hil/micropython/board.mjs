// An emulated MicroPython board: the real VM (the WebAssembly port) behind a serial console, with
// a flash filesystem kept in a host folder, so the unmodified `mpremote` can talk to it.
//
// Usage: node board.mjs FLASH_DIR [CAPACITY_BYTES]
//   stdin/stdout carry the board's serial console (hil/emulated_board.py joins them to a
//   pseudo-terminal); stderr says what the board does (boots, resets), for the harness's log.
//
// Each boot is a fresh VM in its own worker thread (two VMs in one JS realm break each other, and
// a terminated worker takes its timers and sockets with it), so a soft reset, an interrupted
// firmware and a reboot asked for by the firmware all start clean, the way a board does. What the
// board needs beyond the VM's own event-driven REPL (REFERENCE.md §8):
//   - raw-paste mode (\x05A\x01) is answered "not supported" (R\x00): mpremote falls back to the
//     raw REPL;
//   - a soft reset (Ctrl-D on an empty line) prints "MPY: soft reboot", starts a new VM and, in the
//     friendly REPL, runs /main.py; in the raw REPL it comes back to the raw prompt;
//   - Emscripten's errno values (ENOENT 44, EEXIST 20, ...) become MicroPython's (2, 17, ...) so
//     mpremote reads them right; a write beyond CAPACITY_BYTES (default 1 MiB) raises ENOSPC (28);
//   - /main.py's asyncio.run(main()) starts main() as a background task, because the VM's asyncio
//     loop is Node's event loop; Ctrl-C while that firmware runs (or while a command hangs) stops
//     it by starting a fresh VM, and the REPL is the board's again;
//   - the firmware's host HAL reaches the harness through `hostbridge` (loopback TCP, monotonic
//     clock, random numbers, exit = reboot) as in run.mjs; read_file/write_file use the board's
//     own filesystem.
// Files persist: a boot loads FLASH_DIR, and every change is written back (each file replaced
// atomically) after each piece of console input and every 200 ms, so the folder survives soft
// resets, reboots and restarts of this process. /dev and /proc are Emscripten's and are not saved.
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { fileURLToPath } from "node:url";
import {
  readFileSync, writeFileSync, renameSync, mkdirSync, readdirSync, rmSync,
} from "node:fs";
import { join } from "node:path";
import { randomInt } from "node:crypto";
import "./zero_delay_timers.mjs";
import { connect } from "./tcp_stream.mjs";

const SYSTEM_DIRS = new Set(["dev", "proc"]);

// -- main thread: the console and the boots ------------------------------------------------------

async function supervise() {
  if (process.argv.length < 3) {
    process.stderr.write("usage: node board.mjs FLASH_DIR [CAPACITY_BYTES]\n");
    process.exit(2);
  }
  const flashDir = process.argv[2];
  const capacity = Number(process.argv[3] || 1024 * 1024);
  mkdirSync(flashDir, { recursive: true });
  const say = (text) => process.stdout.write(text);
  const log = (text) => process.stderr.write(`[board] ${text}\n`);

  let worker = null;
  let ready = false;
  let busy = 0; // input messages the VM has not finished with
  let firmware = false; // /main.py's asyncio.run started a task this boot
  let queue = []; // console input waiting for the VM
  let starting = Promise.resolve();

  function start({ raw, runMain }) {
    ready = false;
    busy = 0;
    firmware = false;
    const w = new Worker(fileURLToPath(import.meta.url), { workerData: { flashDir, capacity, raw, runMain } });
    worker = w;
    w.on("message", (msg) => {
      if (w !== worker) return; // a message from a VM already replaced
      if (msg.type === "out") say(Buffer.from(msg.data));
      else if (msg.type === "ready") {
        ready = true;
        flush();
      } else if (msg.type === "idle") busy -= 1;
      else if (msg.type === "firmware") firmware = true;
      else if (msg.type === "log") log(msg.text);
      else if (msg.type === "soft-reset") {
        queue = msg.rest.concat(queue);
        log(`soft reset (${msg.raw ? "raw" : "friendly"} REPL)`);
        restart({ raw: msg.raw, runMain: !msg.raw }, "MPY: soft reboot\r\n");
      } else if (msg.type === "exit") {
        log(`the firmware asked for a reset (exit ${msg.code}): rebooting`);
        restart({ raw: false, runMain: true }, "");
      }
    });
    w.on("error", (err) => {
      if (w !== worker) return;
      log(`the VM failed: ${err && err.stack ? err.stack : err}; rebooting in 1 s`);
      worker = null;
      starting = starting.then(() => new Promise((done) => setTimeout(done, 1000)));
      restart({ raw: false, runMain: true }, "");
    });
  }

  function restart(how, banner) {
    const old = worker;
    worker = null;
    ready = false;
    starting = starting.then(async () => {
      if (old) await old.terminate();
      if (banner) say(banner);
      start(how);
    });
  }

  function flush() {
    if (!ready || !queue.length) return;
    const data = Uint8Array.from(queue);
    queue = [];
    // Ctrl-C while the firmware runs or while a command hangs is an interrupt: a fresh VM.
    const ctrlC = data.indexOf(3);
    if (ctrlC >= 0 && (firmware || busy > 0)) {
      if (ctrlC > 0) send(data.subarray(0, ctrlC));
      queue = Array.from(data.subarray(ctrlC + 1));
      log("Ctrl-C: the running program is interrupted");
      restart({ raw: false, runMain: false },
        "\r\nTraceback (most recent call last):\r\n  File \"main.py\", line 1, in <module>\r\nKeyboardInterrupt: \r\n");
      return;
    }
    send(data);
  }

  function send(data) {
    busy += 1;
    worker.postMessage({ type: "in", data });
  }

  process.stdin.on("data", (chunk) => {
    for (const byte of chunk) queue.push(byte);
    flush(); // while a VM boots the bytes wait for it
  });
  process.stdin.on("end", () => process.exit(0));
  process.on("SIGTERM", () => process.exit(0));
  log(`power on, flash ${flashDir}, capacity ${capacity} bytes`);
  start({ raw: false, runMain: true });
}

// -- worker: one boot of the VM ------------------------------------------------------------------

async function boot({ flashDir, capacity, raw, runMain }) {
  const { loadMicroPython } = await import("@micropython/micropython-webassembly-pyscript");
  const post = (msg) => parentPort.postMessage(msg);
  let muted = false;
  let captured = [];
  // While console input is processed, output is held until the flash is saved, so whoever reads
  // the answer (mpremote) finds the host folder already matching what the board holds.
  let held = null;
  const say = (bytes) => {
    if (held) held.push(...bytes);
    else post({ type: "out", data: Array.from(bytes) });
  };
  const release = () => {
    if (held && held.length) post({ type: "out", data: held });
    held = null;
  };
  const mp = await loadMicroPython({
    stdout: (bytes) => {
      if (!muted) say(bytes);
      captured.push(...bytes);
    },
    stderr: (bytes) => say(bytes),
    linebuffer: false,
    heapsize: 4 * 1024 * 1024,
  });
  const FS = mp.FS;
  const store = new FlashStore(FS, flashDir, capacity);
  store.onError = (err) => post({ type: "log", text: `cannot save the flash to ${flashDir}: ${err}` });
  store.load();

  mp.registerJsModule("hostbridge", hostbridge(FS, store, post));
  mp.registerJsModule("_board", {
    usage: () => String(store.used()),
    capacity: () => String(capacity),
    firmware_started: () => post({ type: "firmware" }),
  });
  mp.runPython(ROM);

  if (runMain && store.exists("/main.py")) {
    try {
      mp.runPython(new TextDecoder().decode(FS.readFile("/main.py")));
    } catch (err) {
      // A board prints main.py's traceback on its console and carries on to the REPL.
      const text = String(err && err.message ? err.message : err).replace(/\r?\n/g, "\r\n");
      post({ type: "out", data: Array.from(Buffer.from(text + "\r\n")) });
    }
    store.sync();
  }

  muted = raw; // in the raw REPL the friendly banner is not shown
  mp.replInit();
  if (raw) {
    muted = false;
    captured = [];
    mp.replProcessChar(1);
  }

  let rawMode = raw;
  let paste = 0; // bytes of a raw-paste request (\x05 A \x01) seen so far
  parentPort.on("message", (msg) => {
    if (msg.type !== "in") return;
    const data = msg.data;
    held = [];
    for (let i = 0; i < data.length; i++) {
      const c = data[i];
      if (paste) {
        paste = paste === 1 && c === 0x41 ? 2 : 0;
        if (c === 1) say([0x52, 0x00]); // "R\x00": raw paste not supported
        continue;
      }
      if (rawMode && c === 5) {
        paste = 1;
        continue;
      }
      captured = [];
      const result = mp.replProcessChar(c);
      const said = Buffer.from(captured).toString("latin1");
      if (c === 1 && said.includes("raw REPL; CTRL-B to exit")) rawMode = true;
      if (c === 2 && said.includes("help()")) rawMode = false;
      if (result & 0x100) { // PYEXEC_FORCED_EXIT: a soft reset
        store.sync();
        release();
        post({ type: "soft-reset", raw: rawMode, rest: Array.from(data.subarray(i + 1)) });
        return; // this VM takes no more input; the next boot does
      }
    }
    store.sync();
    release();
    post({ type: "idle" });
  });
  setInterval(() => store.sync(), 200);
  // Python objects handed to JS stay alive in the VM's heap until JS finalizes their proxies, and
  // an idle Node rarely collects (see run.mjs): with --expose-gc, collect every second.
  if (typeof globalThis.gc === "function") setInterval(() => globalThis.gc(), 1000);
  post({ type: "ready" });
}

// Board "ROM", run at every boot before main.py: what a board port has and this VM lacks.
const ROM = `
def _rom():
    import os, builtins, asyncio, _board
    # Emscripten errno -> MicroPython errno (REFERENCE.md §8): mpremote reads the numbers.
    E = {44: 2, 20: 17, 51: 28, 54: 20, 31: 21, 55: 39, 28: 22, 2: 13, 8: 9, 63: 1, 10: 16, 33: 24}

    def wrap(fn):
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                n = exc.errno
                raise OSError(E.get(n, n))
        return call

    for name in ("stat", "listdir", "ilistdir", "mkdir", "rmdir", "remove", "unlink", "rename", "chdir"):
        if hasattr(os, name):
            setattr(os, name, wrap(getattr(os, name)))

    # A board's root holds only its files (Emscripten's /dev and /proc are hidden), and entries
    # carry their size as littlefs gives it (the VM's posix VFS gives 3-tuples).
    raw_ilistdir, stat = os.ilistdir, os.stat

    def ilistdir(path="."):
        root = path == "/" or (path in ("", ".") and os.getcwd() == "/")
        base = "/" if root else "" if path in ("", ".") else path.rstrip("/") + "/"
        for entry in raw_ilistdir(path):
            if root and entry[0] in ("dev", "proc"):
                continue
            size = stat(base + entry[0])[6] if entry[1] == 0x8000 else 0
            yield (entry[0], entry[1], entry[2], size)

    os.ilistdir = ilistdir
    os.listdir = lambda path=".": [entry[0] for entry in ilistdir(path)]

    class File:
        def __init__(self, f):
            self._f = f

        def __getattr__(self, name):
            attr = getattr(self._f, name)
            return wrap(attr) if callable(attr) else attr

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def __iter__(self):
            return iter(self._f)

    raw_open = wrap(builtins.open)
    builtins.open = lambda *args, **kwargs: File(raw_open(*args, **kwargs))

    def statvfs(path):
        total = int(_board.capacity()) // 4096
        free = max(0, total - (int(_board.usage()) + 4095) // 4096)
        return (4096, 4096, total, free, free, 0, 0, 0, 0, 255)

    os.statvfs = statvfs

    def run(main):
        # The VM's asyncio loop is Node's: main() runs as a task and the REPL stays live.
        _board.firmware_started()
        return asyncio.create_task(main)

    asyncio.run = run


_rom()
del _rom
`;

// -- the flash: MEMFS in the VM, a folder on the host ----------------------------------------------

class FlashStore {
  constructor(FS, dir, capacity) {
    this.FS = FS;
    this.dir = dir;
    this.capacity = capacity;
    this.saved = new Map(); // VM path -> Buffer last written to the host (null for a folder)
    this.dirty = false;
    this.onError = () => {};
    this.hook();
  }

  // Watch the FS calls that change files, and refuse writes beyond the capacity (ENOSPC).
  hook() {
    const FS = this.FS;
    const store = this;
    for (const name of ["mkdir", "rmdir", "unlink", "rename", "truncate", "ftruncate", "open"]) {
      const original = FS[name];
      FS[name] = function (...args) {
        store.dirty = true;
        return original.apply(this, args);
      };
    }
    const write = FS.write;
    FS.write = function (stream, buffer, offset, length, position, canOwn) {
      store.dirty = true;
      const node = stream.node;
      if (node && FS.isFile(node.mode)) {
        const at = position === undefined ? stream.position : position;
        const grows = Math.max(0, at + length - (node.usedBytes || 0));
        if (grows && store.used() + grows > store.capacity) throw new FS.ErrnoError(51); // ENOSPC
      }
      return write.call(this, stream, buffer, offset, length, position, canOwn);
    };
  }

  exists(path) {
    try {
      this.FS.stat(path);
      return true;
    } catch (e) {
      return false;
    }
  }

  // Every saved path in the VM: [path, Buffer] for files, [path, null] for folders.
  walk(base = "/", out = []) {
    for (const name of this.FS.readdir(base)) {
      if (name === "." || name === "..") continue;
      if (base === "/" && SYSTEM_DIRS.has(name)) continue;
      const path = (base === "/" ? "" : base) + "/" + name;
      const st = this.FS.stat(path);
      if (this.FS.isDir(st.mode)) {
        out.push([path, null]);
        this.walk(path, out);
      } else if (this.FS.isFile(st.mode)) {
        out.push([path, Buffer.from(this.FS.readFile(path))]);
      }
    }
    return out;
  }

  used() {
    let total = 0;
    const visit = (base) => {
      for (const name of this.FS.readdir(base)) {
        if (name === "." || name === ".." || (base === "/" && SYSTEM_DIRS.has(name))) continue;
        const path = (base === "/" ? "" : base) + "/" + name;
        const node = this.FS.lookupPath(path).node;
        if (this.FS.isDir(node.mode)) visit(path);
        else total += node.usedBytes || 0;
      }
    };
    visit("/");
    return total;
  }

  // The host folder into a fresh VM (the board powering up with its flash).
  load() {
    for (const name of ["tmp", "home/web_user", "home"]) {
      try {
        this.FS.rmdir("/" + name);
      } catch (e) {
        // Not there, or not empty: Emscripten's own folders are harmless either way.
      }
    }
    const visit = (hostDir, vmDir) => {
      for (const entry of readdirSync(hostDir, { withFileTypes: true })) {
        if (entry.name.endsWith(".board-tmp")) continue;
        const host = join(hostDir, entry.name);
        const vm = (vmDir === "/" ? "" : vmDir) + "/" + entry.name;
        if (entry.isDirectory()) {
          this.FS.mkdir(vm);
          this.saved.set(vm, null);
          visit(host, vm);
        } else if (entry.isFile()) {
          const data = readFileSync(host);
          this.FS.writeFile(vm, data);
          this.saved.set(vm, data);
        }
      }
    };
    visit(this.dir, "/");
    this.dirty = false;
  }

  // The VM's files back to the host folder: new and changed ones replaced atomically, removed
  // ones deleted.
  sync() {
    if (!this.dirty) return;
    this.dirty = false;
    try {
      this.save();
    } catch (err) {
      this.dirty = true; // try again at the next sync
      this.onError(err);
    }
  }

  save() {
    const now = new Map(this.walk());
    for (const [path, data] of now) {
      const host = join(this.dir, path);
      const had = this.saved.has(path);
      const before = this.saved.get(path);
      if (data === null) {
        if (had && before === null) continue;
        if (had) rmSync(host, { force: true });
        mkdirSync(host, { recursive: true });
      } else if (!had || before === null || !before.equals(data)) {
        if (had && before === null) rmSync(host, { recursive: true, force: true });
        writeFileSync(host + ".board-tmp", data);
        renameSync(host + ".board-tmp", host);
      }
    }
    const gone = [...this.saved.keys()].filter((p) => !now.has(p)).sort().reverse();
    for (const path of gone) rmSync(join(this.dir, path), { recursive: true, force: true });
    this.saved = now;
  }
}

// -- hostbridge: what the firmware's host HAL needs from the harness --------------------------------

function hostbridge(FS, store, post) {
  return {
    connect,
    // Decimal strings: a JS number reaches the VM as a signed 32-bit int (see run.mjs).
    monotonic_us: () => String(process.hrtime.bigint() / 1000n),
    random_u32: () => String(randomInt(0, 2 ** 32)),
    read_file(path) {
      try {
        return FS.readFile("/" + String(path).replace(/^\/+/, ""));
      } catch (e) {
        return null;
      }
    },
    // `data`: a hex string from firmware/hal_host.py (strings cross by value; see tcp_stream.mjs).
    write_file(path, data) {
      const target = "/" + String(path).replace(/^\/+/, "");
      const parts = target.split("/").filter(Boolean);
      let at = "";
      for (const part of parts.slice(0, -1)) {
        at += "/" + part;
        if (!store.exists(at)) FS.mkdir(at);
      }
      FS.writeFile(target, typeof data === "string" ? Buffer.from(data, "hex") : Buffer.from(data));
      store.dirty = true;
      store.sync();
    },
    exit(code) {
      store.sync();
      post({ type: "exit", code: Number(code) });
      // Stop this VM's work now: the supervisor replaces it.
      throw new Error(`board reset (exit ${code})`);
    },
  };
}


// Last, so every declaration above is initialised before either role starts.
if (isMainThread) await supervise();
else await boot(workerData);
