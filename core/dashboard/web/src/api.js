// The JSON API, with the session's cookie: unsafe requests carry the CSRF
// header the server checks against the cookie's token.

export const session = { name: "", scope: "read", csrf: "", open: true };

export async function loadSession() {
  const r = await fetch("/ui/session", { credentials: "same-origin" });
  if (r.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new Error("not logged in");
  }
  Object.assign(session, await r.json());
}

export function can(scope) {
  const rank = { read: 0, write: 1, admin: 2 };
  return rank[session.scope] >= rank[scope];
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The parsed answer; with `raw`, {data, text}: the text as the server sent
// it, to compare with what a stream sends later.
export async function api(path, { method = "GET", body, raw = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-Stepgraph-CSRF"] = session.csrf;
    headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (r.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || `HTTP ${r.status}`);
  return raw ? { data, text } : data;
}

// A server-sent event stream of JSON documents: `update(doc, text)` for each
// (skipped when its text is `shown()`, what the page drew already), `gone`
// when its subject was removed, `state` for the connection's. Returns the
// function that closes it (when the page changes).
export function stream(path, { update, gone, state, shown = () => null }) {
  const es = new EventSource(path, { withCredentials: true });
  es.addEventListener("update", (e) => e.data !== shown() && update(JSON.parse(e.data), e.data));
  es.addEventListener("gone", (e) => {
    es.close();
    gone && gone(JSON.parse(e.data).error);
  });
  es.onopen = () => state && state("live");
  es.onerror = () => state && state(es.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  return () => es.close();
}
