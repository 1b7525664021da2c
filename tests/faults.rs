//! Fault injection on real mirror folders of packs: flipped bytes inside entries,
//! packs cut short (torn tails) or deleted, a chunk bad everywhere, a whole mirror
//! lost and brought back. Files must read correctly
//! or fail with EIO, never return wrong bytes; scrub repairs what it can and names
//! what it cannot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::mount::*;
use common::*;

/// Every entry of a mirror folder's packs, in place order (pack, then offset), with
/// its pack file.
fn entries(mirror: &Path) -> Vec<(PathBuf, PackEntry)> {
    pack_files(mirror)
        .into_iter()
        .flat_map(|pack| pack_entries(&pack).into_iter().map(move |e| (pack.clone(), e)))
        .collect()
}

/// The same pack file in another mirror folder.
fn in_mirror(pack: &Path, from: &Path, to: &Path) -> PathBuf {
    to.join(pack.strip_prefix(from).unwrap())
}

/// Flips a byte in the middle of the entry's frame (a rotten sector).
fn spoil(pack: &Path, entry: &PackEntry) {
    flip_byte(pack, entry.frame_offset() + (entry.len - 48) / 2);
}

/// Cuts `pack` short at the start of `entry` (a torn tail: it and every later entry
/// of the pack are missing).
fn cut_at(pack: &Path, entry: &PackEntry) {
    fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .unwrap()
        .set_len(entry.offset)
        .unwrap();
}

/// The bytes of every pack file of a mirror folder, by path below it.
fn pack_bytes(mirror: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    pack_files(mirror)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(mirror).unwrap().to_path_buf(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Damages mirror 0: flips a byte in each of the first 10 entries and cuts the pack
/// short before its last 10. Returns how many entries it holds.
fn damage_mirror_0(repo: &Path) -> usize {
    let all = entries(&repo.join("mirror-0"));
    assert!(all.len() > 40, "{} entries", all.len());
    assert_eq!(pack_files(&repo.join("mirror-0")).len(), 1, "one pack");
    for (pack, e) in &all[..10] {
        spoil(pack, e);
    }
    let (pack, e) = &all[all.len() - 10];
    cut_at(pack, e);
    all.len()
}

/// A repository with 40 files of 200 KiB random data (plenty of chunks) imported.
fn repo_with_files() -> (tempfile::TempDir, PathBuf, Vec<(String, Vec<u8>)>) {
    let (tmp, repo) = temp_repo();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut files = Vec::new();
    for i in 0..40u64 {
        let data = random_bytes(100 + i, 200_000);
        let name = format!("f{i:02}");
        fs::write(src.join(&name), &data).unwrap();
        files.push((name, data));
    }
    snapfs_ok(&repo, &["init", "--chunk-size", "16K:32K:64K"]);
    snapfs_ok(&repo, &["import", src.to_str().unwrap()]);
    (tmp, repo, files)
}

fn scrub_json(repo: &Path) -> (Option<i32>, serde_json::Value) {
    let out = snapfs(repo, &["scrub", "--json"]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).expect("scrub --json prints JSON"),
    )
}

#[test]
fn scrub_alone_repairs_flipped_and_torn_entries_and_a_second_scrub_finds_nothing() {
    let (_tmp, repo, files) = repo_with_files();
    damage_mirror_0(&repo);
    let (code, report) = scrub_json(&repo);
    assert_eq!(code, Some(0), "{report}");
    // The first entry past the cut restores the pack's whole tail, so the 9 after
    // it are good by the time scrub reads them.
    assert_eq!(report["mirrors"][0]["corrupt"], 10);
    assert_eq!(report["mirrors"][0]["missing"], 1);
    assert_eq!(report["mirrors"][0]["repaired"], 11);
    assert_eq!(report["mirrors"][1]["repaired"], 0);
    assert_eq!(
        pack_bytes(&repo.join("mirror-0")),
        pack_bytes(&repo.join("mirror-1")),
        "mirror 0's pack is whole again, byte for byte"
    );
    let (code, again) = scrub_json(&repo);
    assert_eq!(code, Some(0));
    assert!(snapfs_ok(&repo, &["check", "--read-data"]).contains("no problems found"));
    for m in again["mirrors"].as_array().unwrap() {
        assert_eq!(
            (
                m["corrupt"].as_u64(),
                m["missing"].as_u64(),
                m["repaired"].as_u64()
            ),
            (Some(0), Some(0), Some(0))
        );
    }
    // And every file still reads back exactly.
    let restored = repo.parent().unwrap().join("restored");
    snapfs_ok(&repo, &["snapshot"]);
    snapfs_ok(&repo, &["restore", "@latest", "/", restored.to_str().unwrap()]);
    for (name, data) in &files {
        assert_eq!(&fs::read(restored.join(name)).unwrap(), data, "{name}");
    }
}

#[test]
fn reads_heal_damaged_copies_through_the_mount() {
    require_fuse!();
    let (tmp, repo, files) = repo_with_files();
    damage_mirror_0(&repo);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    for (name, data) in &files {
        assert_eq!(
            &fs::read(m.path(name)).unwrap(),
            data,
            "{name} reads correctly from mirror 1"
        );
    }
    m.umount();
    let (code, report) = scrub_json(&repo);
    assert_eq!(code, Some(0));
    let fixed = report["mirrors"][0]["repaired"].as_u64().unwrap();
    assert_eq!(fixed, 0, "reads already healed every damaged copy: {report}");
    assert_eq!(
        pack_bytes(&repo.join("mirror-0")),
        pack_bytes(&repo.join("mirror-1"))
    );
}

#[test]
fn a_deleted_pack_is_read_from_the_other_mirror_and_restored_whole() {
    require_fuse!();
    let (tmp, repo, files) = repo_with_files();
    for pack in pack_files(&repo.join("mirror-0")) {
        fs::remove_file(pack).unwrap();
    }
    let out = snapfs(&repo, &["check"]);
    assert_eq!(out.status.code(), Some(3), "check sees the missing pack");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    for (name, data) in &files {
        assert_eq!(&fs::read(m.path(name)).unwrap(), data, "{name}");
    }
    m.umount();
    assert_eq!(
        pack_bytes(&repo.join("mirror-0")),
        pack_bytes(&repo.join("mirror-1")),
        "reads restored the pack"
    );
    assert!(snapfs_ok(&repo, &["check", "--read-data"]).contains("no problems found"));
}

#[test]
fn a_chunk_bad_in_every_mirror_fails_with_eio_and_scrub_names_the_file() {
    require_fuse!();
    let (tmp, repo, files) = repo_with_files();
    snapfs_ok(&repo, &["snapshot"]);
    let name = snapfs_ok(&repo, &["list", "--json"]);
    let snap: serde_json::Value = serde_json::from_str(&name).unwrap();
    let snap = snap[0]["name"].as_str().unwrap().to_string();
    let (m0, m1) = (repo.join("mirror-0"), repo.join("mirror-1"));
    let (pack, victim) = entries(&m0)[3].clone();
    spoil(&pack, &victim);
    spoil(&in_mirror(&pack, &m0, &m1), &victim);

    let (code, report) = scrub_json(&repo);
    assert_eq!(code, Some(3), "damage found is exit code 3: {report}");
    let damage = &report["unrepairable"][0];
    let users: Vec<(String, String)> = serde_json::from_value(damage["used_by"].clone()).unwrap();
    assert!(users.iter().any(|(v, _)| v == "live"), "{users:?}");
    assert!(users.iter().any(|(v, _)| *v == snap), "{users:?}");
    let hurt = users[0].1.trim_start_matches('/').to_string();
    let out = snapfs(&repo, &["scrub"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("/{hurt}")), "{text}");

    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    let err = fs::read(m.path(&hurt)).expect_err("a file with a lost chunk must not read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let others = files.iter().filter(|(n, _)| *n != hurt);
    for (n, data) in others {
        assert_eq!(&fs::read(m.path(n)).unwrap(), data, "{n} is unharmed");
    }
    // Read the bad file again: the log names the failure once, not once per request.
    assert!(fs::read(m.path(&hurt)).is_err());
    m.umount();
    let log = fs::read_to_string(repo.join("mount.log")).unwrap();
    let mut eio: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            l.split_once("snapfs: error: read of inode ")
                .map(|(_, rest)| rest)
        })
        .collect();
    assert!(
        !eio.is_empty() && eio.iter().all(|l| l.ends_with("(answered EIO)")),
        "the EIO is logged with what failed:\n{log}"
    );
    let logged = eio.len();
    eio.sort();
    eio.dedup();
    assert_eq!(eio.len(), logged, "each EIO logged once:\n{log}");
}

#[test]
fn a_lost_mirror_is_refilled_by_scrub_and_then_carries_everything() {
    require_fuse!();
    let (tmp, repo, files) = repo_with_files();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    fs::remove_dir_all(repo.join("mirror-1")).unwrap();
    // Reads and writes go on.
    fs::write(m.path("written-while-degraded"), random_bytes(5, 300_000)).unwrap();
    for (n, data) in &files[..5] {
        assert_eq!(&fs::read(m.path(n)).unwrap(), data);
    }
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    assert_eq!(status["mirrors"][1]["state"], "lost", "{status}");
    m.umount();
    let log = fs::read_to_string(repo.join("mount.log")).unwrap();
    assert!(
        log.contains("mirror 1") && log.contains("is lost"),
        "the log warns: {log}"
    );

    fs::create_dir(repo.join("mirror-1")).unwrap();
    let (code, report) = scrub_json(&repo);
    assert_eq!(code, Some(0), "{report}");
    // Each missing pack is restored whole at its first entry.
    assert!(
        report["mirrors"][1]["repaired"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(
        pack_bytes(&repo.join("mirror-1")),
        pack_bytes(&repo.join("mirror-0"))
    );
    // Now the other mirror can go.
    fs::remove_dir_all(repo.join("mirror-0")).unwrap();
    let m = Mount::new(&repo, &mnt);
    for (n, data) in &files {
        assert_eq!(
            &fs::read(m.path(n)).unwrap(),
            data,
            "{n} from the refilled mirror"
        );
    }
    assert_eq!(
        fs::read(m.path("written-while-degraded")).unwrap(),
        random_bytes(5, 300_000)
    );
    m.umount();
}

fn fsync_write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap();
    fs::File::open(path).unwrap().sync_all().unwrap();
}

fn mirror_states(repo: &Path) -> Vec<String> {
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(repo, &["status", "--json"])).unwrap();
    status["mirrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_lost_mirror_refilled_by_scrub_is_used_again_without_a_remount() {
    require_fuse!();
    let (tmp, repo, files) = repo_with_files();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    fs::remove_dir_all(repo.join("mirror-1")).unwrap();
    fsync_write(&m.path("while-lost"), &random_bytes(6, 300_000));
    assert_eq!(mirror_states(&repo)[1], "lost");
    fs::create_dir(repo.join("mirror-1")).unwrap();
    // Scrub beside the mount refills it; the mount then takes it back.
    let (code, report) = scrub_json(&repo);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        mirror_states(&repo),
        ["complete", "complete"],
        "no remount needed"
    );
    fsync_write(&m.path("after"), &random_bytes(7, 300_000));
    m.umount();
    // Mirror 1 alone now carries everything: the old files, the one written while
    // it was lost and the one written after it came back.
    fs::remove_dir_all(repo.join("mirror-0")).unwrap();
    let m = Mount::new(&repo, &mnt);
    for (n, data) in &files {
        assert_eq!(&fs::read(m.path(n)).unwrap(), data, "{n}");
    }
    assert_eq!(fs::read(m.path("while-lost")).unwrap(), random_bytes(6, 300_000));
    assert_eq!(fs::read(m.path("after")).unwrap(), random_bytes(7, 300_000));
    m.umount();
}

#[test]
fn mirror_add_and_remove_while_mounted_beside_a_writer() {
    require_fuse!();
    let (tmp, repo, files) = repo_with_files();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    let new = tmp.path().join("new-mirror");
    // A writer goes on while the new mirror fills.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (m.path(""), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 3 {
                fsync_write(&dir.join(format!("w{n:03}")), &random_bytes(1000 + n, 100_000));
                n += 1;
            }
            n
        })
    };
    let out = snapfs_ok(&repo, &["mirror", "add", new.to_str().unwrap()]);
    assert!(out.contains("is complete"), "{out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert_eq!(mirror_states(&repo), ["complete", "complete", "complete"]);
    // The old mirrors go, one by one, while mounted; the last one stays.
    for old in ["mirror-0", "mirror-1"] {
        snapfs_ok(&repo, &["mirror", "remove", repo.join(old).to_str().unwrap()]);
    }
    let out = snapfs(&repo, &["mirror", "remove", new.to_str().unwrap()]);
    assert!(!out.status.success(), "the last mirror is kept");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would leave no complete, healthy mirror"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mirror_states(&repo), ["complete"]);
    fsync_write(&m.path("after"), &random_bytes(9, 300_000));
    m.umount();
    // The old folders are no longer needed at all.
    fs::remove_dir_all(repo.join("mirror-0")).unwrap();
    fs::remove_dir_all(repo.join("mirror-1")).unwrap();
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    let m = Mount::new(&repo, &mnt);
    for (n, data) in &files {
        assert_eq!(&fs::read(m.path(n)).unwrap(), data, "{n}");
    }
    for n in 0..written {
        assert_eq!(
            fs::read(m.path(&format!("w{n:03}"))).unwrap(),
            random_bytes(1000 + n, 100_000),
            "w{n:03}, written while the mirror filled"
        );
    }
    assert_eq!(fs::read(m.path("after")).unwrap(), random_bytes(9, 300_000));
    m.umount();
}

/// A tmpfs of `mib` MiB mounted at `dir`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(dir: &Path, mib: u64) -> SmallDisk {
        fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }

    fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.0).unwrap();
        s.f_bavail * s.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_gives_enospc_keeps_older_files_and_forget_plus_gc_free_it() {
    require_fuse!();
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let (tmp, repo) = temp_repo();
    let disk = SmallDisk::new(&tmp.path().join("small"), 64);
    let (m0, m1) = (disk.0.join("m0"), disk.0.join("m1"));
    snapfs_ok(
        &repo,
        &[
            "init",
            "--mirror",
            m0.to_str().unwrap(),
            "--mirror",
            m1.to_str().unwrap(),
        ],
    );
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    let old = random_bytes(1, 8 << 20);
    fs::write(m.path("old.bin"), &old).unwrap();
    fs::File::open(m.path("old.bin")).unwrap().sync_all().unwrap();
    let snap = snapfs_ok(&repo, &["snapshot"]).trim().to_string();

    // Fill the disk: the writer must hear ENOSPC (at write or at fsync), not lose older data.
    let err = {
        use std::io::Write;
        let mut f = fs::File::create(m.path("big.bin")).unwrap();
        let mut failure = None;
        for i in 0..200u64 {
            if let Err(e) = f.write_all(&random_bytes(1000 + i, 1 << 20)) {
                failure = Some(e);
                break;
            }
        }
        failure
            .or_else(|| f.sync_all().err())
            .expect("64 MiB of mirrors cannot take 200 MiB twice")
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(fs::read(m.path("old.bin")).unwrap(), old, "older data is intact");
    assert_eq!(fs::read(m.path(&format!("{snap}/old.bin"))).unwrap(), old);
    let status = snapfs(&repo, &["status"]);
    assert!(status.status.success(), "status works on a full disk");

    // Free space: drop the big file, the old one, and the snapshot that holds it.
    fs::remove_file(m.path("big.bin")).unwrap();
    fs::remove_file(m.path("old.bin")).unwrap();
    snapfs_ok(&repo, &["forget", &snap]);
    let before = disk.free();
    snapfs_ok(&repo, &["gc"]);
    assert!(
        disk.free() > before + (8 << 20),
        "gc gave space back: {} -> {}",
        before,
        disk.free()
    );
    fs::write(m.path("after.bin"), random_bytes(7, 8 << 20)).unwrap();
    fs::File::open(m.path("after.bin")).unwrap().sync_all().unwrap();
    assert_eq!(fs::read(m.path("after.bin")).unwrap(), random_bytes(7, 8 << 20));
    m.umount();
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    drop(disk);
}

#[test]
fn check_finds_copies_missing_and_corrupt_and_exits_3() {
    let (_tmp, repo, _files) = repo_with_files();
    assert!(snapfs_ok(&repo, &["check"]).contains("no problems found"));
    let (m0, m1) = (repo.join("mirror-0"), repo.join("mirror-1"));
    let all = entries(&m0);
    let n = all.len();
    // Entry 1 corrupt on mirror 0; entry n-2 missing on mirror 0 (its pack cut
    // short there); entry n-1 missing on both: no good copy.
    spoil(&all[1].0, &all[1].1);
    cut_at(&all[n - 2].0, &all[n - 2].1);
    cut_at(&in_mirror(&all[n - 1].0, &m0, &m1), &all[n - 1].1);
    let name: String = all[n - 1].1.chunk.iter().map(|b| format!("{b:02x}")).collect();
    let out = snapfs(&repo, &["check", "--read-data", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<String> = serde_json::from_value(report["problems"].clone()).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&name) && p.contains("no good copy")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("1 copies are corrupt")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("missing")), "{problems:?}");
    // Without --read-data the corrupt copy is not seen, the missing ones are.
    let out = snapfs(&repo, &["check"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_deleted_catalog_is_recovered_as_of_the_last_snapshot_and_check_passes() {
    require_fuse!();
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    fs::create_dir(m.path("docs")).unwrap();
    fs::write(m.path("docs/kept.txt"), b"in the snapshot").unwrap();
    fs::write(m.path("big.bin"), random_bytes(3, 1 << 20)).unwrap();
    let snap = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    // The copy is written in the background, once the snapshots have been quiet for
    // a moment: wait for it to appear under its name (not only as a temporary file).
    let copies = || {
        fs::read_dir(repo.join("mirror-0/catalog"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("catalog-"))
                    .count()
            })
            .unwrap_or(0)
    };
    for _ in 0..300 {
        if copies() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(copies() > 0, "a catalog copy is saved after the snapshot");
    fs::write(m.path("docs/later.txt"), b"after the snapshot").unwrap();
    fs::File::open(m.path("docs/later.txt"))
        .unwrap()
        .sync_all()
        .unwrap();
    // A crash, then the catalog is lost.
    m.kill_daemon();
    drop(m);
    fs::remove_file(repo.join("catalog.db")).unwrap();
    let _ = fs::remove_file(repo.join("catalog.db-wal"));
    let _ = fs::remove_file(repo.join("catalog.db-shm"));
    snapfs_fails(&repo, &["status"], &["has no catalog.db", "snapfs recover"]);

    let out = snapfs_ok(&repo, &["recover"]);
    assert!(out.contains(&format!("newest snapshot in it: {snap}")), "{out}");
    assert!(out.contains("are lost"), "{out}");
    let check = snapfs_ok(&repo, &["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    let m = Mount::new(&repo, &mnt);
    assert_eq!(fs::read(m.path("docs/kept.txt")).unwrap(), b"in the snapshot");
    assert_eq!(fs::read(m.path("big.bin")).unwrap(), random_bytes(3, 1 << 20));
    assert!(
        !m.path("docs/later.txt").exists(),
        "changes after the copy are gone, as recover said"
    );
    assert_eq!(
        fs::read(m.path(&format!("{snap}/docs/kept.txt"))).unwrap(),
        b"in the snapshot"
    );
    m.umount();
    // The chunks written after the copy are unknown objects: gc sweeps them.
    let gc: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).unwrap();
    assert_eq!(gc["swept"], true);
    assert!(snapfs_ok(&repo, &["check"]).contains("no problems found"));
}

#[test]
fn a_corrupt_catalog_is_named_and_recover_skips_bad_copies() {
    let (_tmp, repo, files) = repo_with_files();
    snapfs_ok(&repo, &["snapshot"]);
    snapfs_ok(&repo, &["snapshot"]);
    let copies = recover_copies(&repo.join("mirror-0"));
    assert_eq!(copies.len(), 2);
    // The newest copy is damaged in both mirrors; the older one must be used.
    for mirror in ["mirror-0", "mirror-1"] {
        let newest = recover_copies(&repo.join(mirror))[0].clone();
        fs::write(&newest, b"not zstd at all").unwrap();
    }
    fs::write(
        repo.join("catalog.db"),
        b"garbage that is no database, long enough to be read as a header .....",
    )
    .unwrap();
    snapfs_fails(&repo, &["status"], &["snapfs recover"]);
    let out = snapfs_ok(&repo, &["recover"]);
    assert!(out.contains("skipped"), "{out}");
    assert!(out.contains("moved the broken catalog"), "{out}");
    let restored = repo.parent().unwrap().join("restored");
    snapfs_ok(&repo, &["restore", "@latest", "/", restored.to_str().unwrap()]);
    for (name, data) in &files {
        assert_eq!(&fs::read(restored.join(name)).unwrap(), data);
    }
}

fn recover_copies(mirror: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(mirror.join("catalog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v.reverse();
    v
}

#[test]
fn mirror_add_fills_a_new_mirror_and_remove_keeps_one_complete() {
    let (tmp, repo, files) = repo_with_files();
    let extra = tmp.path().join("usb");
    let out = snapfs_ok(&repo, &["mirror", "add", extra.to_str().unwrap()]);
    assert!(out.contains("is complete"), "{out}");
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    assert_eq!(status["mirrors"].as_array().unwrap().len(), 3);
    assert_eq!(status["mirrors"][2]["state"], "complete");
    assert_eq!(status["mirrors"][2]["packs"], status["mirrors"][0]["packs"]);
    assert_eq!(
        pack_bytes(&extra),
        pack_bytes(&repo.join("mirror-0")),
        "the new mirror holds the same packs"
    );
    // Remove the two originals (files left in place, then deleted): the new one carries all.
    snapfs_ok(
        &repo,
        &["mirror", "remove", repo.join("mirror-0").to_str().unwrap()],
    );
    snapfs_ok(
        &repo,
        &["mirror", "remove", repo.join("mirror-1").to_str().unwrap()],
    );
    snapfs_fails(
        &repo,
        &["mirror", "remove", extra.to_str().unwrap()],
        &["no complete mirror"],
    );
    fs::remove_dir_all(repo.join("mirror-0")).unwrap();
    fs::remove_dir_all(repo.join("mirror-1")).unwrap();
    assert!(snapfs_ok(&repo, &["check", "--read-data"]).contains("no problems found"));
    snapfs_ok(&repo, &["snapshot"]);
    let restored = tmp.path().join("restored");
    snapfs_ok(&repo, &["restore", "@latest", "/", restored.to_str().unwrap()]);
    for (name, data) in &files {
        assert_eq!(&fs::read(restored.join(name)).unwrap(), data);
    }
    // A folder of another repository is refused and left alone.
    let (_tmp2, other) = temp_repo();
    snapfs_ok(&other, &["init"]);
    snapfs_fails(
        &repo,
        &["mirror", "add", other.join("mirror-0").to_str().unwrap()],
        &["another repository"],
    );
}

#[test]
fn an_interrupted_scrub_continues_where_it_stopped() {
    let (_tmp, repo, _files) = repo_with_files();
    let all = entries(&repo.join("mirror-0")); // in place order, as scrub walks
    let total = all.len();
    let cursor_at = total / 2;
    let pack_id = |p: &Path| u64::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    // As if a scrub had checked every chunk up to the middle one, then stopped.
    let (pack, middle) = &all[cursor_at];
    fs::write(
        repo.join("scrub.cursor"),
        format!("{} {}", pack_id(pack), middle.offset),
    )
    .unwrap();
    spoil(&all[1].0, &all[1].1); // before the cursor: not looked at again
    spoil(&all[total - 2].0, &all[total - 2].1); // after it
    let (code, report) = scrub_json(&repo);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["resumed"], true);
    assert_eq!(report["chunks"].as_u64().unwrap() as usize, total - cursor_at - 1);
    assert_eq!(report["mirrors"][0]["repaired"], 1);
    assert!(
        !repo.join("scrub.cursor").exists(),
        "a finished scrub forgets its place"
    );
    // The next scrub starts over and finds the other one.
    let (_, again) = scrub_json(&repo);
    assert_eq!(again["resumed"], false);
    assert_eq!(again["chunks"].as_u64().unwrap() as usize, total);
    assert_eq!(again["mirrors"][0]["repaired"], 1);
}
