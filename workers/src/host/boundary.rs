//! The boundary's schema and each language's declarations of it, generated
//! from the Rust types of `schema.rs` and compared with the files committed:
//! a field renamed in Rust fails this test until they are generated again
//! (`STEPGRAPH_BLESS=1 cargo test -p stepgraph-worker --lib boundary`), and
//! the regenerated declarations then fail each package's type check
//! (`scripts/check-types`: mypy and stubtest, tsc, rbs) until its code is
//! updated. The schema is made by schemars; the three renderings are ours,
//! for the few constructs the boundary uses (anything else is refused).

use super::schema::{StepEvent, StepResult};
use serde_json::{Map, Value};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// A type as the languages declare it.
#[derive(Debug, Clone)]
enum Ty {
    Any,
    Int,
    Str,
    Bool,
    Ref(String),
    /// The one string a tag field holds.
    Const(String),
    Nullable(Box<Ty>),
    Array(Box<Ty>),
    Map,
}

#[derive(Debug)]
struct Field {
    name: String,
    ty: Ty,
    required: bool,
    doc: Option<String>,
}

#[derive(Debug)]
enum Def {
    Object(Vec<Field>),
    Strings(Vec<String>),
    /// Variants told apart by the value of a tag field (a [`Ty::Const`]
    /// among their fields): (that value, the fields).
    Tagged(Vec<(String, Vec<Field>)>),
}

struct Named {
    name: String,
    doc: Option<String>,
    def: Def,
}

fn schema() -> Value {
    let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    g.subschema_for::<StepEvent>();
    g.subschema_for::<StepResult>();
    let defs = g.take_definitions(true);
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "stepgraph's language boundary: a StepEvent to the handler, a StepResult back",
        "$defs": defs,
    })
}

fn ty(s: &Value, at: &str) -> Ty {
    let Some(o) = s.as_object() else {
        return match s {
            Value::Bool(true) => Ty::Any,
            _ => panic!("{at}: unsupported schema {s}"),
        };
    };
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        return Ty::Ref(r.trim_start_matches("#/$defs/").to_string());
    }
    if let Some(c) = o.get("const") {
        let c = c
            .as_str()
            .unwrap_or_else(|| panic!("{at}: unsupported const {c}"));
        return Ty::Const(c.to_string());
    }
    if let Some(any) = o.get("anyOf").and_then(Value::as_array) {
        match any.as_slice() {
            [x, null] if null.get("type") == Some(&"null".into()) => {
                return Ty::Nullable(Box::new(ty(x, at)))
            }
            _ => panic!("{at}: unsupported anyOf {s}"),
        }
    }
    let one = |t: &str| match t {
        "integer" => Ty::Int,
        "string" => Ty::Str,
        "boolean" => Ty::Bool,
        "array" => Ty::Array(Box::new(ty(&o["items"], at))),
        "object" if !o.contains_key("properties") => Ty::Map,
        _ => panic!("{at}: unsupported type {t} in {s}"),
    };
    match o.get("type") {
        None => Ty::Any,
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => match ts.as_slice() {
            [Value::String(t), Value::String(n)] if n == "null" => Ty::Nullable(Box::new(one(t))),
            _ => panic!("{at}: unsupported type list {s}"),
        },
        Some(other) => panic!("{at}: unsupported type {other}"),
    }
}

fn doc(o: &Map<String, Value>) -> Option<String> {
    o.get("description")
        .and_then(Value::as_str)
        .map(|d| d.replace('\n', " "))
}

fn fields(o: &Map<String, Value>, at: &str) -> Vec<Field> {
    let required: Vec<&str> = o
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let props = o["properties"].as_object().expect("properties");
    // In the order Rust declares them: required first as schemars lists
    // them, then the rest by name.
    let mut names: Vec<&String> = props.keys().collect();
    names.sort_by_key(|n| required.iter().position(|r| r == n).unwrap_or(usize::MAX));
    names
        .into_iter()
        .map(|n| Field {
            name: n.clone(),
            ty: ty(&props[n], &format!("{at}.{n}")),
            required: required.contains(&n.as_str()),
            doc: props[n].as_object().and_then(doc),
        })
        .collect()
}

fn defs(schema: &Value) -> Vec<Named> {
    let defs = schema["$defs"].as_object().expect("$defs");
    defs.iter()
        .map(|(name, s)| {
            let o = s.as_object().expect("a definition is an object");
            let def = if let Some(values) = o.get("enum").and_then(Value::as_array) {
                Def::Strings(
                    values
                        .iter()
                        .map(|v| v.as_str().expect("string enum").to_string())
                        .collect(),
                )
            } else if let Some(variants) = o.get("oneOf").and_then(Value::as_array) {
                let tag = "status";
                Def::Tagged(
                    variants
                        .iter()
                        .map(|v| {
                            let v = v.as_object().expect("variant");
                            let value = v["properties"][tag]["const"]
                                .as_str()
                                .unwrap_or_else(|| panic!("{name}: a variant without {tag}"))
                                .to_string();
                            let at = format!("{name}.{value}");
                            (value, fields(v, &at))
                        })
                        .collect(),
                )
            } else {
                Def::Object(fields(o, name))
            };
            Named {
                name: name.clone(),
                doc: doc(o),
                def,
            }
        })
        .collect()
}

const HEADER: &str = "Generated from workers/boundary.schema.json (the Rust types of \
workers/src/host/schema.rs) by `STEPGRAPH_BLESS=1 cargo test -p stepgraph-worker --lib boundary`; \
do not edit.";

fn python(defs: &[Named]) -> String {
    fn t(ty: &Ty) -> String {
        match ty {
            Ty::Any => "Any".into(),
            Ty::Int => "int".into(),
            Ty::Str => "str".into(),
            Ty::Bool => "bool".into(),
            Ty::Ref(r) => format!("\"{r}\""),
            Ty::Const(c) => format!("Literal[\"{c}\"]"),
            Ty::Nullable(x) => format!("Optional[{}]", t(x)),
            Ty::Array(x) => format!("List[{}]", t(x)),
            Ty::Map => "Dict[str, Any]".into(),
        }
    }
    fn class(out: &mut String, name: &str, doc: Option<&str>, fields: &[Field]) {
        let (required, optional): (Vec<&Field>, Vec<&Field>) =
            fields.iter().partition(|f| f.required);
        let body = |out: &mut String, fs: &[&Field]| {
            for f in fs {
                if let Some(d) = &f.doc {
                    writeln!(out, "    #: {d}").unwrap();
                }
                writeln!(out, "    {}: {}", f.name, t(&f.ty)).unwrap();
            }
        };
        let base = if optional.is_empty() {
            "TypedDict".to_string()
        } else {
            writeln!(out, "class _{name}Required(TypedDict):").unwrap();
            body(out, &required);
            writeln!(out, "\n").unwrap();
            format!("_{name}Required, total=False")
        };
        writeln!(out, "class {name}({base}):").unwrap();
        if let Some(d) = doc {
            writeln!(out, "    \"\"\"{d}\"\"\"\n").unwrap();
        }
        if optional.is_empty() {
            body(out, &required);
        } else {
            body(out, &optional);
        }
        if fields.is_empty() {
            writeln!(out, "    pass").unwrap();
        }
        writeln!(out, "\n").unwrap();
    }
    let mut out = format!(
        "\"\"\"The language boundary's types. {HEADER}\"\"\"\n\n\
         from typing import Any, Dict, List, Literal, Optional, TypedDict, Union\n\n\n"
    );
    for d in defs {
        match &d.def {
            Def::Object(fields) => class(&mut out, &d.name, d.doc.as_deref(), fields),
            Def::Strings(values) => {
                let vs: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
                writeln!(out, "{} = Literal[{}]\n\n", d.name, vs.join(", ")).unwrap();
            }
            Def::Tagged(variants) => {
                let mut names = Vec::new();
                for (value, fields) in variants {
                    let name = format!("{}{}", d.name, camel(value));
                    class(&mut out, &name, None, fields);
                    names.push(name);
                }
                if let Some(doc) = &d.doc {
                    writeln!(out, "#: {doc}").unwrap();
                }
                writeln!(out, "{} = Union[{}]\n", d.name, names.join(", ")).unwrap();
            }
        }
    }
    out.trim_end().to_string() + "\n"
}

fn typescript(defs: &[Named]) -> String {
    fn t(ty: &Ty) -> String {
        match ty {
            Ty::Any => "unknown".into(),
            Ty::Int => "number".into(),
            Ty::Str => "string".into(),
            Ty::Bool => "boolean".into(),
            Ty::Ref(r) => r.clone(),
            Ty::Const(c) => format!("\"{c}\""),
            Ty::Nullable(x) => format!("{} | null", t(x)),
            Ty::Array(x) => format!("{}[]", t(x)),
            Ty::Map => "Record<string, unknown>".into(),
        }
    }
    let field = |f: &Field| {
        let q = if f.required { "" } else { "?" };
        format!("{}{q}: {}", f.name, t(&f.ty))
    };
    let mut out = format!("// The language boundary's types. {HEADER}\n\n");
    for d in defs {
        if let Some(doc) = &d.doc {
            writeln!(out, "/** {doc} */").unwrap();
        }
        match &d.def {
            Def::Object(fields) => {
                writeln!(out, "export interface {} {{", d.name).unwrap();
                for f in fields {
                    if let Some(doc) = &f.doc {
                        writeln!(out, "  /** {doc} */").unwrap();
                    }
                    writeln!(out, "  {};", field(f)).unwrap();
                }
                writeln!(out, "}}\n").unwrap();
            }
            Def::Strings(values) => {
                let vs: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
                writeln!(out, "export type {} = {};\n", d.name, vs.join(" | ")).unwrap();
            }
            Def::Tagged(variants) => {
                writeln!(out, "export type {} =", d.name).unwrap();
                for (_, fields) in variants {
                    let fs: Vec<String> = fields.iter().map(field).collect();
                    writeln!(out, "  | {{ {} }}", fs.join("; ")).unwrap();
                }
                out.pop();
                writeln!(out, ";\n").unwrap();
            }
        }
    }
    out.trim_end().to_string() + "\n"
}

fn rbs(defs: &[Named]) -> String {
    fn t(ty: &Ty) -> String {
        match ty {
            Ty::Any => "untyped".into(),
            Ty::Int => "Integer".into(),
            Ty::Str => "String".into(),
            Ty::Bool => "bool".into(),
            Ty::Ref(r) => snake(r),
            Ty::Const(c) => format!("\"{c}\""),
            Ty::Nullable(x) => format!("{}?", t(x)),
            Ty::Array(x) => format!("Array[{}]", t(x)),
            Ty::Map => "Hash[String, untyped]".into(),
        }
    }
    // RBS records have no optional keys: an optional field is nilable.
    let field = |f: &Field| {
        let ty = match (&f.ty, f.required) {
            (Ty::Nullable(_) | Ty::Any, _) | (_, true) => t(&f.ty),
            (other, false) => format!("{}?", t(other)),
        };
        format!("\"{}\" => {ty}", f.name)
    };
    let mut out = format!(
        "# The language boundary's types, as the events' and outcomes' Hashes\n# (string keys). {HEADER}\nmodule Stepgraph\n"
    );
    for d in defs {
        if let Some(doc) = &d.doc {
            writeln!(out, "  # {doc}").unwrap();
        }
        let name = snake(&d.name);
        match &d.def {
            Def::Object(fields) => {
                let fs: Vec<String> = fields.iter().map(|f| format!("    {}", field(f))).collect();
                writeln!(out, "  type {name} = {{\n{}\n  }}\n", fs.join(",\n")).unwrap();
            }
            Def::Strings(values) => {
                let vs: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
                writeln!(out, "  type {name} = {}\n", vs.join(" | ")).unwrap();
            }
            Def::Tagged(variants) => {
                let vs: Vec<String> = variants
                    .iter()
                    .map(|(_, fields)| {
                        let fs: Vec<String> = fields.iter().map(field).collect();
                        format!("{{ {} }}", fs.join(", "))
                    })
                    .collect();
                writeln!(out, "  type {name} =\n    {}\n", vs.join("\n    | ")).unwrap();
            }
        }
    }
    out.trim_end().to_string() + "\nend\n"
}

fn camel(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every generated file: its path under the repository and its text.
fn generated() -> Vec<(&'static str, String)> {
    let schema = schema();
    let defs = defs(&schema);
    vec![
        (
            "workers/boundary.schema.json",
            serde_json::to_string_pretty(&schema).unwrap() + "\n",
        ),
        ("python/stepgraph/boundary.py", python(&defs)),
        ("typescript/src/boundary.ts", typescript(&defs)),
        ("ruby/sig/boundary.rbs", rbs(&defs)),
    ]
}

#[test]
fn the_boundary_declarations_are_generated_from_the_rust_types() {
    let bless = std::env::var_os("STEPGRAPH_BLESS").is_some();
    let mut stale = Vec::new();
    for (path, text) in generated() {
        let file = root().join(path);
        if bless {
            std::fs::write(&file, &text).unwrap();
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            stale.push(path);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the boundary's Rust types (workers/src/host/schema.rs) make: \
         generate them with `STEPGRAPH_BLESS=1 cargo test -p stepgraph-worker --lib boundary`, \
         then update each language's code until scripts/check-types passes"
    );
}

#[test]
fn a_construct_the_renderings_do_not_know_is_refused() {
    let refused = std::panic::catch_unwind(|| ty(&serde_json::json!({"type": "number"}), "X.f"));
    let message = *refused.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("X.f: unsupported type number"),
        "{message}"
    );
}
