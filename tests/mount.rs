//! End-to-end tests on a real FUSE mount of the real binary: what is written through
//! the mount reads back identically after umount and mount, real programs work in it,
//! a killed daemon loses nothing that was fsynced, and the errors a user can cause.
//!
//! Where FUSE is missing each test says so loudly and skips, unless
//! SNAPFS_REQUIRE_FUSE=1 (CI), where it fails.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mount::*;
use common::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A temp dir holding `repo` (not created) and an empty folder `mnt`.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    (tmp, repo, mnt)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {} {name}: {e}", path.display()));
}

fn bytes_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The daemon's peak resident memory (VmHWM) in bytes.
fn daemon_peak_rss(m: &Mount) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", m.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * KIB
}

/// The process umask (read without changing it, from /proc).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(v.trim(), 8).unwrap()
}

fn mirror_sizes(repo: &Path) -> Vec<u64> {
    mirror_dirs(repo).iter().map(|d| tree_bytes(d)).collect()
}

// ---------------------------------------------------------------------------------
// 0. The CLI contract of mount itself

#[test]
fn first_mount_creates_the_repository_and_says_so_once() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let created: Vec<&str> = m
        .stdout
        .lines()
        .filter(|l| l.contains("created repository"))
        .collect();
    assert_eq!(
        created.len(),
        1,
        "one line says the repository was created: {:?}",
        m.stdout
    );
    assert!(repo.join("catalog.db").is_file());
    fs::write(m.path("hello.txt"), b"hello\n").unwrap();
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert!(
        !m.stdout.contains("created repository"),
        "second mount: {:?}",
        m.stdout
    );
    assert_eq!(fs::read(m.path("hello.txt")).unwrap(), b"hello\n");
    m.umount();
}

#[test]
fn foreground_mount_serves_until_sigterm_then_unmounts_cleanly() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .arg("--repo")
        .arg(&repo)
        .arg("mount")
        .arg("-f")
        .arg(&mnt)
        .env_remove("SNAPFS_REPO")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = Mount::adopt(&repo, &mnt);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_mounted(&guard.mountpoint) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "mount -f exited before mounting"
        );
        assert!(Instant::now() < deadline, "mount -f did not mount within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let data = random_bytes(7, 3 * MIB as usize);
    fs::write(guard.path("data.bin"), &data).unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "mount -f stays in the foreground"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "mount -f did not exit within 120 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "mount -f exits 0 after SIGTERM: {status}");
    assert!(!is_mounted(&guard.mountpoint), "SIGTERM unmounts");
    drop(guard);
    let m = Mount::new(&repo, &mnt);
    assert!(
        fs::read(m.path("data.bin")).unwrap() == data,
        "data written before SIGTERM is kept"
    );
    m.umount();
}

// ---------------------------------------------------------------------------------
// 1. Everything a program can write persists across umount and mount

/// Checks what `everything_written_reads_back_identically_after_remount` wrote.
fn check_written_tree(root: &Path, big: &[u8]) {
    assert_eq!(fs::read(root.join("small.txt")).unwrap(), b"small file\n");
    assert!(fs::read(root.join("big.bin")).unwrap() == big, "5 MiB file bytes");
    assert_eq!(fs::metadata(root.join("empty")).unwrap().len(), 0);
    {
        use std::os::unix::fs::FileTypeExt;
        let fifo = fs::symlink_metadata(root.join("fifo")).unwrap();
        assert!(fifo.file_type().is_fifo(), "fifo is a fifo");
        assert_eq!(fifo.mode() & 0o777, 0o620 & !umask());
        assert!(fs::symlink_metadata(root.join("socket"))
            .unwrap()
            .file_type()
            .is_socket());
    }
    assert_eq!(fs::read(root.join("a/b/c/deep.txt")).unwrap(), b"deep\n");
    assert_eq!(fs::read(root.join("a/renamed.txt")).unwrap(), b"moved\n");
    assert!(!root.join("a/b/to-move.txt").exists());
    assert_eq!(
        fs::read(root.join("config")).unwrap(),
        b"new config\n",
        "rename over a file"
    );
    assert!(!root.join("config.tmp").exists());
    assert!(!root.join("gone.txt").exists(), "unlinked file stays gone");
    assert!(!root.join("a/gone-dir").exists(), "removed folder stays gone");
    assert_eq!(
        fs::read_link(root.join("a/link")).unwrap(),
        Path::new("../small.txt")
    );
    assert_eq!(fs::read(root.join("a/link")).unwrap(), b"small file\n");
    assert_eq!(
        fs::read_link(root.join("dangling")).unwrap(),
        Path::new("no/such/target")
    );
    let big_meta = fs::metadata(root.join("big.bin")).unwrap();
    let link_meta = fs::metadata(root.join("a/b/big-link")).unwrap();
    assert_eq!(big_meta.ino(), link_meta.ino(), "hard link shares the inode");
    assert_eq!(big_meta.nlink(), 2, "two links after one of three was unlinked");
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("small.txt"), 0o640);
    assert_eq!(mode("big.bin"), 0o600);
    assert_eq!(mode("a/b"), 0o750);
    assert_eq!(mode("tool.sh"), 0o755);
    assert_eq!(fs::read(root.join("tool.sh")).unwrap(), b"#!/bin/sh\necho tool\n");
    let x = xattrs_of(&root.join("small.txt"));
    assert_eq!(x.get("user.x").map(Vec::as_slice), Some(&b"value\0with nul"[..]));
    assert_eq!(x.get("user.empty").map(Vec::as_slice), Some(&b""[..]));
    assert_eq!(
        xattrs_of(&root.join("a")).get("user.dir").map(Vec::as_slice),
        Some(&b"on a folder"[..])
    );
    let m = fs::symlink_metadata(root.join("small.txt")).unwrap();
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (1_600_000_000, 123_456_789),
        "exact mtime"
    );
    // getfattr, a real program, sees the same attribute.
    let out = run_in(root, "getfattr", &["--only-values", "-n", "user.dir", "a"]);
    assert_eq!(out, "on a folder");
}

#[test]
fn everything_written_reads_back_identically_after_remount() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let root = m.mountpoint.clone();
    let big = random_bytes(1, 5 * MIB as usize);

    fs::write(root.join("small.txt"), b"small file\n").unwrap();
    fs::write(root.join("big.bin"), &big).unwrap();
    File::create(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    symlink("../small.txt", root.join("a/link")).unwrap();
    symlink("no/such/target", root.join("dangling")).unwrap();
    fs::hard_link(root.join("big.bin"), root.join("a/b/big-link")).unwrap();
    fs::hard_link(root.join("big.bin"), root.join("a/third-link")).unwrap();
    fs::remove_file(root.join("a/third-link")).unwrap();
    fs::set_permissions(root.join("small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("big.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    let mut tool = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(root.join("tool.sh"))
        .unwrap();
    tool.write_all(b"#!/bin/sh\necho tool\n").unwrap();
    drop(tool);
    fs::set_permissions(root.join("tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    set_xattr(&root.join("small.txt"), "user.x", b"value\0with nul");
    set_xattr(&root.join("small.txt"), "user.empty", b"");
    run_in(&root, "setfattr", &["-n", "user.dir", "-v", "on a folder", "a"]);
    fs::write(root.join("a/b/to-move.txt"), b"moved\n").unwrap();
    fs::rename(root.join("a/b/to-move.txt"), root.join("a/renamed.txt")).unwrap();
    fs::write(root.join("config"), b"old config\n").unwrap();
    fs::write(root.join("config.tmp"), b"new config\n").unwrap();
    fs::rename(root.join("config.tmp"), root.join("config")).unwrap();
    fs::write(root.join("gone.txt"), b"short-lived\n").unwrap();
    fs::remove_file(root.join("gone.txt")).unwrap();
    fs::create_dir(root.join("a/gone-dir")).unwrap();
    fs::remove_dir(root.join("a/gone-dir")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
    set_mtime(&root.join("small.txt"), 1_600_000_000, 123_456_789);

    check_written_tree(&root, &big);
    let before = walk_tree(&root, Fields::ALL);
    m.umount();

    let m = Mount::new(&repo, &mnt);
    check_written_tree(&m.mountpoint, &big);
    let after = walk_tree(&m.mountpoint, Fields::ALL);
    assert_trees_equal(&before, &after, "the tree after umount and mount");
    m.umount();
}

// ---------------------------------------------------------------------------------
// 2. A real tree copied in with cp -a

/// A copy of the first 300 folders of /usr/share/doc, with xattrs, hard links, other
/// owners, a fifo and nanosecond mtimes added so every attribute is exercised.
fn make_doc_source(dest: &Path) {
    fs::create_dir(dest).unwrap();
    let mut names: Vec<_> = fs::read_dir("/usr/share/doc")
        .expect("/usr/share/doc exists")
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names.truncate(300);
    let mut args: Vec<&OsStr> = vec![OsStr::new("-a")];
    let sources: Vec<PathBuf> = names
        .iter()
        .map(|n| Path::new("/usr/share/doc").join(n))
        .collect();
    args.extend(sources.iter().map(|p| p.as_os_str()));
    args.push(dest.as_os_str());
    let status = Command::new("cp").args(&args).status().unwrap();
    assert!(status.success(), "cp -a of /usr/share/doc into the source folder");

    let files: Vec<(String, Node)> = walk_tree(dest, Fields::ALL)
        .into_iter()
        .filter(|(_, n)| n.kind == 'f')
        .collect();
    assert!(
        files.len() >= 500,
        "expected a real tree, got {} files",
        files.len()
    );
    let root = rustix::process::geteuid().is_root();
    for (i, (rel, _)) in files.iter().enumerate() {
        let p = dest.join(rel);
        if i % 7 == 0 {
            set_xattr(&p, "user.snapfs.test", rel.as_bytes());
        }
        if i % 13 == 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }
        if i % 17 == 0 {
            set_mtime(&p, 1_700_000_000 + i as i64, 123_456_789 + i as i64);
        }
        if i % 19 == 0 && root {
            std::os::unix::fs::lchown(&p, Some(1000 + i as u32 % 3), Some(100)).unwrap();
        }
    }
    for (i, (rel, _)) in files.iter().enumerate().filter(|(i, _)| i % 11 == 0) {
        let p = dest.join(rel);
        fs::hard_link(&p, dest.join(format!("{rel}.hl{i}"))).unwrap();
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dest.join("a-fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    set_mtime(&dest.join("a-fifo"), 1_650_000_000, 1);
}

#[test]
fn real_tree_copied_with_cp_a_compares_equal_after_remount() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    let src = tmp.path().join("src").join("doc");
    fs::create_dir(tmp.path().join("src")).unwrap();
    make_doc_source(&src);
    let expected = walk_tree(&src, Fields::ALL);

    let m = Mount::new(&repo, &mnt);
    let status = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(m.path("doc"))
        .status()
        .unwrap();
    assert!(status.success(), "cp -a into the mount");
    assert_trees_equal(
        &expected,
        &walk_tree(&m.path("doc"), Fields::ALL),
        "doc right after cp -a",
    );
    m.umount();

    let m = Mount::new(&repo, &mnt);
    assert_trees_equal(
        &expected,
        &walk_tree(&m.path("doc"), Fields::ALL),
        "doc after umount and mount",
    );
    m.umount();
}

// ---------------------------------------------------------------------------------
// 3. Sparse files cost only their data

#[test]
fn sparse_3gib_file_reads_back_exactly_and_stores_only_its_data() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let regions = [(0, 31u64), (GIB, 32), (GIB * 5 / 2, 33)];
    let m = Mount::new(&repo, &mnt);
    let f = File::create(m.path("sparse")).unwrap();
    for &(offset, seed) in &regions {
        f.write_all_at(&random_bytes(seed, MIB as usize), offset).unwrap();
    }
    f.set_len(3 * GIB).unwrap();
    drop(f);
    m.umount();

    let m = Mount::new(&repo, &mnt);
    let path = m.path("sparse");
    assert_eq!(fs::metadata(&path).unwrap().len(), 3 * GIB);
    {
        // lseek finds the data and the holes exactly where they are.
        use rustix::fs::{seek, SeekFrom};
        let f = File::open(&path).unwrap();
        assert_eq!(seek(&f, SeekFrom::Hole(0)).unwrap(), MIB);
        assert_eq!(seek(&f, SeekFrom::Data(MIB)).unwrap(), GIB);
        assert_eq!(seek(&f, SeekFrom::Hole(GIB)).unwrap(), GIB + MIB);
        assert_eq!(seek(&f, SeekFrom::Data(GIB + MIB)).unwrap(), GIB * 5 / 2);
        assert_eq!(seek(&f, SeekFrom::Hole(GIB * 5 / 2)).unwrap(), GIB * 5 / 2 + MIB);
        assert_eq!(
            seek(&f, SeekFrom::Data(GIB * 5 / 2 + MIB)).unwrap_err(),
            rustix::io::Errno::NXIO,
            "no data after the last region"
        );
    }
    for &(offset, seed) in &regions {
        assert!(
            bytes_at(&path, offset, MIB as usize) == random_bytes(seed, MIB as usize),
            "data at {offset}"
        );
    }
    let zeros = vec![0u8; MIB as usize];
    for hole in [
        MIB,
        512 * MIB,
        GIB + MIB,
        2 * GIB,
        GIB * 5 / 2 + MIB,
        3 * GIB - MIB,
    ] {
        assert!(
            bytes_at(&path, hole, MIB as usize) == zeros,
            "hole at {hole} reads as zeros"
        );
    }
    // The last byte of the file is in a hole too; reading past the end gives nothing.
    let mut f = File::open(&path).unwrap();
    let mut buf = [1u8; 16];
    assert_eq!(f.read_at(&mut buf, 3 * GIB - 1).unwrap(), 1);
    assert_eq!(buf[0], 0);
    assert_eq!(f.read_at(&mut buf, 3 * GIB).unwrap(), 0);
    let mut rest = Vec::new();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(3 * GIB - 10)).unwrap();
    f.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, vec![0u8; 10]);
    drop(f);
    m.umount();
    for (dir, bytes) in mirror_dirs(&repo).iter().zip(mirror_sizes(&repo)) {
        assert!(
            bytes < 10 * MIB,
            "{} holds {bytes} bytes for 3 MiB of data",
            dir.display()
        );
    }
}

// ---------------------------------------------------------------------------------
// 4. Small writes into a big file re-chunk only what they touch

const PIECE: u64 = 64 * MIB;
const PIECES: u64 = 16;

fn piece_seed(i: u64) -> u64 {
    0x5eed_0000 + i
}

/// (offset, seed) of each 4 KiB write, in order.
fn random_small_writes() -> Vec<(u64, u64)> {
    let mut rng = Rng(4242);
    (0..1000)
        .map(|i| (rng.below(PIECE * PIECES - 4 * KIB), 0x1000_0000 + i))
        .collect()
}

#[test]
fn thousand_random_4k_writes_into_1gib_file_are_exact_and_cheap() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let mut f = File::create(m.path("big.bin")).unwrap();
    for i in 0..PIECES {
        f.write_all(&random_bytes(piece_seed(i), PIECE as usize)).unwrap();
    }
    f.sync_all().unwrap();
    let hwm = daemon_peak_rss(&m);
    assert!(
        hwm < 300 * MIB,
        "daemon peak RSS {} MiB after writing 1 GiB",
        hwm / MIB
    );
    drop(f);
    m.umount();
    let baseline = mirror_sizes(&repo);
    assert!(
        baseline.iter().all(|&b| b >= GIB / 2),
        "1 GiB of random data is stored: {baseline:?}"
    );

    let writes = random_small_writes();
    let m = Mount::new(&repo, &mnt);
    let f = OpenOptions::new().write(true).open(m.path("big.bin")).unwrap();
    for &(offset, seed) in &writes {
        f.write_all_at(&random_bytes(seed, 4 * KIB as usize), offset)
            .unwrap();
    }
    drop(f);
    m.umount();
    for ((dir, before), after) in mirror_dirs(&repo).iter().zip(&baseline).zip(mirror_sizes(&repo)) {
        let grown = after.saturating_sub(*before);
        assert!(
            grown < 300 * MIB,
            "{} grew by {} MiB for 4 MB of writes",
            dir.display(),
            grown / MIB
        );
    }

    let m = Mount::new(&repo, &mnt);
    let path = m.path("big.bin");
    assert_eq!(fs::metadata(&path).unwrap().len(), PIECE * PIECES);
    let mut file = File::open(&path).unwrap();
    let mut got = vec![0u8; PIECE as usize];
    for i in 0..PIECES {
        let start = i * PIECE;
        let mut model = random_bytes(piece_seed(i), PIECE as usize);
        for &(offset, seed) in &writes {
            let end = offset + 4 * KIB;
            if end <= start || offset >= start + PIECE {
                continue;
            }
            let data = random_bytes(seed, 4 * KIB as usize);
            let (lo, hi) = (offset.max(start), end.min(start + PIECE));
            model[(lo - start) as usize..(hi - start) as usize]
                .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
        }
        file.read_exact(&mut got).unwrap();
        assert_eq!(
            blake3::hash(&got),
            blake3::hash(&model),
            "content of bytes {start}..{} differs from the model",
            start + PIECE
        );
    }
    drop(file);
    m.umount();
}

// ---------------------------------------------------------------------------------
// 6. kill -9 of the daemon

fn meta_data(n: u64, k: u64) -> Vec<u8> {
    format!("small file {n}-{k}\n")
        .repeat(1 + (k as usize) * 10)
        .into_bytes()
}

fn heavy_data(n: u64) -> Vec<u8> {
    random_bytes(5000 + n, (MIB + n * 4099 % (64 * KIB)) as usize)
}

#[test]
fn kill_9_during_heavy_writes_keeps_fsynced_and_older_data() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::create_dir(m.path("old")).unwrap();
    fs::create_dir(m.path("heavy")).unwrap();
    fs::create_dir(m.path("meta")).unwrap();
    let old: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                format!("old/f{i}"),
                random_bytes(100 + i, (256 * KIB * (i + 1)) as usize),
            )
        })
        .chain(std::iter::once((
            "old/text".to_string(),
            text_bytes(9, 8 * MIB as usize),
        )))
        .collect();
    for (rel, data) in &old {
        let mut f = File::create(m.path(rel)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }
    File::open(m.path("old")).unwrap().sync_all().unwrap();

    // The heavy phase: files of ~1 MiB, every third one fsynced (recorded once fsync
    // has returned), until the daemon dies under it.
    let synced = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, synced, stop) = (m.path("heavy"), synced.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let result = (|| -> std::io::Result<()> {
                    let mut f = File::create(dir.join(format!("h{n}")))?;
                    f.write_all(&heavy_data(n))?;
                    if n.is_multiple_of(3) {
                        f.sync_all()?;
                        synced.lock().unwrap().push(n);
                    }
                    // A metadata storm beside the data: small files saved the way
                    // editors do (write a temp name, rename over).
                    let meta = dir.parent().unwrap().join("meta");
                    for k in 0..5 {
                        fs::write(meta.join(format!("tmp{n}-{k}")), meta_data(n, k))?;
                        fs::rename(meta.join(format!("tmp{n}-{k}")), meta.join(format!("m{n}-{k}")))?;
                    }
                    Ok(())
                })();
                if result.is_err() {
                    break;
                }
                n += 1;
            }
            n
        })
    };
    let start = Instant::now();
    while synced.lock().unwrap().len() < 10 || start.elapsed() < Duration::from_secs(3) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "heavy writer made no progress"
        );
        assert!(!writer.is_finished(), "writer stopped before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    let synced_before_kill: Vec<u64> = synced.lock().unwrap().clone();
    m.kill_daemon();
    stop.store(true, Ordering::Relaxed);
    let attempted = writer.join().unwrap();
    eprintln!(
        "kill -9: {} files fsynced before the kill, {attempted} attempted",
        synced_before_kill.len()
    );
    drop(m);

    let m = Mount::new(&repo, &mnt);
    for (rel, data) in &old {
        assert!(
            fs::read(m.path(rel)).unwrap() == *data,
            "{rel}, fsynced before the heavy phase, changed"
        );
    }
    for &n in &synced_before_kill {
        let got =
            fs::read(m.path(&format!("heavy/h{n}"))).unwrap_or_else(|e| panic!("fsynced heavy/h{n}: {e}"));
        assert!(
            got == heavy_data(n),
            "fsynced heavy/h{n} is not intact ({} bytes)",
            got.len()
        );
    }
    // Files not fsynced may be missing or short, but never hold bytes nobody wrote.
    for entry in fs::read_dir(m.path("heavy")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let n: u64 = name
            .strip_prefix('h')
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("stray {name}"));
        assert!(n <= attempted, "heavy/{name} was never written");
        let got =
            fs::read(entry.path()).unwrap_or_else(|e| panic!("reading heavy/{name} after the crash: {e}"));
        let want = heavy_data(n);
        assert!(got.len() <= want.len(), "heavy/{name} is longer than written");
        assert!(
            got.iter().zip(&want).all(|(g, w)| g == w || *g == 0),
            "heavy/{name} holds bytes that were never written"
        );
    }
    for entry in fs::read_dir(m.path("meta")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let (n, k): (u64, u64) = name
            .trim_start_matches("tmp")
            .trim_start_matches('m')
            .split_once('-')
            .and_then(|(n, k)| Some((n.parse().ok()?, k.parse().ok()?)))
            .unwrap_or_else(|| panic!("stray meta/{name}"));
        let got = fs::read(entry.path()).unwrap_or_else(|e| panic!("reading meta/{name}: {e}"));
        let want = meta_data(n, k);
        assert!(
            got.len() <= want.len() && got.iter().zip(&want).all(|(g, w)| g == w || *g == 0),
            "meta/{name} holds bytes that were never written: {got:?}"
        );
    }
    if on_path("sqlite3") {
        let out = Command::new("sqlite3")
            .arg("-readonly")
            .arg(repo.join("catalog.db"))
            .arg("PRAGMA integrity_check")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "catalog integrity: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("NOTE: sqlite3 CLI not found; skipped the catalog integrity check");
    }
    let fresh = random_bytes(77, 2 * MIB as usize);
    fs::write(m.path("after-crash.bin"), &fresh).unwrap();
    assert!(fs::read(m.path("after-crash.bin")).unwrap() == fresh);
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert!(fs::read(m.path("after-crash.bin")).unwrap() == fresh);
    m.umount();
}

// ---------------------------------------------------------------------------------
// 7. Real programs

#[test]
fn git_init_add_commit_status_work_in_the_mount() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let proj = m.path("proj");
    fs::create_dir_all(proj.join("src/deep")).unwrap();
    for i in 0..50 {
        fs::write(
            proj.join(format!("src/file{i}.txt")),
            text_bytes(i, 2000 + i as usize * 100),
        )
        .unwrap();
    }
    fs::write(proj.join("src/deep/data.bin"), random_bytes(3, 300_000)).unwrap();
    fs::write(proj.join("README"), b"readme\n").unwrap();
    let git = |args: &[&str]| {
        let mut all = vec!["-c", "user.name=Snap Test", "-c", "user.email=snap@example.com"];
        all.extend_from_slice(args);
        run_in(&proj, "git", &all)
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    assert_eq!(git(&["status", "--porcelain"]), "", "clean after commit");
    fs::write(proj.join("README"), b"changed\n").unwrap();
    assert_eq!(git(&["status", "--porcelain"]), " M README\n");
    git(&["commit", "-q", "-a", "-m", "second"]);
    assert_eq!(git(&["log", "--oneline"]).lines().count(), 2);
    git(&["fsck", "--strict"]);
    m.umount();

    let m = Mount::new(&repo, &mnt);
    let proj = m.path("proj");
    assert_eq!(
        run_in(&proj, "git", &["status", "--porcelain"]),
        "",
        "clean after remount"
    );
    assert_eq!(run_in(&proj, "git", &["show", "HEAD:README"]), "changed\n");
    run_in(&proj, "git", &["fsck", "--strict"]);
    m.umount();
}

#[test]
fn sqlite_wal_transactions_work_in_the_mount() {
    require_fuse!();
    if !on_path("sqlite3") {
        eprintln!("SKIPPED part: sqlite3 CLI not found (apt package sqlite3); SQLite WAL test did not run");
        return;
    }
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let script = "PRAGMA journal_mode=WAL;
        CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
        BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
          INSERT INTO t(v) SELECT hex(randomblob(50)) FROM c; COMMIT;
        BEGIN; DELETE FROM t WHERE id % 3 = 0; COMMIT;
        BEGIN; UPDATE t SET v = 'x' WHERE id % 5 = 0; ROLLBACK;
        SELECT count(*) FROM t;
        SELECT count(*) FROM t WHERE v = 'x';
        PRAGMA integrity_check;";
    let out = run_in(&m.mountpoint, "sqlite3", &["db.sqlite", script]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["wal", "13334", "0", "ok"]);
    // A writer process holds a transaction open (WAL shared memory is mmapped from the
    // mount); a second process reads at the same time, then the writer commits.
    let mut writer = Command::new("sqlite3")
        .current_dir(&m.mountpoint)
        .arg("db.sqlite")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin
        .write_all(b"BEGIN; INSERT INTO t(v) VALUES ('pending'); INSERT INTO t(v) VALUES ('pending');\n")
        .unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = run_in(
        &m.mountpoint,
        "sqlite3",
        &["db.sqlite", "SELECT count(*) FROM t WHERE v = 'pending';"],
    );
    assert_eq!(
        out.trim(),
        "0",
        "a reader does not see an open transaction and is not blocked"
    );
    stdin.write_all(b"COMMIT;\n").unwrap();
    drop(stdin);
    let done = writer.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(
        done.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let out = run_in(
        &m.mountpoint,
        "sqlite3",
        &["db.sqlite", "DELETE FROM t WHERE v = 'pending' RETURNING id;"],
    );
    assert_eq!(out.lines().count(), 2, "the committed rows are there: {out}");
    m.umount();

    let m = Mount::new(&repo, &mnt);
    let out = run_in(
        &m.mountpoint,
        "sqlite3",
        &[
            "db.sqlite",
            "PRAGMA journal_mode; SELECT count(*) FROM t; PRAGMA integrity_check;",
        ],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["wal", "13334", "ok"]);
    m.umount();
}

#[test]
fn tar_extract_of_a_large_tree_matches_its_source() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    let tarball = tmp.path().join("doc.tar");
    run_in(
        Path::new("/usr/share"),
        "tar",
        &["--format=posix", "-cf", tarball.to_str().unwrap(), "doc"],
    );
    let fields = Fields {
        xattrs: false,
        ..Fields::ALL
    };
    let expected = walk_tree(Path::new("/usr/share/doc"), fields);
    let m = Mount::new(&repo, &mnt);
    run_in(&m.mountpoint, "tar", &["-xf", tarball.to_str().unwrap()]);
    assert_trees_equal(
        &expected,
        &walk_tree(&m.path("doc"), fields),
        "tar x into the mount",
    );
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert_trees_equal(
        &expected,
        &walk_tree(&m.path("doc"), fields),
        "untarred tree after remount",
    );
    m.umount();
}

#[test]
fn cargo_builds_a_small_crate_inside_the_mount() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    run_in(
        &m.mountpoint,
        &cargo,
        &["new", "--vcs", "none", "--offline", "--quiet", "hello"],
    );
    let crate_dir = m.path("hello");
    fs::write(
        crate_dir.join("src/main.rs"),
        "mod extra;\nfn main() {\n    println!(\"built in snapfs: {}\", extra::answer());\n}\n",
    )
    .unwrap();
    fs::write(
        crate_dir.join("src/extra.rs"),
        "pub fn answer() -> u32 {\n    6 * 7\n}\n",
    )
    .unwrap();
    let target = m.path("target");
    let env: [(&str, &OsStr); 1] = [("CARGO_TARGET_DIR", target.as_os_str())];
    run_in_env(&crate_dir, &cargo, &["build", "--offline", "--quiet"], &env);
    let exe = target.join("debug/hello");
    assert_eq!(
        run_in(&crate_dir, exe.to_str().unwrap(), &[]),
        "built in snapfs: 42\n"
    );
    // An incremental rebuild after a change sees the change.
    fs::write(
        crate_dir.join("src/extra.rs"),
        "pub fn answer() -> u32 {\n    43\n}\n",
    )
    .unwrap();
    run_in_env(&crate_dir, &cargo, &["build", "--offline", "--quiet"], &env);
    assert_eq!(
        run_in(&crate_dir, exe.to_str().unwrap(), &[]),
        "built in snapfs: 43\n"
    );
    m.umount();
    let m = Mount::new(&repo, &mnt);
    let exe = m.path("target/debug/hello");
    assert_eq!(
        run_in(&m.mountpoint, exe.to_str().unwrap(), &[]),
        "built in snapfs: 43\n"
    );
    m.umount();
}

// ---------------------------------------------------------------------------------
// 8. Errors

#[test]
fn mount_on_a_missing_mountpoint_fails_naming_it() {
    require_fuse!();
    let (tmp, repo) = temp_repo();
    let missing = tmp.path().join("no-such-folder");
    snapfs_fails(
        &repo,
        &["mount", missing.to_str().unwrap()],
        &[missing.to_str().unwrap()],
    );
    assert!(!is_mounted(&missing));
    assert!(!repo.exists(), "a failed mount leaves no repository behind");
}

#[test]
fn mounting_a_repository_mounted_elsewhere_fails_naming_the_pid() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    let second = tmp.path().join("second");
    fs::create_dir(&second).unwrap();
    let m = Mount::new(&repo, &mnt);
    let pid = m.pid().to_string();
    let guard = Mount::adopt(&repo, &second);
    let msg = snapfs_fails(
        &repo,
        &["mount", second.to_str().unwrap()],
        &["in use by process", &pid, m.mountpoint.to_str().unwrap()],
    );
    assert!(!is_mounted(&guard.mountpoint), "{msg}");
    drop(guard);
    // The first mount is unharmed.
    fs::write(m.path("still-works"), b"yes").unwrap();
    assert_eq!(fs::read(m.path("still-works")).unwrap(), b"yes");
    m.umount();
}

// ---------------------------------------------------------------------------------
// 9. Plain fusermount3 -u loses nothing

#[test]
fn plain_fusermount_u_after_unsynced_writes_loses_nothing() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    fs::create_dir_all(m.path("d/e")).unwrap();
    for i in 0..200u64 {
        let rel = format!("d/e/small{i}");
        let data = text_bytes(i, (i * 37 % 5000) as usize);
        fs::write(m.path(&rel), &data).unwrap();
        expected.insert(rel, data);
    }
    let big = random_bytes(11, 40 * MIB as usize);
    fs::write(m.path("d/big.bin"), &big).unwrap();
    expected.insert("d/big.bin".into(), big);
    // An overwrite in the middle and a rename, right before the unmount.
    let f = OpenOptions::new().write(true).open(m.path("d/big.bin")).unwrap();
    f.write_all_at(b"patched", 12345).unwrap();
    drop(f);
    expected.get_mut("d/big.bin").unwrap()[12345..12352].copy_from_slice(b"patched");
    fs::rename(m.path("d/e/small5"), m.path("d/moved5")).unwrap();
    let moved = expected.remove("d/e/small5").unwrap();
    expected.insert("d/moved5".into(), moved);

    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.mountpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&m.mountpoint));
    assert!(
        wait_daemon_exit(&repo, Duration::from_secs(120)),
        "the daemon did not exit within 120 s of fusermount3 -u"
    );
    drop(m);

    let m = Mount::new(&repo, &mnt);
    for (rel, data) in &expected {
        let got = fs::read(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(
            got == *data,
            "{rel} differs after fusermount3 -u ({} vs {} bytes)",
            got.len(),
            data.len()
        );
    }
    assert!(!m.path("d/e/small5").exists());
    m.umount();
}

// ---------------------------------------------------------------------------------
// 10. POSIX details programs rely on

#[test]
fn cached_pages_of_a_live_file_follow_every_kind_of_change() {
    // Live files keep their cached pages from one open to the next; each kind of
    // change must still show on the next read: a write through another handle, a
    // truncate, a punched hole, copy_file_range into it, and a rollback.
    require_fuse!();
    use rustix::fs::{fallocate, FallocateFlags};
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let path = m.path("cached");
    let mut model = random_bytes(40, 3 * MIB as usize);
    fs::write(&path, &model).unwrap();
    let snap = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
    let read_all = || fs::read(&path).unwrap();
    assert!(read_all() == model, "first read fills the cache");

    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    f.write_all_at(b"written through another handle", MIB + 17)
        .unwrap();
    model[(MIB + 17) as usize..(MIB + 17) as usize + 30].copy_from_slice(b"written through another handle");
    drop(f);
    assert!(read_all() == model, "after a write through a read-write handle");

    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"and a write-only one", 5).unwrap();
    model[5..25].copy_from_slice(b"and a write-only one");
    drop(f);
    assert!(read_all() == model, "after a write through a write-only handle");

    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(2 * MIB + 5).unwrap();
    model.truncate((2 * MIB + 5) as usize);
    fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        4096,
        8192,
    )
    .unwrap();
    model[4096..4096 + 8192].fill(0);
    drop(f);
    assert!(read_all() == model, "after a truncate and a punched hole");

    let other = random_bytes(41, MIB as usize);
    fs::write(m.path("other"), &other).unwrap();
    let (src, dst) = (
        File::open(m.path("other")).unwrap(),
        OpenOptions::new().write(true).open(&path).unwrap(),
    );
    let (mut from, mut to) = (0u64, MIB / 2);
    while from < MIB {
        let left = (MIB - from) as usize;
        let n = rustix::fs::copy_file_range(&src, Some(&mut from), &dst, Some(&mut to), left).unwrap();
        assert!(n > 0);
    }
    model[(MIB / 2) as usize..(MIB / 2 + MIB) as usize].copy_from_slice(&other);
    drop((src, dst));
    assert!(read_all() == model, "after copy_file_range into it");

    snapfs_ok(&repo, &["rollback", &snap]);
    assert!(
        read_all() == random_bytes(40, 3 * MIB as usize),
        "after a rollback"
    );
    m.umount();
}

#[test]
fn a_reader_sees_appends_made_through_a_write_only_handle() {
    // Write-only handles bypass the page cache (direct I/O); a reader holding the file
    // open with cached pages, as `tail -f` does, must still see every append, including
    // the part that lands in the last, partly cached page.
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::write(m.path("log"), b"first line\n").unwrap();
    let reader = File::open(m.path("log")).unwrap();
    assert_eq!(bytes_at_fd(&reader, 0, 11), b"first line\n");
    let mut appender = OpenOptions::new().append(true).open(m.path("log")).unwrap();
    let mut expected = b"first line\n".to_vec();
    for i in 0..200 {
        let line = format!("line {i} {}\n", "x".repeat(i * 7 % 300));
        appender.write_all(line.as_bytes()).unwrap();
        expected.extend_from_slice(line.as_bytes());
        let len = reader.metadata().unwrap().len() as usize;
        assert_eq!(len, expected.len(), "size after append {i}");
        assert!(
            bytes_at_fd(&reader, 0, len) == expected,
            "content after append {i}"
        );
    }
    drop((reader, appender));
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert!(fs::read(m.path("log")).unwrap() == expected);
    m.umount();
}

#[test]
fn unlinked_file_stays_readable_and_writable_until_closed() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let data = random_bytes(5, 2 * MIB as usize);
    fs::write(m.path("victim"), &data).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("victim"))
        .unwrap();
    fs::remove_file(m.path("victim")).unwrap();
    assert!(!m.path("victim").exists());
    assert!(bytes_at_fd(&f, 0, data.len()) == data, "readable after unlink");
    f.write_all_at(b"still here", MIB).unwrap();
    assert_eq!(bytes_at_fd(&f, MIB, 10), b"still here");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // A new file under the same name is a different file.
    fs::write(m.path("victim"), b"new").unwrap();
    assert_eq!(bytes_at_fd(&f, 0, 16), &data[..16]);
    drop(f);
    assert_eq!(fs::read(m.path("victim")).unwrap(), b"new");
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert_eq!(fs::read(m.path("victim")).unwrap(), b"new");
    m.umount();
}

fn bytes_at_fd(f: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn rename_noreplace_and_exchange_behave_as_on_ext4() {
    require_fuse!();
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/inside"), b"I").unwrap();
    let r = |from: &str, to: &str, flags| renameat_with(CWD, m.path(from), CWD, m.path(to), flags);
    assert_eq!(r("a", "b", RenameFlags::NOREPLACE), Err(rustix::io::Errno::EXIST));
    assert_eq!(
        fs::read(m.path("b")).unwrap(),
        b"B",
        "NOREPLACE left the target alone"
    );
    r("a", "c", RenameFlags::NOREPLACE).unwrap();
    assert!(!m.path("a").exists());
    r("c", "b", RenameFlags::EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.path("c")).unwrap(), b"B");
    r("c", "dir", RenameFlags::EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("dir")).unwrap(), b"B", "a file and a folder swap");
    assert_eq!(fs::read(m.path("c/inside")).unwrap(), b"I");
    assert_eq!(
        r("c", "missing", RenameFlags::EXCHANGE),
        Err(rustix::io::Errno::NOENT)
    );
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.path("dir")).unwrap(), b"B");
    assert_eq!(fs::read(m.path("c/inside")).unwrap(), b"I");
    assert!(!m.path("a").exists());
    m.umount();
}

#[test]
fn punched_hole_reads_as_zeros_and_is_found_by_seek_hole() {
    require_fuse!();
    use rustix::fs::{fallocate, seek, FallocateFlags, SeekFrom};
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let mut data = random_bytes(21, 8 * MIB as usize);
    fs::write(m.path("f"), &data).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        2 * MIB,
        MIB,
    )
    .unwrap();
    data[2 * MIB as usize..3 * MIB as usize].fill(0);
    assert_eq!(f.metadata().unwrap().len(), 8 * MIB, "KEEP_SIZE keeps the size");
    assert!(bytes_at_fd(&f, 0, data.len()) == data);
    assert_eq!(seek(&f, SeekFrom::Hole(0)).unwrap(), 2 * MIB);
    assert_eq!(seek(&f, SeekFrom::Data(2 * MIB)).unwrap(), 3 * MIB);
    drop(f);
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert!(fs::read(m.path("f")).unwrap() == data, "the hole persists");
    m.umount();
}

#[test]
fn copy_file_range_copies_exactly_and_stores_nothing_new() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let data = random_bytes(22, 64 * MIB as usize);
    fs::write(m.path("src"), &data).unwrap();
    m.umount();
    let before = mirror_sizes(&repo);
    let m = Mount::new(&repo, &mnt);
    let src = File::open(m.path("src")).unwrap();
    let dst = File::create(m.path("dst")).unwrap();
    let mut copied = 0u64;
    while copied < data.len() as u64 {
        let n = rustix::fs::copy_file_range(&src, None, &dst, None, data.len() - copied as usize).unwrap();
        assert!(n > 0, "copy_file_range stopped at {copied}");
        copied += n as u64;
    }
    drop((src, dst));
    assert!(fs::read(m.path("dst")).unwrap() == data);
    m.umount();
    for ((dir, b), a) in mirror_dirs(&repo).iter().zip(&before).zip(mirror_sizes(&repo)) {
        assert!(
            a.saturating_sub(*b) < 8 * MIB,
            "{} grew by {} MiB for a copy of 64 MiB",
            dir.display(),
            a.saturating_sub(*b) / MIB
        );
    }
    let m = Mount::new(&repo, &mnt);
    assert!(fs::read(m.path("dst")).unwrap() == data);
    m.umount();
}

#[test]
fn names_of_255_bytes_and_deep_paths_work() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let long = "n".repeat(255);
    fs::write(m.path(&long), b"long name").unwrap();
    let too_long = "n".repeat(256);
    let err = fs::write(m.path(&too_long), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    let deep: PathBuf = (0..100)
        .map(|i| format!("level-{i:03}-{}", "d".repeat(20)))
        .collect();
    fs::create_dir_all(m.mountpoint.join(&deep)).unwrap();
    fs::write(m.mountpoint.join(&deep).join("bottom"), b"deep down").unwrap();
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert_eq!(fs::read(m.path(&long)).unwrap(), b"long name");
    assert_eq!(
        fs::read(m.mountpoint.join(&deep).join("bottom")).unwrap(),
        b"deep down"
    );
    m.umount();
}

#[test]
fn utime_now_and_omit_set_times_as_posix_says() {
    require_fuse!();
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD, UTIME_NOW, UTIME_OMIT};
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let p = m.path("t");
    fs::write(&p, b"times").unwrap();
    let ts = |s: i64, ns: i64| Timespec {
        tv_sec: s,
        tv_nsec: ns,
    };
    let set = |a: Timespec, m: Timespec| {
        utimensat(
            CWD,
            &p,
            &Timestamps {
                last_access: a,
                last_modification: m,
            },
            AtFlags::empty(),
        )
        .unwrap()
    };
    let times = |p: &Path| {
        let md = fs::metadata(p).unwrap();
        ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec()))
    };
    set(ts(1_000_000_000, 1), ts(1_500_000_000, 2));
    assert_eq!(times(&p), ((1_000_000_000, 1), (1_500_000_000, 2)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    set(ts(0, UTIME_OMIT), ts(0, UTIME_NOW));
    let (a, mt) = times(&p);
    assert_eq!(a, (1_000_000_000, 1), "UTIME_OMIT leaves atime");
    assert!(
        (mt.0 - now).abs() < 10,
        "UTIME_NOW sets mtime to now: {mt:?} vs {now}"
    );
    set(ts(1_200_000_000, 3), ts(0, UTIME_OMIT));
    assert_eq!(times(&p), ((1_200_000_000, 3), mt), "UTIME_OMIT leaves mtime");
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert_eq!(times(&m.path("t")), ((1_200_000_000, 3), mt));
    m.umount();
}

#[test]
fn setgid_folder_passes_its_group_to_new_entries() {
    require_fuse!();
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: setgid_folder_passes_its_group_to_new_entries needs root to chown");
        return;
    }
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let d = m.path("shared");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, None, Some(4242)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(d.join("file"), b"x").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let check = |d: &Path| {
        assert_eq!(
            fs::metadata(d.join("file")).unwrap().gid(),
            4242,
            "file takes the folder's group"
        );
        let sub = fs::metadata(d.join("sub")).unwrap();
        assert_eq!(sub.gid(), 4242, "subfolder takes the folder's group");
        assert_eq!(sub.mode() & 0o2000, 0o2000, "subfolder inherits setgid");
    };
    check(&d);
    m.umount();
    let m = Mount::new(&repo, &mnt);
    check(&m.path("shared"));
    m.umount();
}

#[test]
fn statfs_reports_the_free_space_of_the_mirrors_disk() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let disk = rustix::fs::statvfs(&repo).unwrap();
    let ours = rustix::fs::statvfs(&m.mountpoint).unwrap();
    let disk_avail = disk.f_bavail * disk.f_frsize;
    let avail = ours.f_bavail * ours.f_frsize;
    let mirrors = mirror_dirs(&repo).len() as u64;
    assert!(ours.f_blocks > 0 && ours.f_frsize > 0, "statfs reports a size");
    assert!(
        avail <= disk_avail + GIB && avail + 2 * GIB >= disk_avail / mirrors,
        "mount says {} MiB free, the mirrors' disk {} MiB ({mirrors} mirrors)",
        avail / MIB,
        disk_avail / MIB
    );
    m.umount();
}

#[test]
fn timestamps_change_as_posix_says() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let d = m.path("d");
    let f = d.join("f");
    fs::create_dir(&d).unwrap();
    fs::write(&f, b"data").unwrap();
    const OLD: i64 = 1_000_000_000;
    let mtime = |p: &Path| fs::metadata(p).unwrap().mtime();
    let ctime = |p: &Path| fs::metadata(p).unwrap().ctime();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 2
    };
    let recent = |t: i64, since: i64, what: &str| assert!(t >= since, "{what}: {t} is older than {since}");

    set_mtime(&f, OLD, 0);
    let t = now();
    OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .write_all_at(b"x", 2)
        .unwrap();
    recent(mtime(&f), t, "write sets mtime");
    recent(ctime(&f), t, "write sets ctime");

    set_mtime(&f, OLD, 0);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mtime(&f), OLD, "chmod leaves mtime");
    recent(ctime(&f), t, "chmod sets ctime");

    set_mtime(&f, OLD, 0);
    OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(1)
        .unwrap();
    recent(mtime(&f), t, "truncate sets mtime");

    set_mtime(&f, OLD, 0);
    let _ = fs::read(&f).unwrap();
    assert_eq!(mtime(&f), OLD, "read leaves mtime");

    for (what, op) in [
        (
            "creating an entry",
            &(|d: &Path| fs::write(d.join("g"), b"g").unwrap()) as &dyn Fn(&Path),
        ),
        ("renaming an entry", &|d: &Path| {
            fs::rename(d.join("g"), d.join("h")).unwrap()
        }),
        ("removing an entry", &|d: &Path| {
            fs::remove_file(d.join("h")).unwrap()
        }),
        ("making a subfolder", &|d: &Path| {
            fs::create_dir(d.join("sub")).unwrap()
        }),
    ] {
        set_mtime(&d, OLD, 0);
        op(&d);
        recent(mtime(&d), t, &format!("{what} sets the folder's mtime"));
    }
    m.umount();
}

/// Runs `program args` as user and group 65534 (nobody) in `dir`; returns the exit
/// code and stderr.
fn as_nobody(dir: &Path, program: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn permissions_and_ownership_follow_the_caller() {
    require_fuse!();
    if !rustix::process::geteuid().is_root() || !on_path("setpriv") {
        eprintln!("SKIPPED: permissions_and_ownership_follow_the_caller needs root and setpriv");
        return;
    }
    let (tmp, repo, mnt) = setup();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::with_args(&repo, &mnt, &["-o", "allow_other"]);
    let root = m.mountpoint.clone();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(root.join("open")).unwrap();
    fs::set_permissions(root.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("sticky/roots"), b"root's").unwrap();
    fs::write(root.join("readonly"), b"root's").unwrap();
    fs::set_permissions(root.join("readonly"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(root.join("secret"), b"root's").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();

    let (code, err) = as_nobody(&root, "touch", &["open/mine"]);
    assert_eq!(code, 0, "nobody creates in a 0777 folder: {err}");
    let meta = fs::metadata(root.join("open/mine")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "new files belong to the caller"
    );
    let (code, _) = as_nobody(&root, "touch", &["readonly"]);
    assert_ne!(code, 0, "nobody cannot write root's 0644 file");
    let (code, _) = as_nobody(&root, "cat", &["secret"]);
    assert_ne!(code, 0, "nobody cannot read root's 0600 file");
    let (code, _) = as_nobody(&root, "cat", &["readonly"]);
    assert_eq!(code, 0, "nobody can read root's 0644 file");
    let (code, _) = as_nobody(&root, "touch", &["newfile"]);
    assert_ne!(code, 0, "nobody cannot create in root's 0755 folder");
    assert!(!root.join("newfile").exists());
    let (code, _) = as_nobody(&root, "rm", &["-f", "sticky/roots"]);
    assert_ne!(code, 0, "nobody cannot remove root's file from a sticky folder");
    assert!(root.join("sticky/roots").exists());
    let (code, err) = as_nobody(&root, "touch", &["sticky/nobodys"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = as_nobody(&root, "rm", &["sticky/nobodys"]);
    assert_eq!(
        code, 0,
        "the owner removes their own file from a sticky folder: {err}"
    );
    m.umount();
    let m = Mount::new(&repo, &mnt);
    let meta = fs::metadata(m.path("open/mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "ownership persists");
    m.umount();
}

#[test]
fn the_mount_reads_ahead_a_mebibyte_at_a_time_when_root() {
    require_fuse!();
    let (_tmp, repo, mnt) = setup();
    let m = Mount::new(&repo, &mnt);
    let dev = fs::metadata(&mnt).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let is_root = fs::metadata("/proc/self").unwrap().uid() == 0;
    let read_ahead = fs::read_to_string(&knob);
    m.umount();
    if !is_root {
        eprintln!("not root: the daemon cannot raise the read-ahead, nothing to check");
        return;
    }
    assert_eq!(
        read_ahead.unwrap().trim(),
        snapfs::fuse::READ_AHEAD_KIB.to_string(),
        "{knob}"
    );
}
