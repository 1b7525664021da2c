//! Snapshots end to end on a real mount: @ folders show each state, nothing can
//! change them, rollback works under a shell sitting in the tree and can be undone,
//! list prices each snapshot and forget + gc free exactly that, and bad requests are
//! refused with a clear error and nothing changed.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mount::*;
use common::*;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    (tmp, repo, mnt)
}

fn snapshot(repo: &Path, label: Option<&str>) -> String {
    let mut args = vec!["snapshot"];
    if let Some(l) = label {
        args.extend(["--label", l]);
    }
    let name = snapfs_ok(repo, &args).trim().to_string();
    assert!(
        name.starts_with('@') && name.ends_with('Z') || name.contains("Z-"),
        "snapshot name {name}"
    );
    name
}

fn list(repo: &Path) -> Vec<serde_json::Value> {
    let out = snapfs_ok(repo, &["list", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn snapshots_show_each_state_and_refuse_every_change() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::create_dir(m.path("docs")).unwrap();
    fs::write(m.path("docs/a.txt"), b"first version").unwrap();
    let s1 = snapshot(&repo, Some("one"));
    fs::write(m.path("docs/a.txt"), b"second version, longer").unwrap();
    fs::write(m.path("docs/b.txt"), b"new file").unwrap();
    let s2 = snapshot(&repo, None);
    assert_ne!(s1, s2);
    fs::remove_file(m.path("docs/a.txt")).unwrap();

    assert_eq!(
        fs::read(m.path(&format!("{s1}/docs/a.txt"))).unwrap(),
        b"first version"
    );
    assert!(!m.path(&format!("{s1}/docs/b.txt")).exists());
    assert_eq!(
        fs::read(m.path(&format!("{s2}/docs/a.txt"))).unwrap(),
        b"second version, longer"
    );
    assert_eq!(
        fs::read(m.path(&format!("{s2}/docs/b.txt"))).unwrap(),
        b"new file"
    );
    assert!(!m.path("docs/a.txt").exists());
    let root: Vec<String> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        root.contains(&s1) && root.contains(&s2) && root.contains(&"docs".to_string()),
        "{root:?}"
    );

    let snap = m.path(&s1);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(fs::write(snap.join("docs/new"), b"x"), "create");
    erofs(
        fs::OpenOptions::new()
            .append(true)
            .open(snap.join("docs/a.txt"))
            .map(|_| ()),
        "open for writing",
    );
    erofs(
        fs::set_permissions(
            snap.join("docs/a.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
        "chmod",
    );
    erofs(
        rustix::fs::utimensat(
            rustix::fs::CWD,
            snap.join("docs/a.txt"),
            &rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
            },
            rustix::fs::AtFlags::empty(),
        )
        .map_err(std::io::Error::from),
        "utimes",
    );
    erofs(
        rustix::fs::setxattr(
            snap.join("docs/a.txt"),
            "user.x",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(std::io::Error::from),
        "setxattr",
    );
    erofs(
        fs::rename(snap.join("docs/a.txt"), snap.join("docs/z.txt")),
        "rename inside",
    );
    erofs(fs::remove_file(snap.join("docs/a.txt")), "unlink");
    erofs(fs::remove_dir(snap.join("docs")), "rmdir");
    erofs(fs::create_dir(snap.join("newdir")), "mkdir");
    erofs(fs::rename(&snap, m.path("renamed")), "rename the @ folder");
    erofs(fs::remove_dir(&snap), "rmdir the @ folder");
    erofs(
        fs::hard_link(m.path("docs/b.txt"), snap.join("docs/link")),
        "link into",
    );
    assert_eq!(
        fs::read(snap.join("docs/a.txt")).unwrap(),
        b"first version",
        "unchanged after all that"
    );
    m.umount();
}

#[test]
fn snapshot_names_get_suffixes_within_one_second_and_hidden_snapdir_still_resolves() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    snapfs_ok(&repo, &["init"]);
    // Without a mount the command works on the repository directly.
    // Snapshots until two fall within one second (they take well under one, so
    // this ends by the third or fourth); they may straddle a second boundary.
    let stamp = |n: &str| n[.."@2026-12-02T055912Z".len()].to_string();
    let mut names: Vec<String> = Vec::new();
    while names.len() < 3 || (names.iter().all(|n| n.len() == stamp(n).len()) && names.len() < 8) {
        names.push(snapshot(&repo, None));
    }
    assert!(names.iter().any(|n| n.ends_with("-2")), "{names:?}");
    // Within each second the first name is the bare timestamp and the next
    // ones count up from -2.
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let earlier = names[..i].iter().filter(|n| stamp(n) == stamp(name)).count();
        expected.push(match earlier {
            0 => stamp(name),
            k => format!("{}-{}", stamp(name), k + 1),
        });
    }
    assert_eq!(names, expected, "suffixes count up within one second");
    let out = Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .arg("--repo")
        .arg(&repo)
        .args(["mount", "--snapdir", "hidden"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Mount::adopt(&repo, &mnt);
    let root: Vec<String> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(root.is_empty(), "hidden snapdir lists nothing: {root:?}");
    assert!(
        m.path(&names[1]).is_dir(),
        "but {} is reachable by name",
        names[1]
    );
    m.umount();
}

#[test]
fn rollback_under_a_shell_in_the_tree_and_undo() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::create_dir(m.path("work")).unwrap();
    fs::write(m.path("work/notes"), b"good").unwrap();
    let good = snapshot(&repo, None);
    fs::write(m.path("work/notes"), b"broken").unwrap();
    fs::write(m.path("work/junk"), b"junk").unwrap();

    // A shell whose working folder is inside the tree reads the file after the
    // rollback, through its own cwd.
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg("read line; cat notes; ls")
        .current_dir(m.path("work"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = snapfs_ok(&repo, &["rollback", &good]);
    let safety = out
        .lines()
        .find_map(|l| l.strip_prefix("safety snapshot "))
        .and_then(|l| l.split_whitespace().next())
        .expect("rollback names its safety snapshot")
        .to_string();
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let seen = shell.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(
        seen.starts_with("good"),
        "the shell sees the rolled-back file: {seen:?}"
    );
    assert!(!seen.contains("junk"), "the newer file is gone: {seen:?}");
    assert_eq!(fs::read(m.path("work/notes")).unwrap(), b"good");
    assert!(m.path(&safety).is_dir(), "the safety snapshot is kept");
    assert_eq!(
        fs::read(m.path(&format!("{safety}/work/notes"))).unwrap(),
        b"broken"
    );

    // Undo.
    snapfs_ok(&repo, &["rollback", &safety]);
    assert_eq!(fs::read(m.path("work/notes")).unwrap(), b"broken");
    assert_eq!(fs::read(m.path("work/junk")).unwrap(), b"junk");
    m.umount();
}

#[test]
fn list_prices_each_snapshot_and_forget_plus_gc_frees_exactly_that() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    // No background reclaim: this gc must be the one that frees the snapshot's bytes.
    let m = Mount::with_args(&repo, &mnt, &["-o", "noreclaim"]);
    fs::write(m.path("keep.bin"), random_bytes(1, 2 << 20)).unwrap();
    fs::write(m.path("old.bin"), random_bytes(2, 3 << 20)).unwrap();
    let s1 = snapshot(&repo, None);
    fs::remove_file(m.path("old.bin")).unwrap();
    let s2 = snapshot(&repo, None);
    let snaps = list(&repo);
    let only_s1 = snaps.iter().find(|s| s["name"] == s1.as_str()).unwrap()["exclusive_bytes"]
        .as_u64()
        .unwrap();
    let only_s2 = snaps.iter().find(|s| s["name"] == s2.as_str()).unwrap()["exclusive_bytes"]
        .as_u64()
        .unwrap();
    assert!(only_s1 >= 3 << 20, "s1 alone holds old.bin: {only_s1}");
    assert_eq!(only_s2, 0, "s2 shares everything with the live tree");

    let dry = snapfs_ok(&repo, &["forget", &s1, "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["frees_bytes"].as_u64(), Some(only_s1));
    assert_eq!(list(&repo).len(), 2, "a dry run changes nothing");

    let before: Vec<u64> = mirror_dirs(&repo).iter().map(|d| tree_bytes(d)).collect();
    snapfs_ok(&repo, &["forget", &s1]);
    let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
    assert_eq!(gc["bytes"].as_u64(), Some(only_s1));
    // Compaction copied the live share of the pack out and gc deleted it: the
    // mirrors gave back what list promised (a little slack for catalog copies).
    assert!(gc["compacted_packs"].as_u64().unwrap() >= 1, "{gc}");
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    let dead = status["pack_bytes"].as_u64().unwrap() - status["live_pack_bytes"].as_u64().unwrap();
    assert_eq!(dead, 0, "no dead bytes are left in a pack: {status}");
    let after: Vec<u64> = mirror_dirs(&repo).iter().map(|d| tree_bytes(d)).collect();
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a + only_s1 <= b + (256 << 10),
            "a mirror went from {b} to {a} bytes, list promised {only_s1} freed"
        );
    }
    assert!(!m.path(&s1).exists(), "the forgotten @ folder is gone at once");
    assert_eq!(fs::read(m.path("keep.bin")).unwrap(), random_bytes(1, 2 << 20));
    assert_eq!(
        fs::read(m.path(&format!("{s2}/keep.bin"))).unwrap(),
        random_bytes(1, 2 << 20)
    );
    m.umount();
}

#[test]
fn restore_copies_a_file_and_a_tree_out_of_a_snapshot() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::create_dir_all(m.path("proj/src")).unwrap();
    fs::write(m.path("proj/src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(m.path("proj/data.bin"), random_bytes(9, 700_000)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", m.path("proj/link")).unwrap();
    fs::hard_link(m.path("proj/data.bin"), m.path("proj/data2.bin")).unwrap();
    let s = snapshot(&repo, None);
    fs::remove_dir_all(m.path("proj")).unwrap();
    let dest = tmp.path().join("restored");
    snapfs_ok(&repo, &["restore", &s, "/proj", dest.to_str().unwrap()]);
    assert_eq!(fs::read(dest.join("src/main.rs")).unwrap(), b"fn main() {}\n");
    assert_eq!(fs::read(dest.join("data.bin")).unwrap(), random_bytes(9, 700_000));
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("src/main.rs")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(dest.join("data.bin")).unwrap().ino(),
        fs::metadata(dest.join("data2.bin")).unwrap().ino()
    );
    let one = tmp.path().join("one.rs");
    snapfs_ok(
        &repo,
        &[
            "restore",
            s.trim_start_matches('@'),
            "proj/src/main.rs",
            one.to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read(&one).unwrap(), b"fn main() {}\n");
    snapfs_fails(
        &repo,
        &["restore", &s, "proj/src/main.rs", one.to_str().unwrap()],
        &["already exists"],
    );
    m.umount();
}

#[test]
fn bad_snapshot_requests_fail_clearly_and_change_nothing() {
    let (_tmp, repo) = temp_repo();
    snapfs_ok(&repo, &["init"]);
    let s = snapshot(&repo, None);
    let before = snapfs_ok(&repo, &["list", "--json"]);
    snapfs_fails(
        &repo,
        &["rollback", "@2020-01-01T000000Z"],
        &["snapshot @2020-01-01T000000Z", "not found"],
    );
    snapfs_fails(&repo, &["restore", "@2020-01-01T000000Z", "/x"], &["not found"]);
    snapfs_fails(&repo, &["forget", "yesterday"], &["not a snapshot name"]);
    snapfs_usage_error(&repo, &["forget"], &["nothing to forget"]);
    snapfs_fails(
        &repo,
        &["restore", &s, "/no/such/path", "/tmp/snapfs-never"],
        &["/no/such/path", "not found"],
    );
    snapfs_ok(&repo, &["hold", &s]);
    snapfs_fails(&repo, &["forget", &s], &["is held", "release"]);
    assert!(snapfs_ok(&repo, &["list"]).contains("[held]"));
    snapfs_ok(&repo, &["release", "@latest"]);
    assert_eq!(snapfs_ok(&repo, &["list", "--json"]), before);
}

#[test]
fn diff_reports_changes_by_identity_and_log_collapses_versions() {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("p")).unwrap();
    for f in ["a", "b", "c"] {
        fs::write(src.join("p").join(f), f.as_bytes()).unwrap();
    }
    snapfs_ok(&repo, &["init"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    let s1 = snapshot(&repo, None);
    // Change the live tree offline through the library, as a mount would.
    {
        use snapfs::fs::{Fs, FsOptions, RenameMode, SetAttr};
        use snapfs::types::InodeId;
        let (catalog, store, _lock) = snapfs::repo::Repo::open(&repo, "test").unwrap().into_parts();
        let fs = Fs::new(catalog, store, FsOptions::default()).unwrap();
        let p = fs.lookup(InodeId::ROOT, b"p").unwrap().id;
        let a = fs.lookup(p, b"a").unwrap().id;
        fs.write(a, 0, b"A2").unwrap();
        fs.rename(p, b"b", p, b"b2", RenameMode::Replace).unwrap();
        fs.unlink(p, b"c").unwrap();
        let b2 = fs.lookup(p, b"b2").unwrap().id;
        fs.setattr(
            b2,
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
        fs.fsync(None).unwrap();
    }
    let changes: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["diff", &s1, "--json"])).unwrap();
    let got: Vec<(String, String)> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("modified", "/p/a"),
        ("metadata", "/p/b2"),
        ("renamed", "/p/b2"),
        ("deleted", "/p/c"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    let renamed = changes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["change"] == "renamed")
        .unwrap();
    assert_eq!(renamed["old_path"], "/p/b");

    let s2 = snapshot(&repo, None);
    let s3 = snapshot(&repo, None);
    let text = snapfs_ok(&repo, &["diff", &s2, &s3, "/p"]);
    assert!(text.is_empty(), "nothing changed between {s2} and {s3}: {text}");
    let log: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["log", "/p/a", "--json"])).unwrap();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2, "two versions of /p/a: {log:?}");
    assert_eq!(log[0]["seen_in"], serde_json::json!([s1]));
    assert_eq!(
        log[1]["seen_in"].as_array().unwrap().len(),
        3,
        "s2, s3 and live collapse: {log:?}"
    );
    assert_eq!(log[1]["size"], 2);
    let log_c: serde_json::Value =
        serde_json::from_str(&snapfs_ok(&repo, &["log", "/p/c", "--json"])).unwrap();
    assert_eq!(log_c[1]["exists"], false);
    snapfs_fails(&repo, &["log", "/nowhere"], &["/nowhere", "not found"]);
}

#[test]
fn rollback_of_one_folder_leaves_the_rest_alone() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::create_dir_all(m.path("a/deep")).unwrap();
    fs::write(m.path("a/deep/x"), b"x1").unwrap();
    fs::write(m.path("a/y"), b"y1").unwrap();
    fs::write(m.path("b"), b"b1").unwrap();
    let s = snapshot(&repo, None);
    fs::write(m.path("a/deep/x"), b"x2").unwrap();
    fs::remove_file(m.path("a/y")).unwrap();
    fs::create_dir(m.path("a/newdir")).unwrap();
    fs::write(m.path("b"), b"b2").unwrap();
    snapfs_fails(&repo, &["rollback", &s, "/never"], &["/never did not exist in"]);
    snapfs_ok(&repo, &["rollback", &s, "/a"]);
    assert_eq!(fs::read(m.path("a/deep/x")).unwrap(), b"x1");
    assert_eq!(fs::read(m.path("a/y")).unwrap(), b"y1");
    assert!(!m.path("a/newdir").exists());
    assert_eq!(
        fs::read(m.path("b")).unwrap(),
        b"b2",
        "outside the folder nothing changed"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(m.path("a")).unwrap().nlink(),
        3,
        "a holds . and deep's .."
    );
    assert_eq!(
        fs::metadata(m.path("")).unwrap().nlink() as usize,
        2 + 1,
        "root: . .. and a"
    );
    m.umount();
}

#[test]
fn gc_while_a_writer_streams_into_the_mount_loses_nothing() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let root = m.path("");
    // The writer waits for gc round n before its file 20·n, so gc surely runs while
    // it streams (not only before or after).
    let rounds_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = rounds_done.clone();
    let writer = std::thread::spawn(move || {
        let mut written = Vec::new();
        for i in 0..80u64 {
            while seen.load(std::sync::atomic::Ordering::SeqCst) < (i / 20) as usize {
                std::thread::sleep(Duration::from_millis(5));
            }
            let data = random_bytes(500 + i, 300_000 + (i as usize % 7) * 10_000);
            let path = root.join(format!("stream-{i:03}"));
            fs::write(&path, &data).unwrap();
            // Rewrite some files, so their old chunks become garbage while gc runs.
            if i % 3 == 0 {
                let again = random_bytes(900 + i, data.len());
                fs::write(&path, &again).unwrap();
                written.push((path, again));
            } else {
                written.push((path, data));
            }
        }
        written
    });
    let mut rounds = 0;
    while !writer.is_finished() {
        let s = snapshot(&repo, None);
        snapfs_ok(&repo, &["forget", &s]);
        let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
        assert_eq!(gc["dry_run"], false);
        rounds += 1;
        rounds_done.store(rounds, std::sync::atomic::Ordering::SeqCst);
    }
    let written = writer.join().unwrap();
    snapfs_ok(&repo, &["gc"]);
    assert!(rounds >= 3, "gc ran while the writer streamed ({rounds} rounds)");
    for (path, data) in &written {
        assert_eq!(&fs::read(path).unwrap(), data, "{}", path.display());
    }
    m.umount();
    let m = Mount::new(&repo, &mnt);
    for (path, data) in &written {
        let rel = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(&fs::read(m.path(rel)).unwrap(), data, "{rel} after remount");
    }
    m.umount();
    assert!(snapfs_ok(&repo, &["check", "--read-data"]).contains("no problems found"));
}

#[test]
fn an_fstab_style_mount_through_mount_fuse3_works_and_plain_umount_keeps_everything() {
    require_fuse!();
    if !rustix::process::geteuid().is_root() || !Path::new("/sbin/mount.fuse3").exists() {
        eprintln!("SKIPPED: needs root and mount.fuse3 (package fuse3)");
        return;
    }
    let (tmp, repo, mnt) = setup();
    // mount.fuse3 runs `snapfs SOURCE MOUNTPOINT -o …` from PATH: put this build first.
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_snapfs"), bin.join("snapfs")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // mount(8) runs mount.fuse3 for an fstab line of type fuse.snapfs (or fuse with a
    // snapfs# source); call it the same way, with this build on its PATH (mount(8)
    // itself resets PATH).
    for source in [
        repo.to_str().unwrap().to_string(),
        format!("snapfs#{}", repo.display()),
    ] {
        let fstype = if source.starts_with("snapfs#") {
            "fuse"
        } else {
            "fuse.snapfs"
        };
        let mut helper = Command::new("/sbin/mount.fuse3");
        helper
            .arg(&source)
            .arg(&mnt)
            .args(["-o", "rw,nodev,noatime"])
            .env("PATH", &path);
        if fstype == "fuse.snapfs" {
            helper.args(["-t", "snapfs"]);
        }
        let out = helper.output().unwrap();
        assert!(
            out.status.success(),
            "mount -t {fstype} {source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Mount::adopt(&repo, &mnt);
        let name = format!("{fstype}.txt");
        fs::write(m.path(&name), fstype.as_bytes()).unwrap();
        let out = Command::new("umount").arg(&mnt).output().unwrap();
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(wait_daemon_exit(&repo, Duration::from_secs(30)));
        drop(m);
    }
    let m = Mount::new(&repo, &mnt);
    assert_eq!(fs::read(m.path("fuse.snapfs.txt")).unwrap(), b"fuse.snapfs");
    assert_eq!(fs::read(m.path("fuse.txt")).unwrap(), b"fuse");
    m.umount();
}

#[test]
fn an_offline_gc_compacts_partly_dead_packs_and_keeps_every_live_byte() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::with_args(&repo, &mnt, &["-o", "noreclaim"]);
    fs::write(m.path("keep.bin"), random_bytes(21, 1 << 20)).unwrap();
    fs::write(m.path("old.bin"), random_bytes(22, 4 << 20)).unwrap();
    let s1 = snapshot(&repo, None);
    fs::remove_file(m.path("old.bin")).unwrap();
    m.umount();
    // A clean unmount leaves the catalog checkpointed: no WAL beside it.
    let wal = fs::metadata(repo.join("catalog.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL left after the unmount");
    snapfs_ok(&repo, &["forget", &s1]);
    let packs = |repo: &std::path::Path| -> Vec<u64> {
        mirror_dirs(repo)
            .iter()
            .map(|d| tree_bytes(&d.join("packs")))
            .collect()
    };
    let before = packs(&repo);
    let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
    assert!(gc["bytes"].as_u64().unwrap() >= 4 << 20, "{gc}");
    assert!(gc["compacted_packs"].as_u64().unwrap() >= 1, "{gc}");
    let moved = gc["moved_bytes"].as_u64().unwrap();
    assert!(
        (1 << 20..2 << 20).contains(&moved),
        "only the live MiB is copied: {gc}"
    );
    for (b, a) in before.iter().zip(packs(&repo)) {
        assert!(a + (4 << 20) <= *b, "packs went from {b} to {a} bytes");
    }
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    let m = Mount::new(&repo, &mnt);
    assert_eq!(fs::read(m.path("keep.bin")).unwrap(), random_bytes(21, 1 << 20));
    m.umount();
}
