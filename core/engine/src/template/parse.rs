//! From YAML (or code) to a validated [`TaskTemplate`]: problems are
//! located by file, line and step.

use super::validate::validate;
use super::{StepTemplate, TaskTemplate, TemplateError, TemplateErrorKind, TemplateErrors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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
            schedules: Vec::new(),
            retention: None,
            failed_retention: None,
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
        for (index, s) in self.schedules.iter().enumerate() {
            if let Err(message) = self.validate_context(&s.context) {
                let message = format!("context: {message}");
                errors.push((None, TemplateErrorKind::Schedule { index, message }));
            }
        }
        if !errors.is_empty() {
            return Err(TemplateErrors(
                errors
                    .into_iter()
                    .map(|(step, kind)| TemplateError {
                        origin: origin.to_string(),
                        line: match (&kind, text) {
                            (TemplateErrorKind::Schedule { index, .. }, Some(t)) => {
                                schedule_line(t, *index)
                            }
                            (TemplateErrorKind::Retention { key, .. }, Some(t)) => t
                                .lines()
                                .position(|l| {
                                    l.strip_prefix(key).is_some_and(|r| r.starts_with(':'))
                                })
                                .map(|i| i + 1),
                            _ => step.as_deref().and_then(|s| {
                                text.and_then(|t| {
                                    step_line(t, s, kind == TemplateErrorKind::DuplicateStep)
                                })
                            }),
                        },
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
}

/// The line (1-based) of the `index`th entry of the top-level `schedules` list.
fn schedule_line(text: &str, index: usize) -> Option<usize> {
    let mut lines = text.lines().enumerate();
    lines.find(|(_, l)| l.starts_with("schedules:"))?;
    lines
        .filter(|(_, l)| l.trim_start().starts_with("- "))
        .nth(index)
        .map(|(n, _)| n + 1)
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
