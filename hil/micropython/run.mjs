// Runs Python code under the real MicroPython VM (the WebAssembly port) in this Node process.
//
// Usage: node run.mjs SPEC.json
//   SPEC = {"files": [[hostPath, vmPath], ...], "code": "python source", "heapsize": bytes}
// Each host file is written into the VM's filesystem at vmPath (parent folders are created), then
// `code` runs with runPythonAsync so asyncio code interleaves with Node's event loop.
// Exit status: 0 when the code finished, 1 when it raised (the traceback goes to stderr), 2 on a
// usage error. One VM per process: two instances in one JS realm break each other (REFERENCE.md §8).
import { readFileSync } from "node:fs";
import { dirname } from "node:path";
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
