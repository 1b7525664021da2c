//! The store contract suite, run against every store, and the mirror, dir and fault
//! scenarios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::codec::{encode, EncodedChunk};
use crate::types::RepoId;

const REPO: RepoId = RepoId([7; 16]);
const OTHER_REPO: RepoId = RepoId([9; 16]);

fn chunk(seed: u64, len: usize, compressible: bool) -> (Vec<u8>, EncodedChunk) {
    let plain: Vec<u8> = if compressible {
        (0..len).map(|i| (i / 100) as u8 ^ seed as u8).collect()
    } else {
        crate::testing::noise(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, len)
    };
    let enc = encode(&plain, Some(3));
    (plain, enc)
}

fn sorted(mut ids: Vec<ChunkId>) -> Vec<ChunkId> {
    ids.sort();
    ids
}

/// The behaviour every `ObjectStore` promises. `damage(id)` is called once a chunk is
/// stored and synced, to let a redundant store lose or rot one copy behind its back;
/// the contract must still hold.
fn contract(store: &dyn ObjectStore, damage: &dyn Fn(&ChunkId)) {
    assert!(!store.describe().is_empty());
    let (plain_a, a) = chunk(1, 50_000, true);
    let (plain_b, b) = chunk(2, 3_000, false);

    // Absent.
    assert!(!store.contains(&a.id).unwrap());
    assert_eq!(store.get_frame(&a.id).unwrap(), None);
    assert!(matches!(store.get(&a.id), Err(Error::MissingChunk { id }) if id == a.id));
    store.remove(&a.id).unwrap();
    assert!(store.list().unwrap().is_empty());

    // Put, read back.
    store.put(&a.id, &a.frame).unwrap();
    store.put(&b.id, &b.frame).unwrap();
    store.sync().unwrap();
    assert!(store.contains(&a.id).unwrap() && store.contains(&b.id).unwrap());
    assert_eq!(store.get_frame(&a.id).unwrap(), Some(a.frame.clone()));
    assert_eq!(store.get(&a.id).unwrap(), plain_a);
    assert_eq!(store.get(&b.id).unwrap(), plain_b);
    assert_eq!(sorted(store.list().unwrap()), sorted(vec![a.id, b.id]));

    // Idempotent put.
    store.put(&a.id, &a.frame).unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(store.get(&a.id).unwrap(), plain_a);

    // A redundant store survives damage to one copy, and repairs it on read.
    damage(&a.id);
    assert_eq!(store.get(&a.id).unwrap(), plain_a);
    assert_eq!(store.get_frame(&a.id).unwrap(), Some(a.frame.clone()));
    assert!(store.contains(&a.id).unwrap());

    // A bad copy is reported as corrupt, never returned; a put replaces it.
    let mut bad = a.frame.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    store.put(&a.id, &bad).unwrap();
    match store.get(&a.id) {
        Err(Error::CorruptChunk { id, reason, .. }) => {
            assert_eq!(id, a.id);
            assert!(!reason.is_empty());
        }
        other => panic!("expected CorruptChunk, got {other:?}"),
    }
    store.put(&a.id, &a.frame).unwrap();
    assert_eq!(store.get(&a.id).unwrap(), plain_a);

    // Remove.
    store.remove(&a.id).unwrap();
    store.remove(&a.id).unwrap();
    store.sync().unwrap();
    assert!(!store.contains(&a.id).unwrap());
    assert!(matches!(store.get(&a.id), Err(Error::MissingChunk { .. })));
    assert_eq!(store.list().unwrap(), vec![b.id]);

    // Many threads at once.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for i in 0..10 {
                    let (plain, c) = chunk(100 + t * 10 + i, 2_000, i % 2 == 0);
                    store.put(&c.id, &c.frame).unwrap();
                    assert_eq!(store.get(&c.id).unwrap(), plain);
                }
            });
        }
    });
    store.sync().unwrap();
    assert_eq!(store.list().unwrap().len(), 41);
}

fn no_damage(_: &ChunkId) {}

fn dir_store(root: &Path, name: &str, mirror: u32) -> DirStore {
    DirStore::create(&root.join(name), REPO, MirrorId(mirror)).unwrap()
}

fn boxed(store: impl ObjectStore + 'static) -> Result<Box<dyn ObjectStore>> {
    Ok(Box::new(store))
}

/// Two DirStore mirrors in a tempdir, plus second handles to find their files.
fn two_dir_mirrors(root: &Path) -> (MirrorStore, DirStore, DirStore) {
    let m0 = dir_store(root, "m0", 0);
    let m1 = dir_store(root, "m1", 1);
    let h0 = DirStore::open(m0.path(), REPO, MirrorId(0)).unwrap();
    let h1 = DirStore::open(m1.path(), REPO, MirrorId(1)).unwrap();
    let mirrors = MirrorStore::new(vec![(MirrorId(0), boxed(m0)), (MirrorId(1), boxed(m1))]).unwrap();
    (mirrors, h0, h1)
}

/// Every file under `root` with its content, to check that nothing changed.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), None);
                todo.push(path);
            } else {
                out.insert(path.clone(), Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

// ---- the contract, against every store ----

#[test]
fn memory_store_meets_the_contract() {
    contract(&MemoryStore::new(), &no_damage);
}

#[test]
fn fault_store_meets_the_contract() {
    contract(&FaultStore::new(), &no_damage);
}

#[test]
fn dir_store_meets_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    contract(&dir_store(tmp.path(), "m", 0), &no_damage);
}

#[test]
fn mirror_store_of_two_dir_stores_meets_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, _, _) = two_dir_mirrors(tmp.path());
    contract(&mirrors, &no_damage);
    assert_eq!(mirrors.healthy(), MirrorSet(0b11));
}

#[test]
fn mirror_store_with_one_corrupted_and_one_emptied_mirror_meets_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let stores: Vec<DirStore> = (0..3)
        .map(|i| dir_store(tmp.path(), &format!("m{i}"), i))
        .collect();
    let handles: Vec<DirStore> = stores
        .iter()
        .map(|s| DirStore::open(s.path(), REPO, s.mirror_id()).unwrap())
        .collect();
    let mirrors = MirrorStore::new(stores.into_iter().map(|s| (s.mirror_id(), boxed(s))).collect()).unwrap();
    let damage = |id: &ChunkId| {
        // Mirror 0 loses its copy, mirror 1 rots one byte; mirror 2 is intact. (Reads
        // stop at the first good copy, so only mirrors before it are checked.)
        std::fs::remove_file(handles[0].object_path(id)).unwrap();
        let p1 = handles[1].object_path(id);
        let mut bytes = std::fs::read(&p1).unwrap();
        bytes[20] ^= 0x01;
        std::fs::write(&p1, bytes).unwrap();
    };
    contract(&mirrors, &damage);
    assert_eq!(mirrors.healthy(), MirrorSet(0b111));
    let heals: Vec<u64> = mirrors.status().iter().map(|s| s.heals).collect();
    assert_eq!(heals, vec![1, 1, 0]);
}

#[test]
fn mirror_store_over_memory_and_fault_stores_meets_the_contract() {
    let mirrors = MirrorStore::new(vec![
        (MirrorId(0), boxed(MemoryStore::new())),
        (MirrorId(1), boxed(FaultStore::new())),
    ])
    .unwrap();
    contract(&mirrors, &no_damage);
}

// ---- self-heal ----

#[test]
fn flipped_byte_in_mirror_file_is_read_correctly_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, h0, h1) = two_dir_mirrors(tmp.path());
    let (plain, c) = chunk(3, 70_000, true);
    assert_eq!(mirrors.put_all(&c.id, &c.frame).unwrap(), MirrorSet(0b11));
    mirrors.sync().unwrap();
    let p0 = h0.object_path(&c.id);
    let mut bytes = std::fs::read(&p0).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&p0, &bytes).unwrap();

    assert_eq!(mirrors.get_verified(&c.id).unwrap(), plain);
    assert_eq!(
        std::fs::read(&p0).unwrap(),
        std::fs::read(h1.object_path(&c.id)).unwrap()
    );
    assert_eq!(mirrors.heals(), 1);
    assert_eq!(mirrors.status()[0].heals, 1);
    assert_eq!(mirrors.status()[1].heals, 0);
    // Repaired: the next read needs no heal.
    assert_eq!(mirrors.get_verified(&c.id).unwrap(), plain);
    assert_eq!(mirrors.heals(), 1);
}

#[test]
fn deleted_mirror_file_is_read_from_the_other_and_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, h0, h1) = two_dir_mirrors(tmp.path());
    let (plain, c) = chunk(4, 10_000, false);
    mirrors.put_all(&c.id, &c.frame).unwrap();
    std::fs::remove_file(h0.object_path(&c.id)).unwrap();
    assert!(!mirrors.contains(&c.id).unwrap());
    assert_eq!(mirrors.holders(&c.id), MirrorSet(0b10));

    assert_eq!(mirrors.get(&c.id).unwrap(), plain);
    assert_eq!(
        std::fs::read(h0.object_path(&c.id)).unwrap(),
        std::fs::read(h1.object_path(&c.id)).unwrap()
    );
    assert_eq!(mirrors.heals(), 1);
    assert_eq!(mirrors.holders(&c.id), MirrorSet(0b11));
}

#[test]
fn chunk_bad_in_every_mirror_is_an_error_never_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, h0, h1) = two_dir_mirrors(tmp.path());
    let (_, c) = chunk(5, 10_000, true);
    mirrors.put_all(&c.id, &c.frame).unwrap();
    for h in [&h0, &h1] {
        let p = h.object_path(&c.id);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[17] ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
    }
    match mirrors.get_verified(&c.id) {
        Err(e @ Error::CorruptChunk { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("mirror 0") && msg.contains("mirror 1"), "{msg}");
            assert_eq!(e.errno(), libc::EIO);
        }
        other => panic!("expected CorruptChunk, got {other:?}"),
    }
    // Corrupt in one, missing in the other: still corrupt, not missing.
    std::fs::remove_file(h1.object_path(&c.id)).unwrap();
    assert!(matches!(mirrors.get(&c.id), Err(Error::CorruptChunk { .. })));
    // Missing everywhere.
    std::fs::remove_file(h0.object_path(&c.id)).unwrap();
    assert!(matches!(mirrors.get(&c.id), Err(Error::MissingChunk { .. })));
    assert_eq!(mirrors.heals(), 0);
    assert_eq!(mirrors.healthy(), MirrorSet(0b11));
}

#[test]
fn lost_mirror_is_read_as_a_last_resort_and_heals_the_healthy_one() {
    let m0 = Arc::new(MemoryStore::new());
    let m1 = Arc::new(MemoryStore::new());
    let (plain, c) = chunk(6, 5_000, true);
    m0.put(&c.id, &c.frame).unwrap();
    let mirrors = MirrorStore::new(vec![
        (MirrorId(0), boxed(m0.clone())),
        (MirrorId(1), boxed(m1.clone())),
    ])
    .unwrap();
    mirrors.mark_lost(MirrorId(0), "scrub: disk is failing");
    assert_eq!(mirrors.get(&c.id).unwrap(), plain);
    assert_eq!(m1.get(&c.id).unwrap(), plain);
    assert_eq!(mirrors.status()[1].heals, 1);
    assert_eq!(
        mirrors.status()[0].state,
        MirrorState::Lost {
            reason: "scrub: disk is failing".into()
        }
    );
}

// ---- degraded mode ----

#[test]
fn mirror_whose_folder_was_deleted_goes_lost_and_writes_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let (mirrors, h0, h1) = two_dir_mirrors(tmp.path());
    std::fs::remove_dir_all(h0.path()).unwrap();
    let (plain, c) = chunk(7, 10_000, true);
    assert_eq!(mirrors.put_all(&c.id, &c.frame).unwrap(), MirrorSet(0b10));
    mirrors.sync().unwrap();
    assert_eq!(mirrors.healthy(), MirrorSet(0b10));
    let status = mirrors.status();
    match &status[0].state {
        MirrorState::Lost { reason } => {
            assert!(
                reason.contains("writing chunk") && reason.contains("mirror 0"),
                "{reason}"
            )
        }
        other => panic!("mirror 0 should be lost, is {other:?}"),
    }
    assert_eq!(status[1].state, MirrorState::Healthy);
    assert_eq!(mirrors.get(&c.id).unwrap(), plain);
    assert!(mirrors.contains(&c.id).unwrap());
    assert!(h1.contains(&c.id).unwrap());

    // The last mirror goes too: NoMirror, naming both reasons.
    std::fs::remove_dir_all(h1.path()).unwrap();
    let (_, d) = chunk(8, 10_000, true);
    match mirrors.put_all(&d.id, &d.frame) {
        Err(e @ Error::NoMirror { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("mirror 0") && msg.contains("mirror 1"), "{msg}");
        }
        other => panic!("expected NoMirror, got {other:?}"),
    }
}

#[test]
fn enospc_propagates_and_the_mirror_stays_healthy() {
    let fault = Arc::new(FaultStore::new());
    let other = Arc::new(MemoryStore::new());
    let mirrors = MirrorStore::new(vec![
        (MirrorId(0), boxed(fault.clone())),
        (MirrorId(1), boxed(other.clone())),
    ])
    .unwrap();
    let (plain, c) = chunk(9, 4_000, true);
    fault.fail_put_at(1, libc::ENOSPC);
    let err = mirrors.put_all(&c.id, &c.frame).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert_eq!(mirrors.healthy(), MirrorSet(0b11));

    // Space is back: the retry lands everywhere.
    assert_eq!(mirrors.put_all(&c.id, &c.frame).unwrap(), MirrorSet(0b11));
    fault.fail_sync_at(1, libc::ENOSPC);
    assert!(mirrors.sync().unwrap_err().is_no_space());
    assert_eq!(mirrors.healthy(), MirrorSet(0b11));
    mirrors.sync().unwrap();
    assert_eq!(fault.get(&c.id).unwrap(), plain);
    assert_eq!(fault.puts(), 2);
}

#[test]
fn eio_on_put_or_sync_sets_the_mirror_aside() {
    let f0 = Arc::new(FaultStore::new());
    let f1 = Arc::new(FaultStore::new());
    let m2 = Arc::new(MemoryStore::new());
    let mirrors = MirrorStore::new(vec![
        (MirrorId(0), boxed(f0.clone())),
        (MirrorId(1), boxed(f1.clone())),
        (MirrorId(2), boxed(m2.clone())),
    ])
    .unwrap();
    let (_, c) = chunk(10, 4_000, true);
    f0.fail_put_at(1, libc::EIO);
    assert_eq!(mirrors.put_all(&c.id, &c.frame).unwrap(), MirrorSet(0b110));
    assert_eq!(mirrors.healthy(), MirrorSet(0b110));
    f1.fail_sync_at(1, libc::EIO);
    mirrors.sync().unwrap();
    assert_eq!(mirrors.healthy(), MirrorSet(0b100));
    // Lost mirrors are not written any more.
    let (_, d) = chunk(11, 4_000, true);
    assert_eq!(mirrors.put_all(&d.id, &d.frame).unwrap(), MirrorSet(0b100));
    assert_eq!(f0.puts(), 1);
    assert_eq!(f1.puts(), 1);
}

#[test]
fn put_to_fills_only_the_targets() {
    let m0 = Arc::new(MemoryStore::new());
    let m1 = Arc::new(MemoryStore::new());
    let mirrors = MirrorStore::new(vec![
        (MirrorId(0), boxed(m0.clone())),
        (MirrorId(1), boxed(m1.clone())),
    ])
    .unwrap();
    let (_, c) = chunk(12, 4_000, true);
    let mut targets = MirrorSet::EMPTY;
    targets.insert(MirrorId(1));
    assert_eq!(mirrors.put_to(&c.id, &c.frame, targets).unwrap(), targets);
    assert!(!m0.contains(&c.id).unwrap());
    assert!(m1.contains(&c.id).unwrap());
    assert_eq!(mirrors.holders(&c.id), targets);
}

#[test]
fn unopenable_mirrors_start_lost_and_none_usable_is_no_mirror() {
    let failed = |why: &str| -> Result<Box<dyn ObjectStore>> {
        Err(Error::MirrorUnusable {
            id: MirrorId(0),
            path: "/gone".into(),
            reason: why.into(),
        })
    };
    let mirrors = MirrorStore::new(vec![
        (MirrorId(0), failed("the folder does not exist")),
        (MirrorId(1), boxed(MemoryStore::new())),
    ])
    .unwrap();
    assert_eq!(mirrors.healthy(), MirrorSet(0b10));
    match &mirrors.status()[0].state {
        MirrorState::Lost { reason } => assert!(reason.contains("does not exist"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let e = MirrorStore::new(vec![(MirrorId(0), failed("disk unplugged"))]).unwrap_err();
    assert!(
        matches!(e, Error::NoMirror { .. }) && e.to_string().contains("disk unplugged"),
        "{e}"
    );
    assert!(matches!(MirrorStore::new(vec![]), Err(Error::NoMirror { .. })));
    let dup = MirrorStore::new(vec![
        (MirrorId(3), boxed(MemoryStore::new())),
        (MirrorId(3), boxed(MemoryStore::new())),
    ]);
    assert!(matches!(dup, Err(Error::InvalidArgument(_))));
    let big = MirrorStore::new(vec![(MirrorId(64), boxed(MemoryStore::new()))]);
    assert!(matches!(big, Err(Error::InvalidArgument(_))));
}

// ---- DirStore ----

#[test]
fn dir_store_layout_and_identity_are_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("new/mirror");
    let store = DirStore::create(&path, REPO, MirrorId(2)).unwrap();
    assert_eq!(
        std::fs::read_to_string(path.join("MIRROR")).unwrap(),
        format!("snapfs-mirror 1\nrepository {REPO}\nmirror 2\n")
    );
    assert_eq!(read_identity(&path).unwrap(), Some((REPO, MirrorId(2))));
    assert_eq!(read_identity(tmp.path()).unwrap(), None);
    assert_eq!(store.describe(), format!("mirror 2 ({})", path.display()));
    let (_, c) = chunk(13, 1_000, true);
    store.put(&c.id, &c.frame).unwrap();
    let hex = c.id.to_hex();
    let file = path.join("objects").join(&hex[..2]).join(&hex);
    assert_eq!(store.object_path(&c.id), file);
    assert_eq!(std::fs::read(&file).unwrap(), c.frame);
    store.sync().unwrap();
    assert!(store.total_bytes().unwrap() > 0);
    assert!(store.available_bytes().unwrap() <= store.total_bytes().unwrap());
    // Only the final file is left in the prefix folder.
    assert_eq!(std::fs::read_dir(file.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn dir_store_create_accepts_an_empty_folder_and_its_own_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    std::fs::create_dir(&path).unwrap();
    let store = DirStore::create(&path, REPO, MirrorId(0)).unwrap();
    let (_, c) = chunk(14, 1_000, true);
    store.put(&c.id, &c.frame).unwrap();
    // Re-creating the same mirror opens it as is.
    let again = DirStore::create(&path, REPO, MirrorId(0)).unwrap();
    assert!(again.contains(&c.id).unwrap());
    // Another mirror number of the same repository is refused.
    let before = tree(tmp.path());
    let e = DirStore::create(&path, REPO, MirrorId(1)).unwrap_err();
    assert!(matches!(e, Error::Exists(_)), "{e}");
    assert_eq!(tree(tmp.path()), before);
}

#[test]
fn dir_store_create_refuses_foreign_and_non_empty_folders_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign");
    DirStore::create(&foreign, OTHER_REPO, MirrorId(0)).unwrap();
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("thesis.txt"), b"do not touch").unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let before = tree(tmp.path());

    let e = DirStore::create(&foreign, REPO, MirrorId(0)).unwrap_err();
    assert!(
        matches!(&e, Error::ForeignMirror { other, .. } if *other == OTHER_REPO.to_string()),
        "{e}"
    );
    let e = DirStore::create(&plain, REPO, MirrorId(0)).unwrap_err();
    assert!(matches!(e, Error::NotAMirror { .. }), "{e}");
    assert!(e.to_string().contains("choose an empty folder"));
    let e = DirStore::create(&file, REPO, MirrorId(0)).unwrap_err();
    assert!(matches!(e, Error::NotDir(_)), "{e}");

    assert_eq!(tree(tmp.path()), before);
}

#[test]
fn dir_store_open_requires_the_exact_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    DirStore::create(&path, REPO, MirrorId(1)).unwrap();
    DirStore::open(&path, REPO, MirrorId(1)).unwrap();
    let unusable = |e: Error, needle: &str| match e {
        Error::MirrorUnusable { id, reason, .. } => {
            assert!(reason.contains(needle), "{reason}");
            id
        }
        other => panic!("expected MirrorUnusable, got {other:?}"),
    };
    assert!(matches!(
        DirStore::open(&path, OTHER_REPO, MirrorId(1)),
        Err(Error::ForeignMirror { .. })
    ));
    let id = unusable(DirStore::open(&path, REPO, MirrorId(0)).unwrap_err(), "mirror 1");
    assert_eq!(id, MirrorId(0));
    unusable(
        DirStore::open(&tmp.path().join("nope"), REPO, MirrorId(0)).unwrap_err(),
        "does not exist",
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    unusable(
        DirStore::open(&empty, REPO, MirrorId(0)).unwrap_err(),
        "no MIRROR",
    );
    // A newer identity format asks for an upgrade.
    std::fs::write(path.join("MIRROR"), "snapfs-mirror 2\nrepository x\nmirror 1\n").unwrap();
    assert!(matches!(
        DirStore::open(&path, REPO, MirrorId(1)),
        Err(Error::UnsupportedFormat { found: 2, .. })
    ));
    std::fs::write(path.join("MIRROR"), "garbage").unwrap();
    unusable(
        DirStore::open(&path, REPO, MirrorId(1)).unwrap_err(),
        "unreadable",
    );
}

#[test]
fn dir_store_list_ignores_temp_and_stray_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path(), "m", 0);
    let (_, c) = chunk(15, 1_000, true);
    store.put(&c.id, &c.frame).unwrap();
    let dir = store.object_path(&c.id).parent().unwrap().to_path_buf();
    let hex = c.id.to_hex();
    std::fs::write(dir.join(format!(".tmp-{hex}-1-0")), b"half").unwrap();
    std::fs::write(dir.join(hex.to_uppercase()), b"stray").unwrap();
    std::fs::write(dir.join("README"), b"stray").unwrap();
    assert_eq!(store.list().unwrap(), vec![c.id]);
    let own = dir.join(format!(".tmp-{hex}-{}-0", std::process::id()));
    std::fs::write(&own, b"in flight").unwrap();
    assert_eq!(store.remove_stale_temps().unwrap(), 1);
    assert!(own.exists());
    assert_eq!(store.list().unwrap(), vec![c.id]);
}

#[test]
fn dir_store_put_replaces_a_bad_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path(), "m", 0);
    let (plain, c) = chunk(16, 1_000, false);
    std::fs::create_dir_all(store.object_path(&c.id).parent().unwrap()).unwrap();
    std::fs::write(store.object_path(&c.id), b"rot").unwrap();
    assert!(matches!(store.get(&c.id), Err(Error::CorruptChunk { .. })));
    store.put(&c.id, &c.frame).unwrap();
    assert_eq!(store.get(&c.id).unwrap(), plain);
}

// ---- FaultStore ----

#[test]
fn fault_store_crash_drops_unsynced_puts_only() {
    let store = FaultStore::new();
    let (plain_a, a) = chunk(17, 1_000, true);
    let (_, b) = chunk(18, 1_000, true);
    store.put(&a.id, &a.frame).unwrap();
    store.sync().unwrap();
    store.put(&b.id, &b.frame).unwrap();
    store.remove(&a.id).unwrap();
    assert!(store.contains(&b.id).unwrap());
    assert!(!store.contains(&a.id).unwrap());
    assert_eq!(store.pending(), 2);
    store.crash();
    assert_eq!(store.get(&a.id).unwrap(), plain_a);
    assert!(!store.contains(&b.id).unwrap());
    assert_eq!(store.list().unwrap(), vec![a.id]);
    assert_eq!((store.puts(), store.syncs()), (2, 1));
}

#[test]
fn fault_store_fails_exactly_the_nth_put() {
    let store = FaultStore::new();
    store.fail_put_at(3, libc::EIO);
    let ids: Vec<_> = (0..4).map(|i| chunk(20 + i, 500, true).1).collect();
    let results: Vec<bool> = ids.iter().map(|c| store.put(&c.id, &c.frame).is_ok()).collect();
    assert_eq!(results, vec![true, true, false, true]);
    assert_eq!(
        store.put(&ids[2].id, &ids[2].frame).map_err(|e| e.errno()),
        Ok(())
    );
    store.fail_put_at(1, libc::EIO);
    let e = store.put(&ids[0].id, &ids[0].frame).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("injected"), "{e}");
}

// ---- MirrorSet ----

#[test]
fn mirror_set_behaves_like_a_set() {
    let mut s = MirrorSet::EMPTY;
    assert!(s.is_empty());
    assert!(s.insert(MirrorId(0)));
    assert!(s.insert(MirrorId(5)));
    assert!(!s.insert(MirrorId(5)));
    assert!(!s.insert(MirrorId(64)));
    assert_eq!(s.len(), 2);
    assert!(s.contains(MirrorId(5)) && !s.contains(MirrorId(1)) && !s.contains(MirrorId(99)));
    assert_eq!(s.to_string(), "0,5");
    assert_eq!(s.iter().collect::<Vec<_>>(), vec![MirrorId(0), MirrorId(5)]);
    let one: MirrorSet = [MirrorId(5)].into_iter().collect();
    assert!(s.is_superset_of(one) && !one.is_superset_of(s));
    assert!(s.is_superset_of(MirrorSet::EMPTY));
    assert!(s.remove(MirrorId(0)));
    assert!(!s.remove(MirrorId(0)));
    assert_eq!(s, one);
    assert_eq!(MirrorSet::EMPTY.to_string(), "");
}

// ---- sync modes ----

#[test]
fn syncfs_is_trusted_only_on_local_kernel_filesystems() {
    for (magic, name) in [
        (0xEF53, "ext2/3/4"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0xF2F5_2010, "f2fs"),
        (0x0102_1994, "tmpfs"),
        (0x8584_58F6, "ramfs"),
    ] {
        assert_eq!(mode_for_filesystem(magic), (SyncMode::Syncfs, name.to_string()));
    }
    for (magic, name) in [
        (0x6573_5546, "fuse"),
        (0x6969, "nfs"),
        (0xFF53_4D42, "cifs"),
        (0xFE53_4D42, "smb2"),
        (0x0102_1997, "9p"),
        (0x794C_7630, "overlay"),
        (0x2FC1_2FC1, "zfs"),
        (0x1234_5678, "0x12345678"),
    ] {
        assert_eq!(
            mode_for_filesystem(magic),
            (SyncMode::FsyncEach, name.to_string())
        );
    }
    assert_eq!(SyncMode::Syncfs.as_str(), "syncfs");
    assert_eq!(SyncMode::FsyncEach.as_str(), "fsync");
    assert_eq!(SyncMode::FsyncEach.to_string(), "fsync per file");
}

#[test]
fn snapfs_sync_forces_fsync_and_refuses_unknown_values() {
    use super::sync::forced_by;
    assert!(!forced_by(None).unwrap());
    assert!(!forced_by(Some("")).unwrap());
    assert!(!forced_by(Some("auto")).unwrap());
    assert!(forced_by(Some("fsync")).unwrap());
    for bad in ["syncfs", "yes", "FSYNC"] {
        let e = forced_by(Some(bad)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains(&format!("SNAPFS_SYNC={bad}")), "{e}");
    }
}

#[test]
fn dir_store_chooses_its_sync_mode_by_the_folders_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path(), "m", 0);
    let magic = rustix::fs::statfs(tmp.path()).unwrap().f_type as u32;
    let (mode, name) = mode_for_filesystem(magic);
    let choice = store.sync_choice();
    assert_eq!(choice.filesystem, name);
    // The test run may force fsync (SNAPFS_SYNC=fsync) to measure or test that mode.
    if choice.forced {
        assert_eq!(choice.mode, SyncMode::FsyncEach);
    } else {
        assert_eq!(choice.mode, mode);
    }
}

#[test]
fn dir_store_in_fsync_mode_meets_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    contract(
        &dir_store(tmp.path(), "m", 0).with_sync_mode(SyncMode::FsyncEach),
        &no_damage,
    );
}

/// A chunk id whose file lands in `objects/<prefix>/`.
fn id_with_prefix(prefix: u8, n: u8) -> ChunkId {
    let mut id = [n; 32];
    id[0] = prefix;
    ChunkId(id)
}

#[test]
fn fsync_mode_syncs_exactly_the_written_files_and_the_changed_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path(), "m", 0).with_sync_mode(SyncMode::FsyncEach);
    let objects = store.path().join("objects");
    let (_, frame) = chunk(30, 2_000, true);
    let (a, b, c) = (
        id_with_prefix(0xab, 1),
        id_with_prefix(0xab, 2),
        id_with_prefix(0x12, 3),
    );
    for id in [a, b, c] {
        store.put(&id, &frame.frame).unwrap();
    }
    // A put of the same chunk again is synced once.
    store.put(&a, &frame.frame).unwrap();
    assert!(store.take_fsynced().is_empty(), "a put fsyncs nothing by itself");
    store.sync().unwrap();
    let dir = |id: &ChunkId| store.object_path(id).parent().unwrap().to_path_buf();
    // Files first (in path order), then folders: both prefix folders were created, so
    // objects/ changed too.
    assert_eq!(
        store.take_fsynced(),
        vec![
            store.object_path(&c),
            store.object_path(&a),
            store.object_path(&b),
            objects.clone(),
            dir(&c),
            dir(&a),
        ]
    );

    // Nothing written since: nothing to sync.
    store.sync().unwrap();
    assert!(store.take_fsynced().is_empty());

    // A removal is not synced (see DirStore::remove); a put into an existing prefix
    // folder syncs that file and that folder only.
    store.remove(&b).unwrap();
    store.sync().unwrap();
    assert!(store.take_fsynced().is_empty());
    let d = id_with_prefix(0x12, 4);
    store.put(&d, &frame.frame).unwrap();
    store.sync().unwrap();
    assert_eq!(store.take_fsynced(), vec![store.object_path(&d), dir(&d)]);

    // A chunk removed between its put and the sync has nothing left to sync.
    let e = id_with_prefix(0x12, 5);
    store.put(&e, &frame.frame).unwrap();
    store.remove(&e).unwrap();
    store.sync().unwrap();
    assert_eq!(store.take_fsynced(), vec![store.object_path(&e), dir(&e)]);
}

#[test]
fn fsync_mode_syncs_a_large_batch_on_several_threads_and_misses_none() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path(), "m", 0).with_sync_mode(SyncMode::FsyncEach);
    let (_, frame) = chunk(31, 500, true);
    let ids: Vec<ChunkId> = (0..100u8).map(|n| id_with_prefix(n % 10, n)).collect();
    for id in &ids {
        store.put(id, &frame.frame).unwrap();
    }
    store.sync().unwrap();
    let synced: std::collections::BTreeSet<PathBuf> = store.take_fsynced().into_iter().collect();
    let mut expected: std::collections::BTreeSet<PathBuf> =
        ids.iter().map(|id| store.object_path(id)).collect();
    expected.extend(
        ids.iter()
            .map(|id| store.object_path(id).parent().unwrap().to_path_buf()),
    );
    expected.insert(store.path().join("objects"));
    assert_eq!(synced, expected);
    assert_eq!(synced.len(), 100 + 10 + 1);
}

#[test]
fn syncfs_mode_keeps_no_list_of_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dir_store(tmp.path(), "m", 0).with_sync_mode(SyncMode::Syncfs);
    let (_, c) = chunk(32, 500, true);
    store.put(&c.id, &c.frame).unwrap();
    store.sync().unwrap();
    assert!(store.take_fsynced().is_empty());
}

#[test]
fn create_dir_all_durably_creates_every_missing_level() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("a/b/c");
    create_dir_all_durably(&deep).unwrap();
    assert!(deep.is_dir());
    // Existing folders are fine.
    create_dir_all_durably(&deep).unwrap();
    create_dir_all_durably(tmp.path()).unwrap();
}

#[test]
fn a_sync_in_fsync_mode_returns_only_once_a_concurrent_syncs_files_are_durable() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(dir_store(tmp.path(), "m", 0).with_sync_mode(SyncMode::FsyncEach));
    let (_, frame) = chunk(33, 500, true);
    let (a, b) = (id_with_prefix(0x01, 1), id_with_prefix(0x02, 2));
    let a_path = store.object_path(&a);
    // The fsync of A waits until the test lets it go.
    let (release, wait) = mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let (hook_events, hook_a) = (events.clone(), a_path.clone());
    store.set_before_fsync(move |path| {
        if path == hook_a {
            wait.lock().unwrap().recv().unwrap();
            hook_events.lock().unwrap().push("A fsynced".into());
        }
    });
    store.put(&a, &frame.frame).unwrap();
    let first = {
        let store = store.clone();
        std::thread::spawn(move || store.sync().unwrap())
    };
    // Let the first sync take A and block in its fsync.
    while store.unsynced_files() != 0 {
        std::thread::yield_now();
    }
    store.put(&b, &frame.frame).unwrap();
    let second = {
        let (store, events) = (store.clone(), events.clone());
        std::thread::spawn(move || {
            store.sync().unwrap();
            events.lock().unwrap().push("second sync returned".into());
        })
    };
    // Without waiting for the first, the second would return now, A not yet durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !second.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    release.send(()).unwrap();
    first.join().unwrap();
    second.join().unwrap();
    assert_eq!(*events.lock().unwrap(), vec!["A fsynced", "second sync returned"]);
    let synced = store.take_fsynced();
    assert!(
        synced.contains(&a_path) && synced.contains(&store.object_path(&b)),
        "{synced:?}"
    );
}
