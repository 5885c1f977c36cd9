// The task list: the API's filters and keyset pages, kept in the address so
// a view can be shared; the page shown is pushed again by the server (SSE)
// whenever what it holds changes.
import { api, stream } from "./api.js";
import { h, badge, agoCell, link, replace } from "./dom.js";

export const TASK_STATES = [
  "scheduled", "pending", "initializing", "enqueuing_steps", "steps_in_process", "evaluating_results",
  "waiting_for_retry", "blocked_by_failures", "complete", "error", "cancelled", "resolved_manually",
];

const FIELDS = ["namespace", "name", "version", "idempotency_key"];

export function tasksPage(root, navigate) {
  const params = new URLSearchParams(location.search);
  const states = new Set(params.getAll("state").flatMap((s) => s.split(",")).filter(Boolean));

  const stateBoxes = TASK_STATES.map((st) =>
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "state", value: st, checked: states.has(st) }), st.replaceAll("_", " ")),
  );
  const inputs = Object.fromEntries(
    FIELDS.map((f) => [f, h("input", { type: "text", name: f, value: params.get(f) || "", placeholder: f.replaceAll("_", " ") })]),
  );
  const failed = h(
    "select",
    { name: "has_failed_step" },
    h("option", { value: "" }, "any steps"),
    h("option", { value: "true", selected: params.get("has_failed_step") === "true" }, "with a failed step"),
    h("option", { value: "false", selected: params.get("has_failed_step") === "false" }, "without a failed step"),
  );
  // Times are typed in the browser's zone and sent as RFC 3339 (UTC).
  const local = (iso) => (iso ? new Date(new Date(iso).getTime() - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16) : "");
  const after = h("input", { type: "datetime-local", name: "created_after", value: local(params.get("created_after")), title: "created at or after" });
  const before = h("input", { type: "datetime-local", name: "created_before", value: local(params.get("created_before")), title: "created before" });
  const limit = h(
    "select",
    { name: "limit" },
    [25, 50, 100, 200].map((n) => h("option", { value: n, selected: String(n) === (params.get("limit") || "50") }, `${n} per page`)),
  );
  const form = h(
    "form",
    { class: "filters", "data-test": "filters" },
    h("fieldset", { class: "states" }, h("legend", {}, "State"), stateBoxes),
    h("div", { class: "row" }, Object.values(inputs), failed, h("label", {}, "from ", after), h("label", {}, "to ", before), limit, h("button", { type: "submit" }, "Filter"),
      h("button", { type: "button", onclick: () => navigate("/tasks") }, "Clear")),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const box of form.querySelectorAll("input[name=state]:checked")) q.append("state", box.value);
    for (const f of FIELDS) if (inputs[f].value.trim()) q.set(f, inputs[f].value.trim());
    if (failed.value) q.set("has_failed_step", failed.value);
    if (after.value) q.set("created_after", new Date(after.value).toISOString());
    if (before.value) q.set("created_before", new Date(before.value).toISOString());
    if (limit.value !== "50") q.set("limit", limit.value);
    navigate("/tasks" + (q.toString() ? "?" + q : ""));
  });

  const status = h("span", { class: "live", "data-test": "live" }, "connecting");
  const table = h("div", { class: "table" });
  const pager = h("div", { class: "pager" });
  replace(root, h("h2", {}, "Tasks ", status), form, table, pager);

  const query = params.toString();
  function render(page) {
    if (!page.tasks.length) {
      replace(table, h("p", { class: "empty" }, "No task matches."));
    } else {
      replace(
        table,
        h(
          "table",
          { class: "tasks", "data-test": "tasks" },
          h("thead", {}, h("tr", {}, ["Task", "Template", "Version", "State", "Error", "Created", "Updated"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            page.tasks.map((t) =>
              h(
                "tr",
                { "data-task": t.id, "data-state": t.state },
                h("td", {}, link(`/tasks/${t.id}`, h("code", {}, t.id))),
                h("td", {}, `${t.namespace}/${t.name}`),
                h("td", {}, t.version),
                h("td", {}, badge(t.state)),
                h("td", { class: "error-cell" }, errorText(t.error)),
                agoCell(t.created_at),
                agoCell(t.updated_at),
              ),
            ),
          ),
        ),
      );
    }
    const next = new URLSearchParams(params);
    next.set("cursor", page.next_cursor || "");
    const first = new URLSearchParams(params);
    first.delete("cursor");
    replace(
      pager,
      params.get("cursor") ? link("/tasks?" + first, "« Newest") : "",
      page.next_cursor ? link("/tasks?" + next, "Older »") : "",
    );
    root.dataset.ready = "true";
  }
  // The first page comes from the API at once; the stream keeps it current.
  let shown = null;
  api("/v1/tasks" + (query ? "?" + query : ""), { raw: true }).then(
    ({ data, text }) => {
      // The stream may have drawn a newer page already.
      if (shown !== null) return;
      shown = text;
      render(data);
    },
    (e) => replace(table, h("p", { class: "problem" }, e.message)),
  );
  return stream("/ui/events/tasks" + (query ? "?" + query : ""), {
    update: (page, text) => {
      shown = text;
      render(page);
    },
    state: (st) => (status.textContent = st),
    shown: () => shown,
  });
}

export function errorText(error) {
  if (!error) return "";
  if (error.step) return `${error.step}: ${error.error?.message ?? ""}`.slice(0, 120);
  return String(error.message ?? JSON.stringify(error)).slice(0, 120);
}
