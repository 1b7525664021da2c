//! Filesystem-core tests, with no kernel: POSIX rules, the write path, extents.

use std::sync::Arc;

use super::*;
use crate::catalog::{NewCatalog, Settings};
use crate::chunker::ChunkerParams;
use crate::store::{FaultStore, MemoryStore, ObjectStore, OverObjects};
use crate::types::{Ino, RepoId};
use space::MAX_FILE_SIZE;

const ME: Caller = Caller { uid: 1000, gid: 1000 };

struct Fixture {
    _dir: tempfile::TempDir,
    fs: Fs,
    /// The objects under the filesystem's store (one per chunk).
    store: Arc<dyn ObjectStore>,
}

fn fixture() -> Fixture {
    fixture_over(Box::new(MemoryStore::new()))
}

/// A filesystem over one mirror, `mirror`.
fn fixture_over(mirror: Box<dyn ObjectStore>) -> Fixture {
    fixture_with(mirror, FsOptions::default())
}

/// A new catalog at `path` with the fixtures' settings.
fn new_catalog(path: &std::path::Path) -> Catalog {
    Catalog::create(
        path,
        &NewCatalog {
            settings: Settings {
                repo_id: RepoId([3; 16]),
                chunker: ChunkerParams {
                    min_size: 4096,
                    avg_size: 16384,
                    max_size: 65536,
                    seed: 7,
                },
                zstd_level: Some(1),
                created_ns: 0,
            },
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            mirrors: vec!["/m0".into()],
        },
    )
    .unwrap()
}

/// A filesystem over one mirror, `mirror`, with `options`.
fn fixture_with(mirror: Box<dyn ObjectStore>, options: FsOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = new_catalog(&dir.path().join("catalog.db"));
    let store: Arc<dyn ObjectStore> = Arc::from(mirror);
    let fs = Fs::new(catalog, Arc::new(OverObjects::new(store.clone())), options).unwrap();
    Fixture { _dir: dir, fs, store }
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Fails the test when the catalog breaks any of its invariants.
fn assert_catalog_clean(fs: &Fs) {
    let problems = fs.with_catalog(|cat, _, _| cat.check_invariants()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

fn file(f: &Fixture, name: &str) -> InodeId {
    f.fs.create(ME, InodeId::ROOT, name.as_bytes(), FileKind::File, 0o644, 0, b"")
        .unwrap()
        .id
}

fn dir(f: &Fixture, parent: InodeId, name: &str) -> InodeId {
    f.fs.create(ME, parent, name.as_bytes(), FileKind::Dir, 0o755, 0, b"")
        .unwrap()
        .id
}

fn stored_chunks(f: &Fixture) -> usize {
    f.store.list().unwrap().len()
}

#[test]
fn streamed_writes_read_back_before_and_after_commit() {
    let f = fixture();
    let ino = file(&f, "big");
    let data = random(1, 3 << 20);
    for (i, piece) in data.chunks(100_000).enumerate() {
        f.fs.write(ino, (i * 100_000) as u64, piece).unwrap();
    }
    assert_eq!(
        f.fs.getattr(ino).unwrap().size,
        data.len() as u64,
        "size counts buffered bytes"
    );
    assert_eq!(f.fs.read(ino, 0, data.len()).unwrap(), data);
    f.fs.flush(None).unwrap();
    assert_eq!(
        f.fs.read(ino, 12_345, 1 << 20).unwrap(),
        &data[12_345..12_345 + (1 << 20)]
    );
    assert_eq!(
        f.fs.read(ino, data.len() as u64 - 10, 100).unwrap(),
        &data[data.len() - 10..]
    );
    assert!(f.fs.read(ino, data.len() as u64 + 5, 100).unwrap().is_empty());
}

#[test]
fn a_small_overwrite_in_a_big_file_stores_only_a_few_chunks() {
    let f = fixture();
    let ino = file(&f, "big");
    let data = random(2, 8 << 20);
    f.fs.write(ino, 0, &data).unwrap();
    f.fs.flush(None).unwrap();
    let before = stored_chunks(&f);
    let patch = random(3, 4096);
    f.fs.write(ino, 5_000_000, &patch).unwrap();
    f.fs.flush(None).unwrap();
    let added = stored_chunks(&f) - before;
    assert!((1..=4).contains(&added), "{added} new chunks for a 4 KiB write");
    let mut expected = data.clone();
    expected[5_000_000..5_004_096].copy_from_slice(&patch);
    assert_eq!(f.fs.read(ino, 0, expected.len()).unwrap(), expected);
}

#[test]
fn identical_files_share_their_chunks() {
    let f = fixture();
    let data = random(4, 1 << 20);
    for name in ["a", "b"] {
        let ino = file(&f, name);
        f.fs.write(ino, 0, &data).unwrap();
    }
    f.fs.flush(None).unwrap();
    let one = {
        let g = fixture();
        let ino = file(&g, "a");
        g.fs.write(ino, 0, &data).unwrap();
        g.fs.flush(None).unwrap();
        stored_chunks(&g)
    };
    assert_eq!(stored_chunks(&f), one);
}

#[test]
fn truncate_cuts_and_extends_with_zeros() {
    let f = fixture();
    let ino = file(&f, "t");
    let data = random(5, 200_000);
    f.fs.write(ino, 0, &data).unwrap();
    f.fs.setattr(
        ino,
        &SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    f.fs.setattr(
        ino,
        &SetAttr {
            size: Some(5000),
            ..Default::default()
        },
    )
    .unwrap();
    let got = f.fs.read(ino, 0, 10_000).unwrap();
    assert_eq!(got.len(), 5000);
    assert_eq!(&got[..1000], &data[..1000]);
    assert!(got[1000..].iter().all(|&b| b == 0));
}

#[test]
fn writing_past_the_end_leaves_a_hole() {
    let f = fixture();
    let ino = file(&f, "sparse");
    f.fs.write(ino, 1 << 30, b"tail").unwrap();
    f.fs.flush(None).unwrap();
    assert_eq!(f.fs.getattr(ino).unwrap().size, (1 << 30) + 4);
    assert_eq!(f.fs.read(ino, 12345, 8).unwrap(), vec![0; 8]);
    assert_eq!(f.fs.seek_node(Ino::live(ino), 0, Seek::Data).unwrap(), 1 << 30);
    assert_eq!(f.fs.seek_node(Ino::live(ino), 0, Seek::Hole).unwrap(), 0);
    assert_eq!(
        f.fs.seek_node(Ino::live(ino), 1 << 30, Seek::Hole).unwrap(),
        (1 << 30) + 4
    );
    assert_eq!(stored_chunks(&f), 1);
}

#[test]
fn punching_a_hole_zeroes_the_range_and_keeps_the_size() {
    let f = fixture();
    let ino = file(&f, "p");
    let data = random(6, 300_000);
    f.fs.write(ino, 0, &data).unwrap();
    f.fs.fallocate(ino, 100_000, 50_000, Allocate::PunchHole).unwrap();
    let got = f.fs.read(ino, 0, 300_000).unwrap();
    assert_eq!(got.len(), 300_000);
    assert!(got[100_000..150_000].iter().all(|&b| b == 0));
    assert_eq!(&got[150_000..], &data[150_000..]);
    assert_eq!(
        f.fs.seek_node(Ino::live(ino), 100_000, Seek::Data).unwrap(),
        150_000
    );
    f.fs.fallocate(ino, 0, 1 << 20, Allocate::Reserve { keep_size: false })
        .unwrap();
    assert_eq!(f.fs.getattr(ino).unwrap().size, 1 << 20);
}

#[test]
fn copy_range_shares_chunks_instead_of_copying() {
    let f = fixture();
    let a = file(&f, "a");
    let b = file(&f, "b");
    let data = random(7, 1 << 20);
    f.fs.write(a, 0, &data).unwrap();
    f.fs.flush(None).unwrap();
    let before = stored_chunks(&f);
    assert_eq!(
        f.fs.copy_range(Ino::live(a), 1000, b, 0, 500_000).unwrap(),
        500_000
    );
    assert_eq!(stored_chunks(&f), before, "no chunk written");
    assert_eq!(f.fs.read(b, 0, 600_000).unwrap(), &data[1000..501_000]);
    assert_eq!(
        f.fs.copy_range(Ino::live(a), (1 << 20) - 10, b, 0, 100).unwrap(),
        10,
        "cut at the end of the input"
    );
}

#[test]
fn rename_follows_posix() {
    let f = fixture();
    let d1 = dir(&f, InodeId::ROOT, "d1");
    let d2 = dir(&f, InodeId::ROOT, "d2");
    let sub = dir(&f, d1, "sub");
    let x = file(&f, "x");
    let y = file(&f, "y");
    let errno = |r: Result<()>| r.unwrap_err().errno();
    assert_eq!(
        errno(f.fs.rename(InodeId::ROOT, b"d1", sub, b"in", RenameMode::Replace)),
        libc::EINVAL
    );
    assert_eq!(
        errno(f.fs.rename(InodeId::ROOT, b"x", InodeId::ROOT, b"d2", RenameMode::Replace)),
        libc::EISDIR
    );
    assert_eq!(
        errno(f.fs.rename(InodeId::ROOT, b"d2", InodeId::ROOT, b"x", RenameMode::Replace)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(f.fs.rename(InodeId::ROOT, b"d2", InodeId::ROOT, b"d1", RenameMode::Replace)),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(f.fs.rename(InodeId::ROOT, b"x", InodeId::ROOT, b"y", RenameMode::NoReplace)),
        libc::EEXIST
    );
    assert_eq!(
        errno(f.fs.rename(InodeId::ROOT, b"nope", InodeId::ROOT, b"z", RenameMode::Replace)),
        libc::ENOENT
    );
    f.fs.rename(InodeId::ROOT, b"x", InodeId::ROOT, b"y", RenameMode::Exchange)
        .unwrap();
    assert_eq!(f.fs.lookup(InodeId::ROOT, b"x").unwrap().id, y);
    f.fs.rename(InodeId::ROOT, b"x", InodeId::ROOT, b"y", RenameMode::Replace)
        .unwrap();
    assert_eq!(f.fs.lookup(InodeId::ROOT, b"y").unwrap().id, y);
    assert_eq!(
        f.fs.lookup(InodeId::ROOT, b"x").unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        f.fs.getattr(x).unwrap_err().errno(),
        libc::ENOENT,
        "the replaced file is gone"
    );
    f.fs.rmdir(d1, b"sub").unwrap();
    f.fs.rename(InodeId::ROOT, b"d2", InodeId::ROOT, b"d1", RenameMode::Replace)
        .unwrap();
    assert_eq!(f.fs.lookup(InodeId::ROOT, b"d1").unwrap().id, d2);
    assert_eq!(f.fs.getattr(InodeId::ROOT).unwrap().nlink, 3);
}

#[test]
fn unlinked_open_file_lives_until_last_release() {
    let f = fixture();
    let ino = file(&f, "tmp");
    f.fs.open(ino).unwrap();
    f.fs.write(ino, 0, b"still here").unwrap();
    f.fs.unlink(InodeId::ROOT, b"tmp").unwrap();
    assert_eq!(
        f.fs.lookup(InodeId::ROOT, b"tmp").unwrap_err().errno(),
        libc::ENOENT
    );
    f.fs.write(ino, 10, b"!").unwrap();
    assert_eq!(f.fs.read(ino, 0, 100).unwrap(), b"still here!");
    assert_eq!(f.fs.getattr(ino).unwrap().nlink, 0);
    f.fs.release(ino).unwrap();
    assert_eq!(f.fs.getattr(ino).unwrap_err().errno(), libc::ENOENT);
}

#[test]
fn unlink_and_rmdir_check_types_and_emptiness() {
    let f = fixture();
    let d = dir(&f, InodeId::ROOT, "d");
    file(&f, "f");
    f.fs.create(ME, d, b"inner", FileKind::File, 0o600, 0, b"")
        .unwrap();
    assert_eq!(
        f.fs.unlink(InodeId::ROOT, b"d").unwrap_err().errno(),
        libc::EISDIR
    );
    assert_eq!(
        f.fs.rmdir(InodeId::ROOT, b"f").unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(
        f.fs.rmdir(InodeId::ROOT, b"d").unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    assert_eq!(
        f.fs.create(ME, InodeId::ROOT, b"f", FileKind::File, 0o600, 0, b"")
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    f.fs.unlink(d, b"inner").unwrap();
    f.fs.rmdir(InodeId::ROOT, b"d").unwrap();
    assert_eq!(f.fs.readdir_nodes(Ino::ROOT, SnapDir::Hidden).unwrap().len(), 1);
}

#[test]
fn setgid_folders_pass_their_group_on() {
    let f = fixture();
    let d = dir(&f, InodeId::ROOT, "shared");
    f.fs.setattr(
        d,
        &SetAttr {
            mode: Some(0o2775),
            gid: Some(4242),
            ..Default::default()
        },
    )
    .unwrap();
    let inner = f.fs.create(ME, d, b"sub", FileKind::Dir, 0o755, 0, b"").unwrap();
    assert_eq!(inner.gid, 4242);
    assert_eq!(inner.mode & libc::S_ISGID, libc::S_ISGID);
    let file = f.fs.create(ME, d, b"f", FileKind::File, 0o644, 0, b"").unwrap();
    assert_eq!((file.uid, file.gid), (1000, 4242));
    let plain =
        f.fs.create(ME, InodeId::ROOT, b"g", FileKind::File, 0o644, 0, b"")
            .unwrap();
    assert_eq!(plain.gid, 1000);
}

#[test]
fn times_follow_changes() {
    let f = fixture();
    let before = f.fs.getattr(InodeId::ROOT).unwrap().mtime_ns;
    std::thread::sleep(std::time::Duration::from_millis(5));
    let ino = file(&f, "t");
    let root = f.fs.getattr(InodeId::ROOT).unwrap();
    assert!(
        root.mtime_ns > before,
        "creating a name changes the folder's mtime"
    );
    let a = f.fs.getattr(ino).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    f.fs.write(ino, 0, b"x").unwrap();
    let b = f.fs.getattr(ino).unwrap();
    assert!(b.mtime_ns > a.mtime_ns && b.ctime_ns > a.ctime_ns);
    f.fs.setattr(
        ino,
        &SetAttr {
            mtime: Some(SetTime::At(42)),
            atime: Some(SetTime::At(7)),
            ..Default::default()
        },
    )
    .unwrap();
    let c = f.fs.getattr(ino).unwrap();
    assert_eq!((c.mtime_ns, c.atime_ns), (42, 7));
}

#[test]
fn xattrs_honour_create_and_replace_flags() {
    let f = fixture();
    let ino = file(&f, "x");
    assert_eq!(
        f.fs.setxattr(ino, b"user.a", b"1", false, true)
            .unwrap_err()
            .errno(),
        libc::ENODATA
    );
    f.fs.setxattr(ino, b"user.a", b"1", true, false).unwrap();
    assert_eq!(
        f.fs.setxattr(ino, b"user.a", b"2", true, false)
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    f.fs.setxattr(ino, b"user.a", b"2", false, true).unwrap();
    assert_eq!(f.fs.getxattr(ino, b"user.a").unwrap(), b"2");
    assert_eq!(f.fs.listxattr(ino).unwrap(), vec![b"user.a".to_vec()]);
    f.fs.removexattr(ino, b"user.a").unwrap();
    assert_eq!(f.fs.getxattr(ino, b"user.a").unwrap_err().errno(), libc::ENODATA);
}

#[test]
fn a_new_fs_drops_inodes_left_nameless_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let f = fixture();
    drop(f);
    let mut catalog = Catalog::create(
        &path,
        &NewCatalog {
            settings: Settings {
                repo_id: RepoId([3; 16]),
                chunker: ChunkerParams::default(),
                zstd_level: None,
                created_ns: 0,
            },
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            mirrors: vec!["/m0".into()],
        },
    )
    .unwrap();
    let txn = catalog.write().unwrap();
    let orphan = txn
        .create_inode(&NewInode {
            kind: FileKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            rdev: 0,
            time_ns: 0,
            target: vec![],
        })
        .unwrap()
        .id;
    txn.commit().unwrap();
    let fs = Fs::new(
        catalog,
        Arc::new(OverObjects::new(Arc::new(MemoryStore::new()))),
        FsOptions::default(),
    )
    .unwrap();
    assert_eq!(fs.getattr(orphan).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.getattr(InodeId::ROOT).unwrap().kind, FileKind::Dir);
}

#[test]
fn a_failed_sync_made_before_taking_the_lock_fails_the_commit() {
    // fsync syncs the mirrors before it takes the lock, then again under it before
    // committing. A writeback error is reported only once, so when the first sync
    // fails the commit must fail too, even though the second sync succeeds.
    let mirror = Arc::new(FaultStore::new());
    let f = fixture_over(Box::new(mirror.clone()));
    let file = file(&f, "f");
    f.fs.write(file, 0, &random(1, 100_000)).unwrap();
    mirror.fail_sync_at(1, libc::ENOSPC);
    let err = f.fs.fsync(None).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert_eq!(
        mirror.syncs(),
        1,
        "the commit stopped at the failure it was told of"
    );
    assert_eq!(
        f.fs.getattr(file).unwrap().size,
        0,
        "nothing of the failed run was committed"
    );

    // The next write and fsync work normally.
    let data = random(2, 100_000);
    f.fs.write(file, 0, &data).unwrap();
    f.fs.fsync(None).unwrap();
    assert_eq!(f.fs.read(file, 0, data.len()).unwrap(), data);
}

#[test]
fn reading_a_file_just_written_commits_and_syncs_nothing() {
    let mirror = Arc::new(FaultStore::new());
    let f = fixture_over(Box::new(mirror.clone()));
    let file = file(&f, "f");
    let mut model = random(3, 300_000);
    f.fs.write(file, 0, &model).unwrap();
    f.fs.fsync(None).unwrap();

    // A run in the middle (re-chunked from the extent it lands in), then one past the
    // end (a write elsewhere commits the run before it): reads see each, from the
    // chunks written so far and the buffered tail, without a sync.
    let patch = random(4, 50_000);
    f.fs.write(file, 100_000, &patch).unwrap();
    model[100_000..150_000].copy_from_slice(&patch);
    let synced = mirror.syncs();
    assert_eq!(f.fs.read(file, 0, 400_000).unwrap(), model);
    assert_eq!(f.fs.read(file, 120_000, 1000).unwrap(), &model[120_000..121_000]);
    assert_eq!(mirror.syncs(), synced, "no sync for reads");
    let more = random(5, 70_000);
    f.fs.write(file, 300_000, &more).unwrap();
    model.extend_from_slice(&more);
    let synced = mirror.syncs();
    assert_eq!(f.fs.getattr(file).unwrap().size, 370_000);
    assert_eq!(f.fs.read(file, 0, 400_000).unwrap(), model);
    assert_eq!(f.fs.read(file, 365_000, 10_000).unwrap(), &model[365_000..]);
    assert_eq!(mirror.syncs(), synced, "no sync for reads");

    f.fs.fsync(None).unwrap();
    assert!(mirror.syncs() > synced);
    assert_eq!(f.fs.read(file, 0, 400_000).unwrap(), model);
}

#[test]
fn times_and_modes_set_on_a_file_just_written_stay_set_without_a_commit() {
    // What `cp -p` does: write, then set owner, mode and times. The run stays
    // buffered, and its commit keeps the times set after it.
    let mirror = Arc::new(FaultStore::new());
    let f = fixture_over(Box::new(mirror.clone()));
    let file = file(&f, "f");
    let data = random(6, 90_000);
    f.fs.write(file, 0, &data).unwrap();
    let synced = mirror.syncs();
    let set = SetAttr {
        mode: Some(0o600),
        uid: Some(2000),
        mtime: Some(SetTime::At(1_000_000_000_123)),
        atime: Some(SetTime::At(2_000_000_000_000)),
        ..Default::default()
    };
    let attr = f.fs.setattr(file, &set).unwrap();
    assert_eq!(mirror.syncs(), synced, "no commit for an attribute change");
    assert_eq!((attr.mode, attr.uid, attr.size), (0o600, 2000, 90_000));
    assert_eq!(attr.mtime_ns, 1_000_000_000_123);
    assert!(
        attr.ctime_ns > 1_000_000_000_123,
        "ctime is the time of the change"
    );
    f.fs.fsync(None).unwrap();
    let attr = f.fs.getattr(file).unwrap();
    assert_eq!((attr.mode, attr.uid, attr.size), (0o600, 2000, 90_000));
    assert_eq!(attr.mtime_ns, 1_000_000_000_123, "the commit kept the time set");
    assert_eq!(attr.atime_ns, 2_000_000_000_000);
    assert_eq!(f.fs.read(file, 0, 100_000).unwrap(), data);

    // A later write moves mtime again, as POSIX says.
    f.fs.write(file, 90_000, b"more").unwrap();
    assert!(f.fs.getattr(file).unwrap().mtime_ns > 1_000_000_000_123);
}

#[test]
fn hundreds_of_random_writes_read_back_exactly_before_and_after_their_commit() {
    // Each write at a new offset seals a run; past 256 sealed runs the file commits.
    // Every read in between must see exactly what was written, in order.
    let f = fixture();
    let file = file(&f, "db");
    let mut model = random(7, 400_000);
    f.fs.write(file, 0, &model).unwrap();
    f.fs.fsync(None).unwrap();
    let mut seed = 11u64;
    for i in 0..600u64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (seed >> 33) % 450_000;
        let len = 1 + (seed >> 13) % 9000;
        let data = random(i + 100, len as usize);
        f.fs.write(file, offset, &data).unwrap();
        let end = (offset + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&data);
        if i % 50 == 0 || i == 599 {
            assert_eq!(
                f.fs.read(file, 0, 500_000).unwrap(),
                model,
                "whole file after write {i}"
            );
        } else {
            let from = offset.saturating_sub(3000);
            let to = (end + 3000).min(model.len());
            assert_eq!(
                f.fs.read(file, from, to - from as usize).unwrap(),
                &model[from as usize..to],
                "around write {i}"
            );
        }
    }
    assert_eq!(f.fs.getattr(file).unwrap().size, model.len() as u64);
    f.fs.fsync(None).unwrap();
    assert_eq!(f.fs.read(file, 0, 500_000).unwrap(), model, "after the commit");
}

#[test]
fn the_flusher_commits_a_file_with_many_buffered_extents_before_it_is_due() {
    // A commit writes every buffered extent into the catalog under the core's lock;
    // past COMMIT_EXTENTS the flusher commits at once instead of after flush_after.
    let options = FsOptions {
        flush_after: Duration::from_secs(3600),
        ..FsOptions::default()
    };
    let f = fixture_with(Box::new(MemoryStore::new()), options);
    let file = file(&f, "big");
    let committed_size = || {
        let catalog = Catalog::open_read_only(&f._dir.path().join("catalog.db")).unwrap();
        catalog.inode(catalog.live(), file).unwrap().unwrap().size
    };

    let small = random(8, 64 << 10);
    f.fs.write(file, 0, &small).unwrap();
    f.fs.flush_old().unwrap();
    assert_eq!(
        committed_size(),
        0,
        "a few extents, an hour to go: still buffered"
    );

    // 16 KiB chunks on average: about 1,500 extents.
    let big = random(9, 24 << 20);
    f.fs.write(file, small.len() as u64, &big).unwrap();
    f.fs.flush_old().unwrap();
    assert_eq!(committed_size(), (small.len() + big.len()) as u64);
    assert_eq!(f.fs.read(file, 0, small.len()).unwrap(), small);
}

/// Applies one fallocate to a byte model as ext4 would (no errors).
fn model_allocate(model: &mut Vec<u8>, offset: usize, len: usize, how: Allocate) {
    let end = offset + len;
    match how {
        Allocate::Reserve { keep_size } | Allocate::ZeroRange { keep_size } => {
            if !keep_size && end > model.len() {
                model.resize(end, 0);
            }
            if matches!(how, Allocate::ZeroRange { .. }) {
                let to = end.min(model.len());
                model[offset.min(to)..to].fill(0);
            }
        }
        Allocate::PunchHole => {
            let to = end.min(model.len());
            model[offset.min(to)..to].fill(0);
        }
        Allocate::CollapseRange => {
            model.drain(offset..end);
        }
        Allocate::InsertRange => {
            model.splice(offset..offset, std::iter::repeat_n(0, len));
        }
    }
}

#[test]
fn every_fallocate_mode_matches_a_byte_model() {
    let f = fixture();
    let ino = file(&f, "z");
    let mut model = random(40, 600_000);
    f.fs.write(ino, 0, &model).unwrap();
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % n
    };
    for step in 0..200 {
        let size = model.len() as u64;
        let how = match next(6) {
            0 => Allocate::Reserve {
                keep_size: next(2) == 0,
            },
            1 => Allocate::PunchHole,
            2 => Allocate::ZeroRange {
                keep_size: next(2) == 0,
            },
            3 => Allocate::CollapseRange,
            4 => Allocate::InsertRange,
            _ => {
                // A write now and then, so that buffered runs meet the shifts.
                let (off, len) = (next(size + 1), 1 + next(70_000));
                let data = random(step, len as usize);
                f.fs.write(ino, off, &data).unwrap();
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
                continue;
            }
        };
        let (offset, len) = match how {
            Allocate::CollapseRange => {
                let blocks = size / BLOCK_SIZE;
                if blocks < 2 {
                    continue;
                }
                let off = next(blocks - 1) * BLOCK_SIZE;
                (
                    off,
                    (1 + next((blocks - off / BLOCK_SIZE - 1).min(20))) * BLOCK_SIZE,
                )
            }
            Allocate::InsertRange => (next(size / BLOCK_SIZE) * BLOCK_SIZE, (1 + next(20)) * BLOCK_SIZE),
            _ => (next(size + 10_000), 1 + next(90_000)),
        };
        let result = f.fs.fallocate(ino, offset, len, how);
        let legal = match how {
            Allocate::CollapseRange => offset + len < size,
            Allocate::InsertRange => offset < size,
            _ => true,
        };
        if !legal {
            assert_eq!(result.unwrap_err().errno(), libc::EINVAL, "step {step}: {how:?}");
            continue;
        }
        result.unwrap_or_else(|e| panic!("step {step}: {how:?} {offset}+{len}: {e}"));
        model_allocate(&mut model, offset as usize, len as usize, how);
        assert_eq!(
            f.fs.getattr(ino).unwrap().size,
            model.len() as u64,
            "step {step}: {how:?}"
        );
        let got = f.fs.read(ino, 0, model.len() + 1).unwrap();
        assert!(got == model, "step {step}: {how:?} {offset}+{len}: bytes differ");
    }
    assert_catalog_clean(&f.fs);
}

#[test]
fn collapse_and_insert_refuse_what_ext4_refuses() {
    let f = fixture();
    let ino = file(&f, "r");
    f.fs.write(ino, 0, &random(41, 64 * 1024)).unwrap();
    let einval = |off, len, how| f.fs.fallocate(ino, off, len, how).unwrap_err().errno();
    assert_eq!(
        einval(100, 4096, Allocate::CollapseRange),
        libc::EINVAL,
        "unaligned offset"
    );
    assert_eq!(
        einval(4096, 100, Allocate::InsertRange),
        libc::EINVAL,
        "unaligned length"
    );
    assert_eq!(
        einval(60 * 1024, 4096, Allocate::CollapseRange),
        libc::EINVAL,
        "reaches the end"
    );
    assert_eq!(
        einval(64 * 1024, 4096, Allocate::InsertRange),
        libc::EINVAL,
        "at the end"
    );
    assert_eq!(
        einval(0, MAX_FILE_SIZE, Allocate::InsertRange),
        libc::EFBIG,
        "past the largest file"
    );
    let d = dir(&f, InodeId::ROOT, "d");
    assert_eq!(
        f.fs.fallocate(d, 0, 4096, Allocate::CollapseRange)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(f.fs.getattr(ino).unwrap().size, 64 * 1024, "nothing changed");
}

#[test]
fn collapsing_the_first_mib_of_a_gib_file_writes_no_chunk_data() {
    let mirror = Arc::new(FaultStore::new());
    let f = fixture_over(Box::new(mirror.clone()));
    let ino = file(&f, "big");
    let piece = 1 << 20;
    for i in 0..1024u64 {
        f.fs.write(ino, i * piece, &random(1000 + i, piece as usize))
            .unwrap();
    }
    f.fs.fsync(None).unwrap();
    let puts = mirror.puts();
    f.fs.fallocate(ino, 0, piece, Allocate::CollapseRange).unwrap();
    f.fs.fsync(None).unwrap();
    assert_eq!(mirror.puts(), puts, "no chunk was written");
    assert_eq!(f.fs.getattr(ino).unwrap().size, 1023 * piece);
    for i in [0u64, 1, 511, 1022] {
        assert!(
            f.fs.read(ino, i * piece, piece as usize).unwrap() == random(1001 + i, piece as usize),
            "MiB {i} is what was MiB {}",
            i + 1
        );
    }
    f.fs.fallocate(ino, 4096, piece, Allocate::InsertRange).unwrap();
    assert_eq!(mirror.puts(), puts, "inserting writes none either");
    let head = f.fs.read(ino, 0, 4096 + piece as usize + 4096).unwrap();
    assert_eq!(&head[..4096], &random(1001, piece as usize)[..4096]);
    assert!(head[4096..4096 + piece as usize].iter().all(|&b| b == 0));
    assert_eq!(
        &head[4096 + piece as usize..],
        &random(1001, piece as usize)[4096..8192]
    );
}

#[test]
fn fsync_inside_a_snapshot_commits_and_syncs_nothing() {
    let mirror = Arc::new(FaultStore::new());
    let f = fixture_over(Box::new(mirror.clone()));
    let a = file(&f, "a");
    f.fs.write(a, 0, &random(50, 100_000)).unwrap();
    let snap = f.fs.snapshot(None).unwrap().name.unwrap();
    let b = file(&f, "b");
    // Bytes of their own (`random` makes seeds 50 and 51 alike): chunks to sync.
    f.fs.write(b, 0, &random(52, 100_000)).unwrap();
    let root = f.fs.lookup_node(Ino::ROOT, snap.as_bytes()).unwrap().ino;
    let in_snapshot = f.fs.lookup_node(root, b"a").unwrap().ino;
    let synced = mirror.syncs();
    f.fs.fsync_node(in_snapshot).unwrap();
    f.fs.fsync_node(root).unwrap();
    assert_eq!(mirror.syncs(), synced, "no sync");
    assert!(
        f.fs.lock().dirty.contains_key(&b),
        "b's writes are still buffered"
    );
    f.fs.fsync_node(Ino::live(b)).unwrap();
    assert!(mirror.syncs() > synced);
    assert!(!f.fs.lock().dirty.contains_key(&b));
}

#[test]
fn a_rollback_that_names_an_open_unlinked_file_again_keeps_it_at_close() {
    let f = fixture();
    let ino = file(&f, "f");
    f.fs.write(ino, 0, b"hello").unwrap();
    let snap = f.fs.snapshot(None).unwrap().name.unwrap();
    f.fs.open(ino).unwrap();
    f.fs.unlink(InodeId::ROOT, b"f").unwrap();
    f.fs.with_catalog(|cat, _, open| crate::ops::snapshots::rollback(cat, &snap, None, false, 7, open))
        .unwrap();
    f.fs.release(ino).unwrap();
    let back = f.fs.lookup(InodeId::ROOT, b"f").unwrap();
    assert_eq!(f.fs.read(back.id, 0, 100).unwrap(), b"hello");
    assert_catalog_clean(&f.fs);
}

#[test]
fn a_rollback_keeps_an_open_file_the_snapshot_lacks_until_its_last_close() {
    let f = fixture();
    let snap = f.fs.snapshot(None).unwrap().name.unwrap();
    let ino = file(&f, "new");
    f.fs.write(ino, 0, b"written after the snapshot").unwrap();
    f.fs.open(ino).unwrap();
    f.fs.with_catalog(|cat, _, open| crate::ops::snapshots::rollback(cat, &snap, None, false, 7, open))
        .unwrap();
    assert_eq!(
        f.fs.lookup(InodeId::ROOT, b"new").unwrap_err().errno(),
        libc::ENOENT
    );
    // The handle goes on working, as on a file unlinked while open.
    assert_eq!(f.fs.read(ino, 0, 100).unwrap(), b"written after the snapshot");
    f.fs.write(ino, 0, b"WRITTEN").unwrap();
    assert_eq!(f.fs.read(ino, 0, 7).unwrap(), b"WRITTEN");
    f.fs.release(ino).unwrap();
    assert_eq!(
        f.fs.getattr(ino).unwrap_err().errno(),
        libc::ENOENT,
        "gone at the last close"
    );
    assert_catalog_clean(&f.fs);
}

/// Every name of the live root, page by page of `page` entries, with `between`
/// called after each page.
fn list_in_pages(f: &Fixture, page: usize, mut between: impl FnMut()) -> Vec<Vec<u8>> {
    let (mut names, mut after) = (Vec::new(), 0);
    loop {
        let entries = f.fs.list_dir(Ino::ROOT, after, page, SnapDir::Hidden).unwrap();
        let Some(last) = entries.last() else {
            return names;
        };
        after = last.cookie;
        names.extend(entries.into_iter().map(|e| e.name));
        between();
    }
}

#[test]
fn a_listing_returns_each_name_that_stays_exactly_once_while_others_change() {
    let f = fixture();
    for i in 0..600 {
        file(&f, &format!("stay{i:04}"));
    }
    for i in 0..200 {
        file(&f, &format!("churn{i:04}"));
    }
    let mut round = 0;
    let names = list_in_pages(&f, 37, || {
        // Between pages: remove some, rename some, create some, in the same folder.
        for k in 0..10 {
            let i = round * 10 + k;
            let _ = f.fs.unlink(InodeId::ROOT, format!("churn{i:04}").as_bytes());
            let _ = f.fs.rename(
                InodeId::ROOT,
                format!("churn{:04}", i + 100).as_bytes(),
                InodeId::ROOT,
                format!("moved{i:04}").as_bytes(),
                RenameMode::Replace,
            );
            file(&f, &format!("new{round:03}-{k}"));
        }
        round += 1;
    });
    let mut seen = std::collections::HashMap::new();
    for n in &names {
        *seen.entry(n.clone()).or_insert(0) += 1;
    }
    for i in 0..600 {
        assert_eq!(seen.get(format!("stay{i:04}").as_bytes()), Some(&1), "stay{i:04}");
    }
    assert!(seen.values().all(|&n| n == 1), "no name twice");
}

#[test]
fn a_name_pointing_at_no_inode_is_left_out_and_answers_eio() {
    let f = fixture();
    let (a, b, c) = (file(&f, "a"), file(&f, "b"), file(&f, "c"));
    let _ = (a, c);
    {
        let mut st = f.fs.lock();
        let txn = st.catalog.write().unwrap();
        // Damage: the inode goes, its name stays.
        txn.remove_inode(b).unwrap();
        txn.commit().unwrap();
    }
    let listed: Vec<Vec<u8>> =
        f.fs.readdir_nodes(Ino::ROOT, SnapDir::Hidden)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&b"a".to_vec()) && listed.contains(&b"c".to_vec()));
    assert_eq!(f.fs.lookup_node(Ino::ROOT, b"b").unwrap_err().errno(), libc::EIO);
    let problems = f.fs.with_catalog(|cat, _, _| cat.check_invariants()).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("/b") && p.contains(&format!("inode {b}"))),
        "{problems:?}"
    );
    let repairs = f.fs.with_catalog(|cat, _, _| cat.repair()).unwrap();
    assert!(repairs.iter().any(|r| r.contains("/b")), "{repairs:?}");
    assert_catalog_clean(&f.fs);
    assert_eq!(
        f.fs.lookup_node(Ino::ROOT, b"b").unwrap_err().errno(),
        libc::ENOENT
    );
}

#[test]
fn everything_inside_a_snapshot_is_served_while_the_core_is_locked() {
    let f = fixture();
    let d = dir(&f, InodeId::ROOT, "d");
    let ino =
        f.fs.create(ME, d, b"frozen", FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id;
    let data = random(60, 200_000);
    f.fs.write(ino, 0, &data).unwrap();
    f.fs.setxattr(ino, b"user.k", b"v", false, false).unwrap();
    let snap = f.fs.snapshot(None).unwrap().name.unwrap();
    let read_back = while_locked(&f, || {
        let root = f.fs.lookup_node(Ino::ROOT, snap.as_bytes()).unwrap().ino;
        let d = f.fs.lookup_node(root, b"d").unwrap().ino;
        let listed = f.fs.readdir_nodes(d, SnapDir::Hidden).unwrap();
        assert_eq!(listed.len(), 1);
        let file = listed[0].1.ino;
        assert_eq!(f.fs.node(file).unwrap().attr.size, 200_000);
        assert_eq!(f.fs.getxattr_node(file, b"user.k").unwrap(), b"v");
        f.fs.read_node(file, 0, 200_000).unwrap() == data
    });
    let read_back = read_back.expect("a snapshot read waited for the core's lock");
    assert!(read_back, "and read the right bytes");
}

/// A filesystem over two mirror folders of real packs of at most `pack_bytes`.
struct PackedFixture {
    dir: tempfile::TempDir,
    fs: Fs,
    store: Arc<crate::store::PackMirrors>,
}

fn packed_fixture(pack_bytes: u64) -> PackedFixture {
    let dir = tempfile::tempdir().unwrap();
    let repo = RepoId([3; 16]);
    let folders: Vec<_> = (0..2u32)
        .map(|i| {
            let folder = dir.path().join(format!("m{i}"));
            crate::store::claim_folder(&folder, repo, crate::types::MirrorId(i)).unwrap();
            (crate::types::MirrorId(i), folder, true)
        })
        .collect();
    let store = Arc::new(
        crate::store::PackMirrors::open(repo, &folders, crate::types::PackId(1), pack_bytes).unwrap(),
    );
    let catalog = new_catalog(&dir.path().join("catalog.db"));
    let fs = Fs::new(catalog, store.clone(), FsOptions::default()).unwrap();
    PackedFixture { dir, fs, store }
}

/// Every chunk the live file `name` names reads back from the packs, verified.
fn assert_stored(f: &PackedFixture, name: &str) {
    let placed: Vec<_> = {
        let st = f.fs.lock();
        let live = st.catalog.live();
        let ino = st
            .catalog
            .lookup(live, InodeId::ROOT, name.as_bytes())
            .unwrap()
            .unwrap();
        st.catalog.placed_extents(live, ino, 0, u64::MAX).unwrap()
    };
    assert!(!placed.is_empty());
    for (extent, at) in placed {
        f.store
            .read(&extent.chunk, at.expect("placed"))
            .unwrap_or_else(|e| panic!("chunk {} of {name} at {at:?}: {e}", extent.chunk));
    }
}

#[test]
fn gc_beside_writes_of_the_same_bytes_loses_nothing() {
    // The garbage fills many small packs; writers store the same bytes while gc
    // condemns its chunks and deletes its packs. A write must never count on a
    // condemned chunk (it stores a fresh entry) and gc must never delete a pack a
    // write just used: every new file reads back and every chunk it names is stored.
    let f = packed_fixture(256 << 10);
    let data = random(70, 4 << 20);
    let ino =
        f.fs.create(ME, InodeId::ROOT, b"old", FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id;
    f.fs.write(ino, 0, &data).unwrap();
    f.fs.fsync(None).unwrap();
    f.fs.unlink(InodeId::ROOT, b"old").unwrap();
    f.fs.fsync(None).unwrap();
    let (before, _) = f.fs.with_catalog(|cat, _, _| cat.garbage_totals()).unwrap();
    assert!(before > 50, "garbage to collect: {before} chunks");
    let packs_before = f.store.pack_ids().unwrap().len();
    assert!(packs_before > 10, "the garbage spans {packs_before} packs");
    let condemned = &std::sync::atomic::AtomicBool::new(false);
    let fs = &f.fs;
    let stats = std::thread::scope(|s| {
        // The writes start once gc has condemned the garbage (before, they would
        // simply make it referenced again), beside its choice and deletion of packs.
        let gc = s.spawn(|| {
            crate::ops::gc::gc_mounted(fs, false, false, &mut |_, _| {
                condemned.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .unwrap()
        });
        while !condemned.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        for i in 0..8 {
            let ino =
                f.fs.create(
                    ME,
                    InodeId::ROOT,
                    format!("new{i}").as_bytes(),
                    FileKind::File,
                    0o644,
                    0,
                    b"",
                )
                .unwrap()
                .id;
            f.fs.write(ino, 0, &data).unwrap();
            f.fs.fsync(None).unwrap();
        }
        gc.join().unwrap()
    });
    assert!(stats.chunks > 0, "gc condemned the old chunks");
    for i in 0..8 {
        let name = format!("new{i}");
        let ino = f.fs.lookup(InodeId::ROOT, name.as_bytes()).unwrap().id;
        assert!(
            f.fs.read(ino, 0, data.len()).unwrap() == data,
            "{name} reads back"
        );
        assert_stored(&f, &name);
    }
    // What is left over is the next gc's, and nothing it deletes is named.
    let again = crate::ops::gc::gc_mounted(&f.fs, false, true, &mut |_, _| {}).unwrap();
    assert!(stats.packs + again.packs > 0, "dead packs were deleted");
    for i in 0..8 {
        assert_stored(&f, &format!("new{i}"));
    }
    assert_catalog_clean(&f.fs);
    drop(f.dir);
}

#[test]
fn gc_waits_for_reads_that_began_before_it_condemned_their_chunks() {
    let f = packed_fixture(64 << 10);
    let ino =
        f.fs.create(ME, InodeId::ROOT, b"old", FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id;
    f.fs.write(ino, 0, &random(71, 1 << 20)).unwrap();
    f.fs.fsync(None).unwrap();
    f.fs.unlink(InodeId::ROOT, b"old").unwrap();
    f.fs.fsync(None).unwrap();
    let packs_before = f.store.pack_ids().unwrap().len();
    let reading = f.fs.reads.enter();
    std::thread::scope(|s| {
        let gc = s.spawn(|| crate::ops::gc::gc_mounted(&f.fs, false, false, &mut |_, _| {}).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!gc.is_finished(), "gc deletes no pack while an older read runs");
        assert_eq!(
            f.store.pack_ids().unwrap().len(),
            packs_before,
            "every pack is still there"
        );
        // The core itself is free meanwhile: a lookup and a listing answer.
        assert_eq!(
            f.fs.lookup(InodeId::ROOT, b"old").unwrap_err().errno(),
            libc::ENOENT
        );
        f.fs.readdir_nodes(Ino::ROOT, SnapDir::Hidden).unwrap();
        drop(reading);
        let stats = gc.join().unwrap();
        assert!(stats.chunks > 0 && stats.packs > 0, "{stats:?}");
    });
    assert!(f.store.pack_ids().unwrap().len() < packs_before);
    let (left, _) = f.fs.with_catalog(|cat, _, _| cat.garbage_totals()).unwrap();
    assert_eq!(left, 0);
    drop(f.dir);
}

/// Creates live file `name` holding `data`, committed.
fn put_file(f: &PackedFixture, name: &str, data: &[u8]) {
    let ino =
        f.fs.create(ME, InodeId::ROOT, name.as_bytes(), FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id;
    f.fs.write(ino, 0, data).unwrap();
    f.fs.fsync(None).unwrap();
}

/// Bytes of every pack file on the first disk.
fn pack_bytes_on_disk(f: &PackedFixture) -> u64 {
    std::fs::read_dir(f.dir.path().join("m0/packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn gc_compacts_a_sparse_pack_and_deletes_it_keeping_every_live_chunk() {
    let f = packed_fixture(4 << 20);
    let keep = random(81, 600_000);
    put_file(&f, "keep", &keep);
    put_file(&f, "drop", &random(82, 1_400_000));
    assert_eq!(f.store.pack_ids().unwrap().len(), 1, "both files share one pack");
    let before = pack_bytes_on_disk(&f);
    f.fs.unlink(InodeId::ROOT, b"drop").unwrap();
    f.fs.fsync(None).unwrap();

    let stats = crate::ops::gc::gc_mounted(&f.fs, false, false, &mut |_, _| {}).unwrap();
    assert!(stats.chunks > 0, "{stats:?}");
    assert_eq!(stats.compacted_packs, 1, "{stats:?}");
    assert_eq!(stats.packs, 1, "the compacted pack is deleted: {stats:?}");
    assert!(
        stats.moved_bytes >= keep.len() as u64 && stats.moved_bytes < 700_000,
        "{stats:?}"
    );
    assert!(!f.store.pack_ids().unwrap().contains(&crate::types::PackId(1)));
    let after = pack_bytes_on_disk(&f);
    assert!(
        after < before - 1_300_000,
        "the dropped file's bytes are given back: {before} -> {after}"
    );
    assert_stored(&f, "keep");
    let ino = f.fs.lookup(InodeId::ROOT, b"keep").unwrap().id;
    assert!(f.fs.read(ino, 0, keep.len()).unwrap() == keep);
    assert_catalog_clean(&f.fs);
    // Nothing sparse is left: a second run copies nothing.
    let again = crate::ops::gc::gc_mounted(&f.fs, false, false, &mut |_, _| {}).unwrap();
    assert_eq!((again.compacted_packs, again.moved_chunks), (0, 0), "{again:?}");
    drop(f.dir);
}

#[test]
fn compaction_moves_no_chunk_gc_dropped_after_it_was_copied() {
    use crate::ops::compact;
    let f = packed_fixture(4 << 20);
    put_file(&f, "a", &random(83, 300_000));
    put_file(&f, "b", &random(84, 300_000));
    put_file(&f, "c", &random(85, 900_000));
    f.fs.unlink(InodeId::ROOT, b"c").unwrap();
    f.fs.fsync(None).unwrap();
    f.fs.with_catalog(|cat, _, _| crate::ops::gc::condemn(cat, 10_000))
        .unwrap();
    let packs =
        f.fs.with_catalog(|cat, store, _| compact::choose(cat, store, 8))
            .unwrap();
    assert_eq!(packs, [crate::types::PackId(1)]);
    let chunks =
        f.fs.with_catalog(|cat, _, _| cat.chunks_in_pack(packs[0]))
            .unwrap();
    let copied = compact::copy(&*f.store, &chunks).unwrap();
    assert_eq!(copied.moves.len(), chunks.len());
    // Between the copy and its record, `b` goes and gc drops its chunks.
    f.fs.unlink(InodeId::ROOT, b"b").unwrap();
    f.fs.fsync(None).unwrap();
    let (dropped, _) =
        f.fs.with_catalog(|cat, _, _| crate::ops::gc::condemn(cat, 10_000))
            .unwrap();
    assert!(dropped > 0);
    let (moved, _) =
        f.fs.with_catalog(|cat, _, _| compact::record(cat, &copied))
            .unwrap();
    assert_eq!(
        moved as usize,
        chunks.len() - dropped as usize,
        "b's rows stay dropped"
    );
    let left =
        f.fs.with_catalog(|cat, _, _| cat.chunks_in_pack(packs[0]))
            .unwrap();
    assert!(left.is_empty(), "pack 1 is dead: {left:?}");
    assert_stored(&f, "a");
    assert_catalog_clean(&f.fs);
    drop(f.dir);
}

#[test]
fn a_read_that_took_the_old_place_finishes_before_the_compacted_pack_goes() {
    let f = packed_fixture(4 << 20);
    let keep = random(86, 500_000);
    put_file(&f, "keep", &keep);
    put_file(&f, "drop", &random(87, 1_500_000));
    f.fs.unlink(InodeId::ROOT, b"drop").unwrap();
    f.fs.fsync(None).unwrap();
    let reading = f.fs.reads.enter();
    std::thread::scope(|s| {
        let gc = s.spawn(|| crate::ops::gc::gc_mounted(&f.fs, false, false, &mut |_, _| {}).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        assert!(!gc.is_finished(), "gc deletes no pack while an older read runs");
        assert!(
            f.store.pack_ids().unwrap().contains(&crate::types::PackId(1)),
            "the old pack is still there"
        );
        // Requests go on meanwhile, and read the moved chunks from their new place.
        let ino = f.fs.lookup(InodeId::ROOT, b"keep").unwrap().id;
        assert!(f.fs.read(ino, 0, keep.len()).unwrap() == keep);
        drop(reading);
        let stats = gc.join().unwrap();
        assert_eq!((stats.compacted_packs, stats.packs), (1, 1), "{stats:?}");
    });
    assert!(!f.store.pack_ids().unwrap().contains(&crate::types::PackId(1)));
    assert_stored(&f, "keep");
    drop(f.dir);
}

/// The names in live folder `dir` with the sizes a listing gives them, by name.
fn listed_sizes(fs: &Fs, dir: InodeId) -> Vec<(Vec<u8>, u64)> {
    let mut listed: Vec<(Vec<u8>, u64)> = fs
        .readdir_nodes(Ino::live(dir), SnapDir::Visible)
        .unwrap()
        .into_iter()
        .map(|(name, node)| (name, node.attr.size))
        .collect();
    listed.sort();
    listed
}

/// Runs `reads` on another thread while this one holds the core's lock, and returns
/// what they returned, or `None` when they did not finish within 20 s (they waited
/// for the lock; they finish once it is released).
fn while_locked<T: Send>(f: &Fixture, reads: impl FnOnce() -> T + Send) -> Option<T> {
    let held = f.fs.lock();
    std::thread::scope(|s| {
        let reader = s.spawn(reads);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !reader.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let finished = reader.is_finished();
        drop(held);
        let out = reader.join().unwrap();
        finished.then_some(out)
    })
}

#[test]
fn live_reads_of_committed_data_do_not_wait_for_the_lock() {
    let f = fixture();
    let folder = dir(&f, InodeId::ROOT, "d");
    let id =
        f.fs.create(ME, folder, b"a", FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id;
    let data = random(5, 300_000);
    f.fs.write(id, 0, &data).unwrap();
    f.fs.setxattr(id, b"user.k", b"v", false, false).unwrap();
    f.fs.commit().unwrap();

    let fs = &f.fs;
    let got = while_locked(&f, || {
        let attr = fs.lookup(folder, b"a").unwrap();
        let listed = listed_sizes(fs, folder);
        let root = fs
            .list_dir(Ino::live(InodeId::ROOT), 0, 100, SnapDir::Visible)
            .unwrap();
        let bytes = fs.read(id, 0, 300_000).unwrap();
        let xattr = fs.getxattr(id, b"user.k").unwrap();
        (attr.size, listed, root.len(), bytes, xattr)
    });
    let (size, listed, root_entries, bytes, xattr) =
        got.expect("reads of committed live data waited for the core's lock");
    assert_eq!(size, 300_000);
    assert_eq!(listed, vec![(b"a".to_vec(), 300_000)]);
    assert_eq!(root_entries, 1);
    assert!(bytes == data, "read back other bytes than were written");
    assert_eq!(xattr, b"v");
}

#[test]
fn a_read_after_a_buffered_write_sees_it_not_the_committed_catalog() {
    let f = fixture();
    let id = file(&f, "a");
    f.fs.write(id, 0, b"committed").unwrap();
    f.fs.commit().unwrap();
    // Buffered, and a name created in the open batch: neither is in the catalog's
    // last commit, so readers must not answer from it.
    f.fs.write(id, 9, b" and buffered").unwrap();
    f.fs.create(ME, InodeId::ROOT, b"new", FileKind::File, 0o644, 0, b"")
        .unwrap();
    assert!(f.fs.lock().catalog.batch_open(), "the name is in an open batch");
    assert_eq!(f.fs.getattr(id).unwrap().size, 22);
    assert_eq!(f.fs.read(id, 0, 100).unwrap(), b"committed and buffered");
    assert!(f.fs.lookup(InodeId::ROOT, b"new").is_ok());
    // After the commit, the same answers come from a read connection.
    f.fs.commit().unwrap();
    assert!(
        f.fs.published.quiet_live().is_some(),
        "nothing is buffered after a commit"
    );
    assert_eq!(f.fs.getattr(id).unwrap().size, 22);
    assert_eq!(f.fs.read(id, 0, 100).unwrap(), b"committed and buffered");
    assert!(f.fs.lookup(InodeId::ROOT, b"new").is_ok());
}

#[test]
fn reads_beside_buffered_writes_do_not_wait_for_the_lock() {
    let f = fixture();
    let folder = dir(&f, InodeId::ROOT, "d");
    let other = file(&f, "other");
    f.fs.write(other, 0, b"committed bytes").unwrap();
    let busy =
        f.fs.create(ME, folder, b"busy", FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id;
    f.fs.write(busy, 0, b"first").unwrap();
    f.fs.commit().unwrap();
    // Now `busy` has writes that no commit holds yet: its size, and its mtime.
    f.fs.write(busy, 5, &random(3, 100_000)).unwrap();
    let buffered_mtime = f.fs.getattr(busy).unwrap().mtime_ns;
    assert!(
        f.fs.published.quiet_live().is_some(),
        "buffered data alone leaves readers their own connections"
    );

    let fs = &f.fs;
    let got = while_locked(&f, || {
        let stat = fs.lookup(folder, b"busy").unwrap();
        let attr = fs.getattr(busy).unwrap();
        let listed = listed_sizes(fs, folder);
        let bytes = fs.read(other, 0, 100).unwrap();
        (stat.size, attr.size, attr.mtime_ns, listed, bytes)
    });
    let (looked_up, size, mtime, listed, bytes) =
        got.expect("reads beside buffered writes waited for the core's lock");
    assert_eq!(looked_up, 100_005, "lookup counts the buffered writes");
    assert_eq!(size, 100_005, "getattr counts the buffered writes");
    assert_eq!(
        mtime, buffered_mtime,
        "the buffered write's mtime, not the commit's"
    );
    assert_eq!(listed, vec![(b"busy".to_vec(), 100_005)]);
    assert_eq!(bytes, b"committed bytes");

    // The bytes of the file with buffered writes come from under the lock; once
    // committed, everything reads alike from a read connection.
    let want = [b"first".to_vec(), random(3, 100_000)].concat();
    assert!(f.fs.read(busy, 0, 200_000).unwrap() == want);
    f.fs.commit().unwrap();
    assert!(while_locked(&f, || fs.read(busy, 0, 200_000).unwrap()).is_some_and(|b| b == want));
    assert_eq!(f.fs.getattr(busy).unwrap().mtime_ns, buffered_mtime);
}

#[test]
fn a_read_of_a_buffered_file_waits_only_for_its_own_chunks_and_not_under_the_lock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Condvar, Mutex};
    // Every put of a chunk waits at a gate while it is closed; `entered` says that
    // one is waiting there.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let entered = Arc::new(AtomicBool::new(false));
    let (g, e) = (gate.clone(), entered.clone());
    let hooked = crate::store::HookedStore::new(
        Box::new(move || {
            let mut closed = g.0.lock().unwrap();
            if *closed {
                e.store(true, Ordering::SeqCst);
            }
            while *closed {
                closed = g.1.wait(closed).unwrap();
            }
        }),
        Box::new(|| {}),
    );
    let f = fixture_over(Box::new(hooked));
    let (a, b, c) = (file(&f, "a"), file(&f, "b"), file(&f, "c"));
    f.fs.commit().unwrap();
    let (in_a, in_b, in_c) = (random(13, 300_000), random(14, 300_000), random(15, 300_000));
    // `a` is buffered, its chunks written; `b`'s and `c`'s wait at the gate.
    f.fs.write(a, 0, &in_a).unwrap();
    f.fs.lock().sink.wait_written().unwrap();
    *gate.0.lock().unwrap() = true;
    f.fs.write(b, 0, &in_b).unwrap();
    f.fs.write(c, 0, &in_c).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !entered.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(entered.load(Ordering::SeqCst), "no chunk reached the gate");

    let fs = &f.fs;
    let (read_a, read_c, created) = std::thread::scope(|s| {
        let of_a = s.spawn(|| fs.read(a, 0, 400_000));
        let of_c = s.spawn(|| fs.read(c, 0, 400_000));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !of_a.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let read_a = of_a.is_finished();
        // While `c`'s read waits for its chunks, requests that need the lock go on.
        let created = s.spawn(|| fs.create(ME, InodeId::ROOT, b"d", FileKind::File, 0o644, 0, b""));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !created.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let created_meanwhile = created.is_finished();
        let read_c_early = of_c.is_finished();
        // The gate opens before any assertion, so a failure cannot leave a thread of
        // the scope waiting for ever.
        *gate.0.lock().unwrap() = false;
        gate.1.notify_all();
        assert!(
            read_a,
            "a read of a file whose chunks are written waited for another file's writes"
        );
        assert!(
            created_meanwhile,
            "a create waited while a read waited for the writers"
        );
        assert!(
            !read_c_early,
            "a read of chunks not written yet did not wait for them"
        );
        (
            of_a.join().unwrap().unwrap(),
            of_c.join().unwrap().unwrap(),
            created.join().unwrap(),
        )
    });
    assert!(read_a == in_a, "read back other bytes than were written");
    assert!(read_c == in_c, "read back other bytes than were written");
    assert!(created.is_ok());
    assert!(f.fs.read(b, 0, 400_000).unwrap() == in_b);
    f.fs.commit().unwrap();
    assert!(f.fs.read(c, 0, 400_000).unwrap() == in_c);
}

#[test]
fn requests_go_on_while_a_group_commit_syncs_the_mirrors() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Condvar, Mutex};
    // Every sync of the store waits at a gate while `closed`; `entered` says that one
    // is waiting there.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let entered = Arc::new(AtomicBool::new(false));
    let (g, e) = (gate.clone(), entered.clone());
    let hooked = crate::store::HookedStore::new(Box::new(|| {}), Box::new(|| {})).with_before_sync(Box::new(
        move || {
            let mut closed = g.0.lock().unwrap();
            if *closed {
                e.store(true, Ordering::SeqCst);
            }
            while *closed {
                closed = g.1.wait(closed).unwrap();
            }
        },
    ));
    let f = fixture_over(Box::new(hooked));
    let a = file(&f, "a");
    let b = file(&f, "b");
    f.fs.commit().unwrap();
    let first = random(11, 200_000);
    f.fs.write(a, 0, &first).unwrap();
    *gate.0.lock().unwrap() = true;

    let fs = &f.fs;
    std::thread::scope(|s| {
        let fsync = s.spawn(|| fs.fsync(Some(a)));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !entered.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The gate is opened before any assertion, so a failure cannot leave the
        // fsync thread (and the scope) waiting for ever.
        let requests = s.spawn(|| {
            let size = fs.getattr(a).unwrap().size;
            let bytes = fs.read(a, 0, 300_000).unwrap();
            fs.write(b, 0, b"written meanwhile").unwrap();
            fs.write(a, 200_000, b"appended meanwhile").unwrap();
            let created = fs
                .create(ME, InodeId::ROOT, b"c", FileKind::File, 0o644, 0, b"")
                .is_ok();
            (size, bytes, created)
        });
        while !requests.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let went_on = requests.is_finished();
        let syncing = !fsync.is_finished();
        *gate.0.lock().unwrap() = false;
        gate.1.notify_all();
        fsync.join().unwrap().unwrap();
        let (size, bytes, created) = requests.join().unwrap();
        assert!(
            entered.load(Ordering::SeqCst),
            "the fsync never reached the store's sync"
        );
        assert!(syncing, "the fsync finished while its sync was held at the gate");
        assert!(
            went_on,
            "requests waited for a group commit's sync of the mirrors"
        );
        assert_eq!(size, 200_000);
        assert!(bytes == first, "a read during the commit saw other bytes");
        assert!(created);
    });
    // The commit took what was buffered when it began; what came during it is still
    // buffered, and reads see both.
    let want_a = [first.clone(), b"appended meanwhile".to_vec()].concat();
    assert!(
        f.fs.lock().dirty.contains_key(&a),
        "the append made during the commit is buffered"
    );
    assert!(f.fs.read(a, 0, 300_000).unwrap() == want_a);
    f.fs.commit().unwrap();
    assert!(f.fs.lock().dirty.is_empty(), "everything is committed now");
    assert!(f.fs.read(a, 0, 300_000).unwrap() == want_a);
    assert_eq!(f.fs.read(b, 0, 100).unwrap(), b"written meanwhile");
    assert_catalog_clean(&f.fs);
}

#[test]
fn a_commit_under_the_lock_during_a_group_commit_takes_its_runs_first() {
    // A size change of a file whose runs a group commit has marked, made while that
    // commit syncs: the change commits them itself, in order, and the group commit
    // then leaves the file alone.
    let f = fixture();
    let a = file(&f, "a");
    let data = random(12, 100_000);
    f.fs.write(a, 0, &data).unwrap();
    let mut sealing = write::begin_commit(&f.fs.lock(), None, 1).unwrap();
    let started = write::seal_step(&mut f.fs.lock(), &mut sealing, Vec::new())
        .unwrap()
        .unwrap();
    let durable = started.make_durable(f.fs.backlog.as_ref(), &*f.fs.store);
    f.fs.write(a, 100_000, b"tail").unwrap();
    f.fs.setattr(
        a,
        &SetAttr {
            size: Some(50_000),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let mut started = started;
    assert!(!write::finish_commit(&mut f.fs.lock(), &mut started, Some(durable)).unwrap());
    assert!(!f.fs.lock().dirty.contains_key(&a));
    f.fs.commit().unwrap();
    assert_eq!(f.fs.getattr(a).unwrap().size, 50_000);
    assert!(f.fs.read(a, 0, 200_000).unwrap() == data[..50_000]);
    assert_catalog_clean(&f.fs);
}

#[test]
fn a_commit_of_many_files_goes_in_steps_and_commits_them_all() {
    let f = fixture();
    let dir_id = dir(&f, InodeId::ROOT, "many");
    let mut files = Vec::new();
    for i in 0..700u64 {
        let name = format!("f{i}");
        let id =
            f.fs.create(ME, dir_id, name.as_bytes(), FileKind::File, 0o644, 0, b"")
                .unwrap()
                .id;
        f.fs.write(id, 0, &random(100 + 2 * i, 3000 + i as usize))
            .unwrap();
        files.push(id);
    }
    // 700 files of one extent each: eleven steps that seal 64 files (the chunker
    // holds each file's 3,000 bytes until then), then three of at most 256 rows.
    assert_eq!(f.fs.lock().dirty.get(&files[0]).unwrap().extent_count(), 0);
    f.fs.commit().unwrap();
    assert!(f.fs.lock().dirty.is_empty());
    for (i, id) in files.iter().enumerate() {
        let want = random(100 + 2 * i as u64, 3000 + i);
        assert!(f.fs.read(*id, 0, 10_000).unwrap() == want, "file {i}");
    }
    assert_catalog_clean(&f.fs);
}

#[test]
fn a_big_file_goes_in_steps_after_its_last_name_and_a_rollback_can_still_bring_it_back() {
    let f = fixture();
    let ino = file(&f, "big");
    // Over twice the removal step (1,024 average chunks of 16 KiB).
    let data = random(9, 40 << 20);
    f.fs.write(ino, 0, &data).unwrap();
    let snap = f.fs.snapshot(None).unwrap().name.unwrap();
    let garbage = |f: &Fixture| f.fs.with_catalog(|cat, _, _| cat.garbage_totals()).unwrap().0;

    // Forgotten by name at once, its chunks still held by the snapshot.
    f.fs.unlink(InodeId::ROOT, b"big").unwrap();
    assert_eq!(
        f.fs.lookup(InodeId::ROOT, b"big").unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(f.fs.lock().nameless.removing, vec![ino]);
    // A rollback before the steps ran brings it back whole, and the steps leave it be.
    f.fs.with_catalog(|cat, _, open| crate::ops::snapshots::rollback(cat, &snap, None, false, 7, open))
        .unwrap();
    f.fs.finish_removals().unwrap();
    let back = f.fs.lookup(InodeId::ROOT, b"big").unwrap();
    assert_eq!(back.size, data.len() as u64);
    assert!(
        f.fs.read(back.id, 0, data.len()).unwrap() == data,
        "brought back other bytes"
    );

    // Without a snapshot holding it, its chunks become garbage once the steps ran.
    f.fs.unlink(InodeId::ROOT, b"big").unwrap();
    f.fs.with_catalog(|cat, _, _| {
        for g in cat.generations()? {
            if g.name.is_some() {
                cat.forget(g.id)?;
            }
        }
        Ok(())
    })
    .unwrap();
    let before = garbage(&f);
    f.fs.finish_removals().unwrap();
    assert!(f.fs.lock().nameless.removing.is_empty());
    let after = garbage(&f);
    assert!(
        after > before + 2000,
        "its chunks became garbage: {before} before, {after} after"
    );
    assert_catalog_clean(&f.fs);
}

#[test]
fn a_file_deleted_after_its_snapshots_were_forgotten_leaves_its_chunks_to_gc() {
    // Either order of forgetting the snapshot and deleting the file must leave the
    // same garbage (the first used to keep the chunks referenced by rows that no
    // generation saw).
    let mut found = Vec::new();
    for forget_first in [true, false] {
        let f = fixture();
        let ino = file(&f, "small");
        f.fs.write(ino, 0, &random(3, 100_000)).unwrap();
        f.fs.snapshot(None).unwrap();
        let forget_all = |f: &Fixture| {
            f.fs.with_catalog(|cat, _, _| {
                for g in cat.generations()? {
                    if g.name.is_some() {
                        cat.forget(g.id)?;
                    }
                }
                Ok(())
            })
            .unwrap()
        };
        if forget_first {
            forget_all(&f);
        }
        f.fs.unlink(InodeId::ROOT, b"small").unwrap();
        if !forget_first {
            forget_all(&f);
        }
        found.push(f.fs.with_catalog(|cat, _, _| cat.garbage_totals()).unwrap());
    }
    assert!(found[0].0 > 0, "no garbage after the file went: {found:?}");
    assert_eq!(found[0], found[1]);
}

#[test]
fn a_read_catalog_sees_buffered_writes_and_leaves_the_mount_free_while_it_runs() {
    let f = fixture();
    let ino = file(&f, "early");
    f.fs.write(ino, 0, b"buffered before the report").unwrap();
    std::thread::scope(|scope| {
        f.fs.with_read_catalog(|cat| {
            // The buffered write was committed before the report started.
            let size = cat.inode(cat.live(), ino)?.map(|a| a.size);
            assert_eq!(size, Some(26));
            // The core's lock is free: another thread creates, writes and commits a
            // file while this report still runs (it would wait forever otherwise).
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let beside = &f;
            scope.spawn(move || {
                let late = file(beside, "late");
                beside.fs.write(late, 0, b"written meanwhile").unwrap();
                beside.fs.commit().unwrap();
                done_tx.send(late).unwrap();
            });
            let late = done_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a write beside the report finished");
            // The report's read transaction still sees the commit it started from.
            assert_eq!(cat.inode(cat.live(), late)?, None);
            Ok(())
        })
        .unwrap();
    });
    assert_eq!(f.fs.read(ino, 0, 100).unwrap(), b"buffered before the report");
}

#[test]
fn reads_beside_an_open_metadata_batch_wait_only_for_listings_and_xattrs_it_changed() {
    let f = fixture();
    let quiet = dir(&f, InodeId::ROOT, "quiet");
    let busy = dir(&f, InodeId::ROOT, "busy");
    let a =
        f.fs.create(ME, quiet, b"a", FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id;
    let data = random(7, 200_000);
    f.fs.write(a, 0, &data).unwrap();
    f.fs.setxattr(a, b"user.k", b"v", false, false).unwrap();
    let in_busy = |name: &[u8]| {
        f.fs.create(ME, busy, name, FileKind::File, 0o644, 0, b"")
            .unwrap()
            .id
    };
    let (b, c, gone, moved) = (in_busy(b"b"), in_busy(b"c"), in_busy(b"gone"), in_busy(b"moved"));
    f.fs.commit().unwrap();
    // A batch of metadata changes that no read connection sees yet: a new name in
    // `busy`, a new mode for `b`, an xattr for `c`, a name and its file removed, a
    // name renamed, and a change refused (rolled back inside the batch).
    let new = in_busy(b"new");
    f.fs.setattr(
        b,
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    f.fs.setxattr(c, b"user.k", b"changed", false, false).unwrap();
    f.fs.unlink(busy, b"gone").unwrap();
    f.fs.rename(busy, b"moved", busy, b"renamed", RenameMode::Replace)
        .unwrap();
    let fresh = dir(&f, busy, "fresh");
    assert!(f
        .fs
        .rename(busy, b"renamed", busy, b"b", RenameMode::NoReplace)
        .is_err());
    assert!(
        f.fs.lock().catalog.batch_open(),
        "the changes wait in an open batch"
    );

    // What the batch did not change is read beside it, without the lock.
    let fs = &f.fs;
    let got = while_locked(&f, || {
        let looked_up = fs.lookup(quiet, b"a").unwrap();
        let attr = fs.getattr(a).unwrap();
        let listed = listed_sizes(fs, quiet);
        let bytes = fs.read(a, 0, 300_000).unwrap();
        let xattr = fs.getxattr(a, b"user.k").unwrap();
        (looked_up.id, attr.size, listed, bytes, xattr)
    });
    let (looked_up, size, listed, bytes, xattr) =
        got.expect("reads of what the open batch did not change waited for the core's lock");
    assert_eq!((looked_up, size), (a, 200_000));
    assert_eq!(listed, vec![(b"a".to_vec(), 200_000)]);
    assert!(bytes == data, "read back other bytes than were written");
    assert_eq!(xattr, b"v");

    // Names and attributes it changed read beside it too, as it left them.
    let got = while_locked(&f, || {
        (
            fs.lookup(busy, b"new").map(|a| a.id).ok(),
            fs.getattr(b).map(|a| a.mode & 0o7777).ok(),
            fs.lookup(busy, b"b").map(|a| (a.id, a.mode & 0o7777)).ok(),
            fs.lookup(busy, b"gone").map(|a| a.id).ok(),
            fs.getattr(gone).map(|a| a.id).ok(),
            fs.lookup(busy, b"moved").map(|a| a.id).ok(),
            fs.lookup(busy, b"renamed").map(|a| a.id).ok(),
            fs.getattr(busy).map(|a| a.mtime_ns).ok(),
            fs.list_dir(Ino::live(fresh), 0, 100, SnapDir::Visible)
                .map(|l| l.len())
                .ok(),
            // Xattrs of inodes whose xattrs it did not change (the kernel asks for
            // security.capability before writes).
            matches!(fs.getxattr(b, b"security.capability"), Err(Error::NoXattr))
                && matches!(fs.getxattr(new, b"security.capability"), Err(Error::NoXattr))
                && fs.listxattr(new).is_ok_and(|l| l.is_empty()),
        )
    });
    // The folder's time as the batch left it (the writer's connection sees it).
    let busy_mtime = {
        let st = f.fs.lock();
        st.catalog
            .inode(st.catalog.live(), busy)
            .unwrap()
            .unwrap()
            .mtime_ns
    };
    assert_eq!(
        got.expect("lookups and getattrs of what the open batch changed waited for the core's lock"),
        (
            Some(new),
            Some(0o600),
            Some((b, 0o600)),
            None,
            None,
            None,
            Some(moved),
            Some(busy_mtime),
            Some(0),
            true
        )
    );

    // Its listings, and xattrs it changed, read as changed (from under the lock),
    // batch still open.
    assert_eq!(f.fs.lookup(busy, b"new").unwrap().id, new);
    assert_eq!(f.fs.getattr(b).unwrap().mode & 0o7777, 0o600);
    assert_eq!(f.fs.lookup(busy, b"b").unwrap().mode & 0o7777, 0o600);
    assert_eq!(f.fs.getxattr(c, b"user.k").unwrap(), b"changed");
    let mut names: Vec<_> =
        f.fs.readdir_nodes(Ino::live(busy), SnapDir::Visible)
            .unwrap()
            .into_iter()
            .map(|(name, node)| (name, node.attr.mode & 0o7777))
            .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            (b"b".to_vec(), 0o600),
            (b"c".to_vec(), 0o644),
            (b"fresh".to_vec(), 0o755),
            (b"new".to_vec(), 0o644),
            (b"renamed".to_vec(), 0o644)
        ]
    );
    assert!(
        f.fs.lock().catalog.batch_open(),
        "the reads did not commit the batch"
    );

    // Once committed, the batch's changes are dropped and its rows read unlocked.
    f.fs.commit().unwrap();
    let got = while_locked(&f, || {
        (
            fs.lookup(busy, b"new").unwrap().id,
            fs.getattr(b).unwrap().mode & 0o7777,
            fs.getxattr(c, b"user.k").unwrap(),
        )
    });
    assert_eq!(
        got.expect("reads after the batch was committed waited for the core's lock"),
        (new, 0o600, b"changed".to_vec())
    );
}

#[test]
fn reads_beside_many_files_with_buffered_writes_do_not_wait_for_the_lock() {
    let f = fixture();
    let folder = dir(&f, InodeId::ROOT, "many");
    // More files with buffered writes than an untar leaves between two commits.
    let files: Vec<InodeId> = (0..300)
        .map(|i| {
            let name = format!("f{i:03}");
            f.fs.create(ME, folder, name.as_bytes(), FileKind::File, 0o644, 0, b"")
                .unwrap()
                .id
        })
        .collect();
    f.fs.commit().unwrap();
    for (i, id) in files.iter().enumerate() {
        f.fs.write(*id, 0, &random(i as u64, 100 + i)).unwrap();
    }
    assert_eq!(
        f.fs.lock().dirty.ids().count(),
        300,
        "every write is still buffered"
    );

    let fs = &f.fs;
    let sizes = || {
        let mut by_lookup = Vec::new();
        for (i, id) in files.iter().enumerate() {
            let name = format!("f{i:03}");
            let attr = fs.lookup(folder, name.as_bytes()).unwrap();
            assert_eq!(attr.id, *id);
            by_lookup.push(attr.size);
        }
        let by_getattr: Vec<u64> = files.iter().map(|id| fs.getattr(*id).unwrap().size).collect();
        let listed: Vec<u64> = listed_sizes(fs, folder)
            .into_iter()
            .map(|(_, size)| size)
            .collect();
        (by_lookup, by_getattr, listed)
    };
    let want: Vec<u64> = (0..300).map(|i| 100 + i as u64).collect();
    let got = while_locked(&f, sizes).expect("reads beside 300 buffered files waited for the core's lock");
    assert_eq!(got, (want.clone(), want.clone(), want.clone()));

    // A commit drops the entries, and a reader that started before it is told to
    // read again under the lock; after it, the sizes come from the catalog.
    let before = f.fs.published.quiet().unwrap();
    assert!(before.still_whole());
    f.fs.commit().unwrap();
    assert!(!before.still_whole(), "dropping entries must count as a removal");
    drop(before);
    assert!(f.fs.lock().dirty.is_empty());
    let got = while_locked(&f, sizes).expect("reads after the commit waited for the core's lock");
    assert_eq!(got, (want.clone(), want.clone(), want));
}

#[test]
fn setattr_answers_what_getattr_reads_back_with_buffered_writes_and_after_a_snapshot() {
    let f = fixture();
    let id = file(&f, "a");
    f.fs.write(id, 0, b"committed").unwrap();
    f.fs.commit().unwrap();
    f.fs.write(id, 9, b" and buffered").unwrap();
    let changes = [
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
        SetAttr {
            uid: Some(7),
            gid: Some(8),
            ..Default::default()
        },
        SetAttr {
            mtime: Some(SetTime::At(1_000_000_000)),
            atime: Some(SetTime::At(2_000_000_000)),
            ..Default::default()
        },
    ];
    for (round, set) in changes.iter().enumerate() {
        // The second round changes a row a snapshot holds (a new row is written).
        if round == 1 {
            f.fs.snapshot(None).unwrap();
        }
        let answered = f.fs.setattr(id, set).unwrap();
        assert_eq!(answered, f.fs.getattr(id).unwrap(), "round {round}");
        assert_eq!(answered.size, 22, "the buffered writes count");
    }
    let attr = f.fs.getattr(id).unwrap();
    assert_eq!((attr.mode & 0o7777, attr.uid, attr.gid), (0o600, 7, 8));
    assert_eq!(attr.mtime_ns, 1_000_000_000);
    assert_eq!(f.fs.read(id, 0, 100).unwrap(), b"committed and buffered");
}

/// The chunk ids of committed file `ino`, in file order.
fn committed_chunks(f: &Fixture, ino: InodeId) -> Vec<crate::types::ChunkId> {
    f.fs.commit().unwrap();
    let st = f.fs.lock();
    let extents = st.catalog.extents(st.catalog.live(), ino, 0, u64::MAX).unwrap();
    extents.into_iter().map(|e| e.chunk).collect()
}

#[test]
fn appends_cut_without_the_lock_store_what_writes_under_it_store() {
    let f = fixture();
    let (outside, under) = (file(&f, "outside"), file(&f, "under"));
    let data = random(21, 1_500_000);
    let mut appended = 0;
    for (i, piece) in data.chunks(100_000).enumerate() {
        let offset = (i * 100_000) as u64;
        // `Fs::write`'s steps, with the lock let go for the cut.
        let append = write::begin_append(&f.fs.lock(), outside, offset, piece.len());
        match append {
            Some(append) => {
                let cut = append.cut(piece);
                assert!(write::finish_append(&mut f.fs.lock(), cut).unwrap());
                appended += 1;
            }
            None => write::write(&mut f.fs.lock(), outside, offset, piece).unwrap(),
        }
        write::write(&mut f.fs.lock(), under, offset, piece).unwrap();
    }
    assert!(
        appended >= 10,
        "{appended} of 15 writes were cut without the lock"
    );
    assert_eq!(f.fs.getattr(outside).unwrap().size, data.len() as u64);
    assert!(
        f.fs.read(outside, 0, 2 << 20).unwrap() == data,
        "read before the commit"
    );
    assert_eq!(committed_chunks(&f, outside), committed_chunks(&f, under));
    assert!(
        f.fs.read(outside, 0, 2 << 20).unwrap() == data,
        "read after the commit"
    );
    assert_catalog_clean(&f.fs);
}

#[test]
fn an_append_whose_run_moved_while_it_was_cut_is_refused_and_changes_nothing() {
    let f = fixture();
    let data = random(22, 400_000);
    let moves: [(&str, &dyn Fn(InodeId)); 3] = [
        ("a commit sealed it", &|_| f.fs.commit().unwrap()),
        ("a write continued it", &|ino| {
            f.fs.write(ino, 100_000, &data[100_000..100_001]).unwrap();
            f.fs.write(ino, 100_001, &data[100_001..100_002]).unwrap();
        }),
        ("the file went", &|_| {
            f.fs.unlink(InodeId::ROOT, b"f").unwrap();
            f.fs.flush(None).unwrap();
        }),
    ];
    for (why, move_the_run) in moves {
        let ino = file(&f, "f");
        f.fs.write(ino, 0, &data[..100_000]).unwrap();
        let Some(append) = write::begin_append(&f.fs.lock(), ino, 100_000, 300_000) else {
            panic!("{why}: a 300,000-byte append at the end cuts chunks");
        };
        move_the_run(ino);
        let cut = append.cut(&data[100_000..]);
        assert!(!write::finish_append(&mut f.fs.lock(), cut).unwrap(), "{why}");
        if why == "the file went" {
            assert!(f.fs.getattr(ino).is_err(), "{why}: nothing brought it back");
            continue;
        }
        let size = f.fs.getattr(ino).unwrap().size;
        assert!(size < 100_010, "{why}: the append left no trace ({size} bytes)");
        assert!(
            f.fs.read(ino, 0, 1 << 20).unwrap() == data[..size as usize],
            "{why}"
        );
        f.fs.unlink(InodeId::ROOT, b"f").unwrap();
    }
    assert_catalog_clean(&f.fs);
}

#[test]
fn appends_racing_commits_and_reads_on_other_threads_read_back_exactly() {
    let f = fixture();
    let files: Vec<(InodeId, Vec<u8>)> = (0..2)
        .map(|i| (file(&f, &format!("f{i}")), random(30 + i, 8 << 20)))
        .collect();
    let writing = std::sync::atomic::AtomicUsize::new(files.len());
    std::thread::scope(|s| {
        for (ino, data) in &files {
            let (fs, writing) = (&f.fs, &writing);
            s.spawn(move || {
                for (i, piece) in data.chunks(131_072).enumerate() {
                    fs.write(*ino, (i * 131_072) as u64, piece).unwrap();
                }
                writing.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
        // Commits and reads meanwhile move the runs under the appends being cut.
        while writing.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            f.fs.commit().unwrap();
            for (ino, data) in &files {
                let got = f.fs.read(*ino, 0, 8 << 20).unwrap();
                assert!(data.starts_with(&got), "a read sees a prefix of what is written");
            }
        }
    });
    for (ino, data) in &files {
        assert!(
            f.fs.read(*ino, 0, 8 << 20).unwrap() == *data,
            "before the last commit"
        );
        f.fs.commit().unwrap();
        assert!(f.fs.read(*ino, 0, 8 << 20).unwrap() == *data, "after it");
    }
    assert_catalog_clean(&f.fs);
}

/// Writes `data` at `offset` of `ino` the way `Fs::write` does, cutting without the
/// lock, and says how: "append", "rewrite", or "locked" (under the lock throughout).
fn write_in_steps(f: &Fixture, ino: InodeId, offset: u64, data: &[u8]) -> &'static str {
    if let Some(append) = write::begin_append(&f.fs.lock(), ino, offset, data.len()) {
        assert!(write::finish_append(&mut f.fs.lock(), append.cut(data)).unwrap());
        return "append";
    }
    for _ in 0..2 {
        let rewriting = write::begin_rewrite(&mut f.fs.lock(), ino, offset, data).unwrap();
        match rewriting {
            write::Rewriting::Planned(plan) => {
                let cut = plan.cut(&*f.fs.store, data).unwrap();
                assert!(write::finish_rewrite(&mut f.fs.lock(), cut).unwrap());
                return "rewrite";
            }
            write::Rewriting::AfterWriters => f.fs.backlog.as_ref().unwrap().wait_for_queued(),
            write::Rewriting::CommitFirst => f.fs.commit().unwrap(),
            write::Rewriting::UnderTheLock => break,
        }
    }
    write::write(&mut f.fs.lock(), ino, offset, data).unwrap();
    "locked"
}

#[test]
fn random_writes_cut_without_the_lock_store_what_writes_under_it_store() {
    let f = fixture();
    let (outside, under) = (file(&f, "outside"), file(&f, "under"));
    let mut model = random(40, 700_000);
    for ino in [outside, under] {
        f.fs.write(ino, 0, &model).unwrap();
    }
    f.fs.fsync(None).unwrap();
    let mut how = std::collections::BTreeMap::<&str, usize>::new();
    let mut seed = 41u64;
    for i in 0..400u64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Random places, some runs of neighbours, some writes past the end.
        let offset = if i % 5 == 4 {
            model.len() as u64
        } else {
            (seed >> 33) % 760_000
        };
        let len = 1 + (seed >> 13) % if i % 7 == 0 { 200_000 } else { 9_000 };
        let data = random(i + 500, len as usize);
        *how.entry(write_in_steps(&f, outside, offset, &data)).or_default() += 1;
        write::write(&mut f.fs.lock(), under, offset, &data).unwrap();
        let end = (offset + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&data);
        if i % 40 == 0 {
            assert!(
                f.fs.read(outside, 0, 4 << 20).unwrap() == model,
                "after write {i}"
            );
        }
        if i % 150 == 149 {
            f.fs.commit().unwrap();
        }
    }
    assert!(how.get("rewrite").copied().unwrap_or(0) > 200, "{how:?}");
    assert!(model.len() < 4 << 20);
    assert!(
        f.fs.read(outside, 0, 4 << 20).unwrap() == model,
        "before the commit"
    );
    assert_eq!(committed_chunks(&f, outside), committed_chunks(&f, under));
    assert!(f.fs.read(outside, 0, 4 << 20).unwrap() == model, "after it");
    assert_catalog_clean(&f.fs);
}

#[test]
fn a_random_write_planned_before_a_change_of_its_file_is_refused_and_changes_nothing() {
    let f = fixture();
    let data = random(42, 300_000);
    let moves: [(&str, &dyn Fn(InodeId)); 4] = [
        ("a commit sealed the run", &|_| f.fs.commit().unwrap()),
        ("a write moved the run", &|ino| {
            f.fs.write(ino, 5, b"x").unwrap();
        }),
        ("a truncation changed the bytes it read", &|ino| {
            f.fs.setattr(
                ino,
                &SetAttr {
                    size: Some(100_000),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        }),
        ("another file was created", &|_| {
            file(&f, "other");
        }),
    ];
    for (why, change) in moves {
        let ino = file(&f, "f");
        f.fs.write(ino, 0, &data).unwrap();
        f.fs.fsync(Some(ino)).unwrap();
        f.fs.write(ino, 250_000, b"buffered").unwrap();
        let rewriting = write::begin_rewrite(&mut f.fs.lock(), ino, 150_000, b"new").unwrap();
        let write::Rewriting::Planned(plan) = rewriting else {
            panic!("{why}: a write inside the file was not planned");
        };
        let before = f.fs.read(ino, 0, 1 << 20).unwrap();
        change(ino);
        let after = f.fs.read(ino, 0, 1 << 20).unwrap();
        let cut = plan.cut(&*f.fs.store, b"new").unwrap();
        assert!(!write::finish_rewrite(&mut f.fs.lock(), cut).unwrap(), "{why}");
        assert!(
            f.fs.read(ino, 0, 1 << 20).unwrap() == after,
            "{why}: nothing written"
        );
        assert!(after.len() <= before.len(), "{why}");
        f.fs.unlink(InodeId::ROOT, b"f").unwrap();
        let _ = f.fs.unlink(InodeId::ROOT, b"other");
    }
    assert_catalog_clean(&f.fs);
}

#[test]
fn seals_cut_without_the_lock_store_what_seals_under_it_store() {
    let f = fixture();
    let mut pairs = Vec::new();
    for i in 0..100u64 {
        let data = random(60 + i, 1 + (i as usize * 7919) % 150_000);
        let (ahead, under) = (file(&f, &format!("a{i}")), file(&f, &format!("u{i}")));
        f.fs.write(ahead, 0, &data).unwrap();
        f.fs.write(under, 0, &data).unwrap();
        pairs.push((ahead, under, data));
    }
    // A run that stops inside an extent: its seal re-cuts the rest of the extent
    // (read under the lock), so that chunk boundaries stay where they were.
    let (ahead, under, data) = &mut pairs[18];
    let start = random(99, 40_000);
    for ino in [*ahead, *under] {
        f.fs.fsync(Some(ino)).unwrap();
        f.fs.write(ino, 0, &start).unwrap();
    }
    data[..start.len()].copy_from_slice(&start);
    for (_, under, _) in &pairs {
        write::flush(&mut f.fs.lock(), Some(*under)).unwrap();
    }
    f.fs.commit().unwrap();
    for (ahead, under, data) in &pairs {
        assert_eq!(committed_chunks(&f, *ahead), committed_chunks(&f, *under));
        assert!(f.fs.read(*ahead, 0, 1 << 20).unwrap() == *data);
    }
    assert_catalog_clean(&f.fs);
}

#[test]
fn a_seal_cut_before_its_run_changed_is_not_used() {
    let f = fixture();
    let ino = file(&f, "f");
    let data = random(70, 60_000);
    f.fs.write(ino, 0, &data[..40_000]).unwrap();
    let mut sealing = write::begin_commit(&f.fs.lock(), None, 1).unwrap();
    let ahead = write::begin_seals(&f.fs.lock(), &sealing);
    assert_eq!(ahead.len(), 1, "40,000 buffered bytes are cut ahead");
    f.fs.write(ino, 40_000, &data[40_000..]).unwrap();
    let cut = ahead.into_iter().map(|a| a.cut()).collect();
    let mut started = write::seal_step(&mut f.fs.lock(), &mut sealing, cut)
        .unwrap()
        .unwrap();
    let durable = started.make_durable(f.fs.backlog.as_ref(), &*f.fs.store);
    let mut durable = Some(durable);
    while write::finish_commit(&mut f.fs.lock(), &mut started, durable.take()).unwrap() {}
    assert!(
        f.fs.read(ino, 0, 100_000).unwrap() == data,
        "the whole run was sealed"
    );
    let st = f.fs.lock();
    let committed = st.catalog.extents(st.catalog.live(), ino, 0, u64::MAX).unwrap();
    assert_eq!(committed.last().map(|e| e.end()), Some(60_000), "{committed:?}");
    drop(st);
    assert_catalog_clean(&f.fs);
}
