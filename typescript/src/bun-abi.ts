// The C ABI's functions as bun:ffi sees them, and the helpers both threads
// use: (pointer, length) in, owned buffers out and freed once.

import { dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";

export const STATUS = [
  "Ok",
  "Error",
  "InvalidArgument",
  "UnknownHandle",
  "NotPending",
  "Closed",
  "Forked",
  "Panic",
  "Config",
  "UnknownTemplate",
  "InvalidContext",
  "Timeout",
  "Conflict",
  "Unavailable",
  "TaskNotFound",
] as const;

const { ptr, u64, i32, i64 } = FFIType;

export const symbols = {
  sg_engine_new: { args: [ptr, u64, ptr], returns: i32 },
  sg_engine_free: { args: [u64], returns: i32 },
  sg_next_events: { args: [u64, u64, u64, ptr], returns: i32 },
  sg_complete: { args: [u64, u64, ptr, u64], returns: i32 },
  sg_complete_and_next: { args: [u64, u64, ptr, u64, u64, ptr], returns: i32 },
  sg_poll_events: { args: [u64, u64, ptr], returns: i32 },
  sg_call: { args: [u64, ptr, u64, ptr], returns: i32 },
  sg_next_replies: { args: [u64, u64, u64, ptr], returns: i32 },
  sg_last_error: { args: [ptr], returns: i32 },
  sg_buffer_free: { args: [ptr, u64], returns: FFIType.void },
  sg_buffers_live: { args: [], returns: i64 },
} as const;

export type Library = ReturnType<typeof dlopen<typeof symbols>>["symbols"];

export function open(file: string): Library {
  return dlopen(file, symbols).symbols;
}

const decoder = new TextDecoder();
export const encoder = new TextEncoder();

/** Reads the buffer the library wrote into `out` (pointer, length), copies it, frees it. */
export function takeText(lib: Library, out: BigUint64Array): string {
  const address = Number(out[0]);
  const len = Number(out[1]);
  if (address === 0 || len === 0) return "";
  const text = decoder.decode(new Uint8Array(toArrayBuffer(address as Pointer, 0, len)));
  lib.sg_buffer_free(address as Pointer, len);
  out[0] = 0n;
  out[1] = 0n;
  return text;
}

/** The status's name and this thread's last error message. */
export function failure(lib: Library, status: number): { code: string; message: string } {
  const out = new BigUint64Array(2);
  lib.sg_last_error(out);
  return { code: STATUS[status] ?? "Error", message: takeText(lib, out) || `status ${status}` };
}
