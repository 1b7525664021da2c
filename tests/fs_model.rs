//! Property test of the filesystem core against a model: random file operations
//! interleaved with snapshot, rollback, forget, gc and reopen. After every step the
//! live tree equals the model, and every retained snapshot reads exactly as it did
//! when it was taken.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use snapfs::catalog::FileKind;
use snapfs::fs::{Caller, Fs, FsOptions, RenameMode, SetAttr, SnapDir};
use snapfs::ops::snapshots;
use snapfs::repo::{InitOptions, Repo, RepoLock};
use snapfs::types::{Ino, InodeId};

const ME: Caller = Caller { uid: 0, gid: 0 };

/// path -> None for a folder, Some(bytes) for a file.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

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
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0u16..40_000, 1u16..30_000, any::<u8>()).prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        1 => (0u8..6, 0u16..50_000).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (0u8..2).prop_map(|dir| Op::Mkdir { dir }),
        2 => (0u8..6, 0u8..6).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => (0u8..6).prop_map(|file| Op::Unlink { file }),
        2 => Just(Op::Snapshot),
        1 => any::<u8>().prop_map(|pick| Op::Rollback { pick }),
        1 => (any::<u8>(), 0u8..2).prop_map(|(pick, dir)| Op::RollbackDir { pick, dir }),
        1 => any::<u8>().prop_map(|pick| Op::Forget { pick }),
        1 => Just(Op::Gc),
        1 => Just(Op::Reopen),
    ]
}

/// File i lives at "f{i}" in the root, or in "d{i%2}" when that folder exists.
fn file_path(tree: &Tree, i: u8) -> String {
    let dir = format!("d{}", i % 2);
    if tree.get(&dir) == Some(&None) {
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

fn apply(fs: &Fs, model: &mut Tree, op: &Op) {
    match *op {
        Op::Write {
            file,
            offset,
            len,
            seed,
        } => {
            let path = file_path(model, file);
            let (parent, name) = parent_and_name(&path);
            let ino = match resolve(fs, Ino::ROOT, &path) {
                Some(ino) => fs.live_id(ino).unwrap(),
                None => {
                    let dir = live_dir(fs, parent);
                    fs.create(ME, dir, name.as_bytes(), FileKind::File, 0o644, 0, b"")
                        .unwrap()
                        .id
                }
            };
            let data = bytes(seed, len as usize);
            fs.write(ino, offset as u64, &data).unwrap();
            let content = model.entry(path).or_insert(Some(Vec::new())).as_mut().unwrap();
            let end = offset as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[offset as usize..end].copy_from_slice(&data);
        }
        Op::Truncate { file, size } => {
            let path = file_path(model, file);
            let Some(ino) = resolve(fs, Ino::ROOT, &path) else {
                return;
            };
            fs.setattr(
                fs.live_id(ino).unwrap(),
                &SetAttr {
                    size: Some(size as u64),
                    ..Default::default()
                },
            )
            .unwrap();
            model
                .get_mut(&path)
                .unwrap()
                .as_mut()
                .unwrap()
                .resize(size as usize, 0);
        }
        Op::Mkdir { dir } => {
            let name = format!("d{dir}");
            if model.contains_key(&name) {
                return;
            }
            fs.create(ME, InodeId::ROOT, name.as_bytes(), FileKind::Dir, 0o755, 0, b"")
                .unwrap();
            model.insert(name, None);
        }
        Op::Rename { from, to } => {
            let (a, b) = (file_path(model, from), file_path(model, to));
            if a == b || !model.contains_key(&a) {
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
            let content = model.remove(&a).unwrap();
            model.insert(b, content);
        }
        Op::Unlink { file } => {
            let path = file_path(model, file);
            if !model.contains_key(&path) {
                return;
            }
            let (p, n) = parent_and_name(&path);
            fs.unlink(live_dir(fs, p), n.as_bytes()).unwrap();
            model.remove(&path);
        }
        _ => unreachable!("repository-level ops are applied by the driver"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn snapshots_stay_exact_through_random_operations(ops in proptest::collection::vec(op(), 1..60)) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        drop(Repo::init(&repo, &InitOptions { chunk_sizes: Some((1024, 4096, 16384)), ..Default::default() }, 1).unwrap());
        let (fs0, mut lock) = open(&repo);
        let mut fs = Arc::new(fs0);
        let mut model = Tree::new();
        let mut snaps: Vec<(String, Tree)> = Vec::new();
        let _ = &lock;
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Snapshot => {
                    let g = fs.snapshot(None).unwrap();
                    snaps.push((g.name.unwrap(), model.clone()));
                }
                Op::Rollback { pick } => {
                    if snaps.is_empty() { continue; }
                    let (name, tree) = snaps[*pick as usize % snaps.len()].clone();
                    let report = fs.with_catalog(|cat, _, _| snapshots::rollback(cat, &name, None, false, step as i64 * 1_000_000_000 + 7, &[])).unwrap();
                    snaps.push((report.safety_snapshot.unwrap(), model.clone()));
                    model = tree;
                }
                Op::RollbackDir { pick, dir } => {
                    if snaps.is_empty() { continue; }
                    let (name, tree) = snaps[*pick as usize % snaps.len()].clone();
                    let prefix = format!("d{dir}");
                    let result = fs.with_catalog(|cat, _, _| {
                        snapshots::rollback(cat, &name, Some(&prefix), false, step as i64 * 1_000_000_000 + 9, &[])
                    });
                    match result {
                        Ok(report) => {
                            prop_assert!(tree.contains_key(&prefix), "{} rolled back though {} lacks it", prefix, name);
                            snaps.push((report.safety_snapshot.unwrap(), model.clone()));
                            let inside = |k: &String| *k == prefix || k.starts_with(&format!("{prefix}/"));
                            model.retain(|k, _| !inside(k));
                            model.extend(tree.iter().filter(|(k, _)| inside(k)).map(|(k, v)| (k.clone(), v.clone())));
                        }
                        Err(e) => {
                            let text = e.to_string();
                            let expected = (!tree.contains_key(&prefix) && text.contains("did not exist"))
                                || text.contains("moved or linked across");
                            prop_assert!(expected, "rollback of {} to {}: {}", prefix, name, text);
                        }
                    }
                }
                Op::Forget { pick } => {
                    if snaps.is_empty() { continue; }
                    let (name, _) = snaps.remove(*pick as usize % snaps.len());
                    fs.with_catalog(|cat, _, _| snapshots::forget(cat, &snapshots::ForgetTarget::Names(vec![name]), false, 0)).unwrap();
                }
                Op::Gc => { fs.with_catalog(|cat, store, _| snapshots::gc(cat, store, false, false)).unwrap(); }
                Op::Reopen => {
                    fs.fsync(None).unwrap();
                    drop(fs);
                    drop(lock);
                    let (fs1, lock1) = open(&repo);
                    fs = Arc::new(fs1);
                    lock = lock1;
                }
                op => apply(&fs, &mut model, op),
            }
            prop_assert_eq!(&observe(&fs, Ino::ROOT), &model, "live tree after step {} {:?}", step, op);
            for (name, tree) in &snaps {
                let root = fs.lookup_node(Ino::ROOT, name.as_bytes()).unwrap().ino;
                prop_assert_eq!(&observe(&fs, root), tree, "{} after step {} {:?}", name, step, op);
            }
        }
        let problems = fs.with_catalog(|cat, _, _| cat.check_invariants()).unwrap();
        prop_assert!(problems.is_empty(), "catalog invariants: {:?}", problems);
    }
}
