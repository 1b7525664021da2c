//! Property test of the filesystem core against a model: random file operations,
//! through names and through open handles, interleaved with snapshot, rollback,
//! forget, gc and reopen. After every step the live tree equals the model, every
//! open handle reads what POSIX says it reads (a handle follows its file, not its
//! name: through renames, unlink, being replaced, and rollbacks), a file whose last
//! name and last handle are gone is gone, and every retained snapshot reads exactly
//! as it did when it was taken.
//!
//! Cases: 256 by default; `SNAPFS_MODEL_CASES=5000` for the longer run the README
//! reports.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use snapfs::catalog::FileKind;
use snapfs::fs::{Caller, Fs, FsOptions, RenameMode, SetAttr, SnapDir};
use snapfs::ops::snapshots;
use snapfs::repo::{InitOptions, Repo, RepoLock};
use snapfs::types::{Ino, InodeId};

const ME: Caller = Caller { uid: 0, gid: 0 };

/// path -> None for a folder, Some(bytes) for a file: what a view shows.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// path -> None for a folder, Some(file) for a file: the names of the live tree.
type Names = BTreeMap<String, Option<InodeId>>;

#[derive(Clone, Debug)]
enum Op {
    Write {
        file: u8,
        offset: u16,
        len: u16,
        seed: u8,
    },
    Truncate {
        file: u8,
        size: u16,
    },
    Mkdir {
        dir: u8,
    },
    Rename {
        from: u8,
        to: u8,
    },
    Unlink {
        file: u8,
    },
    Open {
        file: u8,
    },
    HandleWrite {
        handle: u8,
        offset: u16,
        len: u16,
        seed: u8,
    },
    HandleTruncate {
        handle: u8,
        size: u16,
    },
    Close {
        handle: u8,
    },
    Snapshot,
    Rollback {
        pick: u8,
    },
    RollbackDir {
        pick: u8,
        dir: u8,
    },
    Forget {
        pick: u8,
    },
    Gc,
    /// Remount: with `release`, the handles are closed first (an unmount); without,
    /// the core goes away with files open (a killed daemon).
    Reopen {
        release: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0u16..40_000, 1u16..30_000, any::<u8>()).prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        1 => (0u8..6, 0u16..50_000).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (0u8..2).prop_map(|dir| Op::Mkdir { dir }),
        2 => (0u8..6, 0u8..6).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => (0u8..6).prop_map(|file| Op::Unlink { file }),
        3 => (0u8..6).prop_map(|file| Op::Open { file }),
        3 => (any::<u8>(), 0u16..40_000, 1u16..20_000, any::<u8>()).prop_map(|(handle, offset, len, seed)| Op::HandleWrite { handle, offset, len, seed }),
        1 => (any::<u8>(), 0u16..50_000).prop_map(|(handle, size)| Op::HandleTruncate { handle, size }),
        2 => any::<u8>().prop_map(|handle| Op::Close { handle }),
        2 => Just(Op::Snapshot),
        1 => any::<u8>().prop_map(|pick| Op::Rollback { pick }),
        1 => (any::<u8>(), 0u8..2).prop_map(|(pick, dir)| Op::RollbackDir { pick, dir }),
        1 => any::<u8>().prop_map(|pick| Op::Forget { pick }),
        1 => Just(Op::Gc),
        1 => any::<bool>().prop_map(|release| Op::Reopen { release }),
    ]
}

/// What POSIX says the live tree and the open files are.
#[derive(Clone, Debug, Default)]
struct Model {
    names: Names,
    /// Every file that has a name or an open handle, by inode, with its bytes.
    files: HashMap<InodeId, Vec<u8>>,
    /// Open handles, oldest first: the file each one is on.
    handles: Vec<InodeId>,
}

/// A snapshot as taken: its names and the bytes of each of its files.
#[derive(Clone, Debug)]
struct Snap {
    name: String,
    names: Names,
    files: HashMap<InodeId, Vec<u8>>,
}

impl Model {
    /// What the live tree shows.
    fn tree(&self) -> Tree {
        view(&self.names, &self.files)
    }

    fn snap(&self, name: String) -> Snap {
        let files = self
            .names
            .values()
            .flatten()
            .map(|id| (*id, self.files[id].clone()))
            .collect();
        Snap {
            name,
            names: self.names.clone(),
            files,
        }
    }

    fn named(&self, id: InodeId) -> bool {
        self.names.values().any(|v| *v == Some(id))
    }

    fn open(&self, id: InodeId) -> bool {
        self.handles.contains(&id)
    }

    /// Files with neither a name nor a handle are gone; returns them.
    fn collect_garbage(&mut self) -> Vec<InodeId> {
        let gone: Vec<InodeId> = self
            .files
            .keys()
            .copied()
            .filter(|id| !self.named(*id) && !self.open(*id))
            .collect();
        for id in &gone {
            self.files.remove(id);
        }
        gone
    }
}

fn view(names: &Names, files: &HashMap<InodeId, Vec<u8>>) -> Tree {
    names
        .iter()
        .map(|(p, v)| (p.clone(), v.map(|id| files[&id].clone())))
        .collect()
}

/// File i lives at "f{i}" in the root, or in "d{i%2}" when that folder exists.
fn file_path(names: &Names, i: u8) -> String {
    let dir = format!("d{}", i % 2);
    if names.get(&dir) == Some(&None) {
        format!("{dir}/f{i}")
    } else {
        format!("f{i}")
    }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut s = seed as u64 * 0x9E37_79B9 + 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn write_into(content: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset..end].copy_from_slice(data);
}

fn open(repo: &Path) -> (Fs, RepoLock) {
    let (catalog, store, lock) = Repo::open(repo, "test").unwrap().into_parts();
    (Fs::new(catalog, store, FsOptions::default()).unwrap(), lock)
}

fn resolve(fs: &Fs, root: Ino, path: &str) -> Option<Ino> {
    let mut at = root;
    for part in path.split('/') {
        at = fs.lookup_node(at, part.as_bytes()).ok()?.ino;
    }
    Some(at)
}

fn parent_and_name(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

fn live_dir(fs: &Fs, path: &str) -> InodeId {
    if path.is_empty() {
        InodeId::ROOT
    } else {
        fs.live_id(resolve(fs, Ino::ROOT, path).unwrap()).unwrap()
    }
}

/// Reads a whole view into a model.
fn observe(fs: &Fs, root: Ino) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![(String::new(), root)];
    while let Some((prefix, dir)) = stack.pop() {
        for (name, node) in fs.readdir_nodes(dir, SnapDir::Hidden).unwrap() {
            let path = format!("{prefix}{}", String::from_utf8(name).unwrap());
            match node.attr.kind {
                FileKind::Dir => {
                    tree.insert(path.clone(), None);
                    stack.push((format!("{path}/"), node.ino));
                }
                _ => {
                    let data = fs.read_node(node.ino, 0, node.attr.size as usize + 1).unwrap();
                    assert_eq!(data.len() as u64, node.attr.size, "{path}: size and bytes agree");
                    tree.insert(path, Some(data));
                }
            }
        }
    }
    tree
}

/// Applies a name or handle operation to the core and to the model.
fn apply(fs: &Fs, model: &mut Model, op: &Op) {
    match *op {
        Op::Write {
            file,
            offset,
            len,
            seed,
        } => {
            let path = file_path(&model.names, file);
            let (parent, name) = parent_and_name(&path);
            let id = match model.names.get(&path) {
                Some(Some(id)) => *id,
                _ => {
                    let dir = live_dir(fs, parent);
                    let id = fs
                        .create(ME, dir, name.as_bytes(), FileKind::File, 0o644, 0, b"")
                        .unwrap()
                        .id;
                    model.names.insert(path.clone(), Some(id));
                    model.files.insert(id, Vec::new());
                    id
                }
            };
            let data = bytes(seed, len as usize);
            fs.write(id, offset as u64, &data).unwrap();
            write_into(model.files.get_mut(&id).unwrap(), offset as usize, &data);
        }
        Op::Truncate { file, size } => {
            let path = file_path(&model.names, file);
            let Some(Some(id)) = model.names.get(&path).copied() else {
                return;
            };
            let ino = fs.live_id(resolve(fs, Ino::ROOT, &path).unwrap()).unwrap();
            assert_eq!(ino, id, "{path} names the file the model says");
            truncate(fs, model, id, size);
        }
        Op::Mkdir { dir } => {
            let name = format!("d{dir}");
            if model.names.contains_key(&name) {
                return;
            }
            fs.create(ME, InodeId::ROOT, name.as_bytes(), FileKind::Dir, 0o755, 0, b"")
                .unwrap();
            model.names.insert(name, None);
        }
        Op::Rename { from, to } => {
            let (a, b) = (file_path(&model.names, from), file_path(&model.names, to));
            if a == b || !model.names.contains_key(&a) {
                return;
            }
            let ((pa, na), (pb, nb)) = (parent_and_name(&a), parent_and_name(&b));
            fs.rename(
                live_dir(fs, pa),
                na.as_bytes(),
                live_dir(fs, pb),
                nb.as_bytes(),
                RenameMode::Replace,
            )
            .unwrap();
            let moved = model.names.remove(&a).unwrap();
            model.names.insert(b, moved);
        }
        Op::Unlink { file } => {
            let path = file_path(&model.names, file);
            if !model.names.contains_key(&path) {
                return;
            }
            let (p, n) = parent_and_name(&path);
            fs.unlink(live_dir(fs, p), n.as_bytes()).unwrap();
            model.names.remove(&path);
        }
        Op::Open { file } => {
            let path = file_path(&model.names, file);
            let Some(Some(id)) = model.names.get(&path).copied() else {
                return;
            };
            let attr = fs.open(id).unwrap();
            assert_eq!(attr.id, id);
            model.handles.push(id);
        }
        Op::HandleWrite {
            handle,
            offset,
            len,
            seed,
        } => {
            let Some(id) = pick(&model.handles, handle) else {
                return;
            };
            let data = bytes(seed, len as usize);
            fs.write(id, offset as u64, &data).unwrap();
            write_into(model.files.get_mut(&id).unwrap(), offset as usize, &data);
        }
        Op::HandleTruncate { handle, size } => {
            if let Some(id) = pick(&model.handles, handle) {
                truncate(fs, model, id, size);
            }
        }
        Op::Close { handle } => {
            if model.handles.is_empty() {
                return;
            }
            let id = model.handles.remove(handle as usize % model.handles.len());
            fs.release(id).unwrap();
        }
        _ => unreachable!("repository-level ops are applied by the driver"),
    }
}

fn pick(handles: &[InodeId], i: u8) -> Option<InodeId> {
    (!handles.is_empty()).then(|| handles[i as usize % handles.len()])
}

fn truncate(fs: &Fs, model: &mut Model, id: InodeId, size: u16) {
    fs.setattr(
        id,
        &SetAttr {
            size: Some(size as u64),
            ..Default::default()
        },
    )
    .unwrap();
    model.files.get_mut(&id).unwrap().resize(size as usize, 0);
}

/// Whole rollback: the names become the snapshot's, and each of its files (the same
/// inode, so an open handle on it follows) its bytes then. Files the snapshot lacks
/// lose their names; those still open live on until closed.
fn roll_back(model: &mut Model, snap: &Snap) {
    model.names = snap.names.clone();
    for (id, content) in &snap.files {
        model.files.insert(*id, content.clone());
    }
}

/// Rollback of folder `prefix` alone.
fn roll_back_dir(model: &mut Model, snap: &Snap, prefix: &str) {
    let inside = |k: &String| k == prefix || k.starts_with(&format!("{prefix}/"));
    model.names.retain(|k, _| !inside(k));
    for (k, v) in snap.names.iter().filter(|(k, _)| inside(k)) {
        model.names.insert(k.clone(), *v);
        if let Some(id) = v {
            model.files.insert(*id, snap.files[id].clone());
        }
    }
}

fn cases() -> u32 {
    std::env::var("SNAPFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn files_handles_and_snapshots_stay_exact_through_random_operations(ops in proptest::collection::vec(op(), 1..60)) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        drop(Repo::init(&repo, &InitOptions { chunk_sizes: Some((1024, 4096, 16384)), ..Default::default() }, 1).unwrap());
        let (fs0, mut lock) = open(&repo);
        let mut fs = Arc::new(fs0);
        let mut model = Model::default();
        let mut snaps: Vec<Snap> = Vec::new();
        let _ = &lock;
        for (step, op) in ops.iter().enumerate() {
            let known_before: Vec<InodeId> = model.files.keys().copied().collect();
            match op {
                Op::Snapshot => {
                    let g = fs.snapshot(None).unwrap();
                    snaps.push(model.snap(g.name.unwrap()));
                }
                Op::Rollback { pick } => {
                    if snaps.is_empty() { continue; }
                    let snap = snaps[*pick as usize % snaps.len()].clone();
                    let report = fs.with_catalog(|cat, _, open| snapshots::rollback(cat, &snap.name, None, false, step as i64 * 1_000_000_000 + 7, open)).unwrap();
                    snaps.push(model.snap(report.safety_snapshot.unwrap()));
                    roll_back(&mut model, &snap);
                }
                Op::RollbackDir { pick, dir } => {
                    if snaps.is_empty() { continue; }
                    let snap = snaps[*pick as usize % snaps.len()].clone();
                    let prefix = format!("d{dir}");
                    let result = fs.with_catalog(|cat, _, open| {
                        snapshots::rollback(cat, &snap.name, Some(&prefix), false, step as i64 * 1_000_000_000 + 9, open)
                    });
                    match result {
                        Ok(report) => {
                            prop_assert!(snap.names.contains_key(&prefix), "{} rolled back though {} lacks it", prefix, snap.name);
                            snaps.push(model.snap(report.safety_snapshot.unwrap()));
                            roll_back_dir(&mut model, &snap, &prefix);
                        }
                        Err(e) => {
                            let text = e.to_string();
                            let expected = (!snap.names.contains_key(&prefix) && text.contains("did not exist"))
                                || text.contains("moved or linked across");
                            prop_assert!(expected, "rollback of {} to {}: {}", prefix, snap.name, text);
                        }
                    }
                }
                Op::Forget { pick } => {
                    if snaps.is_empty() { continue; }
                    let snap = snaps.remove(*pick as usize % snaps.len());
                    fs.with_catalog(|cat, _, _| snapshots::forget(cat, &snapshots::ForgetTarget::Names(vec![snap.name]), false, 0)).unwrap();
                }
                Op::Gc => { snapfs::ops::gc::gc_mounted(&fs, false, false, &mut |_, _| {}).unwrap(); }
                Op::Reopen { release } => {
                    if *release {
                        for id in model.handles.drain(..) {
                            fs.release(id).unwrap();
                        }
                    }
                    fs.fsync(None).unwrap();
                    drop(fs);
                    drop(lock);
                    // Handles die with the core: the new one starts with none open.
                    model.handles.clear();
                    let (fs1, lock1) = open(&repo);
                    fs = Arc::new(fs1);
                    lock = lock1;
                }
                op => apply(&fs, &mut model, op),
            }
            // A file with no name and no handle left is gone, in the core too.
            for id in model.collect_garbage() {
                if known_before.contains(&id) {
                    prop_assert!(fs.getattr(id).is_err(), "inode {} outlived its last name and handle (step {} {:?})", id, step, op);
                }
            }
            prop_assert_eq!(&observe(&fs, Ino::ROOT), &model.tree(), "live tree after step {} {:?}", step, op);
            for id in &model.handles {
                let want = &model.files[id];
                let got = fs.read(*id, 0, want.len() + 1).unwrap();
                prop_assert!(&got == want, "handle on inode {} after step {} {:?}: {} bytes, model {}", id, step, op, got.len(), want.len());
            }
            for snap in &snaps {
                let root = fs.lookup_node(Ino::ROOT, snap.name.as_bytes()).unwrap().ino;
                prop_assert_eq!(&observe(&fs, root), &view(&snap.names, &snap.files), "{} after step {} {:?}", snap.name, step, op);
            }
        }
        for id in model.handles.drain(..) {
            fs.release(id).unwrap();
        }
        let problems = fs.with_catalog(|cat, _, _| cat.check_invariants()).unwrap();
        prop_assert!(problems.is_empty(), "catalog invariants: {:?}", problems);
        let unnamed = fs.with_catalog(|cat, _, _| cat.live_orphans()).unwrap();
        prop_assert!(unnamed.is_empty(), "files left with no name after every handle closed: {:?}", unnamed);
    }
}
