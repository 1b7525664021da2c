//! What long commands show on stderr: progress bars on a terminal only (never with
//! `-q`, never into a pipe), and the log levels of `-q` / `-v`. The terminal is a real
//! pseudo-terminal made by script(1).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs snapfs with `args` on a pseudo-terminal; returns its exit code and everything
/// it wrote (stdout and stderr together, as a terminal sees them).
fn on_terminal(repo: &Path, args: &[&str]) -> (i32, String) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = format!(
        "{} --repo {}",
        quote(env!("CARGO_BIN_EXE_snapfs")),
        quote(repo.to_str().unwrap())
    );
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("SNAPFS_REPO")
        .output()
        .expect("script(1) from util-linux");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A repository holding one snapshot of a few MiB in a few files.
fn repo_with_a_snapshot() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, repo) = temp_repo();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    for i in 0..4 {
        std::fs::write(src.join(format!("data/f{i}")), random_bytes(i, 1 << 20)).unwrap();
    }
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["snapshot", "--label", "empty"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    snapfs_ok(&repo, &["snapshot"]);
    (dir, repo)
}

#[test]
fn long_commands_draw_a_progress_bar_on_a_terminal() {
    let (dir, repo) = repo_with_a_snapshot();
    let cases: [(Vec<String>, &str); 2] = [
        (
            vec![
                "restore".into(),
                "@latest".into(),
                "/data".into(),
                dir.path().join("restored").to_str().unwrap().into(),
            ],
            "restoring",
        ),
        (vec!["scrub".into()], "scrub ["),
    ];
    for (args, bar) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, shown) = on_terminal(&repo, &args);
        assert_eq!(code, 0, "snapfs {args:?}: {shown}");
        assert!(shown.contains(bar), "snapfs {args:?} draws its bar: {shown:?}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("restored/f2")).unwrap(),
        random_bytes(2, 1 << 20)
    );
    make_garbage(&repo);
    let (code, shown) = on_terminal(&repo, &["gc"]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("gc ["), "gc draws its bar: {shown:?}");
}

#[test]
fn quiet_or_a_pipe_draws_no_bar() {
    let (dir, repo) = repo_with_a_snapshot();
    let dest = dir.path().join("quiet");
    let (code, shown) = on_terminal(
        &repo,
        &["-q", "restore", "@latest", "/data", dest.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("restoring ["), "-q draws no bar: {shown:?}");

    let out = snapfs(&repo, &["scrub"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("scrub ["), "no bar into a pipe: {stderr:?}");
}

#[test]
fn recover_shows_the_copies_it_tries() {
    let (_dir, repo) = repo_with_a_snapshot();
    std::fs::remove_file(repo.join("catalog.db")).unwrap();
    let (code, shown) = on_terminal(&repo, &["recover"]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("trying catalog copies"), "{shown:?}");
    assert!(shown.contains("recovered the catalog from"), "{shown:?}");
}

#[test]
fn verbose_adds_debug_detail_and_quiet_keeps_only_warnings() {
    let (_dir, repo) = repo_with_a_snapshot();
    make_garbage(&repo);

    let out = snapfs(&repo, &["-v", "gc", "--dry-run"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("snapfs: debug: gc (dry run): ") && stderr.contains("unreferenced chunks"),
        "-v logs gc's detail: {stderr:?}"
    );

    let out = snapfs(&repo, &["gc", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("debug:"),
        "no debug detail without -v: {stderr:?}"
    );

    // A pack deleted from one mirror heals on read: a warning, shown even with -q.
    let (_dir, repo) = repo_with_a_snapshot();
    for pack in pack_files(&repo.join("mirror-0")) {
        std::fs::remove_file(&pack).unwrap();
    }
    let dest = repo.with_file_name("healed");
    let out = snapfs(
        &repo,
        &["-q", "restore", "@latest", "/data", dest.to_str().unwrap()],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("snapfs: warning: mirror 0")
            && stderr.contains("was missing or bad; rewrote it from mirror 1"),
        "the heal is logged even with -q: {stderr:?}"
    );
    assert!(!stderr.contains("debug:"), "-q hides debug: {stderr:?}");
    assert!(
        !pack_files(&repo.join("mirror-0")).is_empty(),
        "the pack was restored"
    );
}

/// Rolls the live tree back to empty and forgets every snapshot that held data, so
/// that gc has chunks to delete.
fn make_garbage(repo: &Path) {
    let list: serde_json::Value = serde_json::from_str(&snapfs_ok(repo, &["list", "--json"])).unwrap();
    let first = list[0]["name"].as_str().unwrap().to_string();
    snapfs_ok(repo, &["rollback", &first]);
    snapfs_ok(repo, &["snapshot", "--label", "emptied"]);
    snapfs_ok(repo, &["forget", "--keep-last", "1"]);
    let list: serde_json::Value = serde_json::from_str(&snapfs_ok(repo, &["list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
