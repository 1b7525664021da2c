//! The README's quick start runs as written: every `$ ` command of its console block,
//! in a fresh folder with a fresh repository and this build as `snapfs`, must succeed
//! and print what the README shows (bar names and numbers that differ per run).

mod common;

use std::path::Path;
use std::process::Command;

use common::mount::*;

/// The commands and the output lines of the README's quick-start console block.
fn quick_start() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Quick start")
        .nth(1)
        .expect("README has a Quick start section");
    let block = section
        .split("```console")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a console block");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push((cmd.to_string(), Vec::new()));
        } else if let Some(last) = steps.last_mut() {
            if !line.trim().is_empty() {
                last.1.push(line.to_string());
            }
        }
    }
    steps
}

/// A line with the parts that change per run (times, ids, pids, paths) blanked.
fn shape(line: &str) -> String {
    line.split_whitespace()
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) || w.contains('/') {
                "#"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_quick_start_runs_as_written() {
    require_fuse!();
    let steps = quick_start();
    assert!(steps.len() >= 10, "the quick start has its commands: {steps:?}");
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_snapfs"), bin.join("snapfs")).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let repo = tmp.path().join("repo");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // Whatever happens, the mount the transcript makes goes away.
    let _guard = Mount::adopt(&repo, &{
        std::fs::create_dir_all(work.join("versioned")).unwrap();
        work.join("versioned")
    });
    for (cmd, expected) in &steps {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&work)
            .env("PATH", &path)
            .env("SNAPFS_REPO", &repo)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{cmd}` failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(shape)
            .collect();
        let want: Vec<String> = expected.iter().map(|l| shape(l)).collect();
        assert_eq!(got, want, "`{cmd}` printed\n{stdout}");
    }
}
