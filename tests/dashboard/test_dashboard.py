"""The dashboard in a real browser (Debian's chromium, driven by
Playwright) against a PostgreSQL-backed `stepgraph serve` and a Python
worker: log in, find the failed tasks, see the failed step's traceback,
retry it once the handler is fixed and watch it complete without a reload,
resolve a step by hand, cancel a task; a `read` token sees no action and
its actions are refused by the server too. Every page is screenshotted
into $STEPGRAPH_ARTIFACTS (default target/dashboard-screenshots)."""

import hashlib
import os
import pathlib
import re
import secrets
import subprocess
import time
import uuid

import pytest
import stepgraph
from playwright.sync_api import expect, sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTRA = ROOT / "tests" / "fixtures" / "extra"
ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"]
CHROMIUM = os.environ.get("STEPGRAPH_CHROMIUM", "/usr/bin/chromium")
SHOTS = pathlib.Path(os.environ.get("STEPGRAPH_ARTIFACTS", ROOT / "target" / "dashboard-screenshots"))
TOKENS = {"ops": ("admin", "sg_ops_secret"), "reader": ("read", "sg_reader_secret")}


def binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("STEPGRAPH_BIN", ROOT / "target" / "debug" / "stepgraph"))
    if not path.exists():
        pytest.fail(f"{path} does not exist: build it first (cargo build), or set STEPGRAPH_BIN")
    return path


@pytest.fixture
def database():
    name = f"sg_dashboard_{os.getpid()}"
    try:
        subprocess.run(ADMIN + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=True)
        subprocess.run(ADMIN + [f"CREATE DATABASE {name}"], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({e}); .ci/run starts it")
    yield f"postgres://postgres@127.0.0.1:5432/{name}"
    subprocess.run(ADMIN + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)


@pytest.fixture
def serve(database):
    tokens = ",".join(f"{n}:{scope}:sha256:{hashlib.sha256(t.encode()).hexdigest()}" for n, (scope, t) in TOKENS.items())
    env = dict(os.environ, STEPGRAPH_DATABASE_URL=database, STEPGRAPH_TOKENS=tokens, STEPGRAPH_LOG="warn")
    proc = subprocess.Popen(
        [binary(), "serve", "--templates", str(EXTRA), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            pytest.fail(f"serve did not start: {line!r}")
        yield line.split()[2].removeprefix("http://")
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no browser at {CHROMIUM}: install Debian's chromium (./scripts/dashboard-deps) or set STEPGRAPH_CHROMIUM")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def broken(ctx):
    path = ctx.input["required_file"]
    if not os.path.exists(path):
        raise stepgraph.PermanentError(f"inventory file {path} is missing")
    return {"found": path}


def fixed(ctx):
    return {"found": "fixed handler"}


def echo(ctx):
    return dict(ctx.dependency_results)


def worker(database, check):
    return stepgraph.Worker(
        database,
        EXTRA,
        [stepgraph.handler("util.require_file")(check), stepgraph.handler("util.echo_dependencies")(echo)],
        namespaces=["e2e"],
    )


def login(page, base, who):
    page.goto(base + "/tasks")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Ftasks"))
    page.fill("#token", TOKENS[who][1])
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/tasks")
    expect(page.locator("#who")).to_contain_text(f"{who} ({TOKENS[who][0]})")


def uuid_v7(days_ago):
    """A task id as the engine makes them (UUIDv7), of a time `days_ago` days back."""
    ms = int((time.time() - days_ago * 86400) * 1000)
    tail = secrets.token_hex(9)
    return str(uuid.UUID(f"{ms:012x}7{tail[:3]}8{tail[3:18]}"))


def shot(page, name):
    page.wait_for_selector("#main[data-ready=true]")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def ready(page, path):
    """Opens `path` of the page's own site and waits for its view."""
    page.goto(re.match(r"https?://[^/]+", page.url).group(0) + path)
    page.wait_for_selector("#main[data-ready=true]")


def test_an_operator_finds_retries_resolves_and_cancels_in_the_browser(database, serve, browser, tmp_path):
    base = f"http://{serve}"
    ops = stepgraph.Client(serve, token=TOKENS["ops"][1])
    flag = tmp_path / "flag"
    flag.write_text("")
    w = worker(database, broken)
    w.start()
    try:
        fine = ops.run("e2e", "repairable", {"required_file": str(flag)}, timeout=30)
        to_retry = ops.run("e2e", "repairable", {"required_file": str(tmp_path / "lost")}, timeout=30)
        to_resolve = ops.run("e2e", "repairable", {"required_file": str(tmp_path / "gone")}, timeout=30)
        assert fine.state == "complete" and to_retry.state == to_resolve.state == "error"

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        foreign = []
        page.on("request", lambda r: r.url.startswith(base) or r.url.startswith("data:") or foreign.append(r.url))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # A wrong token is refused on the login page; the right one lands where it was going.
        page.goto(base + "/tasks")
        page.fill("#token", "not-a-token")
        page.click("button[type=submit]")
        expect(page.locator("#problem")).to_have_text("Unknown token.")
        page.screenshot(path=str(SHOTS / "login.png"))
        login(page, base, "ops")
        cookie = [c for c in page.context.cookies() if c["name"] == "stepgraph_session"][0]
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie

        ready(page, "/")
        expect(page.locator("[data-test=count-error] .big")).to_have_text("2")
        expect(page.locator("[data-test=failing]")).to_contain_text("e2e/repairable")
        shot(page, "overview")

        # The list filtered to failed tasks, then kept current as a task fails.
        ready(page, "/tasks")
        page.check("input[name=state][value=error]")
        page.click("[data-test=filters] button[type=submit]")
        expect(page).to_have_url(base + "/tasks?state=error")
        rows = page.locator("tr[data-task]")
        expect(rows).to_have_count(2)
        expect(page.locator(f"tr[data-task='{fine.task_id}']")).to_have_count(0)
        expect(page.locator("[data-test=live]")).to_have_text("live")
        navigations = page.evaluate("performance.getEntriesByType('navigation').length")
        page.evaluate("window.__same_page = true")
        late = ops.run("e2e", "repairable", {"required_file": str(tmp_path / "late")}, timeout=30)
        expect(page.locator(f"tr[data-task='{late.task_id}']")).to_be_visible(timeout=10000)
        shot(page, "tasks-failed")

        # The failed step and its traceback.
        page.click(f"tr[data-task='{to_retry.task_id}'] a")
        expect(page).to_have_url(re.compile(to_retry.task_id))
        page.wait_for_selector("#main[data-drawn=true]")
        expect(page.locator("[data-test=task-state]")).to_contain_text("error")
        expect(page.locator(".dag .node[data-step=check]")).to_have_attribute("data-state", "error")
        expect(page.locator(".dag .node[data-step=report]")).to_have_attribute("data-state", "cancelled")
        expect(page.locator("[data-test=step-error]")).to_contain_text("PermanentError")
        traceback = page.locator("[data-test=traceback]")
        expect(traceback).to_contain_text("Traceback (most recent call last)")
        expect(traceback).to_contain_text("is missing")
        expect(page.locator("[data-test=timeline] tr[data-attempt='check#1']")).to_have_attribute("data-outcome", "error")
        shot(page, "task-failed")

        # A read token: no action on the page, and the server refuses them.
        reader_ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        reader = reader_ctx.new_page()
        login(reader, base, "reader")
        ready(reader, f"/tasks/{to_retry.task_id}")
        expect(reader.locator("[data-test=step-error]")).to_be_visible()
        expect(reader.locator("[data-action]")).to_have_count(0)
        shot(reader, "task-read-only")
        refused = reader.evaluate(
            """async (id) => {
                 const s = await (await fetch('/ui/session')).json();
                 const r = await fetch(`/v1/tasks/${id}/retry`, {method: 'POST', headers: {'X-Stepgraph-CSRF': s.csrf}});
                 return [r.status, (await r.json()).error];
               }""",
            to_retry.task_id,
        )
        assert refused[0] == 403 and "needs admin" in refused[1], refused
        reader_ctx.close()
        # The cookie alone, without the page's CSRF header, changes nothing.
        forged = page.evaluate(
            "async (id) => { const r = await fetch(`/v1/tasks/${id}/retry`, {method: 'POST'}); return [r.status, (await r.json()).error]; }",
            to_retry.task_id,
        )
        assert forged[0] == 403 and "x-stepgraph-csrf" in forged[1], forged
        assert ops.get_task(to_retry.task_id).state == "error"
    finally:
        w.stop()

    # The handler is fixed (a worker with the new code); retried from the page,
    # the task completes on the same page.
    with worker(database, fixed):
        page.click("[data-action=retry-task]")
        page.fill("dialog [data-test=reason]", "inventory handler fixed")
        page.click("dialog [data-test=confirm]")
        expect(page.locator("[data-test=message]")).to_contain_text("Retry: done")
        expect(page.locator("[data-test=task-state]")).to_contain_text("complete", timeout=20000)
        expect(page.locator(".dag .node[data-step=report]")).to_have_attribute("data-state", "complete")
        attempts = page.locator("[data-test=timeline] tr[data-attempt^='check#']")
        expect(attempts).to_have_count(2)
        expect(attempts.last).to_have_attribute("data-outcome", "complete")
        expect(page.locator("[data-test=audit]")).to_contain_text("by ops “inventory handler fixed”")
        assert page.evaluate("window.__same_page === true"), "the page was reloaded"
        assert page.evaluate("performance.getEntriesByType('navigation').length") == navigations
        shot(page, "task-retried")

        # A step resolved by hand, its result typed in the dialog's JSON editor.
        ready(page, f"/tasks/{to_resolve.task_id}")
        page.click("[data-action=resolve-step]")
        page.fill("dialog [data-test=result]", '{"found": ')
        expect(page.locator("dialog .problem")).to_contain_text("Not JSON")
        expect(page.locator("dialog [data-test=confirm]")).to_be_disabled()
        page.fill("dialog [data-test=result]", '{"found": "checked by hand"}')
        page.fill("dialog [data-test=reason]", "file restored elsewhere")
        page.click("dialog [data-test=confirm]")
        expect(page.locator("[data-test=task-state]")).to_contain_text("complete", timeout=20000)
        expect(page.locator(".dag .node[data-step=check]")).to_have_attribute("data-state", "resolved_manually")
        shot(page, "task-resolved")
        done = ops.get_task(to_resolve.task_id)
        assert done.result == {"check": {"found": "checked by hand"}}, done

        # A task waiting for its time is cancelled, with the reason kept.
        later = ops.create_task("e2e", "repairable", {"required_file": str(flag)}, delay=600)
        ready(page, f"/tasks/{later['task_id']}")
        expect(page.locator("[data-test=task-state]")).to_contain_text("scheduled")
        page.click("[data-action=cancel]")
        page.fill("dialog [data-test=reason]", "not needed")
        page.click("dialog [data-test=confirm]")
        expect(page.locator("[data-test=task-state]")).to_contain_text("cancelled", timeout=20000)
        expect(page.locator("[data-test=audit]")).to_contain_text("cancelled by ops “not needed”")

        ready(page, "/workers")
        expect(page.locator("tr[data-state=live]")).to_contain_text("python")
        shot(page, "workers")
        ready(page, "/templates")
        shot(page, "templates")
        ready(page, "/templates/e2e/repairable")
        expect(page.locator(".dag .node")).to_have_count(2)
        expect(page.locator("pre.json")).to_contain_text("required_file")
        shot(page, "template")

        # A task created 120 days ago is past every default retention:
        # its page says it is gone and why, not that something failed.
        ready(page, f"/tasks/{uuid_v7(days_ago=120)}")
        expect(page.locator("[data-test=gone]")).to_contain_text("is gone")
        expect(page.locator("[data-test=gone]")).to_contain_text("retention")
        shot(page, "task-gone")

    assert not foreign, f"the dashboard fetched from elsewhere: {foreign}"
    assert not errors, errors
