//! Bundles the dashboard's script and style (web/src) with esbuild into
//! OUT_DIR, where lib.rs embeds them: the binary carries its assets and
//! fetches nothing at run time. esbuild and dagre are pinned by
//! web/package-lock.json; `npm ci` installs them when web/node_modules
//! lacks them.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=web/src");
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    let web = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("web");
    let out = std::env::var("OUT_DIR").unwrap();
    let esbuild = web.join("node_modules/.bin/esbuild");
    let dagre = web.join("node_modules/@dagrejs/dagre/package.json");
    if !esbuild.exists() || !dagre.exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&web),
            "npm ci (the dashboard's bundler and graph layout, pinned by web/package-lock.json; \
             needs Node.js and npm, which ./scripts/setup installs)",
        );
    }
    run(
        Command::new(&esbuild)
            .args([
                "src/main.js",
                "--bundle",
                "--minify",
                "--format=iife",
                "--target=es2020",
                "--log-level=warning",
            ])
            .arg(format!("--outfile={out}/app.js"))
            .current_dir(&web),
        "esbuild (the dashboard's script and style)",
    );
    run(
        Command::new(&esbuild)
            .args([
                "src/login.js",
                "--minify",
                "--target=es2020",
                "--log-level=warning",
            ])
            .arg(format!("--outfile={out}/login.js"))
            .current_dir(&web),
        "esbuild (the login page's script)",
    );
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{what} failed ({s})"),
        Err(e) => panic!("{what} could not start: {e}"),
    }
}
