// What an operator looks at first: tasks by state, the last hour's steps
// and failures a minute at a time, the templates failing most, open circuit
// breakers and live workers. Read again every five seconds.
import { api } from "./api.js";
import { h, s, badge, ago, link, replace } from "./dom.js";

export function overviewPage(root) {
  const body = h("div", { class: "overview" });
  replace(root, h("h2", {}, "Overview"), body);
  let timer = null;
  let stopped = false;
  async function load() {
    try {
      const [stats, workers] = await Promise.all([api("/v1/stats"), api("/v1/workers").then((r) => r.workers)]);
      render(stats, workers);
    } catch (e) {
      replace(body, h("p", { class: "problem" }, e.message));
    }
    if (!stopped) timer = setTimeout(load, 5000);
  }
  function render(stats, workers) {
    const byState = {};
    for (const t of stats.templates) for (const [st, n] of Object.entries(t.tasks)) byState[st] = (byState[st] || 0) + n;
    const live = workers.filter((w) => w.state === "live");
    const breakers = live.flatMap((w) => (w.open_circuits || []).map((c) => ({ ...c, worker: w })));
    const r = stats.recent;
    replace(
      body,
      h(
        "div",
        { class: "cards" },
        Object.entries(byState).map(([st, n]) =>
          h("a", { class: "card", href: `/tasks?state=${st}`, "data-nav": "", "data-test": `count-${st}` }, h("div", { class: "big" }, String(n)), badge(st)),
        ),
        h("div", { class: "card" }, h("div", { class: "big" }, String(r.failed_tasks)), "tasks failed, last hour"),
        h("div", { class: "card" }, h("div", { class: "big" }, String(r.retries)), "retries, last hour"),
        h("a", { class: "card", href: "/workers", "data-nav": "" }, h("div", { class: "big" }, String(live.length)), "live workers"),
      ),
      h("section", {}, h("h3", {}, "Steps per minute, last hour"), chart(r.per_minute || [])),
      h(
        "div",
        { class: "split" },
        h(
          "section",
          {},
          h("h3", {}, "Templates failing most (last hour)"),
          (r.failing_templates || []).length
            ? h(
                "table",
                { "data-test": "failing" },
                h("thead", {}, h("tr", {}, h("th", {}, "Template"), h("th", {}, "Failed attempts"), h("th", {}, "Failed tasks"))),
                h("tbody", {}, r.failing_templates.map((t) =>
                  h("tr", {},
                    h("td", {}, link(`/tasks?state=error&namespace=${encodeURIComponent(t.namespace)}&name=${encodeURIComponent(t.name)}`, `${t.namespace}/${t.name}`)),
                    h("td", { class: "num" }, String(t.failed_attempts)),
                    h("td", { class: "num" }, String(t.failed_tasks))))),
              )
            : h("p", { class: "empty" }, "No failures in the last hour."),
        ),
        h(
          "section",
          {},
          h("h3", {}, "Open circuit breakers"),
          breakers.length
            ? h("table", { "data-test": "breakers" }, h("tbody", {}, breakers.map((b) =>
                h("tr", {}, h("td", {}, h("code", {}, b.handler)), h("td", {}, badge(b.state)), h("td", {}, `${b.worker.language} worker ${b.worker.host}:${b.worker.pid}`)))))
            : h("p", { class: "empty" }, "None open."),
          h("h3", {}, "Live workers"),
          live.length
            ? h("ul", { class: "workers" }, live.map((w) => h("li", {}, `${w.language} · ${w.host}:${w.pid} · ${w.handlers.length} handlers · heartbeat ${ago(w.heartbeat_at)}`)))
            : h("p", { class: "empty" }, "No live worker."),
        ),
      ),
    );
    root.dataset.ready = "true";
  }
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// Completed and failed steps a minute at a time, as bars.
function chart(minutes) {
  const W = 720;
  const H = 120;
  const now = Math.floor(Date.now() / 60000);
  const by = new Map(minutes.map((m) => [Math.floor(new Date(m.minute).getTime() / 60000), m]));
  const slots = Array.from({ length: 60 }, (_, i) => by.get(now - 59 + i) || { completed_steps: 0, failed_attempts: 0 });
  const max = Math.max(1, ...slots.map((m) => m.completed_steps + m.failed_attempts));
  const bw = W / 60;
  const bars = slots.flatMap((m, i) => {
    const okH = (m.completed_steps / max) * (H - 14);
    const badH = (m.failed_attempts / max) * (H - 14);
    return [
      s("rect", { x: i * bw + 1, y: H - okH, width: bw - 2, height: okH, class: "ok" }, s("title", {}, `${m.completed_steps} completed, ${m.failed_attempts} failed`)),
      s("rect", { x: i * bw + 1, y: H - okH - badH, width: bw - 2, height: badH, class: "bad" }),
    ];
  });
  const total = slots.reduce((a, m) => a + m.completed_steps, 0);
  const failed = slots.reduce((a, m) => a + m.failed_attempts, 0);
  return h(
    "div",
    { class: "chart", "data-test": "chart" },
    s("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", height: H, preserveAspectRatio: "none" }, ...bars),
    h("p", { class: "small" }, `${total} steps completed, ${failed} failed attempts in the last hour; at most ${max} in a minute (green completed, red failed; one bar a minute, now at the right)`),
  );
}
