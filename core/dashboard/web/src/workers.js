// Workers: live and gone, their languages, handlers, concurrency and last
// heartbeat. Read again every five seconds.
import { api } from "./api.js";
import { h, badge, agoCell, replace } from "./dom.js";

export function workersPage(root) {
  const body = h("div", {});
  replace(root, h("h2", {}, "Workers"), body);
  let timer = null;
  let stopped = false;
  async function load() {
    try {
      const { workers } = await api("/v1/workers");
      replace(
        body,
        workers.length
          ? h(
              "table",
              { "data-test": "workers" },
              h("thead", {}, h("tr", {}, ["State", "Language", "Host", "PID", "Namespaces", "Concurrency", "Handlers", "Open breakers", "Heartbeat", "Started"].map((x) => h("th", {}, x)))),
              h("tbody", {}, workers.map((w) =>
                h("tr", { "data-worker": w.id, "data-state": w.state },
                  h("td", {}, badge(w.state)),
                  h("td", {}, w.language),
                  h("td", {}, w.host),
                  h("td", { class: "num" }, String(w.pid)),
                  h("td", {}, w.namespaces.join(", ")),
                  h("td", { class: "num" }, String(w.concurrency)),
                  h("td", { class: "handlers" }, w.handlers.map((x) => h("code", {}, x))),
                  h("td", {}, (w.open_circuits || []).map((c) => h("div", {}, h("code", {}, c.handler), " ", badge(c.state)))),
                  agoCell(w.heartbeat_at),
                  agoCell(w.started_at)))),
            )
          : h("p", { class: "empty" }, "No worker has registered."),
      );
      root.dataset.ready = "true";
    } catch (e) {
      replace(body, h("p", { class: "problem" }, e.message));
    }
    if (!stopped) timer = setTimeout(load, 5000);
  }
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
