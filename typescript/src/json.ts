// JSON as the engine speaks it, with exact big integers: an integer literal
// beyond Number.MAX_SAFE_INTEGER parses as a BigInt; a BigInt is written as
// a JSON integer when it fits in 64 bits, else as its decimal string (the
// engine's convention for wider integers). `BigInt(value)` is exact for all
// three forms, so a handler can take a dependency's result either way.

const MARK = "\u0000bigint:";
const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;

/** An integer literal long enough that it may not be a safe Number. */
const LONG_INTEGER = /\d{16,}/;

function reviveBig(_key: string, value: unknown): unknown {
  if (typeof value === "string" && value.startsWith(MARK)) {
    return BigInt(value.slice(MARK.length));
  }
  return value;
}

/** Quotes (with a marker) the integer literals outside strings that are not safe Numbers. */
function markBigIntegers(text: string): string {
  let out = "";
  let last = 0;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 34 /* " */) {
      i++;
      while (i < n && text.charCodeAt(i) !== 34) i += text.charCodeAt(i) === 92 /* \ */ ? 2 : 1;
      i++;
      continue;
    }
    if (c === 45 /* - */ || (c >= 48 && c <= 57)) {
      const start = i;
      i++;
      while (i < n) {
        const d = text.charCodeAt(i);
        if ((d >= 48 && d <= 57) || d === 46 || d === 101 || d === 69 || d === 43 || d === 45) i++;
        else break;
      }
      const literal = text.slice(start, i);
      if (/^-?\d+$/.test(literal) && !Number.isSafeInteger(Number(literal))) {
        out += text.slice(last, start) + JSON.stringify(MARK + literal);
        last = i;
      }
      continue;
    }
    i++;
  }
  return last === 0 ? text : out + text.slice(last);
}

/** Parses engine JSON; integers that are not safe Numbers become BigInts. */
export function parseJson(text: string): any {
  if (!LONG_INTEGER.test(text)) return JSON.parse(text);
  return JSON.parse(markBigIntegers(text), reviveBig);
}

/** Why `value` is not JSON (with the path to the offending part), or null. */
function notJson(value: unknown, path: string, seen: Set<object>): string | null {
  switch (typeof value) {
    case "string":
    case "boolean":
    case "bigint":
      return null;
    case "number":
      return Number.isFinite(value) ? null : `${path} is ${value}, which JSON cannot represent`;
    case "undefined":
      return `${path} is undefined`;
    case "function":
      return `${path} is a function`;
    case "symbol":
      return `${path} is a symbol`;
  }
  if (value === null) return null;
  const object = value as object;
  if (seen.has(object)) return `${path} refers to itself (a cycle)`;
  seen.add(object);
  try {
    if (Array.isArray(object)) {
      for (let i = 0; i < object.length; i++) {
        const why = notJson(object[i], `${path}[${i}]`, seen);
        if (why) return why;
      }
      return null;
    }
    const proto = Object.getPrototypeOf(object);
    if (proto !== Object.prototype && proto !== null) {
      const name = object.constructor?.name ?? "object";
      return `${path} is a ${name}, which is not a JSON value`;
    }
    for (const [key, item] of Object.entries(object)) {
      if (item === undefined) continue; // an absent property, as JSON.stringify has it
      const why = notJson(item, `${path}.${key}`, seen);
      if (why) return why;
    }
    return null;
  } finally {
    seen.delete(object);
  }
}

/** Throws a TypeError naming the part of `value` that is not JSON. */
export function checkJson(value: unknown): void {
  const why = notJson(value, "$", new Set());
  if (why) throw new TypeError(why);
}

/** Engine JSON for `value` (checked with {@link checkJson} first where it matters). */
export function stringifyJson(value: unknown): string {
  try {
    // Most values hold no BigInt: JSON.stringify without a replacer is
    // several times faster, and throws on the BigInts it cannot write.
    return JSON.stringify(value);
  } catch (e) {
    if (!(e instanceof TypeError)) throw e;
  }
  let big = false;
  const text = JSON.stringify(value, (_key, v) => {
    if (typeof v !== "bigint") return v;
    big = true;
    return MARK + v.toString();
  });
  if (!big) return text;
  return text.replace(/"\\u0000bigint:(-?\d+)"/g, (_m, digits: string) => {
    const n = BigInt(digits);
    return n >= I64_MIN && n <= U64_MAX ? digits : `"${digits}"`;
  });
}
