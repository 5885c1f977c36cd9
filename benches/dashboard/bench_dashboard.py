"""How fast the dashboard's heavy pages are ready in a real browser
(Debian's chromium, Playwright), against a PostgreSQL-backed `serve`:

- the task list with 100,000 tasks in the database (made with SQL, not
  run: 400,000 steps beside them, a tenth of the tasks failed), unfiltered
  and filtered to failed tasks: from navigation start to the page's rows
  drawn;
- a 1,002-step batch task (csv_batch with a batch of one row, over the
  1,000 rows of tests/fixtures/products.csv, run by a Rust worker): from
  navigation start to its DAG laid out and drawn, and the layout's own
  share.

Each page is loaded RUNS times (fresh navigations, assets revalidated);
median and worst are printed. Targets (issue #20): list <= 300 ms,
1,000-step task <= 1 s.
Usage: benches/dashboard/run [stepgraph binary]"""

import hashlib
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import stepgraph
from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "tests" / "fixtures" / "templates"
BIN = os.environ.get("STEPGRAPH_BIN", str(ROOT / "target" / "release" / "stepgraph"))
RUNS = int(os.environ.get("RUNS", "10"))
TASKS = int(os.environ.get("TASKS", "100000"))
ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
DB = f"sg_dashboard_bench_{os.getpid()}"
URL = f"postgres://postgres@127.0.0.1:5432/{DB}"

FILL = """
-- Time-ordered ids (UUIDv7 layout: 48 bits of milliseconds first), a task
-- a millisecond over the last TASKS ms, 4 steps each; every tenth failed.
INSERT INTO sg_tasks (id, namespace, name, version, context, state, priority, error, created_at, updated_at, completed_at)
SELECT id, 'e2e', 'linear', '1.0.0', '{"even_number": 6}', CASE WHEN n % 10 = 0 THEN 'error' ELSE 'complete' END, 0,
       CASE WHEN n % 10 = 0 THEN '{"step": "linear_step_2", "error": {"kind": "permanent", "message": "made up"}}'::jsonb END,
       at, at, at
  FROM (SELECT n, at,
               encode(set_byte(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send((extract(epoch FROM at) * 1000)::bigint) FROM 3 FOR 6) FROM 1 FOR 6),
                               6, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112), 'hex')::uuid AS id
          FROM (SELECT n, now() - (:tasks - n) * interval '1 millisecond' - interval '1 hour' AS at
                  FROM generate_series(1, :tasks) n) g) t;
INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts, max_attempts, created_at)
SELECT gen_random_uuid(), t.id, 'linear_step_' || k, 'linear_step_' || k, 'standard', 'math.square', '{}',
       CASE WHEN t.state = 'error' AND k = 2 THEN 'error' WHEN t.state = 'error' AND k > 2 THEN 'cancelled' ELSE 'complete' END,
       1, 3, t.created_at
  FROM sg_tasks t, generate_series(1, 4) k;
ANALYZE;
"""


def psql(*args, **kw):
    return subprocess.run(ADMIN + list(args), check=True, text=True, capture_output=True, **kw).stdout


def started(proc):
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        sys.exit(f"serve did not start: {line!r}")
    return line.split()[2].removeprefix("http://")


def timed(page, url, selector):
    """Ms from navigation start until `selector` is in the page."""
    page.goto(url)
    page.wait_for_selector(selector, timeout=60000)
    return page.evaluate("performance.now()")


def main():
    psql("-c", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql("-c", f"CREATE DATABASE {DB}")
    work = pathlib.Path(tempfile.mkdtemp())
    procs = []
    try:
        env = dict(os.environ, STEPGRAPH_DATABASE_URL=URL, STEPGRAPH_LOG="warn")
        # csv_batch as the fixtures define it, with a batch of one row: a
        # worker step per row of the fixture's 1,000.
        templates = work / "templates"
        templates.mkdir()
        for f in TEMPLATES.glob("*.yaml"):
            (templates / f.name).write_text(f.read_text().replace("batch_size: 200", "batch_size: 1"))
        rows = ROOT / "tests" / "fixtures" / "products.csv"
        subprocess.run([BIN, "migrate", "--templates", str(templates)], check=True, env=env, capture_output=True)
        t0 = time.time()
        psql("-d", DB, "-v", f"tasks={TASKS}", input=FILL)
        print(f"filled {TASKS:,} tasks and {4 * TASKS:,} steps in {time.time() - t0:.1f} s")

        serve = subprocess.Popen([BIN, "serve", "--templates", str(templates), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(serve)
        addr = started(serve)
        procs.append(subprocess.Popen([BIN, "worker", "--templates", str(templates)], env=env, stdout=subprocess.DEVNULL))
        client = stepgraph.Client(addr)
        t0 = time.time()
        batch = client.run("e2e", "csv_batch", {"csv_file_path": str(rows)}, timeout=600)
        assert batch.state == "complete", batch.state
        print(f"ran a csv_batch task of {len(batch.steps)} steps in {time.time() - t0:.1f} s")

        base = f"http://{addr}"
        results = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("STEPGRAPH_CHROMIUM", "/usr/bin/chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/")  # assets cached (and revalidated) like a returning operator's
            page.wait_for_selector("#main[data-ready=true]")
            cases = [
                (f"task list, {TASKS:,} tasks", "/tasks", "tr[data-task]", "<= 300 ms"),
                ("task list, failed only", "/tasks?state=error", "tr[data-task]", "<= 300 ms"),
                (f"task of {len(batch.steps)} steps (DAG drawn)", f"/tasks/{batch.task_id}", "#main[data-drawn=true]", "<= 1000 ms"),
            ]
            for name, path, selector, target in cases:
                times = [timed(page, base + path, selector) for _ in range(RUNS)]
                layout = page.evaluate("document.querySelector('.dag-wrap')?.dataset.layoutMs ?? null")
                results.append((name, statistics.median(times), max(times), layout, target))
            browser.close()
        print(f"\n{'page':<36} {'median':>9} {'worst':>9} {'layout':>8}  target   ({RUNS} loads each)")
        for name, med, worst, layout, target in results:
            lay = f"{float(layout):.0f} ms" if layout else ""
            print(f"{name:<36} {med:7.0f} ms {worst:6.0f} ms {lay:>8}  {target}")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        psql("-c", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
