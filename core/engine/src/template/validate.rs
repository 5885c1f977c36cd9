//! Every rule a template must keep, checked at once so that all problems
//! are reported together; cycles are named step by step.

use super::{Backoff, StepTemplate, StepType, TaskTemplate, TemplateErrorKind};
use crate::retention::Keep;
use std::collections::{HashMap, HashSet};

pub(super) type Problem = (Option<String>, TemplateErrorKind);

pub(super) fn validate(t: &TaskTemplate) -> Vec<Problem> {
    use TemplateErrorKind as K;
    let mut out: Vec<Problem> = Vec::new();
    for (field, value) in [
        ("namespace", &t.namespace),
        ("name", &t.name),
        ("version", &t.version),
    ] {
        if value.trim().is_empty() {
            out.push((None, K::EmptyField(field)));
        }
    }
    for (index, s) in t.schedules.iter().enumerate() {
        let checked = crate::schedule::parse_cron(&s.cron)
            .and(crate::schedule::parse_timezone(&s.timezone))
            .map(|_| ());
        if let Err(e) = checked {
            out.push((
                None,
                K::Schedule {
                    index,
                    message: e.to_string(),
                },
            ));
        }
    }
    for (key, text) in [
        ("retention", &t.retention),
        ("failed_retention", &t.failed_retention),
    ] {
        if let Some(Err(message)) = text.as_deref().map(str::parse::<Keep>) {
            out.push((None, K::Retention { key, message }));
        }
    }
    if t.steps.is_empty() {
        out.push((None, K::NoSteps));
        return out;
    }
    let mut by_name: HashMap<&str, &StepTemplate> = HashMap::new();
    for s in &t.steps {
        if s.name.trim().is_empty() {
            out.push((None, K::EmptyField("steps[].name")));
        }
        if by_name.insert(s.name.as_str(), s).is_some() {
            out.push((Some(s.name.clone()), K::DuplicateStep));
        }
    }
    for s in &t.steps {
        let at = || Some(s.name.clone());
        if s.handler
            .queue
            .as_deref()
            .is_some_and(|q| q.trim().is_empty())
        {
            out.push((at(), K::EmptyField("handler.queue")));
        }
        if s.handler.callable.trim().is_empty() {
            out.push((at(), K::EmptyField("handler.callable")));
        }
        let mut seen = HashSet::new();
        for d in &s.dependencies {
            if !by_name.contains_key(d.as_str()) {
                out.push((at(), K::UnknownDependency(d.clone())));
            }
            if !seen.insert(d) {
                out.push((at(), K::DuplicateDependency(d.clone())));
            }
        }
        let r = &s.retry;
        if r.max_attempts == 0 {
            out.push((at(), K::Retry("max_attempts must be at least 1".into())));
        }
        if !r.retryable && r.max_attempts > 1 {
            out.push((
                at(),
                K::Retry(format!(
                    "retryable is false but max_attempts is {}",
                    r.max_attempts
                )),
            ));
        }
        if r.backoff != Backoff::None && r.backoff_base_ms > r.max_backoff_ms {
            out.push((
                at(),
                K::Retry(format!(
                    "backoff_base_ms ({}) exceeds max_backoff_ms ({})",
                    r.backoff_base_ms, r.max_backoff_ms
                )),
            ));
        }
        if let Some(secs) = s.timeout_seconds {
            if !(secs.is_finite() && secs > 0.0) {
                out.push((at(), K::Timeout(secs)));
            }
        }
        match (s.step_type, &s.batch) {
            (StepType::Batchable, None) => out.push((at(), K::MissingBatch)),
            (StepType::Batchable, Some(b)) => {
                if b.batch_size == 0 {
                    out.push((at(), K::BatchSize));
                }
                match by_name.get(b.worker_template.as_str()) {
                    None => out.push((at(), K::UnknownWorkerTemplate(b.worker_template.clone()))),
                    Some(w) if w.step_type != StepType::BatchWorker => out.push((
                        at(),
                        K::WorkerTemplateNotBatchWorker(b.worker_template.clone()),
                    )),
                    Some(w) if !w.dependencies.contains(&s.name) => {
                        out.push((Some(w.name.clone()), K::BatchWorkerParent(s.name.clone())))
                    }
                    Some(_) => {}
                }
            }
            (_, Some(_)) => out.push((at(), K::UnexpectedBatch)),
            (_, None) => {}
        }
        if s.step_type == StepType::BatchWorker && t.batch_parent_of(&s.name).is_none() {
            out.push((at(), K::OrphanBatchWorker));
        }
        if s.step_type != StepType::DeferredConvergence {
            for d in &s.dependencies {
                if by_name
                    .get(d.as_str())
                    .is_some_and(|p| p.step_type == StepType::BatchWorker)
                {
                    out.push((at(), K::DependsOnBatchWorker(d.clone())));
                }
            }
        }
        if s.step_type == StepType::Decision
            && !t.steps.iter().any(|c| c.dependencies.contains(&s.name))
        {
            out.push((at(), K::DecisionWithoutBranches));
        }
    }
    if let Some(cycle) = find_cycle(t) {
        out.push((Some(cycle[0].clone()), K::Cycle(cycle)));
        return out;
    }
    for s in &t.steps {
        if s.step_type == StepType::DeferredConvergence && !has_dynamic_ancestor(&by_name, s) {
            out.push((Some(s.name.clone()), K::DeferredWithoutAncestor));
        }
    }
    out
}

fn has_dynamic_ancestor(by_name: &HashMap<&str, &StepTemplate>, step: &StepTemplate) -> bool {
    let mut stack: Vec<&str> = step.dependencies.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    while let Some(n) = stack.pop() {
        if !seen.insert(n) {
            continue;
        }
        if let Some(p) = by_name.get(n) {
            if matches!(p.step_type, StepType::Decision | StepType::Batchable) {
                return true;
            }
            stack.extend(p.dependencies.iter().map(String::as_str));
        }
    }
    false
}

/// A dependency cycle, as the path `a -> b -> ... -> a`, if there is one.
fn find_cycle(t: &TaskTemplate) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let idx: HashMap<&str, usize> = t
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = t
        .steps
        .iter()
        .map(|s| {
            s.dependencies
                .iter()
                .filter_map(|d| idx.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let mut mark = vec![Mark::New; t.steps.len()];
    for root in 0..t.steps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next dependency index); `path` is the open chain.
        let mut stack = vec![(root, 0usize)];
        let mut path = vec![root];
        mark[root] = Mark::Open;
        while let Some((node, i)) = stack.last_mut() {
            let node = *node;
            if let Some(&next) = deps[node].get(*i) {
                *i += 1;
                match mark[next] {
                    Mark::New => {
                        mark[next] = Mark::Open;
                        stack.push((next, 0));
                        path.push(next);
                    }
                    Mark::Open => {
                        let start = path.iter().position(|&n| n == next).unwrap_or(0);
                        // Reported in execution order: a dependency comes before its dependent.
                        let mut cycle: Vec<String> = path[start..]
                            .iter()
                            .rev()
                            .map(|&n| t.steps[n].name.clone())
                            .collect();
                        cycle.push(cycle[0].clone());
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::BatchSpec;
    use TemplateErrorKind as K;

    fn step(name: &str, deps: &[&str]) -> StepTemplate {
        StepTemplate::standard(name, "h", deps.iter().map(|d| d.to_string()).collect())
    }

    fn problems(steps: Vec<StepTemplate>) -> Vec<TemplateErrorKind> {
        let t = TaskTemplate {
            namespace: "n".into(),
            name: "t".into(),
            version: "1".into(),
            description: None,
            input_schema: None,
            steps,
            schedules: Vec::new(),
            retention: None,
            failed_retention: None,
            compiled: None,
            index: HashMap::new(),
            topo: Vec::new(),
        };
        validate(&t).into_iter().map(|(_, kind)| kind).collect()
    }

    #[test]
    fn a_valid_diamond_has_no_problems() {
        let steps = vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ];
        assert_eq!(problems(steps), Vec::<TemplateErrorKind>::new());
    }

    #[test]
    fn a_cycle_is_named_step_by_step() {
        let found = problems(vec![
            step("a", &["c"]),
            step("b", &["a"]),
            step("c", &["b"]),
        ]);
        let cycle = found
            .iter()
            .find_map(|k| match k {
                K::Cycle(path) => Some(path.clone()),
                _ => None,
            })
            .expect("a cycle");
        // Closed (first == last) and through all three steps.
        assert_eq!(cycle.first(), cycle.last());
        let mut inner = cycle[..cycle.len() - 1].to_vec();
        inner.sort();
        assert_eq!(inner, ["a", "b", "c"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(vec![
            step("a", &["missing"]),
            step("a", &[]),
            step("b", &["a", "a"]),
        ]);
        assert!(
            found.contains(&K::UnknownDependency("missing".into())),
            "{found:?}"
        );
        assert!(found.contains(&K::DuplicateStep), "{found:?}");
        assert!(
            found.contains(&K::DuplicateDependency("a".into())),
            "{found:?}"
        );
    }

    #[test]
    fn no_steps_is_a_problem() {
        assert_eq!(problems(Vec::new()), vec![K::NoSteps]);
    }

    #[test]
    fn batch_settings_are_checked() {
        let mut batchable = step("split", &[]);
        batchable.step_type = StepType::Batchable;
        assert!(problems(vec![batchable.clone()]).contains(&K::MissingBatch));

        batchable.batch = Some(BatchSpec {
            batch_size: 0,
            worker_template: "nowhere".into(),
        });
        let found = problems(vec![batchable]);
        assert!(found.contains(&K::BatchSize), "{found:?}");
        assert!(
            found.contains(&K::UnknownWorkerTemplate("nowhere".into())),
            "{found:?}"
        );

        let mut standard = step("s", &[]);
        standard.batch = Some(BatchSpec {
            batch_size: 5,
            worker_template: "s".into(),
        });
        assert!(problems(vec![standard]).contains(&K::UnexpectedBatch));
    }

    #[test]
    fn a_decision_needs_branches() {
        let mut decide = step("decide", &[]);
        decide.step_type = StepType::Decision;
        assert!(problems(vec![decide.clone()]).contains(&K::DecisionWithoutBranches));
        assert!(!problems(vec![decide, step("branch", &["decide"])])
            .contains(&K::DecisionWithoutBranches));
    }
}
