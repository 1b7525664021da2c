//! Catalog tests: unit behaviour, and a property test of random changes interleaved
//! with freezes and reopening, against an in-memory model of every generation.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::*;

const MAX_EXTENT: u64 = 1024;
const FILE_SPAN: u64 = 6144;

fn settings() -> Settings {
    Settings {
        repo_id: RepoId([7; 16]),
        chunker: ChunkerParams {
            min_size: 256,
            avg_size: 512,
            max_size: MAX_EXTENT as u32,
            seed: 9,
        },
        zstd_level: Some(3),
        created_ns: 1_000,
    }
}

fn new_catalog(path: &Path) -> Catalog {
    Catalog::create(
        path,
        &NewCatalog {
            settings: settings(),
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            mirrors: vec!["/m0".into(), "/m1".into()],
        },
    )
    .unwrap()
}

fn file(kind: FileKind) -> NewInode {
    NewInode {
        kind,
        mode: 0o644,
        uid: 1,
        gid: 2,
        rdev: 0,
        time_ns: 5,
        target: if kind == FileKind::Symlink {
            b"target".to_vec()
        } else {
            Vec::new()
        },
    }
}

fn chunk(i: u8) -> ChunkId {
    ChunkId([i; 32])
}

#[test]
fn create_rejects_an_existing_file_and_open_rejects_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    drop(new_catalog(&path));
    let again = Catalog::create(
        &path,
        &NewCatalog {
            settings: settings(),
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            mirrors: vec![],
        },
    );
    assert!(matches!(again, Err(Error::RepositoryExists { .. })));
    let missing = Catalog::open(&dir.path().join("nope.db"));
    assert!(matches!(missing, Err(Error::NotARepository { .. })));
}

#[test]
fn settings_and_mirrors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    drop(new_catalog(&path));
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.settings().unwrap(), settings());
    let mirrors = cat.mirrors().unwrap();
    assert_eq!(mirrors.len(), 2);
    assert_eq!(mirrors[1].id, MirrorId(1));
    assert_eq!(mirrors[1].path, Path::new("/m1"));
    assert_eq!(cat.live(), GenId(1));
    let root = cat.inode(cat.live(), InodeId::ROOT).unwrap().unwrap();
    assert_eq!((root.kind, root.mode, root.nlink), (FileKind::Dir, 0o755, 2));
}

#[test]
fn a_newer_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    drop(new_catalog(&path));
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        Catalog::open(&path),
        Err(Error::UnsupportedFormat { found: 99, .. })
    ));
}

#[test]
fn frozen_generation_keeps_its_view_after_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    let tx = cat.write().unwrap();
    tx.add_chunk(&chunk(1), 100, 50, place(1, 0, 100)).unwrap();
    let f = tx.create_inode(&file(FileKind::File)).unwrap();
    tx.link(InodeId::ROOT, b"a", f.id).unwrap();
    tx.set_extents(
        f.id,
        0,
        100,
        &[Extent {
            offset: 0,
            length: 100,
            chunk: chunk(1),
            chunk_offset: 0,
        }],
    )
    .unwrap();
    tx.set_inode(&InodeAttr {
        size: 100,
        ..tx.expect_inode(f.id).unwrap()
    })
    .unwrap();
    tx.set_xattr(f.id, b"user.k", b"v1").unwrap();
    tx.commit().unwrap();
    let snap = cat.freeze("@s1", Some("first"), 2_000).unwrap();

    let tx = cat.write().unwrap();
    tx.set_extents(f.id, 10, 20, &[]).unwrap();
    tx.set_xattr(f.id, b"user.k", b"v2").unwrap();
    tx.rename(InodeId::ROOT, b"a", InodeId::ROOT, b"b").unwrap();
    tx.commit().unwrap();

    assert_eq!(cat.lookup(snap, InodeId::ROOT, b"a").unwrap(), Some(f.id));
    assert_eq!(cat.lookup(snap, InodeId::ROOT, b"b").unwrap(), None);
    assert_eq!(cat.lookup(cat.live(), InodeId::ROOT, b"b").unwrap(), Some(f.id));
    assert_eq!(cat.xattr(snap, f.id, b"user.k").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(
        cat.xattr(cat.live(), f.id, b"user.k").unwrap(),
        Some(b"v2".to_vec())
    );
    assert_eq!(cat.extents(snap, f.id, 0, 100).unwrap().len(), 1);
    let live = cat.extents(cat.live(), f.id, 0, 100).unwrap();
    assert_eq!(
        live,
        vec![
            Extent {
                offset: 0,
                length: 10,
                chunk: chunk(1),
                chunk_offset: 0
            },
            Extent {
                offset: 20,
                length: 80,
                chunk: chunk(1),
                chunk_offset: 20
            },
        ]
    );
    let gens = cat.generations().unwrap();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[0].name.as_deref(), Some("@s1"));
    assert_eq!(gens[0].label.as_deref(), Some("first"));
    assert_eq!(gens[1].frozen_ns, None);
    // one row for the snapshot's extent, two trimmed rows for the live one
    assert_eq!(cat.chunk(&chunk(1)).unwrap().unwrap().refs, 3);
}

#[test]
fn freezing_under_a_taken_name_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    cat.freeze("@x", None, 1).unwrap();
    assert!(matches!(cat.freeze("@x", None, 2), Err(Error::Exists(_))));
    assert_eq!(cat.generations().unwrap().len(), 2);
    assert_eq!(cat.live(), GenId(2));
}

#[test]
fn snapshots_of_one_second_are_numbered_and_a_forgotten_number_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("c.db"));
    let second = 1_800_000_000_000_000_000;
    let names: Vec<String> = (0..4)
        .map(|i| cat.snapshot_committed(None, second + i).unwrap().name.unwrap())
        .collect();
    let base = snapshot_name(second);
    assert_eq!(
        names,
        [
            base.clone(),
            format!("{base}-2"),
            format!("{base}-3"),
            format!("{base}-4")
        ]
    );
    let third = cat.find_snapshot(&names[2]).unwrap().unwrap();
    assert_eq!(third.name.as_deref(), Some(names[2].as_str()));
    cat.forget(third.id).unwrap();
    assert!(cat.find_snapshot(&names[2]).unwrap().is_none());
    // Three of that second are left: the next is "-5", not the free "-3" nor the
    // taken "-4".
    let next = cat.snapshot_committed(None, second + 9).unwrap();
    assert_eq!(next.name.unwrap(), format!("{base}-5"));
    // The next second starts again without a number.
    let later = cat.snapshot_committed(None, second + 1_000_000_000).unwrap();
    assert_eq!(later.name.unwrap(), snapshot_name(second + 1_000_000_000));
}

#[test]
fn the_listing_query_is_compiled_once_not_at_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("c.db"));
    let live = cat.live();
    let txn = cat.write().unwrap();
    for i in 0..5u8 {
        let f = txn.create_inode(&file(FileKind::File)).unwrap();
        txn.link(InodeId::ROOT, format!("f{i}").as_bytes(), f.id).unwrap();
    }
    txn.commit().unwrap();
    let mut after = 0;
    for _ in 0..4 {
        let page = listing::page_with_attrs(&cat.conn, live, InodeId::ROOT, after, 2).unwrap();
        after = page.last().map_or(0, |(e, _)| e.cookie);
    }
    let stmt = cat.conn.prepare_cached(&listing::page_with_attrs_sql()).unwrap();
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 4);
    assert_eq!(
        stmt.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "SQLite compiled the listing query again for a page"
    );
}

#[test]
fn link_counts_follow_links_folders_and_renames() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    let tx = cat.write().unwrap();
    let d1 = tx.create_inode(&file(FileKind::Dir)).unwrap().id;
    let d2 = tx.create_inode(&file(FileKind::Dir)).unwrap().id;
    tx.link(InodeId::ROOT, b"d1", d1).unwrap();
    tx.link(InodeId::ROOT, b"d2", d2).unwrap();
    let f = tx.create_inode(&file(FileKind::File)).unwrap().id;
    tx.link(d1, b"f", f).unwrap();
    tx.link(d2, b"g", f).unwrap();
    assert_eq!(tx.expect_inode(f).unwrap().nlink, 2);
    assert_eq!(tx.expect_inode(InodeId::ROOT).unwrap().nlink, 4);
    assert_eq!(tx.expect_inode(d1).unwrap().nlink, 2);
    let sub = tx.create_inode(&file(FileKind::Dir)).unwrap().id;
    tx.link(d1, b"sub", sub).unwrap();
    assert_eq!(tx.expect_inode(d1).unwrap().nlink, 3);
    tx.rename(d1, b"sub", d2, b"sub").unwrap();
    assert_eq!(tx.expect_inode(d1).unwrap().nlink, 2);
    assert_eq!(tx.expect_inode(d2).unwrap().nlink, 3);
    let after = tx.unlink(d1, b"f").unwrap();
    assert_eq!(after.nlink, 1);
    assert!(matches!(tx.link(d2, b"g", f), Err(Error::Exists(_))));
    assert!(matches!(tx.unlink(d1, b"missing"), Err(Error::NotFound(_))));
    assert!(matches!(tx.link(d2, &[b'x'; 256], f), Err(Error::NameTooLong)));
    assert!(matches!(tx.link(d2, b"a/b", f), Err(Error::InvalidArgument(_))));
    tx.commit().unwrap();
}

#[test]
fn unlink_or_remove_removes_a_nameless_inode_at_once_or_writes_its_last_link_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    let (always, never) = (|_: &InodeAttr| true, |_: &InodeAttr| false);
    let tx = cat.write().unwrap();
    let names = [&b"seen"[..], b"twice", b"kept", b"folder"];
    let mut ids = Vec::new();
    for name in names {
        let kind = if name == b"folder" {
            FileKind::Dir
        } else {
            FileKind::File
        };
        ids.push(tx.create_linked(InodeId::ROOT, name, &file(kind)).unwrap().id);
    }
    tx.link(InodeId::ROOT, b"twice-too", ids[1]).unwrap();
    tx.commit().unwrap();
    // `seen` is in a snapshot: its row is ended, not deleted, and the snapshot keeps it.
    let snap = cat.freeze("@s", None, 10).unwrap();
    let live = cat.live();

    let tx = cat.write().unwrap();
    let seen = tx.unlink_or_remove(InodeId::ROOT, b"seen", 20, &always).unwrap();
    let fresh = tx
        .create_linked(InodeId::ROOT, b"new", &file(FileKind::File))
        .unwrap();
    let new = tx.unlink_or_remove(InodeId::ROOT, b"new", 20, &always).unwrap();
    let twice = tx.unlink_or_remove(InodeId::ROOT, b"twice", 20, &always).unwrap();
    let kept = tx.unlink_or_remove(InodeId::ROOT, b"kept", 20, &never).unwrap();
    let folder = tx.unlink_or_remove(InodeId::ROOT, b"folder", 20, &never).unwrap();
    tx.commit().unwrap();

    assert!(seen.removed && new.removed);
    assert_eq!(cat.inode(live, ids[0]).unwrap(), None);
    assert_eq!(cat.inode(snap, ids[0]).unwrap().map(|a| a.nlink), Some(1));
    assert_eq!(cat.inode(live, fresh.id).unwrap(), None);
    // Still named elsewhere: never removed, one link fewer, ctime `now`.
    assert!(!twice.removed);
    let twice_live = cat.inode(live, ids[1]).unwrap().unwrap();
    assert_eq!((twice_live.nlink, twice_live.ctime_ns), (1, 20));
    assert_eq!(twice.attr, twice_live);
    // Not removable now (an open handle): kept with no link (a folder: 0 too).
    assert!(!kept.removed && !folder.removed);
    assert_eq!(cat.inode(live, ids[2]).unwrap().map(|a| a.nlink), Some(0));
    assert_eq!(cat.inode(live, ids[3]).unwrap().map(|a| a.nlink), Some(0));
    assert_eq!(cat.inode(live, InodeId::ROOT).unwrap().unwrap().nlink, 2);
    assert!(cat.integrity_check().unwrap().is_empty());

    // The same for the name a rename replaces.
    let tx = cat.write().unwrap();
    let a = tx
        .create_linked(InodeId::ROOT, b"a", &file(FileKind::File))
        .unwrap()
        .id;
    let b = tx
        .create_linked(InodeId::ROOT, b"b", &file(FileKind::File))
        .unwrap()
        .id;
    let replaced = tx
        .rename_over((InodeId::ROOT, b"a"), (InodeId::ROOT, b"b"), 30, &always)
        .unwrap()
        .unwrap();
    tx.commit().unwrap();
    assert!(replaced.removed && replaced.attr.id == b);
    assert_eq!(cat.inode(live, b).unwrap(), None);
    assert_eq!(cat.lookup(live, InodeId::ROOT, b"b").unwrap(), Some(a));
}

#[test]
fn dropping_a_transaction_rolls_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    {
        let tx = cat.write().unwrap();
        let f = tx.create_inode(&file(FileKind::File)).unwrap();
        tx.link(InodeId::ROOT, b"gone", f.id).unwrap();
    }
    assert_eq!(cat.lookup(cat.live(), InodeId::ROOT, b"gone").unwrap(), None);
    assert!(cat.integrity_check().unwrap().is_empty());
}

#[test]
fn a_batch_notes_what_its_committed_changes_left_and_nothing_a_dropped_change_did() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    cat.set_batching(true).unwrap();
    let live = cat.live();
    let tx = cat.write().unwrap();
    let f = tx.create_inode(&file(FileKind::File)).unwrap();
    tx.link(InodeId::ROOT, b"kept", f.id).unwrap();
    let mut attr = tx.expect_inode(f.id).unwrap();
    attr.mode = 0o600;
    tx.set_inode(&attr).unwrap();
    tx.commit().unwrap();
    let committed = cat.inode(live, f.id).unwrap();
    {
        // Dropped: rolled back, so it leaves nothing.
        let tx = cat.write().unwrap();
        attr.mode = 0o400;
        tx.set_inode(&attr).unwrap();
        tx.unlink(InodeId::ROOT, b"kept").unwrap();
        let g = tx.create_inode(&file(FileKind::File)).unwrap();
        tx.link(InodeId::ROOT, b"dropped", g.id).unwrap();
    }
    let changed = cat.take_changed();
    // The ids of both, a superset …
    assert!(changed.inodes.contains(&f.id) && changed.dirs.contains(&InodeId::ROOT));
    // … and what the committed one left, in order: the last of each is the catalog's.
    assert_eq!(
        changed.left.names,
        vec![(InodeId::ROOT, b"kept".to_vec(), Some(f.id))]
    );
    assert!(changed.left.attrs.iter().all(|(id, _)| *id == f.id));
    assert_eq!(changed.left.attrs.last(), Some(&(f.id, committed.clone())));
    assert_eq!(committed.map(|a| (a.mode, a.nlink)), Some((0o600, 1)));

    // A removal leaves `None` for the inode and the name.
    let tx = cat.write().unwrap();
    tx.unlink(InodeId::ROOT, b"kept").unwrap();
    tx.remove_inode(f.id).unwrap();
    tx.commit().unwrap();
    let left = cat.take_changed().left;
    assert_eq!(left.names, vec![(InodeId::ROOT, b"kept".to_vec(), None)]);
    assert_eq!(left.attrs.last(), Some(&(f.id, None)));
    assert_eq!(cat.inode(live, f.id).unwrap(), None);

    // Once the batch is committed, what it left is dropped (the ids stay): a change
    // in a transaction of its own may follow, which notes nothing.
    let tx = cat.write().unwrap();
    tx.create_linked(InodeId::ROOT, b"late", &file(FileKind::File))
        .unwrap();
    tx.commit().unwrap();
    cat.commit_batch().unwrap();
    let changed = cat.take_changed();
    assert!(changed.dirs.contains(&InodeId::ROOT));
    assert_eq!(changed.left, Left::default());
}

#[test]
fn in_a_batch_a_dropped_change_rolls_back_alone_and_the_batch_commits_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let mut cat = new_catalog(&path);
    cat.set_batching(true).unwrap();
    let live = cat.live();
    for round in 0..3 {
        let kept = format!("kept{round}");
        let tx = cat.write().unwrap();
        let f = tx.create_inode(&file(FileKind::File)).unwrap();
        tx.link(InodeId::ROOT, kept.as_bytes(), f.id).unwrap();
        tx.commit().unwrap();
        {
            let tx = cat.write().unwrap();
            let g = tx.create_inode(&file(FileKind::File)).unwrap();
            tx.link(InodeId::ROOT, b"dropped", g.id).unwrap();
        }
        // A change that fails inside its savepoint leaves the batch usable.
        let tx = cat.write().unwrap();
        assert!(matches!(
            tx.link(InodeId::ROOT, kept.as_bytes(), f.id),
            Err(Error::Exists(_))
        ));
        drop(tx);
        assert!(cat.batch_open());
        assert!(cat
            .lookup(live, InodeId::ROOT, kept.as_bytes())
            .unwrap()
            .is_some());
        assert_eq!(cat.lookup(live, InodeId::ROOT, b"dropped").unwrap(), None);
        cat.commit_batch().unwrap();
        assert!(!cat.batch_open());
    }
    cat.set_batching(false).unwrap();
    drop(cat);
    // What the batches committed is on disk; the dropped changes are not.
    let cat = Catalog::open(&path).unwrap();
    for round in 0..3 {
        let kept = format!("kept{round}");
        assert!(cat
            .lookup(live, InodeId::ROOT, kept.as_bytes())
            .unwrap()
            .is_some());
    }
    assert_eq!(cat.lookup(live, InodeId::ROOT, b"dropped").unwrap(), None);
    assert!(cat.integrity_check().unwrap().is_empty());
}
#[test]
fn garbage_table_collects_unreferenced_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    let tx = cat.write().unwrap();
    tx.add_chunk(&chunk(3), 10, 10, place(1, 0, 100)).unwrap();
    let f = tx.create_inode(&file(FileKind::File)).unwrap().id;
    tx.link(InodeId::ROOT, b"f", f).unwrap();
    tx.set_extents(
        f,
        0,
        10,
        &[Extent {
            offset: 0,
            length: 10,
            chunk: chunk(3),
            chunk_offset: 0,
        }],
    )
    .unwrap();
    tx.set_extents(f, 0, 10, &[]).unwrap();
    tx.commit().unwrap();
    let n: i64 = cat
        .conn
        .query_row("SELECT count(*) FROM chunk_garbage", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(cat.chunk(&chunk(3)).unwrap().unwrap().refs, 0);
}

#[test]
fn a_chunk_recorded_but_never_referenced_is_garbage_and_a_referenced_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    let tx = cat.write().unwrap();
    tx.add_chunk(&chunk(4), 10, 10, place(1, 0, 100)).unwrap();
    tx.add_chunk(&chunk(5), 10, 10, place(1, 0, 100)).unwrap();
    let f = tx.create_inode(&file(FileKind::File)).unwrap().id;
    tx.link(InodeId::ROOT, b"f", f).unwrap();
    tx.set_extents(
        f,
        0,
        10,
        &[Extent {
            offset: 0,
            length: 10,
            chunk: chunk(5),
            chunk_offset: 0,
        }],
    )
    .unwrap();
    tx.commit().unwrap();
    let garbage: Vec<ChunkId> = cat.garbage().unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(garbage, vec![chunk(4)]);
}

// ---------------------------------------------------------------------------------
// Property test: the catalog against a model of every generation.

#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelInode {
    kind: FileKind,
    mode: u32,
    size: u64,
    nlink: u32,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// byte offset -> (chunk number, offset in chunk)
    bytes: BTreeMap<u64, (u8, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    inodes: BTreeMap<i64, ModelInode>,
    entries: BTreeMap<(i64, Vec<u8>), i64>,
}

impl Model {
    fn dirs(&self) -> Vec<i64> {
        self.inodes
            .iter()
            .filter(|(_, i)| i.kind == FileKind::Dir)
            .map(|(id, _)| *id)
            .collect()
    }
    fn files(&self) -> Vec<i64> {
        self.inodes
            .iter()
            .filter(|(_, i)| i.kind == FileKind::File)
            .map(|(id, _)| *id)
            .collect()
    }
    fn is_empty_dir(&self, id: i64) -> bool {
        !self.entries.keys().any(|(p, _)| *p == id)
    }
    fn is_ancestor(&self, anc: i64, mut id: i64) -> bool {
        loop {
            if id == anc {
                return true;
            }
            match self
                .entries
                .iter()
                .find(|(_, v)| **v == id && self.inodes[v].kind == FileKind::Dir)
            {
                Some(((p, _), _)) => id = *p,
                None => return false,
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        dir: usize,
        name: u8,
        kind: u8,
    },
    Link {
        file: usize,
        dir: usize,
        name: u8,
    },
    Unlink {
        entry: usize,
    },
    Rename {
        entry: usize,
        dir: usize,
        name: u8,
    },
    Chmod {
        any: usize,
        mode: u32,
    },
    Write {
        file: usize,
        start: u64,
        len: u64,
        chunk: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    SetXattr {
        any: usize,
        name: u8,
        value: u8,
    },
    RemoveXattr {
        any: usize,
        name: u8,
    },
    Freeze,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..6, 0u8..3).prop_map(|(dir, name, kind)| Op::Create { dir, name, kind }),
        1 => (any::<usize>(), any::<usize>(), 0u8..6).prop_map(|(file, dir, name)| Op::Link { file, dir, name }),
        2 => any::<usize>().prop_map(|entry| Op::Unlink { entry }),
        2 => (any::<usize>(), any::<usize>(), 0u8..6).prop_map(|(entry, dir, name)| Op::Rename { entry, dir, name }),
        1 => (any::<usize>(), 0u32..0o7777).prop_map(|(any, mode)| Op::Chmod { any, mode }),
        5 => (any::<usize>(), 0..FILE_SPAN, 1..3000u64, 0u8..4).prop_map(|(file, start, len, chunk)| Op::Write { file, start, len, chunk }),
        1 => (any::<usize>(), 0..FILE_SPAN).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (any::<usize>(), 0u8..3, any::<u8>()).prop_map(|(any, name, value)| Op::SetXattr { any, name, value }),
        1 => (any::<usize>(), 0u8..3).prop_map(|(any, name)| Op::RemoveXattr { any, name }),
        1 => Just(Op::Freeze),
        1 => Just(Op::Reopen),
    ]
}

fn pick<T: Clone>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()].clone())
}

/// Applies `op` to both; returns false when the op does not apply to this state.
fn apply(cat: &mut Catalog, model: &mut Model, op: &Op) {
    let name_of = |n: u8| vec![b'a' + n];
    match op.clone() {
        Op::Create { dir, name, kind } => {
            let Some(dir) = pick(&model.dirs(), dir) else {
                return;
            };
            let name = name_of(name);
            if model.entries.contains_key(&(dir, name.clone())) {
                return;
            }
            let kind = [FileKind::File, FileKind::Dir, FileKind::Symlink][kind as usize];
            let tx = cat.write().unwrap();
            let attr = tx.create_inode(&file(kind)).unwrap();
            tx.link(InodeId(dir), &name, attr.id).unwrap();
            tx.commit().unwrap();
            let size = if kind == FileKind::Symlink { 6 } else { 0 };
            model.inodes.insert(
                attr.id.0,
                ModelInode {
                    kind,
                    mode: 0o644,
                    size,
                    nlink: 1,
                    xattrs: BTreeMap::new(),
                    bytes: BTreeMap::new(),
                },
            );
            if kind == FileKind::Dir {
                model.inodes.get_mut(&attr.id.0).unwrap().nlink = 2;
                model.inodes.get_mut(&dir).unwrap().nlink += 1;
            }
            model.entries.insert((dir, name), attr.id.0);
        }
        Op::Link { file, dir, name } => {
            let (Some(file), Some(dir)) = (pick(&model.files(), file), pick(&model.dirs(), dir)) else {
                return;
            };
            let name = name_of(name);
            if model.entries.contains_key(&(dir, name.clone())) {
                return;
            }
            let tx = cat.write().unwrap();
            tx.link(InodeId(dir), &name, InodeId(file)).unwrap();
            tx.commit().unwrap();
            model.inodes.get_mut(&file).unwrap().nlink += 1;
            model.entries.insert((dir, name), file);
        }
        Op::Unlink { entry } => {
            let keys: Vec<_> = model.entries.keys().cloned().collect();
            let Some((parent, name)) = pick(&keys, entry) else {
                return;
            };
            let target = model.entries[&(parent, name.clone())];
            let kind = model.inodes[&target].kind;
            if kind == FileKind::Dir && !model.is_empty_dir(target) {
                return;
            }
            let tx = cat.write().unwrap();
            let after = tx.unlink(InodeId(parent), &name).unwrap();
            let gone = after.nlink == 0 || (kind == FileKind::Dir && after.nlink == 1);
            if gone {
                tx.remove_inode(after.id).unwrap();
            }
            tx.commit().unwrap();
            model.entries.remove(&(parent, name));
            if kind == FileKind::Dir {
                model.inodes.get_mut(&parent).unwrap().nlink -= 1;
            }
            if gone {
                model.inodes.remove(&target);
            } else {
                model.inodes.get_mut(&target).unwrap().nlink -= 1;
            }
        }
        Op::Rename { entry, dir, name } => {
            let keys: Vec<_> = model.entries.keys().cloned().collect();
            let (Some((from_p, from_n)), Some(to_p)) = (pick(&keys, entry), pick(&model.dirs(), dir)) else {
                return;
            };
            let to_n = name_of(name);
            let moving = model.entries[&(from_p, from_n.clone())];
            let moving_dir = model.inodes[&moving].kind == FileKind::Dir;
            if (from_p, from_n.clone()) == (to_p, to_n.clone())
                || (moving_dir && model.is_ancestor(moving, to_p))
            {
                return;
            }
            // Only replace a plain file, and only by a non-folder (POSIX checks are the fs core's).
            if let Some(&old) = model.entries.get(&(to_p, to_n.clone())) {
                if model.inodes[&old].kind == FileKind::Dir || moving_dir || old == moving {
                    return;
                }
            }
            let tx = cat.write().unwrap();
            let replaced = tx.rename(InodeId(from_p), &from_n, InodeId(to_p), &to_n).unwrap();
            if let Some(r) = &replaced {
                if r.nlink == 0 {
                    tx.remove_inode(r.id).unwrap();
                }
            }
            tx.commit().unwrap();
            if let Some(old) = model.entries.remove(&(to_p, to_n.clone())) {
                let m = model.inodes.get_mut(&old).unwrap();
                m.nlink -= 1;
                if m.nlink == 0 {
                    model.inodes.remove(&old);
                }
            }
            model.entries.remove(&(from_p, from_n));
            model.entries.insert((to_p, to_n), moving);
            if moving_dir && from_p != to_p {
                model.inodes.get_mut(&from_p).unwrap().nlink -= 1;
                model.inodes.get_mut(&to_p).unwrap().nlink += 1;
            }
        }
        Op::Chmod { any, mode } => {
            let ids: Vec<i64> = model.inodes.keys().cloned().collect();
            let Some(id) = pick(&ids, any) else { return };
            let tx = cat.write().unwrap();
            let attr = tx.expect_inode(InodeId(id)).unwrap();
            tx.set_inode(&InodeAttr { mode, ..attr }).unwrap();
            tx.commit().unwrap();
            model.inodes.get_mut(&id).unwrap().mode = mode;
        }
        Op::Write {
            file,
            start,
            len,
            chunk: c,
        } => {
            let Some(id) = pick(&model.files(), file) else {
                return;
            };
            let end = start + len;
            // Extents of at most MAX_EXTENT bytes, each from chunk c at the file offset.
            let mut new = Vec::new();
            let mut at = start;
            while at < end {
                let l = (end - at).min(MAX_EXTENT);
                new.push(Extent {
                    offset: at,
                    length: l,
                    chunk: chunk(c),
                    chunk_offset: at % 97,
                });
                at += l;
            }
            let tx = cat.write().unwrap();
            tx.add_chunk(&chunk(c), 1 << 20, 1 << 19, place(1, 0, 100))
                .unwrap();
            tx.set_extents(InodeId(id), start, end, &new).unwrap();
            let attr = tx.expect_inode(InodeId(id)).unwrap();
            tx.set_inode(&InodeAttr {
                size: attr.size.max(end),
                ..attr
            })
            .unwrap();
            tx.commit().unwrap();
            let m = model.inodes.get_mut(&id).unwrap();
            for e in &new {
                for b in 0..e.length {
                    m.bytes.insert(e.offset + b, (c, e.chunk_offset + b));
                }
            }
            m.size = m.size.max(end);
        }
        Op::Truncate { file, size } => {
            let Some(id) = pick(&model.files(), file) else {
                return;
            };
            let tx = cat.write().unwrap();
            tx.set_extents(InodeId(id), size, u64::MAX, &[]).unwrap();
            let attr = tx.expect_inode(InodeId(id)).unwrap();
            tx.set_inode(&InodeAttr { size, ..attr }).unwrap();
            tx.commit().unwrap();
            let m = model.inodes.get_mut(&id).unwrap();
            m.bytes.retain(|off, _| *off < size);
            m.size = size;
        }
        Op::SetXattr { any, name, value } => {
            let ids: Vec<i64> = model.inodes.keys().cloned().collect();
            let Some(id) = pick(&ids, any) else { return };
            let name = format!("user.{name}").into_bytes();
            let tx = cat.write().unwrap();
            tx.set_xattr(InodeId(id), &name, &[value]).unwrap();
            tx.commit().unwrap();
            model
                .inodes
                .get_mut(&id)
                .unwrap()
                .xattrs
                .insert(name, vec![value]);
        }
        Op::RemoveXattr { any, name } => {
            let ids: Vec<i64> = model.inodes.keys().cloned().collect();
            let Some(id) = pick(&ids, any) else { return };
            let name = format!("user.{name}").into_bytes();
            let tx = cat.write().unwrap();
            let result = tx.remove_xattr(InodeId(id), &name);
            tx.commit().unwrap();
            match model.inodes.get_mut(&id).unwrap().xattrs.remove(&name) {
                Some(_) => result.unwrap(),
                None => assert!(matches!(result, Err(Error::NoXattr))),
            }
        }
        Op::Freeze | Op::Reopen => unreachable!("handled by the driver"),
    }
}

/// Reads generation `gen` out of the catalog into a model, walking from the root.
fn observe(cat: &Catalog, gen: GenId) -> Model {
    let mut model = Model::default();
    let mut stack = vec![InodeId::ROOT];
    while let Some(id) = stack.pop() {
        if model.inodes.contains_key(&id.0) {
            continue;
        }
        let attr = cat.inode(gen, id).unwrap().expect("every named inode is visible");
        let mut bytes = BTreeMap::new();
        if attr.kind == FileKind::File {
            for e in cat.extents(gen, id, 0, u64::MAX).unwrap() {
                let c = (0u8..8).find(|c| chunk(*c) == e.chunk).unwrap();
                for b in 0..e.length {
                    bytes.insert(e.offset + b, (c, e.chunk_offset + b));
                }
            }
        }
        let xattrs = cat.xattrs(gen, id).unwrap().into_iter().collect();
        model.inodes.insert(
            id.0,
            ModelInode {
                kind: attr.kind,
                mode: attr.mode,
                size: attr.size,
                nlink: attr.nlink,
                xattrs,
                bytes,
            },
        );
        if attr.kind == FileKind::Dir {
            for entry in cat.readdir(gen, id).unwrap() {
                assert_eq!(cat.lookup(gen, id, &entry.name).unwrap(), Some(entry.inode));
                model.entries.insert((id.0, entry.name), entry.inode.0);
                stack.push(entry.inode);
            }
        }
    }
    model
}

fn root_model() -> Model {
    let mut model = Model::default();
    model.inodes.insert(
        1,
        ModelInode {
            kind: FileKind::Dir,
            mode: 0o755,
            size: 0,
            nlink: 2,
            xattrs: BTreeMap::new(),
            bytes: BTreeMap::new(),
        },
    );
    model
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_generation_answers_as_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let mut cat = new_catalog(&path);
        let mut model = root_model();
        let mut frozen: Vec<(GenId, Model)> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Freeze => {
                    let gen = cat.freeze(&format!("@g{step}"), None, step as i64).unwrap();
                    frozen.push((gen, model.clone()));
                }
                Op::Reopen => {
                    drop(cat);
                    cat = Catalog::open(&path).unwrap();
                }
                op => apply(&mut cat, &mut model, op),
            }
            prop_assert_eq!(&observe(&cat, cat.live()), &model, "live view after step {} ({:?})", step, op);
            for (gen, expected) in &frozen {
                prop_assert_eq!(&observe(&cat, *gen), expected, "generation {} after step {}", gen, step);
            }
        }
        prop_assert!(cat.integrity_check().unwrap().is_empty());
    }
}

/// A place: `len` bytes at `offset` of pack `pack`.
fn place(pack: u64, offset: u64, len: u32) -> crate::types::Location {
    crate::types::Location {
        pack: crate::types::PackId(pack),
        offset,
        len,
    }
}

#[test]
fn packs_count_their_live_bytes_as_chunks_come_go_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    let tx = cat.write().unwrap();
    for i in 0..4u8 {
        tx.add_chunk(
            &chunk(i),
            10,
            10,
            place(1 + u64::from(i / 2), 48 + 100 * u64::from(i % 2), 100),
        )
        .unwrap();
    }
    // A chunk stored again (a write racing a dedup) keeps its first place.
    tx.add_chunk(&chunk(0), 10, 10, place(9, 48, 100)).unwrap();
    tx.commit().unwrap();
    let counts = |cat: &Catalog| -> Vec<(u64, u64, u64)> {
        cat.packs()
            .unwrap()
            .iter()
            .map(|p| (p.id.0, p.bytes, p.live_bytes))
            .collect()
    };
    assert_eq!(counts(&cat), [(1, 200, 200), (2, 200, 200)]);
    assert_eq!(
        cat.chunk(&chunk(0)).unwrap().unwrap().location,
        Some(place(1, 48, 100))
    );
    assert_eq!(cat.next_pack_id().unwrap().0, 3);
    // gc drops both chunks of pack 1: it is dead, pack 2 is not.
    cat.drop_chunks(&[chunk(0), chunk(1)]).unwrap();
    assert_eq!(counts(&cat), [(1, 200, 0), (2, 200, 200)]);
    assert_eq!(cat.dead_packs().unwrap(), [crate::types::PackId(1)]);
    // Compaction moves pack 2's chunks to pack 3: 2 is dead then, and its row goes.
    let moved = cat
        .set_locations(
            &[
                (chunk(2), place(3, 48, 100)),
                (chunk(3), place(3, 148, 100)),
                (chunk(7), place(3, 248, 1)),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(moved, 2, "a chunk the catalog does not have is skipped");
    assert_eq!(counts(&cat), [(1, 200, 0), (2, 200, 0), (3, 200, 200)]);
    cat.drop_pack_rows(&[crate::types::PackId(1), crate::types::PackId(2)])
        .unwrap();
    assert_eq!(counts(&cat), [(3, 200, 200)]);
    assert!(
        cat.drop_pack_rows(&[crate::types::PackId(3)]).is_err(),
        "pack 3 is named"
    );
    let placed: Vec<_> = cat
        .chunks_by_place(None, 10)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(placed, [chunk(2), chunk(3)]);
    assert_eq!(
        cat.chunks_by_place(Some(place(3, 48, 0)), 10).unwrap()[0].id,
        chunk(3)
    );
    assert!(cat.check_invariants().unwrap().is_empty());
}

#[test]
fn a_linked_create_reads_back_as_a_create_and_a_link_would() {
    let dir = tempfile::tempdir().unwrap();
    let mut cat = new_catalog(&dir.path().join("catalog.db"));
    let tx = cat.write().unwrap();
    let root_links = tx.expect_inode(InodeId::ROOT).unwrap().nlink;
    let sub = tx
        .create_linked(InodeId::ROOT, b"sub", &file(FileKind::Dir))
        .unwrap();
    let f = tx.create_linked(sub.id, b"f", &file(FileKind::File)).unwrap();
    // What it returns is what the catalog holds: a file has one name, a folder two
    // (its own "." too), and the new folder's ".." counts in its parent.
    assert_eq!(tx.expect_inode(sub.id).unwrap(), sub);
    assert_eq!(tx.expect_inode(f.id).unwrap(), f);
    assert_eq!((f.nlink, sub.nlink), (1, 2));
    assert_eq!(tx.expect_inode(InodeId::ROOT).unwrap().nlink, root_links + 1);
    assert_eq!(tx.lookup(sub.id, b"f").unwrap(), Some(f.id));
    assert_ne!(f.id, sub.id);
    // A name that is taken, or not a name, is refused and changes nothing.
    assert!(matches!(
        tx.create_linked(sub.id, b"f", &file(FileKind::File)),
        Err(Error::Exists(_))
    ));
    assert!(tx.create_linked(sub.id, b"a/b", &file(FileKind::File)).is_err());
    assert_eq!(tx.readdir(sub.id).unwrap().len(), 1);
    assert_eq!(tx.expect_inode(sub.id).unwrap(), sub);
}
