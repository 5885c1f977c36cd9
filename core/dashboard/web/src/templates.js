// Templates: each one's DAG drawn from its definition, its input schema
// and its versions.
import { h, json, link, replace } from "./dom.js";
import { drawGraph } from "./graph.js";

export function templatesPage(root, templates) {
  replace(root, h("h2", {}, "Templates"), h("p", {}, "Loading…"));
  templates().then((all) => {
    const groups = new Map();
    for (const t of all) {
      const k = `${t.namespace}/${t.name}`;
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(t);
    }
    replace(
      root,
      h("h2", {}, "Templates"),
      h(
        "table",
        { "data-test": "templates" },
        h("thead", {}, h("tr", {}, ["Template", "Versions", "Steps", "Description"].map((x) => h("th", {}, x)))),
        h("tbody", {}, [...groups].map(([k, vs]) =>
          h("tr", {},
            h("td", {}, link(`/templates/${k}`, k)),
            h("td", {}, vs.map((v) => v.version).join(", ")),
            h("td", { class: "num" }, String(vs[vs.length - 1].steps.length)),
            h("td", {}, vs[vs.length - 1].description || "")))),
      ),
    );
    root.dataset.ready = "true";
  });
}

export function templatePage(root, namespace, name, templates) {
  replace(root, h("h2", {}, `${namespace}/${name}`), h("p", {}, "Loading…"));
  templates().then((all) => {
    const versions = all.filter((t) => t.namespace === namespace && t.name === name);
    if (!versions.length) {
      replace(root, h("h2", {}, `${namespace}/${name}`), h("p", { class: "problem" }, "No such template."));
      return;
    }
    const want = new URLSearchParams(location.search).get("version");
    const t = versions.find((v) => v.version === want) || versions[versions.length - 1];
    const nodes = t.steps.map((st) => ({ id: st.name, label: st.name, sub: `${st.type} · ${st.handler}`, state: "definition" }));
    const edges = t.steps.flatMap((st) => st.dependencies.map((d) => [d, st.name]));
    replace(
      root,
      h("h2", {}, `${namespace}/${name} `, h("small", {}, t.version)),
      t.description && h("p", {}, t.description),
      h("p", {}, "Versions: ", versions.map((v) => [link(`/templates/${namespace}/${name}?version=${encodeURIComponent(v.version)}`, v.version), " "]),
        " · ", link(`/tasks?namespace=${encodeURIComponent(namespace)}&name=${encodeURIComponent(name)}`, "its tasks")),
      h("div", { class: "split" },
        h("section", {}, h("h3", {}, "Steps"), h("div", { class: "graph", "data-test": "graph" }, drawGraph(nodes, edges))),
        h("section", {}, h("h3", {}, "Input schema"), t.input_schema ? json(t.input_schema) : h("p", { class: "empty" }, "Any context."),
          h("h3", {}, "Steps"),
          h("table", {}, h("thead", {}, h("tr", {}, ["Step", "Type", "Handler", "Depends on"].map((x) => h("th", {}, x)))), h("tbody", {}, t.steps.map((st) => h("tr", {}, h("td", {}, st.name), h("td", {}, st.type), h("td", {}, h("code", {}, st.handler)), h("td", {}, st.dependencies.join(", ")))))))),
    );
    root.dataset.ready = "true";
  });
}
