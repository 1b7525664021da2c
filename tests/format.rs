//! A repository made by this version (format 1) and committed as a fixture keeps
//! opening and reading in later versions: snapshots, content, metadata, and a clean
//! check. The fixture is copied first; the committed one is never written.
//!
//! Made with: `snapfs init --chunk-size 4K:16K:64K`, `import` of a tree (docs/notes.txt
//! with xattr user.tag=fixture and mtime 2020-01-02T03:04:05.123456789Z, data.bin and
//! its hard link hard.bin, link -> docs/notes.txt, a 200,022-byte sparse.bin),
//! `snapshot --label v1`, `import` of later.txt, `snapshot --label v2`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1");
    copy_tree(&src, &repo);
    (tmp, repo)
}

#[test]
fn a_format_1_repository_lists_its_snapshots_and_passes_check() {
    let (_tmp, repo) = fixture();
    let list: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["list", "--json"])).unwrap();
    let labels: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["v1", "v2"]);
    assert_eq!(list[0]["files"], 3, "notes, data (with its hard link), sparse");
    assert_eq!(list[1]["files"], 4);
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    assert_eq!(status["mirrors"][0]["state"], "complete");
    assert_eq!(status["mirrors"][1]["state"], "complete");
}

#[test]
fn a_format_1_repository_restores_content_and_metadata() {
    let (tmp, repo) = fixture();
    let out = tmp.path().join("out");
    let list: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["list", "--json"])).unwrap();
    let v1 = list[0]["name"].as_str().unwrap().to_string();
    snapfs_ok(&repo, &["restore", &v1, "/", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("docs/notes.txt")).unwrap(),
        b"notes of version one\n"
    );
    let data =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1-data.bin")).unwrap();
    assert_eq!(fs::read(out.join("data.bin")).unwrap(), data);
    assert_eq!(
        fs::metadata(out.join("data.bin")).unwrap().ino(),
        fs::metadata(out.join("hard.bin")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(out.join("link")).unwrap(),
        Path::new("docs/notes.txt")
    );
    let sparse = fs::read(out.join("sparse.bin")).unwrap();
    assert_eq!(sparse.len(), 200_022);
    assert!(sparse[..200_000].iter().all(|&b| b == 0));
    assert_eq!(&sparse[200_000..], b"tail of a sparse file\n");
    let notes = fs::metadata(out.join("docs/notes.txt")).unwrap();
    assert_eq!((notes.mtime(), notes.mtime_nsec()), (1_577_934_245, 123_456_789));
    let mut value = [0u8; 64];
    let len = rustix::fs::getxattr(out.join("docs/notes.txt"), "user.tag", &mut value[..]).unwrap();
    assert_eq!(&value[..len], b"fixture");
    assert!(!out.join("later.txt").exists(), "later.txt came after v1");
    let later = tmp.path().join("later.txt");
    snapfs_ok(
        &repo,
        &["restore", "@latest", "/later.txt", later.to_str().unwrap()],
    );
    assert_eq!(fs::read(&later).unwrap(), b"added for version two\n");
}

#[test]
fn migrating_a_format_1_catalog_keeps_every_figure_of_list_and_status() {
    let (_tmp, repo) = fixture();
    // Read-only, an old catalog is counted row by row; opened for writing (gc) it
    // is migrated and the figures are kept ones from then on.
    let before = snapfs_ok(&repo, &["list", "--json"]);
    let status_before: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    snapfs_ok(&repo, &["gc"]);
    assert_eq!(snapfs_ok(&repo, &["list", "--json"]), before);
    let status_after: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    for key in [
        "files",
        "inodes",
        "logical_bytes",
        "data_bytes",
        "all_versions_bytes",
    ] {
        assert_eq!(status_after[key], status_before[key], "{key}");
    }
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
}
