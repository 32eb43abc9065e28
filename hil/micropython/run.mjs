// Runs Python code under the real MicroPython VM (the WebAssembly port) in this Node process.
//
// Usage: node run.mjs SPEC.json
//   SPEC = {"files": [[hostPath, vmPath], ...], "code": "python source", "heapsize": bytes,
//           "fs_root": "host folder behind hostbridge.read_file/write_file"}
// Each host file is written into the VM's filesystem at vmPath (parent folders are created), then
// `code` runs with runPythonAsync so asyncio code interleaves with Node's event loop.
//
// The VM has no sockets, no machine module and no os.urandom, so the firmware's host HAL reaches
// the harness through `hostbridge`, a JS module registered here: loopback TCP connections whose
// reads are Promises Python can await, the host's monotonic clock (CLOCK_MONOTONIC, the same one
// CPython's time.monotonic_ns reads, so the harness can timestamp pin edges in the node's time),
// random numbers, a file store that survives the process (a node's reboot) and exit().
// Exit status: 0 when the code finished, 1 when it raised (the traceback goes to stderr), 2 on a
// usage error. One VM per process: two instances in one JS realm break each other (REFERENCE.md §8).
import { readFileSync, writeFileSync, renameSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { randomInt } from "node:crypto";
import "./zero_delay_timers.mjs";
import { connect } from "./tcp_stream.mjs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

if (process.argv.length !== 3) {
  process.stderr.write("usage: node run.mjs SPEC.json\n");
  process.exit(2);
}
const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const mp = await loadMicroPython({
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
  linebuffer: true,
  heapsize: spec.heapsize || 8 * 1024 * 1024,
});

function mkdirs(path) {
  let at = "";
  for (const part of path.split("/").filter(Boolean)) {
    at += "/" + part;
    try {
      mp.FS.mkdir(at);
    } catch (e) {
      // EEXIST is fine: the folder is already there.
    }
  }
}


// Python objects handed to JS (the callbacks of every awaited read) stay alive in the MicroPython
// heap until JS's garbage collector finalizes their proxies; an idle Node rarely collects, so the
// VM's heap would look as if it leaked. With --expose-gc, collect JS garbage every 100 ms.
if (typeof globalThis.gc === "function") setInterval(() => globalThis.gc(), 100).unref();

const fsRoot = spec.fs_root || null;
mp.registerJsModule("hostbridge", {
  connect,
  // As decimal strings: the VM turns a JS number into a signed 32-bit int, which would wrap the
  // microsecond clock every 71 minutes (and off the harness's clock) and make half the u32s negative.
  monotonic_us: () => String(process.hrtime.bigint() / 1000n),
  random_u32: () => String(randomInt(0, 2 ** 32)),
  read_file(path) {
    if (!fsRoot) return null;
    try {
      return new Uint8Array(readFileSync(join(fsRoot, path)));
    } catch (e) {
      return null;
    }
  },
  // `data`: a hex string from firmware/hal_host.py (strings cross by value; see tcp_stream.mjs).
  write_file(path, data) {
    if (!fsRoot) throw new Error("no fs_root: this run has no persistent file store");
    const target = join(fsRoot, path);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target + ".tmp", typeof data === "string" ? Buffer.from(data, "hex") : Buffer.from(data));
    renameSync(target + ".tmp", target);
  },
  exit(code) {
    process.exit(code);
  },
});

for (const [hostPath, vmPath] of spec.files || []) {
  mkdirs(dirname(vmPath));
  mp.FS.writeFile(vmPath, readFileSync(hostPath));
}

try {
  await mp.runPythonAsync(spec.code);
} catch (err) {
  // MicroPython's exception arrives as a JS error whose message is the Python traceback.
  process.stderr.write(String(err && err.message ? err.message : err) + "\n");
  process.exitCode = 1;
}
// Open sockets would keep Node alive after the Python code is done: exit once stdout and stderr
// have drained (writes to a pipe are asynchronous in Node).
process.stdout.write("", () => process.stderr.write("", () => process.exit(process.exitCode ?? 0)));
