// Small DOM helpers: every text goes in through textContent or attributes,
// never innerHTML, so nothing a task carries can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const SVG = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function json(value) {
  return h("pre", { class: "json" }, value === undefined ? "" : JSON.stringify(value, null, 2));
}

export function badge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state }, state.replaceAll("_", " "));
}

export function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return d.toISOString().replace("T", " ");
}

// A time of the API (RFC 3339, to the nanosecond) in milliseconds, keeping
// the microseconds Date.parse drops.
export function ms(t) {
  const base = Date.parse(t);
  const frac = /\.(\d+)/.exec(t);
  return frac ? base + Number(frac[1].padEnd(6, "0").slice(3, 6)) / 1000 : base;
}

// "12s ago", kept current by main.js (every element with data-at).
export function agoCell(t) {
  return h("td", { title: when(t), "data-at": t }, ago(t));
}

export function ago(t) {
  if (!t) return "";
  const secs = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  if (secs < 60) return `${secs}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
  return `${Math.floor(secs / 86400)}d ago`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}

export function link(href, ...children) {
  return h("a", { href, "data-nav": "" }, ...children);
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}
