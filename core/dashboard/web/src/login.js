// The login page's only script: where to go after, and why the last try failed.
const q = new URLSearchParams(location.search);
const next = q.get("next");
if (next && next.startsWith("/") && !next.startsWith("//")) document.getElementById("next").value = next;
const problems = {
  unknown: "Unknown token.",
  missing: "Give a token.",
  https: "The session cookie is kept over HTTPS only (or on a loopback address): serve the dashboard behind HTTPS (a proxy that sends X-Forwarded-Proto: https).",
};
document.getElementById("problem").textContent = problems[q.get("failed")] || "";
