// A Bun Worker that makes one kind of the C ABI's blocking calls, so the
// main thread never does: `events` waits in sg_next_events when asked (the
// main thread says how many slots are free), `replies` loops in
// sg_next_replies until the engine is freed. Nothing here calls into the
// main thread but postMessage.

import { failure, open, takeText } from "./bun-abi.js";

declare const self: Worker;

interface Setup {
  file: string;
  handle: bigint;
  kind: "events" | "replies";
}

let setup: Setup | undefined;
let lib: ReturnType<typeof open> | undefined;
const out = new BigUint64Array(2);

function replies(): void {
  for (;;) {
    const status = lib!.sg_next_replies(setup!.handle, 256, 60_000, out);
    if (status !== 0) {
      postMessage({ closed: true, ...failure(lib!, status) });
      return;
    }
    postMessage({ text: takeText(lib!, out) });
  }
}

self.onmessage = (e: MessageEvent) => {
  if (!setup) {
    setup = e.data as Setup;
    lib = open(setup.file);
    if (setup.kind === "replies") replies();
    return;
  }
  const { max, timeoutMs } = e.data as { max: number; timeoutMs: number };
  const status = lib!.sg_next_events(setup.handle, max, timeoutMs, out);
  postMessage(status === 0 ? { text: takeText(lib!, out) } : failure(lib!, status));
};
