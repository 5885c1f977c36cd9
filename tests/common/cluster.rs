//! Real PostgreSQL and real `stepgraph serve` / `stepgraph worker` processes
//! for the distributed tests. A database is created per test and dropped after.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs `body` on a thread and a runtime of its own, so that it works from
/// Drop and from async tests alike.
fn on_own_runtime<T, F, Fut>(body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    })
    .join()
    .unwrap()
}

async fn connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e}); .ci/run starts it"))
}

fn admin(sql: &str) {
    let sql = sql.to_string();
    on_own_runtime(move || async move {
        let mut c = connect(ADMIN_URL).await;
        sqlx::raw_sql(&sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

/// A fresh database, dropped when this goes out of scope.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sg_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        admin(&format!("CREATE DATABASE {name}"));
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        TestDb { name, url }
    }

    /// Runs SQL on this database and returns the first column of each row as text.
    pub fn query(&self, sql: &str) -> Vec<String> {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// [`Self::query`], with a server that cannot be reached (restarting)
    /// or a failing statement as an error instead of a panic.
    pub fn try_query(&self, sql: &str) -> Result<Vec<String>, sqlx::Error> {
        let (url, sql) = (self.url.clone(), sql.to_string());
        on_own_runtime(move || async move {
            use sqlx::{Connection, Row};
            let mut c = sqlx::PgConnection::connect(&url).await?;
            let rows = sqlx::query(&sql).fetch_all(&mut c).await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
                .collect())
        })
    }

    /// Polls `sql` (a boolean) on one connection, about every millisecond,
    /// until it is true; then runs `then` at once, before anything else
    /// can change. False if `timeout` passed first.
    pub fn when(&self, sql: &str, timeout: Duration, then: impl FnOnce()) -> bool {
        let (url, sql) = (self.url.clone(), sql.to_string());
        let seen = on_own_runtime(move || async move {
            let mut c = connect(&url).await;
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                let yes: bool = sqlx::query_scalar(&sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                if yes {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            false
        });
        if seen {
            then();
        }
        seen
    }

    /// Polls the count `sql` returns (every 20 ms, up to a minute) until
    /// `ok` holds for it; the count.
    pub fn await_count(&self, sql: &str, what: &str, ok: impl Fn(i64) -> bool) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: i64 = self.query(&format!("SELECT ({sql})::text"))[0]
                .parse()
                .unwrap();
            if ok(n) {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still {n} after a minute"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The deadlocks PostgreSQL broke in this database, read once every
    /// other connection to it has closed: a backend reports its counts as it
    /// exits (just after it leaves `pg_stat_activity`, hence the pause).
    pub fn deadlocks(&self) -> i64 {
        let others = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            self.name
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.query(&format!("SELECT ({others})::text")) != ["0"] {
            assert!(
                Instant::now() < deadline,
                "connections to {} stay open",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        self.query(&format!(
            "SELECT deadlocks::text FROM pg_stat_database WHERE datname = '{}'",
            self.name
        ))[0]
            .parse()
            .unwrap()
    }

    /// Drops every connection to this database but the caller's.
    pub fn terminate_connections(&self) -> usize {
        self.query(&format!(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            self.name
        ))
        .len()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// The fixture templates plus the test-only ones, in one directory.
pub fn templates_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for sub in ["templates", "extra"] {
        for f in std::fs::read_dir(root.join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// A test's database and templates, and the processes started on them.
pub struct TestEnv {
    pub db: TestDb,
    templates: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv {
            db: TestDb::create(),
            templates: templates_dir(),
        }
    }

    pub fn serve(&self, env: &[(&str, &str)]) -> Process {
        Process::serve(&self.db, self.templates.path(), env)
    }

    pub fn worker(&self, env: &[(&str, &str)]) -> Process {
        Process::worker(&self.db, self.templates.path(), env)
    }

    /// This test's templates directory.
    pub fn templates(&self) -> &std::path::Path {
        self.templates.path()
    }

    /// Adds a template (as `file`) to this test's templates.
    pub fn add_template(&self, file: &str, yaml: &str) {
        std::fs::write(self.templates.path().join(file), yaml).unwrap();
    }

    /// `stepgraph <args>` on this test's database and templates, its
    /// standard error written to `log`.
    pub fn logged(&self, args: &[&str], env: &[(&str, &str)], log: &std::path::Path) -> Process {
        let file = std::fs::File::create(log).unwrap();
        Process::spawn_to(
            args,
            Some(&self.db),
            self.templates.path(),
            env,
            file.into(),
        )
    }

    /// Waits (up to 30 s) until the task's step `name` is InProgress.
    pub fn await_running(&self, task: &str, name: &str) {
        let started = Instant::now();
        while self.db.query(&format!(
            "SELECT state FROM sg_steps WHERE task_id = '{task}' AND name = '{name}'"
        )) != ["in_progress"]
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "step {name} never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A `stepgraph serve` or `stepgraph worker` process, killed when dropped.
pub struct Process {
    child: Child,
    /// `host:port` for a server.
    pub addr: Option<String>,
}

impl Process {
    /// `stepgraph <args> --templates <templates>`, on `db` if given, once it
    /// printed its first line (a server: where it listens).
    pub fn spawn(
        args: &[&str],
        db: Option<&TestDb>,
        templates: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Process {
        Process::spawn_to(args, db, templates, env, Stdio::inherit())
    }

    /// [`Process::spawn`] with its standard error sent to `stderr`.
    pub fn spawn_to(
        args: &[&str],
        db: Option<&TestDb>,
        templates: &std::path::Path,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Process {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepgraph"));
        cmd.args(args)
            .arg("--templates")
            .arg(templates)
            .env_remove("STEPGRAPH_DATABASE_URL")
            .env("STEPGRAPH_LOG", "warn")
            // Several processes of several tests share one server's connection limit.
            .env("STEPGRAPH_MAX_CONNECTIONS", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(db) = db {
            cmd.env("STEPGRAPH_DATABASE_URL", &db.url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("stepgraph binary runs");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?} exited before it started");
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.split_whitespace().next())
            .map(str::to_string);
        Process { child, addr }
    }

    pub fn serve(db: &TestDb, templates: &std::path::Path, env: &[(&str, &str)]) -> Process {
        let p = Process::spawn(
            &["serve", "--listen", "127.0.0.1:0"],
            Some(db),
            templates,
            env,
        );
        assert!(p.addr.is_some(), "serve did not say where it listens");
        p
    }

    pub fn worker(db: &TestDb, templates: &std::path::Path, env: &[(&str, &str)]) -> Process {
        Process::spawn(&["worker"], Some(db), templates, env)
    }

    /// `stepgraph serve` without a database: embedded mode.
    pub fn serve_embedded(templates: &std::path::Path) -> Process {
        let p = Process::spawn(&["serve", "--listen", "127.0.0.1:0"], None, templates, &[]);
        assert!(p.addr.is_some(), "serve did not say where it listens");
        p
    }

    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }

    /// Sends `sig` (a name such as `STOP` or `CONT`) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
        assert!(sent.unwrap().success(), "kill -{sig} {pid}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 request; the status and the body (JSON when it parses, else a string).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
    try_http(addr, method, path, body)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// [`http`], with a connection that fails (a server killed or restarting)
/// as an error instead of a panic.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Value)> {
    try_http_as(addr, None, method, path, body)
}

/// [`try_http`] with `Authorization: Bearer <token>` when a token is given.
pub fn try_http_as(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let payload = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
    Ok((status, value))
}

/// The value of one series of `GET /metrics`: `series` is the name with
/// its labels as the server prints them (`stepgraph_tasks{state="complete"}`).
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    let (status, v) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200, "{v}");
    let text = v.as_str().expect("metrics are text").to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Creates a task; its id.
pub fn create(addr: &str, name: &str, context: Value) -> String {
    let body = serde_json::json!({ "namespace": "e2e", "name": name, "context": context });
    let (status, v) = http(addr, "POST", "/v1/tasks", Some(body.to_string().as_bytes()));
    assert_eq!(status, 201, "{v}");
    v["task_id"].as_str().unwrap().to_string()
}

/// Waits for a task to end; its view.
pub fn wait(addr: &str, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, v) = http(
            addr,
            "GET",
            &format!("/v1/tasks/{id}/wait?timeout_ms=10000"),
            None,
        );
        assert_eq!(status, 200, "{v}");
        let state = v["state"].as_str().unwrap_or_default();
        if ["complete", "error", "cancelled"].contains(&state) || Instant::now() > deadline {
            return v;
        }
    }
}
