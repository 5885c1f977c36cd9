//! Every loaded template version, found by namespace and name (newest
//! version by default, numerically ordered).

use super::{TaskTemplate, TemplateError, TemplateErrorKind, TemplateErrors};
use crate::retention::{Expiry, Retention, TemplateRetention};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

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

    /// The highest version of each template.
    pub fn latest(&self) -> Vec<Arc<TaskTemplate>> {
        self.templates
            .values()
            .filter_map(|v| v.values().next_back().map(|(t, _)| t.clone()))
            .collect()
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

    /// Every handler queue of every template.
    pub fn handler_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self.all().iter().flat_map(|t| t.handler_queues()).collect();
        queues.sort();
        queues.dedup();
        queues
    }

    /// What expires: `default` for every task, but those of the template
    /// versions that set a retention of their own.
    pub fn expiry(&self, default: Retention, archive: bool) -> Expiry {
        let templates = self
            .all()
            .iter()
            .filter_map(|t| {
                let (ended, failed) = t.own_retention();
                (ended.is_some() || failed.is_some()).then(|| TemplateRetention {
                    namespace: t.namespace.clone(),
                    name: t.name.clone(),
                    version: t.version.clone(),
                    keep: Retention {
                        ended: ended.unwrap_or(default.ended),
                        failed: failed.unwrap_or(default.failed),
                    },
                })
            })
            .collect();
        Expiry {
            default,
            templates,
            archive,
        }
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
