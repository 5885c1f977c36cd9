//! No code: see Cargo.toml and README.md.
