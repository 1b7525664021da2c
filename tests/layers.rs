//! The layer rules of STYLE.md, checked: each outside crate is named only by the
//! module that owns it, and nothing below the CLI prints to the terminal.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Files under src/ (relative, with '/') whose code mentions `needle`.
fn files_naming(needle: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut hits: Vec<String> = rust_files(&src)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(needle))
        })
        .map(|p| p.strip_prefix(&src).unwrap().to_string_lossy().into_owned())
        .collect();
    hits.sort();
    hits
}

#[test]
fn rusqlite_is_named_only_in_the_catalog() {
    let naming = files_naming("rusqlite");
    assert!(
        naming.iter().any(|f| f == "catalog/mod.rs"),
        "the scan finds the catalog: {naming:?}"
    );
    let outside: Vec<_> = naming
        .into_iter()
        .filter(|f| !f.starts_with("catalog/"))
        .collect();
    assert!(outside.is_empty(), "rusqlite outside catalog/: {outside:?}");
}

#[test]
fn fuser_is_named_only_in_the_fuse_adapter() {
    let outside: Vec<_> = files_naming("fuser")
        .into_iter()
        .filter(|f| f != "fuse.rs")
        .collect();
    assert!(outside.is_empty(), "fuser outside fuse.rs: {outside:?}");
}

#[test]
fn anyhow_and_printing_stay_in_the_cli() {
    for needle in ["anyhow", "println!", "eprintln!"] {
        let outside: Vec<_> = files_naming(needle)
            .into_iter()
            .filter(|f| !f.starts_with("cli/") && f != "main.rs")
            .collect();
        assert!(outside.is_empty(), "{needle} below the CLI: {outside:?}");
    }
}

#[test]
fn every_module_has_a_module_doc() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} has no //! module doc",
            file.display()
        );
    }
}
