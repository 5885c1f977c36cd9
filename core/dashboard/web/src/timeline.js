// Every attempt of every step, read from the audit trail: an attempt starts
// at a transition into in_progress and ends at the next one out of it; its
// outcome is where the step went next, past the hand-over to orchestration.
import { h, badge, duration, when, ms } from "./dom.js";

export function attempts(transitions) {
  const byStep = new Map();
  for (const t of transitions.steps) {
    if (!byStep.has(t.step_name)) byStep.set(t.step_name, []);
    byStep.get(t.step_name).push(t);
  }
  const out = [];
  for (const [step, list] of byStep) {
    for (let i = 0; i < list.length; i++) {
      if (list[i].to !== "in_progress") continue;
      const start = ms(list[i].at);
      let end = null;
      let outcome = "in_progress";
      for (let j = i + 1; j < list.length; j++) {
        if (end === null && list[j].from === "in_progress") end = ms(list[j].at);
        if (end !== null && list[j].to !== "enqueued_for_orchestration") {
          outcome = list[j].to;
          break;
        }
        if (end !== null) outcome = list[j].to;
        if (list[j].to === "in_progress") break;
      }
      out.push({ step, attempt: list[i].attempt, start, end, outcome });
    }
  }
  return out.sort((a, b) => a.start - b.start);
}

const SHOWN = 200;

export function timeline(transitions, onSelect) {
  const rows = attempts(transitions);
  if (!rows.length) return h("p", { class: "empty" }, "No attempt has started yet.");
  const t0 = rows[0].start;
  const now = Date.now();
  const t1 = Math.max(...rows.map((r) => r.end ?? now), t0 + 1);
  const span = t1 - t0;
  const render = (list) =>
    list.map((r) => {
      const left = ((r.start - t0) / span) * 100;
      const width = Math.max((((r.end ?? now) - r.start) / span) * 100, 0.4);
      return h(
        "tr",
        { "data-attempt": `${r.step}#${r.attempt}`, "data-outcome": r.outcome },
        h("td", {}, h("a", { href: "#", onclick: (e) => (e.preventDefault(), onSelect(r.step)) }, r.step)),
        h("td", { class: "num" }, String(r.attempt)),
        h("td", { title: when(new Date(r.start)) }, `+${duration(r.start - t0)}`),
        h("td", { class: "num" }, r.end === null ? "running" : duration(r.end - r.start)),
        h("td", {}, badge(r.outcome)),
        h("td", { class: "bar-cell" }, h("div", { class: `bar state-${r.outcome}`, style: `margin-left:${left.toFixed(2)}%;width:${width.toFixed(2)}%` })),
      );
    });
  const body = h("tbody", {}, render(rows.slice(0, SHOWN)));
  const more =
    rows.length > SHOWN &&
    h("button", { type: "button", onclick: (e) => (body.replaceChildren(...render(rows)), e.target.remove()) }, `Show all ${rows.length} attempts`);
  return h(
    "div",
    {},
    h(
      "table",
      { class: "timeline", "data-test": "timeline" },
      h("thead", {}, h("tr", {}, ["Step", "Attempt", "Start", "Duration", "Outcome", ""].map((t) => h("th", {}, t)))),
      body,
    ),
    more,
  );
}

// The newest audit rows shown at first; a button shows them all.
const AUDIT_SHOWN = 300;

export function audit(transitions) {
  const rows = [
    ...transitions.task.map((t) => ({ ...t, what: "task" })),
    ...transitions.steps.map((t) => ({ ...t, what: t.step_name })),
  ].sort((a, b) => ms(a.at) - ms(b.at));
  const render = (list) =>
    list.map((t) =>
      h(
        "tr",
        {},
        h("td", {}, when(t.at)),
        h("td", {}, t.what),
        h("td", {}, t.from ? t.from.replaceAll("_", " ") : ""),
        h("td", {}, badge(t.to)),
        h("td", { class: "num" }, t.attempt ?? ""),
        h("td", { class: "meta" }, details(t.metadata)),
      ),
    );
  const body = h("tbody", {}, render(rows.slice(-AUDIT_SHOWN)));
  const more =
    rows.length > AUDIT_SHOWN &&
    h("button", { type: "button", onclick: (e) => (body.replaceChildren(...render(rows)), e.target.remove()) }, `Show all ${rows.length} (the newest ${AUDIT_SHOWN} are shown)`);
  return h(
    "div",
    {},
    more,
    h("table", { class: "audit", "data-test": "audit" }, h("thead", {}, h("tr", {}, ["At", "What", "From", "To", "Attempt", "Details"].map((t) => h("th", {}, t)))), body),
  );
}

function details(meta) {
  if (!meta || (typeof meta === "object" && !Object.keys(meta).length)) return "";
  if (meta.by || meta.reason || meta.action) {
    return [meta.action, meta.by && `by ${meta.by}`, meta.reason && `“${meta.reason}”`].filter(Boolean).join(" ");
  }
  return JSON.stringify(meta);
}
