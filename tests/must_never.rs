//! What the mount must never do, each found by using it as a user would and each
//! reproduced here on a real FUSE mount: lose an open file to a rollback, hide a
//! whole folder behind one bad entry, keep set-user-ID bits after another user's
//! write, list a big folder in quadratic time or skip and repeat names while it
//! changes, and commit the whole live tree for an fsync inside a snapshot.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mount::*;
use common::*;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    (tmp, repo, mnt)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_rollback_that_brings_back_an_open_unlinked_file_keeps_it_after_the_close() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::write(m.path("f"), b"hello\n").unwrap();
    let snap = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    let held = fs::File::open(m.path("f")).unwrap();
    fs::remove_file(m.path("f")).unwrap();
    snapfs_ok(&repo, &["rollback", &snap]);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"hello\n");
    drop(held);
    // The flusher commits within a second; give the last release time to act.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        fs::read(m.path("f")).unwrap(),
        b"hello\n",
        "still there after the close"
    );
    let listed = names(&m.path(""));
    assert!(
        listed.contains(&"f".to_string()) && listed.contains(&snap),
        "{listed:?}"
    );
    let check = snapfs_ok(&repo, &["check"]);
    assert!(check.contains("no problems found"), "{check}");
    m.umount();
    let check = snapfs_ok(&repo, &["check"]);
    assert!(check.contains("no problems found"), "{check}");
    let m = Mount::new(&repo, &mnt);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"hello\n", "and after a remount");
    assert!(names(&m.path("")).contains(&snap));
    m.umount();
}

#[test]
fn a_rollback_leaves_an_open_file_it_removes_readable_until_the_close() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let snap = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    fs::write(m.path("new"), b"made after the snapshot").unwrap();
    let mut held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("new"))
        .unwrap();
    snapfs_ok(&repo, &["rollback", &snap]);
    assert!(!m.path("new").exists(), "the rollback removed the name");
    use std::io::{Read, Seek, Write};
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "made after the snapshot");
    held.seek(std::io::SeekFrom::Start(0)).unwrap();
    held.write_all(b"MADE").unwrap();
    held.sync_all().unwrap();
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    m.umount();
    let check = snapfs_ok(&repo, &["check"]);
    assert!(check.contains("no problems found"), "{check}");
}

/// Removes the inode that `name` in the root points at from the live tree, leaving
/// the name: the damage a bug in an older version left behind.
fn break_name(repo: &Path, name: &str) -> i64 {
    let db = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
    let inode: i64 = db
        .query_row(
            "SELECT inode_id FROM dir_entries WHERE parent_id = 1 AND name = ?1",
            [name.as_bytes()],
            |r| r.get(0),
        )
        .unwrap();
    db.execute("DELETE FROM inodes WHERE inode_id = ?1", [inode])
        .unwrap();
    db.execute("DELETE FROM extents WHERE inode_id = ?1", [inode])
        .unwrap();
    inode
}

#[test]
fn one_bad_entry_leaves_the_rest_of_its_folder_listed_and_check_repair_mends_it() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    for n in ["a", "b", "c"] {
        fs::write(m.path(n), n.as_bytes()).unwrap();
    }
    m.umount();
    let inode = break_name(&repo, "b");

    let m = Mount::new(&repo, &mnt);
    assert_eq!(names(&m.path("")), ["a", "c"], "the others list normally");
    let err = fs::metadata(m.path("b")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "the bad name answers EIO: {err}"
    );
    assert_eq!(fs::read(m.path("c")).unwrap(), b"c");
    m.umount();
    let log = fs::read_to_string(repo.join("mount.log")).unwrap();
    let logged = |what: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("points at inode {inode}")) && l.contains(what))
            .count()
    };
    // Once by the core with what to do, once by the adapter for the EIO it answered.
    assert_eq!(
        logged("snapfs check"),
        1,
        "logged once with its inode and name:\n{log}"
    );
    assert_eq!(logged("answered EIO"), 1, "its EIO logged once:\n{log}");

    let found = snapfs(&repo, &["check"]);
    assert_eq!(found.status.code(), Some(3), "damage found: exit code 3");
    let found = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.contains("/b") && found.contains(&format!("inode {inode}")),
        "{found}"
    );
    let repaired = snapfs_ok(&repo, &["check", "--repair"]);
    assert!(repaired.contains("repaired: removed live name /b"), "{repaired}");
    let saved: Vec<_> = fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("catalog.db.before-repair-"))
        .collect();
    assert_eq!(saved.len(), 1, "a copy of the catalog was saved first: {saved:?}");
    let again = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(again.contains("no problems found"), "{again}");
    let m = Mount::new(&repo, &mnt);
    assert_eq!(names(&m.path("")), ["a", "c"]);
    m.umount();
    drop(tmp);
}

#[test]
fn check_repair_refuses_a_mounted_repository() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    snapfs_fails(&repo, &["check", "--repair"], &["is mounted", "umount"]);
    m.umount();
    let out = snapfs_ok(&repo, &["check", "--repair"]);
    assert!(out.contains("nothing to repair"), "{out}");
}

/// Runs an operation on `path` as uid and gid 65534 (no supplementary groups) with
/// Debian's python3, and returns the file's mode bits afterwards.
fn as_nobody(script: &Path, path: &Path, op: &str) -> u32 {
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(path)
        .arg(op)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running /usr/bin/python3 (Debian's python3 package)");
    assert!(
        out.status.success(),
        "{op} on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::metadata(path).unwrap().mode() & 0o7777
}

const OPS: &str = r#"
import mmap, os, sys
path, op = sys.argv[1], sys.argv[2]
if op == "write_wronly":
    fd = os.open(path, os.O_WRONLY); os.pwrite(fd, b"x", 0); os.close(fd)
elif op == "write_rdwr":
    fd = os.open(path, os.O_RDWR); os.pwrite(fd, b"x", 0); os.close(fd)
elif op == "ftruncate":
    fd = os.open(path, os.O_WRONLY); os.ftruncate(fd, 3); os.close(fd)
elif op == "truncate":
    os.truncate(path, 2)
elif op == "o_trunc":
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
elif op == "fallocate":
    fd = os.open(path, os.O_WRONLY); os.posix_fallocate(fd, 0, 8192); os.close(fd)
elif op == "mmap":
    fd = os.open(path, os.O_RDWR); m = mmap.mmap(fd, 4); m[0:1] = b"y"; m.flush(); m.close(); os.close(fd)
"#;

#[test]
fn set_id_bits_go_as_on_ext4_when_another_user_writes() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let script = tmp.path().join("ops.py");
    fs::write(&script, OPS).unwrap();
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let m = Mount::with_args(&repo, &mnt, &["-o", "allow_other"]);
    for dir in [&plain, &m.mountpoint] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut differ = Vec::new();
    let mut seen_on_mount = HashMap::new();
    for mode in [0o4777, 0o2777, 0o2767, 0o6777, 0o4755] {
        for op in [
            "write_wronly",
            "write_rdwr",
            "ftruncate",
            "truncate",
            "o_trunc",
            "fallocate",
            "mmap",
            "chown",
        ] {
            let mut result = Vec::new();
            for dir in [&plain, &m.mountpoint] {
                let f = dir.join(format!("f{mode:o}-{op}"));
                fs::write(&f, b"abcdef").unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
                let after = if op == "chown" {
                    std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
                    fs::metadata(&f).unwrap().mode() & 0o7777
                } else if mode & 0o002 == 0 {
                    continue;
                } else {
                    as_nobody(&script, &f, op)
                };
                result.push(after);
            }
            if result.len() == 2 {
                seen_on_mount.insert((mode, op), result[1]);
                if result[0] != result[1] {
                    differ.push(format!(
                        "{mode:o} {op}: ext4 {:o}, mount {:o}",
                        result[0], result[1]
                    ));
                }
            }
        }
    }
    m.umount();
    assert!(
        differ.is_empty(),
        "modes differ from the plain folder's:\n{}",
        differ.join("\n")
    );
    assert_eq!(
        seen_on_mount[&(0o4777, "write_wronly")],
        0o777,
        "the reported case"
    );
    assert_eq!(seen_on_mount[&(0o6777, "ftruncate")], 0o777);
}

#[test]
fn a_big_folder_lists_whole_and_rm_rf_and_find_delete_empty_it() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    let src = tmp.path().join("src");
    for d in ["one", "two"] {
        fs::create_dir_all(src.join(d)).unwrap();
        for i in 0..6000 {
            fs::write(src.join(d).join(format!("file-{i:05}")), b"").unwrap();
        }
    }
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    let m = Mount::new(&repo, &mnt);
    for d in ["one", "two"] {
        let ls = run_in(&m.mountpoint, "ls", &["-f", d]);
        assert_eq!(ls.lines().count(), 6002, "ls -f {d}: every name and the two dots");
    }
    run_in(&m.mountpoint, "rm", &["-rf", "one"]);
    assert!(
        !m.path("one").exists(),
        "rm -rf removed the folder (no name skipped)"
    );
    run_in(&m.mountpoint, "find", &["two", "-mindepth", "1", "-delete"]);
    assert!(names(&m.path("two")).is_empty(), "find -delete left nothing");
    m.umount();
}

#[test]
fn a_listing_returns_each_name_that_stays_exactly_once_while_the_folder_changes() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let dir = m.path("busy");
    fs::create_dir(&dir).unwrap();
    for i in 0..3000 {
        fs::write(dir.join(format!("stay{i:05}")), b"").unwrap();
    }
    for i in 0..1000 {
        fs::write(dir.join(format!("churn{i:05}")), b"").unwrap();
    }
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut round = 0;
    for (n, entry) in fs::read_dir(&dir).unwrap().enumerate() {
        *counts
            .entry(entry.unwrap().file_name().into_string().unwrap())
            .or_default() += 1;
        // Every 50 names read: remove, rename and create names in the same folder.
        if n % 50 == 49 && round < 100 {
            for k in 0..5 {
                let i = round * 5 + k;
                // Names before "stay…" go, names after it come: a listing that
                // resumed at a position in a fresh list would skip names.
                let _ = fs::remove_file(dir.join(format!("churn{i:05}")));
                let _ = fs::rename(
                    dir.join(format!("churn{:05}", i + 500)),
                    dir.join(format!("zmoved{i:05}")),
                );
                fs::write(dir.join(format!("znew{round:03}-{k}")), b"").unwrap();
            }
            round += 1;
        }
    }
    assert!(
        round > 50,
        "the folder changed during the listing ({round} rounds)"
    );
    for i in 0..3000 {
        assert_eq!(counts.get(&format!("stay{i:05}")), Some(&1), "stay{i:05}");
    }
    let twice: Vec<_> = counts.iter().filter(|(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "names returned twice: {twice:?}");
    m.umount();
}

#[test]
fn fsync_of_a_file_or_folder_in_a_snapshot_succeeds() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"frozen").unwrap();
    let snap = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    fs::File::open(m.path(&format!("{snap}/d/f")))
        .unwrap()
        .sync_all()
        .unwrap();
    fs::File::open(m.path(&format!("{snap}/d")))
        .unwrap()
        .sync_all()
        .unwrap();
    fs::File::open(m.path(&snap)).unwrap().sync_all().unwrap();
    m.umount();
}

#[test]
fn space_of_deleted_files_comes_back_by_itself() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let empty: Vec<u64> = mirror_dirs(&repo)
        .iter()
        .map(|d| tree_bytes(&d.join("packs")))
        .collect();
    fs::write(m.path("big"), random_bytes(7, 24 << 20)).unwrap();
    fs::File::open(m.path("big")).unwrap().sync_all().unwrap();
    let full: Vec<u64> = mirror_dirs(&repo)
        .iter()
        .map(|d| tree_bytes(&d.join("packs")))
        .collect();
    assert!(
        full.iter().zip(&empty).all(|(f, e)| f - e >= 24 << 20),
        "{full:?}"
    );
    fs::remove_file(m.path("big")).unwrap();
    // No snapshot holds it: the reclaimer (every 10 s) deletes its chunks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut now = full.clone();
    while std::time::Instant::now() < deadline {
        now = mirror_dirs(&repo)
            .iter()
            .map(|d| tree_bytes(&d.join("packs")))
            .collect();
        if now
            .iter()
            .zip(&empty)
            .all(|(n, e)| n.saturating_sub(*e) < 1 << 20)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(
        now.iter()
            .zip(&empty)
            .all(|(n, e)| n.saturating_sub(*e) < 1 << 20),
        "mirrors still hold {now:?} (empty: {empty:?}) a minute after the delete"
    );
    let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
    assert_eq!(gc["chunks"], 0, "nothing left for gc");
    m.umount();
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
}

#[test]
fn noreclaim_leaves_the_space_to_gc() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::with_args(&repo, &mnt, &["-o", "noreclaim"]);
    fs::write(m.path("big"), random_bytes(8, 4 << 20)).unwrap();
    fs::File::open(m.path("big")).unwrap().sync_all().unwrap();
    fs::remove_file(m.path("big")).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(12));
    // The gc the CLI sends, with the progress the mount streams back for its bar.
    let mut reports = Vec::new();
    let request = snapfs::control::Request::Gc {
        dry_run: false,
        sweep: false,
    };
    let answer = snapfs::control::request_with_progress(&repo, &request, &mut |done, total| {
        reports.push((done, total))
    })
    .unwrap();
    let Some(snapfs::control::Answer::Gc { stats }) = answer else {
        panic!("the mount answered {answer:?}");
    };
    assert!(stats.bytes >= 4 << 20, "gc found it all: {stats:?}");
    assert_eq!(
        reports.last(),
        Some(&(stats.chunks, stats.chunks)),
        "progress ends at what was freed: {reports:?}"
    );
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");
    let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
    assert_eq!(gc["chunks"], 0, "nothing left: {gc}");
    m.umount();
}

#[test]
fn a_forgotten_snapshot_folder_is_gone_at_once() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::write(m.path("f"), b"x").unwrap();
    let snap = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    assert_eq!(
        fs::read(m.path(&format!("{snap}/f"))).unwrap(),
        b"x",
        "looked up, so cached"
    );
    snapfs_ok(&repo, &["forget", &snap]);
    assert!(
        !m.path(&snap).exists(),
        "the kernel forgot the name with the snapshot"
    );
    assert!(!names(&m.path("")).contains(&snap));
    m.umount();
}

#[test]
fn rows_an_older_version_left_unseen_are_named_by_check_and_freed_by_gc_sweep() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::with_args(&repo, &mnt, &["-o", "noreclaim"]);
    fs::write(m.path("big"), random_bytes(11, 2 << 20)).unwrap();
    fs::File::open(m.path("big")).unwrap().sync_all().unwrap();
    snapfs_ok(&repo, &["snapshot"]);
    fs::remove_file(m.path("big")).unwrap();
    m.umount();
    // What versions before the fix left: the file's rows ended at the live tree,
    // and the only snapshot that saw them gone without them.
    let db = rusqlite::Connection::open(repo.join("catalog.db")).unwrap();
    db.execute("DELETE FROM generations WHERE frozen_ns IS NOT NULL", [])
        .unwrap();
    drop(db);
    let out = snapfs(&repo, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("seen by no generation"), "{text}");
    let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
    assert_eq!(
        gc["chunks"], 0,
        "without the sweep the rows still hold the chunks: {gc}"
    );
    let dry: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["gc", "--sweep", "--dry-run", "--json"])).unwrap();
    assert!(dry["unseen_rows"].as_u64().unwrap() > 0, "{dry}");
    let gc: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["gc", "--sweep", "--json"])).unwrap();
    assert_eq!(gc["unseen_rows"], dry["unseen_rows"], "{gc}");
    assert!(
        gc["bytes"].as_u64().unwrap() >= 2 << 20,
        "the file's chunks are freed: {gc}"
    );
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
}
