// A task: its DAG (the steps made at run time included, the template's
// steps never made drawn as skipped), the selected step in full, every
// attempt on a timeline, the audit trail, and the actions the session's
// scope allows. The server pushes the task again whenever it changes.
import { api, can, stream } from "./api.js";
import { h, badge, json, when, link, replace } from "./dom.js";
import { drawGraph, summary } from "./graph.js";
import { confirmAction } from "./dialog.js";
import { timeline, audit } from "./timeline.js";
import { errorText } from "./tasks.js";

const TERMINAL = new Set(["complete", "error", "cancelled", "resolved_manually"]);
// A template step that made at least this many steps is drawn as a group.
const GROUP_FROM = 24;
const RESOLVABLE = new Set(["pending", "enqueued", "error", "waiting_for_retry", "cancelled"]);

export function taskPage(root, id, navigate, templates) {
  let view = null;
  let template = null;
  let selected = new URLSearchParams(location.search).get("step");
  let graphKey = "";
  const status = h("span", { class: "live", "data-test": "live" }, "connecting");
  const head = h("div", { class: "task-head" });
  const message = h("p", { class: "message", role: "status", "data-test": "message" });
  const graph = h("div", { class: "graph", "data-test": "graph" });
  const stepPanel = h("div", { class: "step-panel", "data-test": "step" });
  const times = h("div", {});
  const trail = h("div", {});
  replace(
    root,
    h("h2", {}, "Task ", h("code", {}, id), " ", status),
    message,
    head,
    h("div", { class: "split" }, h("section", {}, h("h3", {}, "Steps"), graph), h("section", {}, stepPanel)),
    h("section", {}, h("h3", {}, "Timeline"), times),
    h("section", {}, h("h3", {}, "Audit trail"), trail),
  );

  async function act(what, path, body) {
    try {
      await api(path, { method: "POST", body });
      message.className = "message ok";
      message.textContent = `${what}: done.`;
    } catch (e) {
      message.className = "message problem";
      message.textContent = `${what} refused (${e.status}): ${e.message}`;
    }
  }

  function select(name) {
    selected = name;
    const url = new URL(location.href);
    url.searchParams.set("step", name);
    history.replaceState(null, "", url);
    for (const el of graph.querySelectorAll(".node")) el.classList.toggle("selected", el.dataset.step === name);
    renderStep();
  }

  function renderHead() {
    const t = view;
    const actions = [];
    if (can("admin") && ["error", "blocked_by_failures"].includes(t.state)) {
      actions.push(
        h("button", {
          class: "danger", "data-action": "retry-task",
          onclick: async () => {
            const ok = await confirmAction({ title: "Retry the task", description: "Every step in error runs again with fresh attempts; what completed is not run again.", confirm: "Retry task" });
            if (ok) act("Retry", `/v1/tasks/${id}/retry`, { reason: ok.reason });
          },
        }, "Retry task"),
      );
    }
    if (can("write") && !TERMINAL.has(t.state)) {
      actions.push(
        h("button", {
          class: "danger", "data-action": "cancel",
          onclick: async () => {
            const ok = await confirmAction({ title: "Cancel the task", description: "The task and its live steps are cancelled.", confirm: "Cancel task" });
            if (ok) act("Cancel", `/v1/tasks/${id}/cancel`, { reason: ok.reason });
          },
        }, "Cancel task"),
      );
    }
    replace(
      head,
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "State"), h("dd", { "data-test": "task-state" }, badge(t.state)),
        h("dt", {}, "Template"), h("dd", {}, link(`/templates/${t.namespace}/${t.name}?version=${encodeURIComponent(t.version)}`, `${t.namespace}/${t.name} ${t.version}`)),
        h("dt", {}, "Created"), h("dd", {}, when(t.created_at)),
        h("dt", {}, "Updated"), h("dd", {}, when(t.updated_at)),
        t.completed_at && [h("dt", {}, "Ended"), h("dd", {}, when(t.completed_at))],
        t.run_at && [h("dt", {}, "Runs at"), h("dd", {}, when(t.run_at))],
        t.idempotency_key && [h("dt", {}, "Idempotency key"), h("dd", {}, t.idempotency_key)],
        t.trace?.trace_id && [h("dt", {}, "Trace"), h("dd", {}, h("code", {}, t.trace.trace_id))],
        t.error && [h("dt", {}, "Error"), h("dd", { class: "problem" }, errorText(t.error))],
      ),
      actions.length ? h("div", { class: "actions", "data-test": "task-actions" }, actions) : "",
      h("details", {}, h("summary", {}, "Context"), json(t.context)),
      t.result !== null && t.result !== undefined ? h("details", { open: JSON.stringify(t.result).length < 600 }, h("summary", {}, "Result"), json(t.result)) : "",
    );
  }

  function nodesAndEdges() {
    const stepNode = (st) => ({ id: st.name, label: st.name, sub: st.cursor ? cursorText(st.cursor) : st.handler, state: st.state });
    // A template step that made many steps (a batch's workers) is drawn as
    // one group of them; its members' edges are the group's.
    const byTemplate = new Map();
    for (const st of view.steps) {
      if (!byTemplate.has(st.template_step)) byTemplate.set(st.template_step, []);
      byTemplate.get(st.template_step).push(st);
    }
    const groupOf = new Map();
    const nodes = [];
    for (const [ts, steps] of byTemplate) {
      if (steps.length >= GROUP_FROM) {
        const id = `${ts} (group)`;
        for (const st of steps) groupOf.set(st.name, id);
        nodes.push({ id, label: ts, state: "group", members: steps.map(stepNode) });
      } else {
        nodes.push(...steps.map(stepNode));
      }
    }
    const at = (name) => groupOf.get(name) ?? name;
    const seen = new Set();
    const edges = [];
    const edge = (a, b) => {
      const k = `${a}>${b}`;
      if (a !== b && !seen.has(k)) {
        seen.add(k);
        edges.push([a, b]);
      }
    };
    for (const st of view.steps) for (const d of st.dependencies) edge(at(d), at(st.name));
    // The template's steps with no step made from them: not taken (a
    // decision's other branch, an empty batch) once the task has ended,
    // not yet made while it runs.
    if (template) {
      const ghost = TERMINAL.has(view.state) ? "skipped" : "not_yet_created";
      const made = (name) => byTemplate.has(name);
      const drawn = (name) => (byTemplate.get(name) || []).map((st) => at(st.name));
      for (const ts of template.steps) {
        if (made(ts.name)) {
          for (const d of ts.dependencies) if (!made(d)) for (const n of drawn(ts.name)) edge(d, n);
          continue;
        }
        nodes.push({ id: ts.name, label: ts.name, sub: ghost.replaceAll("_", " "), state: ghost, ghost: true });
        for (const d of ts.dependencies) for (const f of made(d) ? drawn(d) : [d]) edge(f, ts.name);
      }
    }
    return { nodes, edges };
  }

  function renderGraph() {
    const { nodes, edges } = nodesAndEdges();
    const key = nodes.map((n) => (n.members ? n.members.map((m) => m.id).join(",") : n.id)).join("|") + "#" + edges.map((e) => e.join(">")).join("|");
    if (key === graphKey) {
      // Same shape: only the states change, no layout again.
      const byId = new Map(nodes.flatMap((n) => n.members || [n]).map((n) => [n.id, n]));
      for (const el of graph.querySelectorAll(".node")) {
        const n = byId.get(el.dataset.step);
        if (!n || el.dataset.state === n.state) continue;
        el.classList.replace(`state-${el.dataset.state}`, `state-${n.state}`);
        el.dataset.state = n.state;
        el.querySelector("title").textContent = `${n.label} — ${n.state.replaceAll("_", " ")}${n.sub ? " — " + n.sub : ""}`;
      }
      for (const n of nodes.filter((x) => x.members)) {
        const text = graph.querySelector(`[data-group="${CSS.escape(n.id)}"] .summary`);
        if (text) text.textContent = summary(n.members);
      }
      return;
    }
    graphKey = key;
    replace(graph, drawGraph(nodes, edges, { selected, onSelect: select }));
    root.dataset.drawn = "true";
  }

  function renderStep() {
    const st = view.steps.find((x) => x.name === selected);
    if (!st) {
      replace(stepPanel, h("p", { class: "empty" }, "Select a step in the graph to see it in full."));
      return;
    }
    const deps = Object.fromEntries(st.dependencies.map((d) => [d, view.steps.find((x) => x.name === d)?.result ?? null]));
    const actions = [];
    if (can("admin") && st.state === "error" && ["error", "blocked_by_failures"].includes(view.state)) {
      actions.push(h("button", {
        class: "danger", "data-action": "retry-step",
        onclick: async () => {
          const ok = await confirmAction({ title: `Retry step ${st.name}`, description: "The step runs again with fresh attempts.", confirm: "Retry step" });
          if (ok) act("Retry step", `/v1/tasks/${id}/steps/${encodeURIComponent(st.name)}/retry`, { reason: ok.reason });
        },
      }, "Retry step"));
    }
    if (can("admin") && RESOLVABLE.has(st.state) && !["complete", "cancelled", "resolved_manually"].includes(view.state)) {
      actions.push(h("button", {
        class: "danger", "data-action": "resolve-step",
        onclick: async () => {
          const ok = await confirmAction({
            title: `Resolve step ${st.name} by hand`,
            description: "The step ends resolved with this result; its dependents run with it.",
            confirm: "Resolve step",
            result: st.result ?? {},
          });
          if (ok) act("Resolve", `/v1/tasks/${id}/steps/${encodeURIComponent(st.name)}/resolve`, { result: ok.result, reason: ok.reason });
        },
      }, "Resolve step…"));
    }
    const e = st.error;
    replace(
      stepPanel,
      h("h3", {}, `Step ${st.name} `, badge(st.state)),
      actions.length ? h("div", { class: "actions", "data-test": "step-actions" }, actions) : "",
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Handler"), h("dd", {}, h("code", {}, st.handler)),
        h("dt", {}, "Type"), h("dd", {}, st.type.replaceAll("_", " ")),
        st.template_step !== st.name && [h("dt", {}, "Template step"), h("dd", {}, st.template_step)],
        h("dt", {}, "Attempts"), h("dd", {}, `${st.attempts} of ${st.max_attempts}`),
        st.waiting_for_handler && [h("dt", {}, "Waiting"), h("dd", { class: "problem" }, `no live worker serves ${st.waiting_for_handler}`)],
        st.cursor && [h("dt", {}, "Cursor"), h("dd", {}, cursorText(st.cursor))],
      ),
      e &&
        h(
          "div",
          { class: "error-box", "data-test": "step-error" },
          h("p", {}, h("strong", {}, e.error_type || e.kind), ": ", e.message),
          h("p", { class: "small" }, `${e.kind}${e.code ? ", " + e.code : ""}`),
          e.backtrace && h("pre", { class: "traceback", "data-test": "traceback" }, e.backtrace),
        ),
      st.result !== null && st.result !== undefined && h("details", { open: true }, h("summary", {}, "Result"), json(st.result)),
      h("details", { open: !e }, h("summary", {}, "Input: its dependencies' results"), json(deps)),
      h("details", {}, h("summary", {}, "Input: the task's context"), json(view.context)),
      h("details", {}, h("summary", {}, "Config"), json(st.config)),
    );
  }

  function render(v) {
    view = v;
    // A failed step is what an operator opens a task for: shown first.
    if (!selected) selected = v.steps.find((st) => st.state === "error")?.name ?? null;
    renderHead();
    renderGraph();
    renderStep();
    replace(times, timeline(v.transitions, select));
    replace(trail, audit(v.transitions));
    root.dataset.ready = "true";
  }

  function gone(reason) {
    replace(root, h("h2", {}, "Task ", h("code", {}, id)), h("p", { class: "problem", "data-test": "gone" }, reason));
    root.dataset.ready = "true";
  }

  // The first read and the stream's documents, whichever comes first, each
  // drawn once: the newest wins, an unchanged one is not drawn again.
  let shown = null;
  let newest = 0;
  async function show(v, text, order) {
    const all = await templates();
    if (order < newest || text === shown) return;
    newest = order;
    template ||= all.find((t) => t.namespace === v.namespace && t.name === v.name && t.version === v.version) || null;
    shown = text;
    render(v);
  }
  let sent = 0;
  api(`/v1/tasks/${id}`, { raw: true })
    .then(({ data, text }) => show(data, text, 0))
    .catch((e) => gone(e.message));
  return stream(`/ui/events/tasks/${id}`, {
    update: (v, text) => show(v, text, ++sent),
    gone: (why) => gone(why || "The task is gone."),
    state: (st) => (status.textContent = st),
    shown: () => shown,
  });
}

function cursorText(c) {
  if (c && typeof c === "object" && "start" in c && "end" in c) return `batch ${c.batch_no}: items ${c.start}–${c.end - 1}`;
  return JSON.stringify(c);
}
