//! A repository made by the first version (storage format 1, one object file per
//! chunk) and committed as a fixture: it is refused with a message naming `snapfs
//! upgrade`, which converts it to format 2 (packs); after that it lists, reads and
//! checks exactly as it did. The fixture is copied first; the committed one is never
//! written.
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

/// A copy of the format-1 fixture, as committed.
fn format_1_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1");
    copy_tree(&src, &repo);
    (tmp, repo)
}

/// A copy of the fixture, upgraded to format 2.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let (tmp, repo) = format_1_copy();
    let out = snapfs_ok(&repo, &["upgrade"]);
    assert!(out.contains("is storage format 2 now"), "{out}");
    (tmp, repo)
}

#[test]
fn a_format_1_repository_is_refused_with_a_message_naming_snapfs_upgrade() {
    let (_tmp, repo) = format_1_copy();
    for args in [&["list"][..], &["status"], &["check"], &["snapshot"], &["gc"]] {
        let msg = snapfs_fails(&repo, args, &["snapfs upgrade --repo"]);
        assert!(msg.contains("format"), "{args:?}: {msg}");
    }
    // Refusing changed nothing: the mirrors still hold their object files.
    for m in common::mount::mirror_dirs(&repo) {
        assert!(m.join("objects").is_dir(), "{}", m.display());
        assert!(pack_files(&m).is_empty(), "{}", m.display());
    }
}

#[test]
fn an_upgrade_moves_every_chunk_into_packs_and_a_second_one_has_nothing_to_do() {
    let (_tmp, repo) = format_1_copy();
    let report: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["upgrade", "--json"])).unwrap();
    assert_eq!(report["converted"], true, "{report}");
    assert!(report["chunks"].as_u64().unwrap() > 3, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert_eq!(report["object_folders_deleted"], 2, "{report}");
    let mirrors = common::mount::mirror_dirs(&repo);
    for m in &mirrors {
        assert!(!m.join("objects").exists(), "{}", m.display());
        let packs = pack_files(m);
        assert_eq!(packs.len(), 1, "{}: {packs:?}", m.display());
        let entries = pack_entries(&packs[0]);
        assert_eq!(entries.len() as u64, report["chunks"].as_u64().unwrap());
    }
    // The mirrors hold the same pack, byte for byte.
    let packs: Vec<Vec<u8>> = mirrors
        .iter()
        .map(|m| fs::read(&pack_files(m)[0]).unwrap())
        .collect();
    assert!(packs[0] == packs[1]);
    let again = snapfs_ok(&repo, &["upgrade"]);
    assert!(again.contains("is storage format 2 already"), "{again}");
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
fn an_upgraded_repository_keeps_its_figures_through_gc_and_takes_new_snapshots() {
    let (tmp, repo) = fixture();
    let before = snapfs_ok(&repo, &["list", "--json"]);
    let status_before: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
    assert_eq!(gc["chunks"], 0, "nothing was garbage: {gc}");
    assert_eq!(snapfs_ok(&repo, &["list", "--json"]), before);
    let status_after: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    for key in [
        "files",
        "inodes",
        "logical_bytes",
        "data_bytes",
        "all_versions_bytes",
        "stored_bytes",
    ] {
        assert_eq!(status_after[key], status_before[key], "{key}");
    }
    // New data goes into packs beside the moved ones.
    let src = tmp.path().join("more");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("new.bin"), random_bytes(9, 100_000)).unwrap();
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    snapfs_ok(&repo, &["snapshot", "--label", "v3"]);
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
}
