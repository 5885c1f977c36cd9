//! The seed shapes over the HTTP API of running processes, with exact
//! results and unbroken audit chains (shared by the PostgreSQL and RabbitMQ suites).

use super::cluster::{create, wait};
use super::{assert_audit_chains, products_csv, SIX_16, SIX_64};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use stepgraph_engine::Transitions;

const LONG: Duration = Duration::from_secs(120);

pub fn assert_clean_audit(view: &Value) {
    let t: Transitions = serde_json::from_value(view["transitions"].clone()).unwrap();
    assert_audit_chains(&t);
    let mut completes: HashMap<String, usize> = HashMap::new();
    for s in &t.steps {
        if s.to == stepgraph_engine::StepState::Complete {
            *completes.entry(s.step_name.clone()).or_default() += 1;
        }
    }
    for step in view["steps"].as_array().unwrap() {
        let name = step["name"].as_str().unwrap();
        assert_eq!(
            completes.get(name),
            Some(&1),
            "{name} completed {:?} times",
            completes.get(name)
        );
    }
}

pub fn step_names(view: &Value) -> Vec<String> {
    let mut names: Vec<String> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Runs every seed shape through the given API servers (round robin) and checks exact results.
pub fn run_seed_shapes(servers: &[&str]) {
    let mut i = 0;
    let mut next = || {
        i += 1;
        servers[i % servers.len()]
    };
    let six = json!({ "even_number": 6 });
    let cases = [
        ("linear", six.clone(), json!(SIX_16)),
        ("diamond", six.clone(), json!(SIX_16)),
        ("complex_dag", six.clone(), json!(SIX_64)),
        ("tree", six.clone(), json!(SIX_64)),
    ];
    let mut pending = Vec::new();
    for (name, ctx, expected) in cases {
        let addr = next();
        pending.push((addr, create(addr, name, ctx), name, expected));
    }
    for (addr, id, name, expected) in pending {
        let v = wait(addr, &id, LONG);
        assert_eq!(v["state"], "complete", "{name}: {v}");
        assert_eq!(v["result"], expected, "{name}");
        assert_clean_audit(&v);
    }
    for (amount, branches) in [
        (500, vec!["auto_approve"]),
        (2500, vec!["manager_approval"]),
        (7500, vec!["finance_review", "manager_approval"]),
    ] {
        let addr = next();
        let id = create(
            addr,
            "conditional_approval",
            json!({ "amount": amount, "requester": "it" }),
        );
        let v = wait(addr, &id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_eq!(
            v["result"],
            json!({ "approved": true, "approvals": branches })
        );
        let mut expected = vec!["finalize_approval", "routing_decision", "validate_request"];
        expected.extend(&branches);
        expected.sort();
        assert_eq!(step_names(&v), expected);
        assert_clean_audit(&v);
    }
    let addr = next();
    let id = create(
        addr,
        "csv_batch",
        json!({ "csv_file_path": products_csv() }),
    );
    let v = wait(addr, &id, LONG);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(
        v["result"]["total_inventory_value_cents"],
        json!(12745576047u64)
    );
    assert_eq!(v["result"]["worker_count"], json!(5));
    assert_eq!(v["result"]["total_stock"], json!(242577));
    assert_eq!(
        v["result"]["per_batch_inventory_value_cents"],
        json!([
            2689657180u64,
            2659996406u64,
            2490667723u64,
            2438397631u64,
            2466857107u64
        ])
    );
    assert_eq!(step_names(&v).len(), 7);
    assert_clean_audit(&v);
}
