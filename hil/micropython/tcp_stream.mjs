// A loopback TCP connection whose reads are Promises the MicroPython VM can await: what the
// `hostbridge` JS module hands the firmware's host HAL (firmware/hal_host.py), in run.mjs and in
// the emulated board (board.mjs) alike.
import net from "node:net";

export function connect(host, port) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let waiter = null;
    let closed = false;
    const wake = () => {
      if (waiter) {
        const w = waiter;
        waiter = null;
        w();
      }
    };
    const sock = net.connect(port, host, () => {
      sock.setNoDelay(true);
      resolve({
        // `data` is a hex string (what firmware/hal_host.py sends: a string crosses into JS by
        // value, while a Python bytes object crosses as a proxy that pins a slot in the VM's heap
        // until JS finalizes it) or anything Buffer.from takes.
        write(data) {
          sock.write(typeof data === "string" ? Buffer.from(data, "hex") : Buffer.from(data));
        },
        // Resolves with up to maxBytes bytes once any are there; an empty array means closed.
        read(maxBytes) {
          return new Promise((done) => {
            const take = () => {
              const all = Buffer.concat(chunks.splice(0));
              if (all.length > maxBytes) chunks.push(all.subarray(maxBytes));
              done(new Uint8Array(all.subarray(0, maxBytes)));
            };
            if (chunks.length || closed) take();
            else waiter = take;
          });
        },
        close() {
          sock.destroy();
        },
      });
    });
    sock.on("data", (d) => {
      chunks.push(d);
      wake();
    });
    sock.on("close", () => {
      closed = true;
      wake();
    });
    sock.on("error", (e) => {
      closed = true;
      reject(e);
      wake();
    });
  });
}
