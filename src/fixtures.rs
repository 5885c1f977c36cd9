//! The seed's workflow shapes, built into the binary so `stepgraph bench`
//! runs from any directory.

use stepgraph_engine::{TaskTemplate, TemplateErrors, TemplateRegistry};

const TEMPLATES: &[(&str, &str)] = &[
    (
        "linear.yaml",
        include_str!("../tests/fixtures/templates/linear.yaml"),
    ),
    (
        "diamond.yaml",
        include_str!("../tests/fixtures/templates/diamond.yaml"),
    ),
    (
        "complex_dag.yaml",
        include_str!("../tests/fixtures/templates/complex_dag.yaml"),
    ),
    (
        "tree.yaml",
        include_str!("../tests/fixtures/templates/tree.yaml"),
    ),
    (
        "conditional_approval.yaml",
        include_str!("../tests/fixtures/templates/conditional_approval.yaml"),
    ),
    (
        "csv_batch.yaml",
        include_str!("../tests/fixtures/templates/csv_batch.yaml"),
    ),
];

pub const PRODUCTS_CSV: &[u8] = include_bytes!("../tests/fixtures/products.csv");

pub fn registry() -> Result<TemplateRegistry, TemplateErrors> {
    let mut reg = TemplateRegistry::new();
    for (file, text) in TEMPLATES {
        reg.register(TaskTemplate::from_yaml(text, file)?)?;
    }
    Ok(reg)
}

/// Writes the fixture templates into `dir` (for server processes).
pub fn write_templates(dir: &std::path::Path) -> std::io::Result<()> {
    for (file, text) in TEMPLATES {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(())
}

/// Writes linear and diamond (the seed's FFI rows) into `dir` under
/// `namespace` instead of e2e, as `{namespace}_{file}`.
pub fn write_ffi_templates(dir: &std::path::Path, namespace: &str) -> std::io::Result<()> {
    for (file, text) in TEMPLATES {
        if matches!(*file, "linear.yaml" | "diamond.yaml") {
            let text = text.replacen(
                "\nnamespace: e2e\n",
                &format!("\nnamespace: {namespace}\n"),
                1,
            );
            std::fs::write(dir.join(format!("{namespace}_{file}")), text)?;
        }
    }
    Ok(())
}
