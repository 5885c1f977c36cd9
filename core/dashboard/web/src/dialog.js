// The confirmation every action goes through: what it does, a reason for
// the audit trail, and for a resolve the result as JSON, checked as typed.
import { h } from "./dom.js";

export function confirmAction({ title, description, confirm, result }) {
  return new Promise((resolve) => {
    const reason = h("input", { type: "text", name: "reason", placeholder: "why (kept in the audit trail)", "data-test": "reason" });
    const problem = h("p", { class: "problem", role: "alert" });
    let editor = null;
    if (result !== undefined) {
      editor = h("textarea", { name: "result", rows: 8, spellcheck: "false", "data-test": "result" });
      editor.value = JSON.stringify(result, null, 2);
      editor.addEventListener("input", () => check());
    }
    const ok = h("button", { type: "submit", class: "danger", "data-test": "confirm" }, confirm);
    const cancel = h("button", { type: "button", "data-test": "dismiss", onclick: () => close(null) }, "Cancel");
    const form = h(
      "form",
      { method: "dialog" },
      h("h3", {}, title),
      h("p", {}, description),
      editor && h("label", {}, "Result (JSON)", editor),
      h("label", {}, "Reason", reason),
      problem,
      h("div", { class: "buttons" }, cancel, ok),
    );
    const dialog = h("dialog", { class: "confirm" }, form);
    function check() {
      if (!editor) return true;
      try {
        JSON.parse(editor.value);
        problem.textContent = "";
        ok.disabled = false;
        return true;
      } catch (e) {
        problem.textContent = `Not JSON: ${e.message}`;
        ok.disabled = true;
        return false;
      }
    }
    function close(value) {
      dialog.close();
      dialog.remove();
      resolve(value);
    }
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!check()) return;
      close({ reason: reason.value, result: editor ? JSON.parse(editor.value) : undefined });
    });
    dialog.addEventListener("cancel", () => resolve(null));
    document.body.append(dialog);
    dialog.showModal();
    (editor || reason).focus();
  });
}
