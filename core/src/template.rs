//! Task templates: the YAML a user writes, its validation, and the registry
//! that holds every loaded version.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepType {
    #[default]
    Standard,
    Decision,
    Batchable,
    BatchWorker,
    DeferredConvergence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    #[default]
    Exponential,
    Linear,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub retryable: bool,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub backoff_base_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retryable: true,
            max_attempts: 3,
            backoff: Backoff::Exponential,
            backoff_base_ms: 1000,
            max_backoff_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt that follows failed attempt number `attempt` (1-based).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let base = self.backoff_base_ms;
        let ms = match self.backoff {
            Backoff::None => 0,
            Backoff::Linear => base.saturating_mul(u64::from(attempt.max(1))),
            Backoff::Exponential => {
                let shift = attempt.saturating_sub(1).min(32);
                base.saturating_mul(1u64 << shift)
            }
        };
        Duration::from_millis(ms.min(self.max_backoff_ms))
    }

    /// Attempts a step may use: one when it is not retryable.
    pub fn effective_max_attempts(&self) -> u32 {
        if self.retryable {
            self.max_attempts
        } else {
            1
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    pub callable: String,
    #[serde(default = "empty_object")]
    pub config: Value,
    /// The worker queue this handler's steps go to, instead of the task's
    /// namespace: how one task mixes handlers served by different workers
    /// (a Ruby worker and a Python one, say, each serving its own queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    pub batch_size: u64,
    pub worker_template: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTemplate {
    pub name: String,
    #[serde(rename = "type", default)]
    pub step_type: StepType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub handler: HandlerSpec,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

impl StepTemplate {
    /// A standard step with default retry settings, for templates built in code.
    pub fn standard(name: &str, callable: &str, dependencies: Vec<String>) -> StepTemplate {
        StepTemplate {
            name: name.into(),
            step_type: StepType::Standard,
            description: None,
            handler: HandlerSpec {
                callable: callable.into(),
                config: empty_object(),
                queue: None,
            },
            dependencies,
            retry: RetryPolicy::default(),
            timeout_seconds: None,
            batch: None,
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_seconds.map(Duration::from_secs_f64)
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    pub namespace: String,
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    pub steps: Vec<StepTemplate>,
    #[serde(skip)]
    compiled: Option<Arc<jsonschema::Validator>>,
    #[serde(skip)]
    index: HashMap<String, usize>,
    /// Step indexes, every dependency before its dependents.
    #[serde(skip)]
    topo: Vec<usize>,
}

impl fmt::Debug for TaskTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskTemplate")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a template, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct TemplateError {
    /// The file (or `namespace/name@version` for templates built in code).
    pub origin: String,
    pub step: Option<String>,
    pub line: Option<usize>,
    pub kind: TemplateErrorKind,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(step) = &self.step {
            write!(f, ": step `{step}`")?;
        }
        write!(f, ": {}", self.kind)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateErrorKind {
    #[error("cannot read file: {0}")]
    Io(String),
    #[error("invalid YAML: {0}")]
    Parse(String),
    #[error("`{0}` must not be empty")]
    EmptyField(&'static str),
    #[error("template has no steps")]
    NoSteps,
    #[error("duplicate step name")]
    DuplicateStep,
    #[error("unknown dependency `{0}`")]
    UnknownDependency(String),
    #[error("depends on `{0}` more than once")]
    DuplicateDependency(String),
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("malformed retry settings: {0}")]
    Retry(String),
    #[error("timeout_seconds must be a positive number, got {0}")]
    Timeout(f64),
    #[error("batchable step needs `batch {{batch_size, worker_template}}`")]
    MissingBatch,
    #[error("`batch` is only allowed on batchable steps")]
    UnexpectedBatch,
    #[error("batch_size must be at least 1")]
    BatchSize,
    #[error("worker_template `{0}` is not a step of this template")]
    UnknownWorkerTemplate(String),
    #[error("worker_template `{0}` must be a step of type batch_worker")]
    WorkerTemplateNotBatchWorker(String),
    #[error("batch_worker template is not the worker_template of any batchable step")]
    OrphanBatchWorker,
    #[error("batch_worker template must depend on its batchable step `{0}`")]
    BatchWorkerParent(String),
    #[error("batch_worker template `{0}` can only be a dependency of a deferred_convergence step")]
    DependsOnBatchWorker(String),
    #[error("deferred_convergence step has no decision or batchable ancestor")]
    DeferredWithoutAncestor,
    #[error("decision step has no branches (no step depends on it)")]
    DecisionWithoutBranches,
    #[error("input_schema is not a valid JSON Schema: {0}")]
    InputSchema(String),
    #[error("version {0} is defined twice (also in {1})")]
    DuplicateVersion(String, String),
}

/// A template that failed validation, with every problem found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct TemplateErrors(pub Vec<TemplateError>);

impl fmt::Display for TemplateErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl TaskTemplate {
    /// Parses and validates a template from YAML text. `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<TaskTemplate, TemplateErrors> {
        let parsed: TaskTemplate = serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            TemplateErrors(vec![TemplateError {
                origin: origin.to_string(),
                step: None,
                line,
                kind: TemplateErrorKind::Parse(strip_location(&e.to_string())),
            }])
        })?;
        parsed.finish(origin, Some(text))
    }

    pub fn from_file(path: &Path) -> Result<TaskTemplate, TemplateErrors> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            TemplateErrors(vec![TemplateError {
                origin: origin.clone(),
                step: None,
                line: None,
                kind: TemplateErrorKind::Io(e.to_string()),
            }])
        })?;
        TaskTemplate::from_yaml(&text, &origin)
    }

    /// Builds a template in code (tests, generated workflows); validated like YAML.
    pub fn new(
        namespace: &str,
        name: &str,
        version: &str,
        steps: Vec<StepTemplate>,
    ) -> Result<TaskTemplate, TemplateErrors> {
        let t = TaskTemplate {
            namespace: namespace.into(),
            name: name.into(),
            version: version.into(),
            description: None,
            input_schema: None,
            steps,
            compiled: None,
            index: HashMap::new(),
            topo: Vec::new(),
        };
        let origin = t.key();
        t.finish(&origin, None)
    }

    pub fn with_input_schema(mut self, schema: Value) -> Result<TaskTemplate, TemplateErrors> {
        self.input_schema = Some(schema);
        let origin = self.key();
        self.finish(&origin, None)
    }

    fn finish(mut self, origin: &str, text: Option<&str>) -> Result<TaskTemplate, TemplateErrors> {
        let mut errors = validate(&self);
        if let Some(schema) = &self.input_schema {
            match jsonschema::validator_for(schema) {
                Ok(v) => self.compiled = Some(Arc::new(v)),
                Err(e) => errors.push((None, TemplateErrorKind::InputSchema(e.to_string()))),
            }
        }
        if !errors.is_empty() {
            return Err(TemplateErrors(
                errors
                    .into_iter()
                    .map(|(step, kind)| TemplateError {
                        origin: origin.to_string(),
                        line: step.as_deref().and_then(|s| {
                            text.and_then(|t| {
                                step_line(t, s, kind == TemplateErrorKind::DuplicateStep)
                            })
                        }),
                        step,
                        kind,
                    })
                    .collect(),
            ));
        }
        self.index = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        self.topo = topological_order(&self.steps, &self.index);
        Ok(self)
    }

    /// Steps in an order where every dependency comes before its dependents.
    pub fn steps_in_order(&self) -> impl Iterator<Item = &StepTemplate> {
        self.topo.iter().map(|&i| &self.steps[i])
    }

    /// Direct dependents of a decision step that it may choose between.
    pub fn branches_of(&self, decision: &str) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| {
                s.step_type != StepType::DeferredConvergence
                    && s.dependencies.iter().any(|d| d == decision)
            })
            .map(|s| s.name.as_str())
            .collect()
    }

    /// `namespace/name@version`.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.namespace, self.name, self.version)
    }

    pub fn step(&self, name: &str) -> Option<&StepTemplate> {
        self.index.get(name).map(|&i| &self.steps[i])
    }

    /// Checks a task context against `input_schema`; the error lists every violation.
    /// Where the steps of `handler` go: the queue its template step names,
    /// or the task's namespace (batch workers share their template step's handler).
    pub fn queue_of<'a>(&'a self, handler: &str) -> &'a str {
        self.steps
            .iter()
            .find(|s| s.handler.callable == handler && s.handler.queue.is_some())
            .and_then(|s| s.handler.queue.as_deref())
            .unwrap_or(&self.namespace)
    }

    /// Every worker queue this template's steps use.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = std::iter::once(self.namespace.clone())
            .chain(self.steps.iter().filter_map(|s| s.handler.queue.clone()))
            .collect();
        queues.sort();
        queues.dedup();
        queues
    }

    pub fn validate_context(&self, context: &Value) -> Result<(), String> {
        let Some(validator) = &self.compiled else {
            return Ok(());
        };
        let problems: Vec<String> = validator
            .iter_errors(context)
            .map(|e| {
                let path = e.instance_path.to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The batchable step whose worker template is `worker`.
    pub fn batch_parent_of(&self, worker: &str) -> Option<&StepTemplate> {
        self.steps.iter().find(|s| {
            s.step_type == StepType::Batchable
                && s.batch
                    .as_ref()
                    .is_some_and(|b| b.worker_template == worker)
        })
    }
}

/// Kahn's algorithm in declaration order; only called on acyclic templates.
fn topological_order(steps: &[StepTemplate], index: &HashMap<String, usize>) -> Vec<usize> {
    let mut indegree: Vec<usize> = steps.iter().map(|s| s.dependencies.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for d in &s.dependencies {
            dependents[index[d]].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..steps.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &c in &dependents[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    order
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Line (1-based) of the `name: <step>` entry of a step (its last one for a
/// duplicate), for error messages.
fn step_line(text: &str, step: &str, last: bool) -> Option<usize> {
    let mut lines = text.lines().enumerate().filter(|(_, line)| {
        let l = line.trim_start().trim_start_matches('-').trim_start();
        l.strip_prefix("name:")
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\''))
            .is_some_and(|v| v == step)
    });
    let found = if last { lines.last() } else { lines.next() };
    found.map(|(i, _)| i + 1)
}

type Problem = (Option<String>, TemplateErrorKind);

fn validate(t: &TaskTemplate) -> Vec<Problem> {
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

/// Orders dotted numeric versions numerically (`1.10.0` after `1.9.0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct VersionKey(Vec<VersionPart>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum VersionPart {
    Num(u64),
    Text(String),
}

impl VersionKey {
    fn parse(v: &str) -> VersionKey {
        VersionKey(
            v.trim_start_matches('v')
                .split(['.', '-', '+'])
                .map(|p| {
                    p.parse()
                        .map(VersionPart::Num)
                        .unwrap_or_else(|_| VersionPart::Text(p.into()))
                })
                .collect(),
        )
    }
}

/// A template and the file (or key) it came from.
type Loaded = (Arc<TaskTemplate>, String);

/// Every loaded template, by namespace, name and version.
#[derive(Debug, Default, Clone)]
pub struct TemplateRegistry {
    templates: HashMap<(String, String), BTreeMap<VersionKey, Loaded>>,
}

impl TemplateRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every `*.yaml` / `*.yml` file below `dir`. All problems in all files are reported together.
    pub fn load_dir(dir: &Path) -> Result<TemplateRegistry, TemplateErrors> {
        let mut reg = TemplateRegistry::new();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        collect_yaml(dir, &mut files).map_err(|e| {
            TemplateErrors(vec![TemplateError {
                origin: dir.display().to_string(),
                step: None,
                line: None,
                kind: TemplateErrorKind::Io(e.to_string()),
            }])
        })?;
        files.sort();
        for f in files {
            let origin = f.display().to_string();
            match TaskTemplate::from_file(&f).and_then(|t| reg.register_from(t, &origin)) {
                Ok(()) => {}
                Err(TemplateErrors(mut e)) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(reg)
        } else {
            Err(TemplateErrors(errors))
        }
    }

    pub fn register(&mut self, template: TaskTemplate) -> Result<(), TemplateErrors> {
        let origin = template.key();
        self.register_from(template, &origin)
    }

    fn register_from(
        &mut self,
        template: TaskTemplate,
        origin: &str,
    ) -> Result<(), TemplateErrors> {
        let versions = self
            .templates
            .entry((template.namespace.clone(), template.name.clone()))
            .or_default();
        let key = VersionKey::parse(&template.version);
        if let Some((_, first)) = versions.get(&key) {
            return Err(TemplateErrors(vec![TemplateError {
                origin: origin.to_string(),
                step: None,
                line: None,
                kind: TemplateErrorKind::DuplicateVersion(template.version.clone(), first.clone()),
            }]));
        }
        versions.insert(key, (Arc::new(template), origin.to_string()));
        Ok(())
    }

    /// A version, or the highest one when `version` is `None`.
    pub fn get(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Option<Arc<TaskTemplate>> {
        let versions = self
            .templates
            .get(&(namespace.to_string(), name.to_string()))?;
        let found = match version {
            Some(v) => versions.get(&VersionKey::parse(v)),
            None => versions.values().next_back(),
        };
        found.map(|(t, _)| t.clone())
    }

    pub fn all(&self) -> Vec<Arc<TaskTemplate>> {
        let mut all: Vec<_> = self
            .templates
            .values()
            .flat_map(|v| v.values().map(|(t, _)| t.clone()))
            .collect();
        all.sort_by_key(|t| t.key());
        all
    }

    /// Every worker queue of every template (namespaces, and the queues
    /// handlers are routed to).
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self.all().iter().flat_map(|t| t.queues()).collect();
        queues.sort();
        queues.dedup();
        queues
    }

    pub fn namespaces(&self) -> Vec<String> {
        let mut ns: Vec<String> = self.templates.keys().map(|(n, _)| n.clone()).collect();
        ns.sort();
        ns.dedup();
        ns
    }
}

fn collect_yaml(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}
