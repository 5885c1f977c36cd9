//! Generates the C header from the exports and fails the build when the
//! committed copy (include/stepgraph.h) differs: the header shipped is the
//! header of the code. `STEPGRAPH_BLESS_HEADER=1` rewrites the committed copy.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/stepgraph.h");
    println!("cargo:rerun-if-env-changed=STEPGRAPH_BLESS_HEADER");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("generating the C header")
        .write(&mut generated);
    let committed_path = dir.join("include/stepgraph.h");
    let committed = std::fs::read(&committed_path).unwrap_or_default();
    if committed != generated {
        if std::env::var_os("STEPGRAPH_BLESS_HEADER").is_some() {
            std::fs::write(&committed_path, &generated).expect("writing include/stepgraph.h");
        } else {
            panic!(
                "bindings/cabi/include/stepgraph.h is out of date with src/lib.rs; \
                 rebuild with STEPGRAPH_BLESS_HEADER=1 and commit the new header"
            );
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("stepgraph.h"), &generated).expect("writing the header to OUT_DIR");
}
