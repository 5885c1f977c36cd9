// A DAG laid out by dagre and drawn as SVG: each node a box coloured by its
// state (the CSS classes state-<state>), each edge a path dagre routed. A
// group (the many steps one template step made at run time, such as a
// batch's workers) is one node to dagre, its members drawn inside it as a
// grid of small boxes, each still a step with its state and its click.
import dagre from "@dagrejs/dagre";
import { s } from "./dom.js";

const NODE_W = 168;
const NODE_H = 40;
const CELL = 20;
const GROUP_HEAD = 34;

function groupSize(n) {
  const cols = Math.min(32, Math.max(8, Math.ceil(Math.sqrt(n * 2.5))));
  const rows = Math.ceil(n / cols);
  return { cols, width: Math.max(NODE_W, cols * CELL + 16), height: GROUP_HEAD + rows * CELL + 8 };
}

export function summary(members) {
  const counts = {};
  for (const m of members) counts[m.state] = (counts[m.state] || 0) + 1;
  return Object.entries(counts)
    .map(([st, n]) => `${n} ${st.replaceAll("_", " ")}`)
    .join(", ");
}

// nodes: [{id, label, sub, state, ghost, members?}], edges: [[from, to]]
export function drawGraph(nodes, edges, { selected, onSelect } = {}) {
  const started = performance.now();
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "TB", nodesep: 24, ranksep: 44, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of nodes) {
    const size = n.members ? groupSize(n.members.length) : { width: NODE_W, height: NODE_H };
    g.setNode(n.id, { width: size.width, height: size.height });
  }
  for (const [a, b] of edges) if (g.hasNode(a) && g.hasNode(b)) g.setEdge(a, b);
  dagre.layout(g);
  const { width, height } = g.graph();

  const ghostIds = new Set(nodes.filter((n) => n.ghost).map((n) => n.id));
  const edgePaths = g.edges().map((e) => {
    const d = g.edge(e).points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
    return s("path", { d, class: ghostIds.has(e.w) ? "edge ghost" : "edge", "marker-end": "url(#arrow)" });
  });
  const step = (n, attrs, ...shape) =>
    s(
      "g",
      {
        ...attrs,
        class: ["node", `state-${n.state}`, n.ghost ? "ghost" : "", n.id === selected ? "selected" : "", attrs.class || ""].join(" "),
        "data-step": n.id,
        "data-state": n.state,
        tabindex: n.ghost ? undefined : 0,
        onclick: n.ghost || !onSelect ? undefined : () => onSelect(n.id),
        onkeydown: n.ghost || !onSelect ? undefined : (e) => e.key === "Enter" && onSelect(n.id),
      },
      s("title", {}, `${n.label} — ${n.state.replaceAll("_", " ")}${n.sub ? " — " + n.sub : ""}`),
      ...shape,
    );
  const boxes = nodes.map((n) => {
    const p = g.node(n.id);
    const x = p.x - p.width / 2;
    const y = p.y - p.height / 2;
    const at = `translate(${x.toFixed(1)},${y.toFixed(1)})`;
    if (!n.members) {
      return step(
        n,
        { transform: at },
        s("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
        s("text", { x: 8, y: 16, class: "label" }, clip(n.label, 22)),
        s("text", { x: 8, y: 32, class: "sub" }, clip(n.sub || n.state.replaceAll("_", " "), 26)),
      );
    }
    const { cols } = groupSize(n.members.length);
    return s(
      "g",
      { class: "group", transform: at, "data-group": n.id },
      s("rect", { width: p.width, height: p.height, rx: 6, class: "group-box" }),
      s("text", { x: 8, y: 15, class: "label" }, `${n.label} × ${n.members.length}`),
      s("text", { x: 8, y: 28, class: "sub summary" }, summary(n.members)),
      ...n.members.map((m, i) =>
        step(
          m,
          { transform: `translate(${8 + (i % cols) * CELL},${GROUP_HEAD + Math.floor(i / cols) * CELL})`, class: "cell" },
          s("rect", { width: CELL - 4, height: CELL - 4, rx: 3 }),
        ),
      ),
    );
  });
  const svg = s(
    "svg",
    { width: Math.ceil(width), height: Math.ceil(height), viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`, class: "dag" },
    s(
      "defs",
      {},
      s(
        "marker",
        { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }),
      ),
    ),
    ...edgePaths,
    ...boxes,
  );
  const wrap = document.createElement("div");
  wrap.className = "dag-wrap";
  wrap.append(svg);
  wrap.dataset.nodes = String(nodes.reduce((k, n) => k + (n.members ? n.members.length : 1), 0));
  wrap.dataset.layoutMs = (performance.now() - started).toFixed(1);
  return wrap;
}

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}
