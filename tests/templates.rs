//! Template validation errors, and the CLI's handling of bad input.

mod common;

use std::process::Command;
use stepgraph_engine::{TaskTemplate, TemplateErrorKind as K, TemplateErrors, TemplateRegistry};

fn errors(yaml: &str) -> TemplateErrors {
    TaskTemplate::from_yaml(yaml, "bad.yaml").expect_err("template should be refused")
}

fn template(steps: &str) -> String {
    format!("namespace: t\nname: bad\nversion: \"1\"\nsteps:\n{steps}")
}

/// Every fixture file is loaded with each of its steps, handlers and
/// dependencies as the YAML writes them (read here without the loader).
#[test]
fn fixture_templates_load_as_written() {
    let reg = common::fixture_templates();
    let mut keys: Vec<String> = reg.all().iter().map(|t| t.key()).collect();
    keys.sort();
    let expected: Vec<String> = [
        "complex_dag",
        "conditional_approval",
        "csv_batch",
        "diamond",
        "linear",
        "tree",
    ]
    .iter()
    .map(|n| format!("e2e/{n}@1.0.0"))
    .collect();
    assert_eq!(keys, expected);
    type Step = (String, String, Vec<String>);
    let dir = common::fixtures_dir().join("templates");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let raw: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = raw["name"].as_str().unwrap();
        let written: Vec<Step> = raw["steps"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| {
                let deps = s["dependencies"].as_sequence().cloned().unwrap_or_default();
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["handler"]["callable"].as_str().unwrap().to_string(),
                    deps.iter()
                        .map(|d| d.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        let t = reg.get("e2e", name, None).unwrap();
        let loaded: Vec<Step> = t
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.handler.callable.clone(),
                    s.dependencies.clone(),
                )
            })
            .collect();
        assert_eq!(loaded, written, "{}", path.display());
        assert!(t.input_schema.is_some(), "{name}: its input_schema");
    }
}

#[test]
fn a_cycle_is_named() {
    let e = errors(&template(
        "  - name: a\n    dependencies: [c]\n    handler: { callable: x }\n  - name: b\n    dependencies: [a]\n    handler: { callable: x }\n  - name: c\n    dependencies: [b]\n    handler: { callable: x }\n",
    ));
    let cycle = e.0.iter().find_map(|e| match &e.kind {
        K::Cycle(c) => Some(c.clone()),
        _ => None,
    });
    let cycle = cycle.expect("a cycle error");
    assert_eq!(cycle.len(), 4);
    assert_eq!(cycle.first(), cycle.last());
    let mut names = cycle[..3].to_vec();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let msg = e.to_string();
    assert!(msg.starts_with("bad.yaml:"), "{msg}");
    assert!(msg.contains("dependency cycle: "), "{msg}");
    // a -> b -> c -> a in execution order, from wherever the search entered.
    let pos = |n: &str| cycle.iter().position(|x| x == n).unwrap();
    assert_eq!((pos("b") + 3 - pos("a")) % 3, 1, "{cycle:?}");

    let self_loop = errors(&template(
        "  - name: a\n    dependencies: [a]\n    handler: { callable: x }\n",
    ));
    assert!(
        self_loop.to_string().contains("dependency cycle: a -> a"),
        "{self_loop}"
    );
}

#[test]
fn unknown_and_duplicate_names_are_reported_with_step_and_line() {
    let e = errors(&template(
        "  - name: a\n    handler: { callable: x }\n  - name: b\n    dependencies: [zz]\n    handler: { callable: x }\n  - name: a\n    handler: { callable: x }\n",
    ));
    let msgs: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    assert!(
        msgs.contains(&"bad.yaml:7: step `b`: unknown dependency `zz`".to_string()),
        "{msgs:?}"
    );
    assert!(
        msgs.contains(&"bad.yaml:10: step `a`: duplicate step name".to_string()),
        "{msgs:?}"
    );
}

#[test]
fn batch_and_convergence_structure_is_checked() {
    let orphan = errors(&template(
        "  - name: a\n    handler: { callable: x }\n  - name: w\n    type: batch_worker\n    dependencies: [a]\n    handler: { callable: x }\n",
    ));
    assert!(
        orphan
            .0
            .iter()
            .any(|e| e.kind == K::OrphanBatchWorker && e.step.as_deref() == Some("w")),
        "{orphan}"
    );
    assert!(orphan
        .to_string()
        .contains("is not the worker_template of any batchable step"));

    let deferred = errors(&template(
        "  - name: a\n    handler: { callable: x }\n  - name: z\n    type: deferred_convergence\n    dependencies: [a]\n    handler: { callable: x }\n",
    ));
    assert!(
        deferred
            .0
            .iter()
            .any(|e| e.kind == K::DeferredWithoutAncestor && e.step.as_deref() == Some("z")),
        "{deferred}"
    );

    let no_batch = errors(&template(
        "  - name: a\n    type: batchable\n    handler: { callable: x }\n",
    ));
    assert!(
        no_batch.0.iter().any(|e| e.kind == K::MissingBatch),
        "{no_batch}"
    );

    let wrong_worker = errors(&template(
        "  - name: a\n    type: batchable\n    batch: { batch_size: 10, worker_template: b }\n    handler: { callable: x }\n  - name: b\n    dependencies: [a]\n    handler: { callable: x }\n",
    ));
    assert!(
        wrong_worker
            .0
            .iter()
            .any(|e| e.kind == K::WorkerTemplateNotBatchWorker("b".into())),
        "{wrong_worker}"
    );

    let no_branches = errors(&template(
        "  - name: d\n    type: decision\n    handler: { callable: x }\n",
    ));
    assert!(
        no_branches
            .0
            .iter()
            .any(|e| e.kind == K::DecisionWithoutBranches),
        "{no_branches}"
    );
}

#[test]
fn a_retention_is_a_time_or_forever_and_nonsense_names_its_line() {
    use stepgraph_engine::retention::{Keep, Retention};
    let steps = "steps:\n  - name: a\n    handler: { callable: x }\n";
    let yaml = format!(
        "namespace: t\nname: kept\nversion: \"1\"\nretention: 2h\nfailed_retention: forever\n{steps}"
    );
    let t = TaskTemplate::from_yaml(&yaml, "kept.yaml").unwrap();
    assert_eq!(
        t.own_retention(),
        (
            Some(Keep::For(std::time::Duration::from_secs(7200))),
            Some(Keep::Forever)
        )
    );
    let mut reg = TemplateRegistry::new();
    reg.register(t).unwrap();
    let expiry = reg.expiry(Retention::default(), false);
    let own = expiry.of("t", "kept", "1");
    assert_eq!(own.failed, Keep::Forever);
    assert_eq!(expiry.of("t", "other", "1"), Retention::default());

    let e = errors(&format!(
        "namespace: t\nname: bad\nversion: \"1\"\nretention: soon\n{steps}"
    ));
    let msg = e.to_string();
    assert!(msg.starts_with("bad.yaml:4: retention: "), "{msg}");
    assert!(msg.contains("\"soon\"") && msg.contains("forever"), "{msg}");
}

#[test]
fn unknown_step_type_and_bad_yaml_name_the_line() {
    let e = errors(&template(
        "  - name: a\n    type: sometimes\n    handler: { callable: x }\n",
    ));
    let msg = e.to_string();
    assert!(
        msg.starts_with("bad.yaml:6: invalid YAML: steps[0].type: unknown variant `sometimes`"),
        "{msg}"
    );
    assert!(
        msg.contains("deferred_convergence"),
        "lists the valid types: {msg}"
    );

    let e = errors("namespace: t\nname: [unclosed\n");
    assert!(e.to_string().starts_with("bad.yaml:"), "{e}");
    assert!(e.0[0].line.is_some(), "{e:?}");

    let e = errors(&template(
        "  - name: a\n    handler: { callable: x }\n    retries: 3\n",
    ));
    assert!(e.to_string().contains("unknown field `retries`"), "{e}");
}

#[test]
fn malformed_retry_settings_are_refused() {
    let cases = [
        (
            "retry: { max_attempts: 0 }",
            "max_attempts must be at least 1",
        ),
        (
            "retry: { backoff_base_ms: 5000, max_backoff_ms: 100 }",
            "backoff_base_ms (5000) exceeds max_backoff_ms (100)",
        ),
        (
            "retry: { retryable: false, max_attempts: 4 }",
            "retryable is false but max_attempts is 4",
        ),
        (
            "retry: { backoff: sometimes }",
            "unknown variant `sometimes`",
        ),
        (
            "retry: { max_attempts: -1 }",
            "max_attempts: invalid type: integer `-1`, expected u32",
        ),
        (
            "timeout_seconds: 0",
            "timeout_seconds must be a positive number",
        ),
    ];
    for (setting, expected) in cases {
        let e = errors(&template(&format!(
            "  - name: a\n    handler: {{ callable: x }}\n    {setting}\n"
        )));
        assert!(e.to_string().contains(expected), "{setting}: {e}");
    }
}

#[test]
fn invalid_input_schema_is_a_template_error() {
    let yaml = "namespace: t\nname: s\nversion: \"1\"\ninput_schema: { type: 12 }\nsteps:\n  - name: a\n    handler: { callable: x }\n";
    let e = errors(yaml);
    assert!(
        e.0.iter().any(|e| matches!(e.kind, K::InputSchema(_))),
        "{e}"
    );
}

#[test]
fn a_directory_with_a_duplicate_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = "namespace: t\nname: d\nversion: \"1\"\nsteps:\n  - name: a\n    handler: { callable: x }\n";
    std::fs::write(dir.path().join("one.yaml"), t).unwrap();
    std::fs::write(dir.path().join("two.yml"), t).unwrap();
    let e = TemplateRegistry::load_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("version 1 is defined twice"), "{e}");
}

fn stepgraph(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_validate_prints_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        template("  - name: a\n    dependencies: [a, nope]\n    handler: { callable: x }\n"),
    )
    .unwrap();
    let bad = bad.display().to_string();
    let (code, out, _) = stepgraph(&["validate", "tests/fixtures/templates/linear.yaml", &bad]);
    assert_eq!(code, 1);
    assert!(
        out.contains("ok    tests/fixtures/templates/linear.yaml (e2e/linear@1.0.0, 4 steps)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "error {bad}:5: step `a`: unknown dependency `nope`"
        )),
        "{out}"
    );
    assert!(out.contains("dependency cycle: a -> a"), "{out}");

    let (code, out, _) = stepgraph(&[
        "validate",
        "tests/fixtures/templates/linear.yaml",
        "tests/fixtures/templates/csv_batch.yaml",
    ]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn cli_run_prints_result_and_timeline() {
    let (code, out, err) = stepgraph(&[
        "run",
        "tests/fixtures/templates/tree.yaml",
        "--context",
        r#"{"even_number": 6}"#,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("e2e/tree: complete"), "{out}");
    assert!(
        out.contains(&format!("result: \"{}\"", common::SIX_64)),
        "{out}"
    );
    for step in ["tree_root", "tree_leaf_g", "tree_final_convergence"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(step) && l.contains("complete")),
            "{out}"
        );
    }
}

#[test]
fn cli_bad_input_gets_one_line_errors() {
    let cases: [(&[&str], &str); 4] = [
        (&["run", "missing.yaml"], "error: missing.yaml: cannot read file"),
        (&["run", "tests/fixtures/templates/linear.yaml", "--context", "{nope"], "error: --context is not valid JSON"),
        (
            &["run", "tests/fixtures/templates/linear.yaml", "--context", r#"{"even_number": 3}"#],
            "error: context does not match the input_schema of e2e/linear@1.0.0: /even_number: 3 is not a multiple of 2",
        ),
        (&["run", "tests/fixtures/templates/linear.yaml", "--context", "{}"], "\"even_number\" is a required property"),
    ];
    for (args, expected) in cases {
        let (code, _, err) = stepgraph(args);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn serve_without_a_database_runs_embedded() {
    use common::cluster::{create, templates_dir, wait, Process};
    let templates = templates_dir();
    let serve = Process::serve_embedded(templates.path());
    let id = create(
        serve.addr(),
        "tree",
        serde_json::json!({ "even_number": 6 }),
    );
    let v = wait(serve.addr(), &id, std::time::Duration::from_secs(30));
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["result"], serde_json::json!(common::SIX_64));
}

#[test]
fn handler_queues_route_steps_and_an_empty_one_is_refused() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/polyglot/mixed.yaml"
    ))
    .unwrap();
    let t = TaskTemplate::from_yaml(&text, "mixed.yaml").unwrap();
    assert_eq!(t.queue_of("math.square"), "polyglot");
    assert_eq!(t.queue_of("py.double"), "python");
    assert_eq!(t.queue_of("rb.add_one"), "ruby");
    assert_eq!(t.queues(), ["polyglot", "python", "ruby"]);
    let e = errors(&template(
        "  - name: a\n    handler: { callable: x, queue: \"  \" }\n",
    ));
    assert!(
        e.0.iter()
            .any(|e| matches!(e.kind, K::EmptyField("handler.queue"))),
        "{e}"
    );
}
