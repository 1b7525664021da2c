//! End-to-end tests of the real binary: init, import, status, and the errors a user
//! can cause. No mount needed.

mod common;

use std::path::Path;

use common::*;

fn status_json(repo: &Path) -> serde_json::Value {
    let mut status: serde_json::Value =
        serde_json::from_str(&snapfs_ok(repo, &["status", "--json"])).expect("status --json is JSON");
    // Free space moves with everything else on the machine; leave it out of comparisons.
    for m in status["mirrors"].as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("available_bytes");
    }
    status
}

#[test]
fn init_creates_two_mirrors_inside_the_repository() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs_ok(&repo, &["init"]);
    assert!(out.contains("created repository"), "{out}");
    for m in ["mirror-0", "mirror-1"] {
        assert!(repo.join(m).join("MIRROR").is_file(), "{m} has an identity file");
    }
    assert!(repo.join("catalog.db").is_file());
    let status = status_json(&repo);
    assert_eq!(status["mirrors"].as_array().unwrap().len(), 2);
    assert_eq!(status["mirrors"][0]["state"], "complete");
    assert_eq!(status["files"], 0);
}

#[test]
fn repo_option_is_accepted_before_or_after_the_command() {
    let (_tmp, repo) = temp_repo();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .args(["init", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .arg("status")
        .env("SNAPFS_REPO", &repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn same_random_data_under_three_names_is_stored_once() {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let data = random_bytes(1, 20 << 20);
    std::fs::write(src.join("a.bin"), &data).unwrap();
    std::fs::write(src.join("b.bin"), &data).unwrap();
    std::fs::write(src.join("sub/c.bin"), &data).unwrap();
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    for m in ["mirror-0", "mirror-1"] {
        let bytes = tree_bytes(&repo.join(m));
        assert!(
            bytes < 21 << 20,
            "{m} holds {bytes} bytes for 20 MiB of unique data"
        );
        assert!(
            bytes >= 20 << 20,
            "{m} holds {bytes} bytes: random data cannot shrink"
        );
    }
    let status = status_json(&repo);
    assert_eq!(status["files"], 3);
    assert_eq!(status["data_bytes"], 3 * (20u64 << 20));
    let dedup = status["dedup_ratio"].as_f64().unwrap();
    assert!((dedup - 3.0).abs() < 0.01, "dedup ratio {dedup}");
}

#[test]
fn text_like_data_is_compressed() {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        std::fs::write(src.join(format!("t{i}.txt")), text_bytes(10 + i, 25 << 20)).unwrap();
    }
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    for m in ["mirror-0", "mirror-1"] {
        let bytes = tree_bytes(&repo.join(m));
        assert!(bytes < 60 << 20, "{m} holds {bytes} bytes for 100 MiB of text");
    }
    let ratio = status_json(&repo)["compression_ratio"].as_f64().unwrap();
    assert!(ratio > 100.0 / 60.0, "compression ratio {ratio}");
}

#[test]
fn init_over_an_existing_repository_fails_and_changes_nothing() {
    let (_tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let before = std::fs::read(repo.join("catalog.db")).unwrap();
    let identity = std::fs::read(repo.join("mirror-0/MIRROR")).unwrap();
    snapfs_fails(&repo, &["init"], &["already holds a snapfs repository"]);
    assert_eq!(std::fs::read(repo.join("catalog.db")).unwrap(), before);
    assert_eq!(std::fs::read(repo.join("mirror-0/MIRROR")).unwrap(), identity);
}

#[test]
fn a_mirror_of_another_repository_is_refused_and_left_alone() {
    let (tmp, repo) = temp_repo();
    let other = tmp.path().join("other");
    let shared_mirror = tmp.path().join("disk");
    snapfs_ok(&other, &["init", "--mirror", shared_mirror.to_str().unwrap()]);
    let identity = std::fs::read(shared_mirror.join("MIRROR")).unwrap();
    let fresh = tmp.path().join("fresh");
    snapfs_fails(
        &repo,
        &[
            "init",
            "--mirror",
            fresh.to_str().unwrap(),
            "--mirror",
            shared_mirror.to_str().unwrap(),
        ],
        &["mirror of another repository", shared_mirror.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(shared_mirror.join("MIRROR")).unwrap(), identity);
    assert!(!repo.exists(), "nothing was created for the refused repository");
    assert!(
        !fresh.exists(),
        "the first, acceptable mirror was not created either"
    );
}

#[test]
fn a_non_empty_folder_is_refused_as_mirror() {
    let (tmp, repo) = temp_repo();
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("precious.txt"), b"keep me").unwrap();
    snapfs_fails(
        &repo,
        &["init", "--mirror", busy.to_str().unwrap()],
        &["not empty"],
    );
    assert_eq!(std::fs::read(busy.join("precious.txt")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
}

#[test]
fn a_folder_that_is_not_a_repository_is_named() {
    let (tmp, _) = temp_repo();
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    snapfs_fails(
        &plain,
        &["status"],
        &["is not a snapfs repository", "snapfs init"],
    );
    snapfs_fails(
        &plain,
        &["import", tmp.path().to_str().unwrap()],
        &["is not a snapfs repository"],
    );
    assert_eq!(
        std::fs::read_dir(&plain).unwrap().count(),
        0,
        "nothing was created"
    );
}

#[test]
fn import_of_a_missing_folder_fails_and_changes_nothing() {
    let (tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let before = status_json(&repo);
    let missing = tmp.path().join("no-such-folder");
    snapfs_fails(
        &repo,
        &["import", missing.to_str().unwrap()],
        &["no-such-folder", "not found"],
    );
    assert_eq!(status_json(&repo), before);
}

#[test]
fn import_refuses_names_that_already_exist() {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"one").unwrap();
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    std::fs::write(src.join("g"), b"two").unwrap();
    let before = status_json(&repo);
    snapfs_fails(&repo, &["import", src.to_str().unwrap()], &["already exists"]);
    assert_eq!(status_json(&repo), before);
}

#[test]
fn bad_init_options_are_refused() {
    let (_tmp, repo) = temp_repo();
    snapfs_usage_error(&repo, &["init", "--chunk-size", "64K:16K:256K"], &["chunk"]);
    snapfs_usage_error(&repo, &["init", "--compression", "99"], &["compression level 99"]);
    snapfs_usage_error(&repo, &["init", "--compression", "fast"], &["--compression"]);
    assert!(!repo.exists());
}

#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let (tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let holder = snapfs::repo::Repo::open(&repo, "test holder").unwrap();
    snapfs_fails(
        &repo,
        &["import", tmp.path().to_str().unwrap()],
        &[
            "in use by process",
            &std::process::id().to_string(),
            "test holder",
        ],
    );
    // Read-only commands still work while the lock is held.
    snapfs_ok(&repo, &["status"]);
    drop(holder);
}

#[test]
fn unknown_arguments_are_usage_errors() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["init", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let out = snapfs(&repo, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn status_counts_each_mirrors_packs_and_their_bytes_on_disk() {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), random_bytes(3, 2_000_000)).unwrap();
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    let mirrors = status["mirrors"].as_array().unwrap();
    assert_eq!(mirrors.len(), 2);
    for (m, folder) in mirrors.iter().zip(common::mount::mirror_dirs(&repo)) {
        let files = pack_files(&folder);
        assert!(!files.is_empty(), "{m}");
        assert_eq!(m["packs"], files.len() as u64, "{m}");
        let on_disk: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        assert_eq!(m["stored_bytes"], on_disk, "{m}");
        assert!(on_disk > 2_000_000, "random bytes do not compress: {m}");
        assert_eq!(m["state"], "complete", "{m}");
    }
    let text = snapfs_ok(&repo, &["status"]);
    assert_eq!(
        text.matches(" pack, ").count() + text.matches(" packs, ").count(),
        2,
        "{text}"
    );
}
