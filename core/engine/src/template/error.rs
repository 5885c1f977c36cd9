//! What is wrong with a template, and where (file, line, step).

use std::fmt;

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
    #[error("schedules[{index}]: {message}")]
    Schedule { index: usize, message: String },
    /// `key` is `retention` or `failed_retention`.
    #[error("{key}: {message}")]
    Retention { key: &'static str, message: String },
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
