//! Every error a user can cause, as README.md's `## Errors` table documents it: one
//! test per row, each running the real binary and checking the exit code, that stderr
//! holds the documented excerpt, that it is at most two lines, and that nothing
//! panicked or printed a backtrace. The last test checks that every excerpt of the
//! table appears in this file with its exit code, so a documented case without a test
//! fails.
//!
//! Rows that need a real mount skip loudly where FUSE is missing (see
//! `common::mount::fuse_or_skip`) and always unmount (`Mount` guards).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::mount::*;
use common::*;

/// Asserts what every documented error must be and returns stderr: exit code `code`,
/// `excerpt` in stderr, no panic and no backtrace, and at most two lines. Exit code 2
/// is clap's usage error, which prints its usage line and a `--help` hint after the
/// message; for those only the first line is checked here (see
/// `usage_errors_fit_in_two_lines`).
fn assert_error(out: &Output, code: i32, excerpt: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(excerpt),
        "stderr {stderr:?} should contain {excerpt:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
    assert!(
        stderr.trim_end().lines().count() <= 2,
        "an error takes at most two lines: {stderr}"
    );
    assert!(stderr.starts_with("snapfs: error: "), "{stderr}");
    stderr
}

/// A repository (initialized) with /f, /dir/g and one snapshot; returns the snapshot's
/// name.
fn repo_with_snapshot() -> (tempfile::TempDir, PathBuf, String) {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
    fs::write(src.join("dir/g"), b"world").unwrap();
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    let name = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    (tmp, repo, name)
}

/// A repository whose one file's last chunk is gone from every mirror: its pack was
/// cut short inside that chunk's entry.
fn repo_with_a_chunk_lost_everywhere() -> (tempfile::TempDir, PathBuf) {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data.bin"), random_bytes(7, 300_000)).unwrap();
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    let mirrors = mirror_dirs(&repo);
    for m in &mirrors {
        let pack = pack_files(m)[0].clone();
        let last = pack_entries(&pack).last().unwrap().clone();
        let f = fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.set_len(last.frame_offset() + 10).unwrap();
    }
    (tmp, repo)
}

/// A temp dir holding `repo` (not created) and an empty folder `mnt`.
fn with_mountpoint() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    (tmp, repo, mnt)
}

// ---------------------------------------------------------------------------------
// The repository

#[test]
fn a_folder_that_is_not_a_repository() {
    let (tmp, _) = temp_repo();
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let out = snapfs(&plain, &["status"]);
    assert_error(
        &out,
        1,
        "is not a snapfs repository (no catalog.db); create one with `snapfs init`",
    );
    assert_eq!(fs::read_dir(&plain).unwrap().count(), 0, "nothing was created");
}

#[test]
fn a_repository_that_lost_its_catalog() {
    let (_tmp, repo, _) = repo_with_snapshot();
    fs::remove_file(repo.join("catalog.db")).unwrap();
    let out = snapfs(&repo, &["list"]);
    assert_error(
        &out,
        1,
        "has no catalog.db but holds mirrors; rebuild the catalog from their copies with `snapfs recover`",
    );
}

#[test]
fn no_repository_given_and_no_home() {
    let out = Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .arg("status")
        .env_remove("SNAPFS_REPO")
        .env_remove("XDG_DATA_HOME")
        .env_remove("HOME")
        .output()
        .unwrap();
    assert_error(&out, 1, "no repository given: pass --repo DIR or set SNAPFS_REPO");
}

#[test]
fn init_over_an_existing_repository() {
    let (_tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let before = fs::read(repo.join("catalog.db")).unwrap();
    let out = snapfs(&repo, &["init"]);
    assert_error(
        &out,
        1,
        "already holds a snapfs repository; use it, or choose another --repo",
    );
    assert_eq!(fs::read(repo.join("catalog.db")).unwrap(), before);
}

#[test]
fn init_with_chunk_sizes_out_of_order() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["init", "--chunk-size", "64K:16K:256K"]);
    assert_error(&out, 2, "must satisfy minimum <= average <= maximum");
    assert!(!repo.exists());
}

#[test]
fn init_with_malformed_chunk_sizes() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["init", "--chunk-size", "16K:64K"]);
    assert_error(&out, 2, "expected MIN:AVG:MAX such as 16K:64K:256K");
    assert!(!repo.exists());
}

#[test]
fn init_with_a_chunk_size_out_of_range() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["init", "--chunk-size", "32:64K:256K"]);
    assert_error(&out, 2, "minimum chunk size 32 is outside 64..=1M");
    assert!(!repo.exists());
}

#[test]
fn init_with_a_compression_level_out_of_range() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["init", "--compression", "99"]);
    assert_error(&out, 2, "is out of range; use 1 to 22, or none");
    assert!(!repo.exists());
}

#[test]
fn init_with_a_compression_that_is_not_a_level() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["init", "--compression", "fast"]);
    assert_error(&out, 2, "give a zstd level 1-22 or none");
    assert!(!repo.exists());
}

#[test]
fn init_with_a_mirror_folder_that_is_not_empty() {
    let (tmp, repo) = temp_repo();
    let busy = tmp.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("precious"), b"keep").unwrap();
    let out = snapfs(&repo, &["init", "--mirror", busy.to_str().unwrap()]);
    assert_error(
        &out,
        1,
        "is not empty and is not a snapfs mirror; choose an empty folder",
    );
    assert_eq!(fs::read(busy.join("precious")).unwrap(), b"keep");
    assert!(!repo.exists());
}

#[test]
fn init_with_a_mirror_of_another_repository() {
    let (tmp, repo) = temp_repo();
    let other = tmp.path().join("other");
    snapfs_ok(&other, &["init"]);
    let taken = other.join("mirror-0");
    let out = snapfs(&repo, &["init", "--mirror", taken.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "is a mirror of another repository");
    assert!(msg.contains(taken.to_str().unwrap()), "{msg}");
    assert!(!repo.exists());
}

#[test]
fn a_second_writer_while_the_lock_is_held() {
    let (tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let holder = snapfs::repo::Repo::open(&repo, "test holder").unwrap();
    let out = snapfs(&repo, &["import", tmp.path().to_str().unwrap()]);
    let msg = assert_error(&out, 1, "; try again when it has finished");
    let pid = std::process::id().to_string();
    assert!(
        msg.contains(&format!("in use by process {pid} (test holder)")),
        "names the pid and what it does: {msg}"
    );
    drop(holder);
}

// ---------------------------------------------------------------------------------
// Mounting

#[test]
fn mount_on_a_folder_that_does_not_exist() {
    let (tmp, repo) = temp_repo();
    let missing = tmp.path().join("no-such-folder");
    let out = snapfs(&repo, &["mount", missing.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "does not exist; create it first (mkdir -p");
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    assert!(!repo.exists(), "a failed mount creates no repository");
}

#[test]
fn mount_on_a_file() {
    let (tmp, repo) = temp_repo();
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let out = snapfs(&repo, &["mount", file.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "is not a folder; mount on a folder");
    assert!(msg.contains(file.to_str().unwrap()), "{msg}");
    assert!(!repo.exists(), "a failed mount creates no repository");
}

/// Runs `snapfs --repo REPO args…` in a private mount namespace whose /dev is an empty
/// tmpfs, so /dev/fuse is missing for it and nothing else on the machine changes.
/// `None` (after saying so loudly) when this machine cannot make such a namespace.
fn snapfs_without_dev_fuse(repo: &Path, args: &[&str]) -> Option<Output> {
    const HIDE_DEV: &str = "mount -t tmpfs tmpfs /dev && exec \"$@\"";
    // As root a mount namespace is enough; otherwise a user namespace maps us to root.
    for unshare in [&["--mount"][..], &["--mount", "--map-root-user"][..]] {
        let probe = Command::new("unshare")
            .args(unshare)
            .args(["sh", "-c", HIDE_DEV, "sh", "sh", "-c", "test ! -e /dev/fuse"])
            .output();
        if !probe.is_ok_and(|p| p.status.success()) {
            continue;
        }
        let out = Command::new("unshare")
            .args(unshare)
            .args(["sh", "-c", HIDE_DEV, "sh", env!("CARGO_BIN_EXE_snapfs"), "--repo"])
            .arg(repo)
            .args(args)
            .env_remove("SNAPFS_REPO")
            .output()
            .unwrap();
        return Some(out);
    }
    eprintln!(
        "\n**********\nSKIPPED: cannot make a mount namespace without /dev/fuse (unshare): \
         mount_without_dev_fuse did not run\n**********"
    );
    None
}

#[test]
fn mount_without_dev_fuse() {
    let (_tmp, repo, mnt) = with_mountpoint();
    let Some(out) = snapfs_without_dev_fuse(&repo, &["mount", mnt.to_str().unwrap()]) else {
        return;
    };
    assert_error(
        &out,
        1,
        "/dev/fuse is missing: load the fuse kernel module (modprobe fuse) or install fuse3",
    );
    assert!(!is_mounted(&mnt));
    assert!(!repo.exists(), "a failed mount creates no repository");
}

#[test]
fn mount_of_a_repository_mounted_elsewhere() {
    require_fuse!();
    let (tmp, repo, mnt) = with_mountpoint();
    let second = tmp.path().join("second");
    fs::create_dir(&second).unwrap();
    let m = Mount::new(&repo, &mnt);
    let guard = Mount::adopt(&repo, &second);
    let out = snapfs(&repo, &["mount", second.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "; unmount it first (snapfs umount");
    let (pid, at) = (m.pid().to_string(), m.mountpoint.to_str().unwrap());
    assert!(
        msg.contains(&format!("in use by process {pid} (mounted at {at})")),
        "names the pid and the mount point: {msg}"
    );
    assert!(!is_mounted(&guard.mountpoint));
    drop(guard);
    m.umount();
}

#[test]
fn mount_on_a_folder_that_is_already_a_snapfs_mount() {
    require_fuse!();
    let (_tmp, repo, mnt) = with_mountpoint();
    let m = Mount::new(&repo, &mnt);
    let out = snapfs(&repo, &["mount", mnt.to_str().unwrap()]);
    assert_error(&out, 1, "is already a snapfs mount; unmount it first");
    fs::write(m.path("still-works"), b"yes").unwrap();
    m.umount();
}

#[test]
fn mount_read_only() {
    require_fuse!();
    let (_tmp, repo, mnt) = with_mountpoint();
    let _guard = Mount::adopt(&repo, &mnt);
    let out = snapfs(&repo, &["mount", mnt.to_str().unwrap(), "-o", "ro"]);
    assert_error(&out, 2, "snapshots are the read-only views (drop ro)");
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_with_an_unknown_option() {
    require_fuse!();
    let (_tmp, repo, mnt) = with_mountpoint();
    let _guard = Mount::adopt(&repo, &mnt);
    let out = snapfs(&repo, &["mount", mnt.to_str().unwrap(), "-o", "bogus"]);
    assert_error(&out, 2, "unknown mount option \"bogus\"; known: allow_other");
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_with_a_keep_policy_but_no_schedule() {
    require_fuse!();
    let (_tmp, repo, mnt) = with_mountpoint();
    let _guard = Mount::adopt(&repo, &mnt);
    let out = snapfs(&repo, &["mount", mnt.to_str().unwrap(), "--keep-last", "3"]);
    assert_error(&out, 2, "applies to scheduled snapshots: give --every too");
    assert!(!is_mounted(&mnt));
}

#[test]
fn umount_of_a_folder_that_is_not_a_mount() {
    let (_tmp, repo, mnt) = with_mountpoint();
    let out = snapfs(&repo, &["umount", mnt.to_str().unwrap()]);
    assert_error(&out, 1, "is not a snapfs mount");
}

#[test]
fn import_into_a_mounted_repository() {
    require_fuse!();
    let (tmp, repo, mnt) = with_mountpoint();
    let m = Mount::new(&repo, &mnt);
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let out = snapfs(&repo, &["import", src.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "; unmount it first (snapfs umount");
    assert!(msg.contains(&format!("in use by process {}", m.pid())), "{msg}");
    m.umount();
}

// ---------------------------------------------------------------------------------
// Snapshot names and paths

#[test]
fn an_unknown_snapshot_name() {
    let (_tmp, repo, _) = repo_with_snapshot();
    let out = snapfs(&repo, &["rollback", "@2020-01-01T000000Z"]);
    let msg = assert_error(&out, 1, "(see `snapfs list`): not found");
    assert!(msg.contains("@2020-01-01T000000Z"), "{msg}");
}

#[test]
fn a_malformed_snapshot_name() {
    let (_tmp, repo, _) = repo_with_snapshot();
    let out = snapfs(&repo, &["restore", "yesterday", "/f"]);
    let msg = assert_error(
        &out,
        1,
        "is not a snapshot name (they look like @2026-01-31T142500Z, or @latest)",
    );
    assert!(msg.contains("@yesterday"), "{msg}");
}

#[test]
fn latest_when_there_are_no_snapshots() {
    let (_tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let out = snapfs(&repo, &["diff", "@latest"]);
    assert_error(&out, 1, "@latest (there are no snapshots yet): not found");
}

#[test]
fn restore_of_a_path_the_snapshot_does_not_have() {
    let (tmp, repo, s) = repo_with_snapshot();
    let dest = tmp.path().join("out");
    let out = snapfs(&repo, &["restore", &s, "/nope", dest.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "lists the snapshots that have it): not found");
    assert!(
        msg.contains("/nope in this snapshot (`snapfs log /nope`"),
        "{msg}"
    );
    assert!(!dest.exists());
}

#[test]
fn diff_of_a_path_in_neither_view() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let out = snapfs(&repo, &["diff", &s, "/nope"]);
    let msg = assert_error(&out, 1, "in either view (`snapfs log");
    assert!(msg.contains("/nope"), "{msg}");
}

#[test]
fn log_of_a_path_that_never_existed() {
    let (_tmp, repo, _) = repo_with_snapshot();
    let out = snapfs(&repo, &["log", "/nope"]);
    let msg = assert_error(&out, 1, "in every snapshot and in the live tree: not found");
    assert!(msg.contains("/nope"), "{msg}");
}

#[test]
fn diff_with_too_many_arguments() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let out = snapfs(&repo, &["diff", &s, &s, "/f", "/dir"]);
    assert_error(&out, 2, "diff takes @A [@B] [PATH]");
}

#[test]
fn restore_onto_an_existing_destination() {
    let (tmp, repo, s) = repo_with_snapshot();
    let dest = tmp.path().join("existing");
    fs::write(&dest, b"mine").unwrap();
    let out = snapfs(&repo, &["restore", &s, "/f", dest.to_str().unwrap()]);
    assert_error(&out, 1, "restore never overwrites; choose another destination");
    assert_eq!(fs::read(&dest).unwrap(), b"mine", "the destination is untouched");
}

#[test]
fn rollback_of_a_path_the_snapshot_does_not_have() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let before = snapfs_ok(&repo, &["list", "--json"]);
    let out = snapfs(&repo, &["rollback", &s, "/nope"]);
    assert_error(&out, 1, "did not exist in");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to roll back"));
    assert_eq!(
        snapfs_ok(&repo, &["list", "--json"]),
        before,
        "no safety snapshot"
    );
}

#[test]
fn rollback_of_a_folder_with_a_file_linked_outside_it() {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/f"), b"shared").unwrap();
    fs::hard_link(src.join("a/f"), src.join("g")).unwrap();
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    let s = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    let before = snapfs_ok(&repo, &["list", "--json"]);
    let out = snapfs(&repo, &["rollback", &s, "/a"]);
    let msg = assert_error(&out, 1, "was moved or linked across");
    assert!(msg.contains("across /a since"), "{msg}");
    assert!(msg.contains("or use `snapfs restore`"), "{msg}");
    assert_eq!(snapfs_ok(&repo, &["list", "--json"]), before, "nothing changed");
}

// ---------------------------------------------------------------------------------
// Forget, hold, release

#[test]
fn forget_of_a_held_snapshot() {
    let (_tmp, repo, s) = repo_with_snapshot();
    snapfs_ok(&repo, &["hold", &s]);
    let out = snapfs(&repo, &["forget", &s]);
    let msg = assert_error(&out, 1, "is held; `snapfs release");
    assert!(msg.contains(&s), "{msg}");
    assert!(snapfs_ok(&repo, &["list"]).contains(&s), "still there");
}

#[test]
fn forget_with_nothing_named_and_no_policy() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let out = snapfs(&repo, &["forget"]);
    assert_error(&out, 2, "nothing to forget: name snapshots, or give a policy");
    assert!(snapfs_ok(&repo, &["list"]).contains(&s));
}

#[test]
fn forget_with_an_empty_policy() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let out = snapfs(&repo, &["forget", "--keep-last", "0"]);
    assert_error(&out, 2, "an empty policy is refused");
    assert!(snapfs_ok(&repo, &["list"]).contains(&s));
}

#[test]
fn forget_with_names_and_a_policy() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let out = snapfs(&repo, &["forget", &s, "--keep-last", "1"]);
    assert_error(&out, 2, "give snapshot names or a --keep policy, not both");
    assert!(snapfs_ok(&repo, &["list"]).contains(&s));
}

#[test]
fn forget_with_a_bad_duration() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let out = snapfs(&repo, &["forget", "--keep-within", "3x"]);
    assert_error(&out, 2, "use s, m, h, d or w");
    assert!(snapfs_ok(&repo, &["list"]).contains(&s));
}

#[test]
fn release_of_a_snapshot_that_is_not_held() {
    let (_tmp, repo, s) = repo_with_snapshot();
    let out = snapfs(&repo, &["release", &s]);
    let msg = assert_error(&out, 1, "is not held, so there is nothing to release");
    assert!(msg.contains(&s), "{msg}");
    // Holding twice is harmless; one release then frees it.
    snapfs_ok(&repo, &["hold", &s]);
    snapfs_ok(&repo, &["hold", &s]);
    snapfs_ok(&repo, &["release", &s]);
    assert!(!snapfs_ok(&repo, &["list"]).contains("[held]"));
}

// ---------------------------------------------------------------------------------
// Import

#[test]
fn import_of_a_missing_folder() {
    let (tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let missing = tmp.path().join("no-such-folder");
    let out = snapfs(&repo, &["import", missing.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "the repository is unchanged: import source");
    assert!(msg.trim_end().ends_with("no-such-folder: not found"), "{msg}");
}

#[test]
fn import_of_a_file_instead_of_a_folder() {
    let (tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let out = snapfs(&repo, &["import", file.to_str().unwrap()]);
    let msg = assert_error(&out, 1, "the repository is unchanged: import source");
    assert!(msg.trim_end().ends_with("a-file: not a folder"), "{msg}");
}

#[test]
fn import_of_names_that_already_exist() {
    let (tmp, repo, _) = repo_with_snapshot();
    let out = snapfs(&repo, &["import", tmp.path().join("src").to_str().unwrap()]);
    assert_error(&out, 1, "already in the tree; import into another --to folder");
}

#[test]
fn import_into_a_folder_that_does_not_exist() {
    let (tmp, repo, _) = repo_with_snapshot();
    let src = tmp.path().join("src2");
    fs::create_dir(&src).unwrap();
    let out = snapfs(&repo, &["import", src.to_str().unwrap(), "--to", "/nope"]);
    let msg = assert_error(&out, 1, "in the live tree: not found");
    assert!(msg.contains("/nope"), "{msg}");
}

// ---------------------------------------------------------------------------------
// Mirrors and recovery

#[test]
fn mirror_remove_leaving_no_complete_mirror() {
    let (tmp, repo) = temp_repo();
    let only = tmp.path().join("only");
    snapfs_ok(&repo, &["init", "--mirror", only.to_str().unwrap()]);
    let out = snapfs(&repo, &["mirror", "remove", only.to_str().unwrap()]);
    assert_error(
        &out,
        1,
        "would leave no complete mirror; add another first (snapfs mirror add)",
    );
}

#[test]
fn mirror_remove_while_mounted_of_the_last_healthy_mirror() {
    require_fuse!();
    let (tmp, repo, mnt) = with_mountpoint();
    let only = tmp.path().join("only");
    snapfs_ok(&repo, &["init", "--mirror", only.to_str().unwrap()]);
    let m = Mount::new(&repo, &mnt);
    let out = snapfs(&repo, &["mirror", "remove", only.to_str().unwrap()]);
    assert_error(&out, 1, "would leave no complete, healthy mirror");
    fs::write(m.path("still-works"), b"yes").unwrap();
    m.umount();
}

#[test]
fn mirror_add_while_mounted_of_a_folder_that_is_not_empty() {
    require_fuse!();
    let (tmp, repo, mnt) = with_mountpoint();
    let m = Mount::new(&repo, &mnt);
    let full = tmp.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("precious"), b"keep me").unwrap();
    let out = snapfs(&repo, &["mirror", "add", full.to_str().unwrap()]);
    assert_error(&out, 1, "is not empty and is not a snapfs mirror");
    assert_eq!(fs::read(full.join("precious")).unwrap(), b"keep me");
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    assert_eq!(
        status["mirrors"].as_array().unwrap().len(),
        2,
        "nothing recorded: {status}"
    );
    m.umount();
}

#[test]
fn umount_while_a_file_in_the_mount_is_open() {
    require_fuse!();
    let (_tmp, repo, mnt) = with_mountpoint();
    let m = Mount::new(&repo, &mnt);
    fs::write(m.path("open"), b"held").unwrap();
    let held = fs::File::open(m.path("open")).unwrap();
    let out = snapfs(&repo, &["umount", mnt.to_str().unwrap()]);
    assert_error(&out, 1, "Device or resource busy");
    assert_eq!(
        fs::read(m.path("open")).unwrap(),
        b"held",
        "still mounted and serving"
    );
    drop(held);
    m.umount();
}

#[test]
fn mirror_remove_of_a_folder_that_is_no_mirror() {
    let (tmp, repo, _) = repo_with_snapshot();
    let out = snapfs(&repo, &["mirror", "remove", tmp.path().to_str().unwrap()]);
    assert_error(&out, 1, "(see snapfs status): not found");
}

#[test]
fn mirror_add_of_a_folder_that_is_not_empty() {
    let (tmp, repo, _) = repo_with_snapshot();
    let out = snapfs(
        &repo,
        &["mirror", "add", tmp.path().join("src").to_str().unwrap()],
    );
    assert_error(&out, 1, "is not empty and is not a snapfs mirror");
    assert_eq!(mirror_dirs(&repo).len(), 2);
}

#[test]
fn recover_with_no_mirror_folders() {
    let (tmp, _) = temp_repo();
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let out = snapfs(&plain, &["recover"]);
    assert_error(
        &out,
        1,
        "name the mirror folders that hold catalog copies with --mirror DIR",
    );
    assert!(!plain.join("catalog.db").exists());
    assert_eq!(
        fs::read_dir(&plain).unwrap().count(),
        0,
        "a failed recover leaves the folder as it was (no lock file)"
    );
}

#[test]
fn recover_from_mirror_folders_without_copies() {
    let (tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let before = fs::read(repo.join("catalog.db")).unwrap();
    let out = snapfs(&repo, &["recover", "--mirror", empty.to_str().unwrap()]);
    assert_error(&out, 1, "copies are made at each snapshot and clean unmount");
    assert_eq!(fs::read(repo.join("catalog.db")).unwrap(), before);
}

#[test]
fn recover_of_a_repository_that_is_not_a_folder() {
    let (tmp, _) = temp_repo();
    let missing = tmp.path().join("no-such-folder");
    let out = snapfs(&missing, &["recover"]);
    assert_error(&out, 1, "is not a folder; give the repository folder with --repo");
}

#[test]
fn recover_while_mounted() {
    require_fuse!();
    let (_tmp, repo, mnt) = with_mountpoint();
    let m = Mount::new(&repo, &mnt);
    let out = snapfs(&repo, &["recover"]);
    assert_error(&out, 1, "is mounted; unmount it before recovering its catalog");
    m.umount();
}

#[test]
fn check_repair_while_mounted() {
    require_fuse!();
    let (_tmp, repo, mnt) = with_mountpoint();
    let m = Mount::new(&repo, &mnt);
    let out = snapfs(&repo, &["check", "--repair"]);
    assert_error(&out, 1, "--repair needs the repository to itself");
    m.umount();
}

#[test]
fn check_repair_with_read_data() {
    let (_tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let out = snapfs(&repo, &["check", "--repair", "--read-data"]);
    assert_error(&out, 2, "--repair mends the catalog only");
}

// ---------------------------------------------------------------------------------
// Damage (exit code 3)

#[test]
fn check_finding_a_chunk_lost_everywhere() {
    let (_tmp, repo) = repo_with_a_chunk_lost_everywhere();
    let out = snapfs(&repo, &["check"]);
    assert_error(
        &out,
        3,
        "`snapfs scrub` repairs copies from good mirrors and names the files it cannot save",
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("has no good copy in any mirror"), "{report}");
}

#[test]
fn scrub_finding_a_chunk_lost_everywhere() {
    let (_tmp, repo) = repo_with_a_chunk_lost_everywhere();
    let out = snapfs(&repo, &["scrub"]);
    let msg = assert_error(
        &out,
        3,
        "lost; the report names the files that used them (replace those from another copy)",
    );
    assert!(msg.contains("could not repair: 1 chunk lost"), "{msg}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("live /data.bin"), "{report}");
}

// ---------------------------------------------------------------------------------
// Usage errors (exit code 2, from clap)

#[test]
fn an_unknown_command() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["frobnicate"]);
    assert_error(&out, 2, "unrecognized subcommand 'frobnicate'");
}

#[test]
fn an_unknown_option() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["init", "--bogus"]);
    assert_error(&out, 2, "unexpected argument '--bogus' found");
}

#[test]
fn a_missing_argument() {
    let (_tmp, repo) = temp_repo();
    let out = snapfs(&repo, &["restore"]);
    assert_error(&out, 2, "the following required arguments were not provided");
}

/// The parser's errors fit in two lines too: what is wrong, then the usage of the
/// command in question.
#[test]
fn usage_errors_name_the_problem_then_the_usage() {
    let (_tmp, repo) = temp_repo();
    for (args, usage) in [
        (&["frobnicate"][..], "usage: snapfs [OPTIONS] <COMMAND>"),
        (&["init", "--bogus"], "usage: snapfs init [OPTIONS]"),
        (&["restore"], "usage: snapfs restore <@SNAPSHOT> <PATH> [DEST]"),
    ] {
        let out = snapfs(&repo, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.trim_end().lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {stderr}");
        assert!(lines[1].starts_with(usage), "{args:?}: {stderr}");
    }
    // --help still prints everything, on stdout, with exit 0.
    let out = snapfs(&repo, &["restore", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Example:"));
}

// ---------------------------------------------------------------------------------
// The README table and this file agree

/// The rows of README.md's `## Errors` table: (excerpt, exit code).
fn documented_errors() -> Vec<(String, i32)> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Errors\n")
        .nth(1)
        .expect("README has a ## Errors section");
    let section = section.split("\n## ").next().unwrap();
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells[0] == "situation" || cells[0].starts_with("---") {
            continue;
        }
        assert_eq!(cells.len(), 3, "a row has three cells: {line}");
        let span = cells[1];
        let excerpt = if let Some(inner) = span.strip_prefix("``") {
            inner.strip_suffix("``").map(str::trim)
        } else {
            span.strip_prefix('`').and_then(|s| s.strip_suffix('`'))
        }
        .unwrap_or_else(|| panic!("the excerpt is one code span: {line}"));
        let code = cells[2]
            .parse()
            .unwrap_or_else(|_| panic!("the exit code is a number: {line}"));
        rows.push((excerpt.to_string(), code));
    }
    rows
}

#[test]
fn every_documented_error_has_a_test_with_its_exit_code() {
    let rows = documented_errors();
    assert!(rows.len() >= 25, "the table lists the errors: {rows:?}");
    // rustfmt may break a call over lines; compare with whitespace collapsed.
    let source = include_str!("errors.rs")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for (excerpt, code) in rows {
        assert!([1, 2, 3].contains(&code), "exit code {code} of {excerpt:?}");
        let literal = format!("{excerpt:?}");
        assert!(
            source.contains(&format!("{code}, {literal}")),
            "README documents {literal} with exit code {code}, but no test here checks it \
             (assert_error(&out, {code}, {literal}))"
        );
    }
}
