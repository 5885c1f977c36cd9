// The dashboard: one page whose address names the view; links inside it
// change the view without loading the page again.
import "./style.css";
import { api, loadSession, session } from "./api.js";
import { h, ago, replace } from "./dom.js";
import { overviewPage } from "./overview.js";
import { tasksPage } from "./tasks.js";
import { taskPage } from "./task.js";
import { templatesPage, templatePage } from "./templates.js";
import { workersPage } from "./workers.js";

let stop = null;
let templateCache = null;

function templates() {
  templateCache ||= api("/v1/templates").then((r) => r.templates);
  return templateCache;
}

function navigate(href) {
  history.pushState(null, "", href);
  route();
}

function route() {
  if (stop) stop();
  stop = null;
  const root = document.getElementById("main");
  root.dataset.ready = "false";
  delete root.dataset.drawn;
  const path = location.pathname;
  let m;
  for (const a of document.querySelectorAll("nav a[data-section]")) {
    a.classList.toggle("current", path === a.getAttribute("href") || (a.getAttribute("href") !== "/" && path.startsWith(a.getAttribute("href"))));
  }
  if (path === "/") stop = overviewPage(root);
  else if (path === "/tasks") stop = tasksPage(root, navigate);
  else if ((m = path.match(/^\/tasks\/([0-9a-fA-F-]{36})$/))) stop = taskPage(root, m[1], navigate, templates);
  else if (path === "/templates") templatesPage(root, templates);
  else if ((m = path.match(/^\/templates\/([^/]+)\/([^/]+)$/))) templatePage(root, decodeURIComponent(m[1]), decodeURIComponent(m[2]), templates);
  else if (path === "/workers") stop = workersPage(root);
  else replace(root, h("h2", {}, "Not found"), h("p", {}, `Nothing here: ${path}`));
}

async function boot() {
  await loadSession();
  const who = document.getElementById("who");
  who.textContent = session.open ? "open API (no tokens)" : `${session.name} (${session.scope})`;
  document.getElementById("csrf").value = session.csrf;
  if (session.open) document.getElementById("logout").hidden = true;
  document.body.dataset.scope = session.scope;
  document.addEventListener("click", (e) => {
    const a = e.target.closest("a[data-nav]");
    if (!a || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    navigate(a.getAttribute("href"));
  });
  window.addEventListener("popstate", route);
  setInterval(() => {
    for (const el of document.querySelectorAll("[data-at]")) el.textContent = ago(el.dataset.at);
  }, 5000);
  route();
}

boot();
