//! `snapfs list`'s figures are kept, not counted (the live tree's by triggers, a
//! snapshot's copied at freeze, a snapshot's own bytes from the rows that changed
//! around it). Here they are checked against a brute-force count on a real mount:
//! a tree of about 1,500 files, 50 snapshots with random changes between them, some
//! forgotten, some rolled back to, gc now and then; each snapshot's files and bytes
//! counted by walking its `@` folder, its own bytes by the whole-table query the
//! catalog used to run, and forget --dry-run, forget and gc agreeing to the byte.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::mount::*;
use common::*;

const FOLDERS: u64 = 30;
const FILES_PER_FOLDER: u64 = 50;
const SNAPSHOTS: usize = 50;

fn json(repo: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&snapfs_ok(repo, args)).unwrap()
}

/// Content for a file: mostly small, now and then a few chunks long, and often the
/// same bytes as another file (shared chunks are what makes "only here" subtle).
fn content(rng: &mut Rng) -> Vec<u8> {
    let seed = rng.below(400);
    let len = match rng.below(10) {
        0 => 300_000 + rng.below(200_000) as usize,
        1..=3 => rng.below(40_000) as usize,
        _ => rng.below(3_000) as usize,
    };
    random_bytes(seed * 1_000_003 + len as u64, len)
}

/// Every regular file below `dir`, by inode (hard links once): (files, bytes, inodes
/// of every kind, the root included). Snapshot folders (`@…` in the mount root) are
/// not part of the tree.
fn counted(dir: &Path) -> (u64, u64, u64) {
    let mut seen = HashSet::new();
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    seen.insert(fs::metadata(dir).unwrap().ino());
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if d == dir && entry.file_name().to_string_lossy().starts_with('@') {
                continue;
            }
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            if !seen.insert(meta.ino()) {
                continue;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes, seen.len() as u64)
}

/// What the catalog used to compute for "only here": every chunk snapshot `gen`
/// references that no other retained generation does, by a scan of all extents.
fn brute_exclusive(repo: &Path) -> BTreeMap<String, u64> {
    let conn = rusqlite::Connection::open_with_flags(
        repo.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT gen_id, name FROM generations WHERE frozen_ns IS NOT NULL")
        .unwrap();
    let gens: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    gens.into_iter()
        .map(|(gen, name)| {
            let bytes: i64 = conn
                .query_row(
                    "SELECT coalesce(sum(c.stored_size), 0) FROM chunks c
                     WHERE c.chunk_id IN (SELECT chunk_id FROM extents WHERE gen_from <= ?1 AND gen_to > ?1)
                       AND NOT EXISTS (
                           SELECT 1 FROM extents e JOIN generations g
                             ON g.gen_id >= e.gen_from AND g.gen_id < e.gen_to AND g.gen_id != ?1
                           WHERE e.chunk_id = c.chunk_id)",
                    [gen],
                    |r| r.get(0),
                )
                .unwrap();
            (name, bytes as u64)
        })
        .collect()
}

/// One random change to the live tree.
fn change(rng: &mut Rng, root: &Path, files: &mut Vec<PathBuf>, next: &mut u64) {
    // As in a home folder, a few files change again and again: their versions are
    // what snapshots hold alone.
    let pick = |rng: &mut Rng, files: &Vec<PathBuf>| {
        let among = if rng.chance(3, 4) {
            40.min(files.len())
        } else {
            files.len()
        };
        files[rng.below(among as u64) as usize].clone()
    };
    match rng.below(8) {
        0 | 1 => {
            let f = pick(rng, files);
            fs::write(&f, content(rng)).unwrap();
        }
        2 => {
            let f = pick(rng, files);
            let mut data = fs::read(&f).unwrap();
            data.extend(content(rng));
            fs::write(&f, data).unwrap();
        }
        3 => {
            let f = pick(rng, files);
            let len = fs::metadata(&f).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
        4 if files.len() > 100 => {
            let i = rng.below(files.len() as u64) as usize;
            fs::remove_file(files.swap_remove(i)).unwrap();
        }
        5 => {
            let i = rng.below(files.len() as u64) as usize;
            let to = root.join(format!("d{}/moved{next}", rng.below(FOLDERS)));
            *next += 1;
            fs::rename(&files[i], &to).unwrap();
            files[i] = to;
        }
        6 => {
            let f = pick(rng, files);
            let to = root.join(format!("d{}/link{next}", rng.below(FOLDERS)));
            *next += 1;
            fs::hard_link(&f, &to).unwrap();
            files.push(to);
        }
        _ => {
            let to = root.join(format!("d{}/new{next}", rng.below(FOLDERS)));
            *next += 1;
            fs::write(&to, content(rng)).unwrap();
            files.push(to);
        }
    }
}

/// The live tree's files as the mount shows them now (after a rollback).
fn live_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in 0..FOLDERS {
        for entry in fs::read_dir(root.join(format!("d{d}"))).unwrap() {
            out.push(entry.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn list_figures_equal_a_brute_force_count_through_changes_forgets_and_rollbacks() {
    require_fuse!();
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&repo, &mnt);
    let root = m.path("");
    let mut rng = Rng::new(0x5eed_0013);
    let mut files = Vec::new();
    for d in 0..FOLDERS {
        fs::create_dir(root.join(format!("d{d}"))).unwrap();
        for f in 0..FILES_PER_FOLDER {
            let path = root.join(format!("d{d}/f{f}"));
            fs::write(&path, content(&mut rng)).unwrap();
            files.push(path);
        }
    }
    let mut next = 0;
    let mut taken: Vec<String> = Vec::new();
    for round in 0..SNAPSHOTS {
        for _ in 0..10 + rng.below(20) {
            change(&mut rng, &root, &mut files, &mut next);
        }
        taken.push(snapfs_ok(&repo, &["snapshot"]).trim().to_string());
        if round % 7 == 6 {
            // Forget one, not the newest: its neighbours' own bytes change.
            let i = rng.below(taken.len() as u64 - 1) as usize;
            let name = taken.remove(i);
            snapfs_ok(&repo, &["forget", &name]);
        }
        if round % 11 == 10 {
            let target = taken[rng.below(taken.len() as u64) as usize].clone();
            snapfs_ok(&repo, &["rollback", &target]);
            files = live_files(&root);
        }
        if round % 13 == 12 {
            snapfs_ok(&repo, &["gc"]);
        }
    }
    snapfs_ok(&repo, &["gc"]);

    let listed = json(&repo, &["list", "--json"]);
    let listed = listed.as_array().unwrap();
    let exclusive = brute_exclusive(&repo);
    assert_eq!(listed.len(), exclusive.len());
    let mut some_only_here = 0;
    for s in listed {
        let name = s["name"].as_str().unwrap();
        let (files, bytes, _) = counted(&m.path(name));
        assert_eq!(s["files"], files, "files of {name}");
        assert_eq!(s["logical_bytes"], bytes, "bytes of {name}");
        assert_eq!(s["exclusive_bytes"], exclusive[name], "only-here bytes of {name}");
        if exclusive[name] > 0 {
            some_only_here += 1;
        }
    }
    assert!(
        some_only_here >= 10,
        "the changes left only {some_only_here} snapshots with bytes of their own"
    );
    let status = json(&repo, &["status", "--json"]);
    let (files, bytes, inodes) = counted(&root);
    assert_eq!(status["files"], files);
    assert_eq!(status["logical_bytes"], bytes);
    assert_eq!(status["inodes"], inodes);

    // Forgetting one snapshot frees what list said it alone holds, to the byte.
    for _ in 0..3 {
        let listed = json(&repo, &["list", "--json"]);
        let pick = &listed.as_array().unwrap()[rng.below(listed.as_array().unwrap().len() as u64) as usize];
        let name = pick["name"].as_str().unwrap().to_string();
        let dry = json(&repo, &["forget", &name, "--dry-run", "--json"]);
        assert_eq!(dry["frees_bytes"], pick["exclusive_bytes"], "dry run of {name}");
        snapfs_ok(&repo, &["forget", &name]);
        let gc = json(&repo, &["gc", "--json"]);
        assert_eq!(gc["bytes"], pick["exclusive_bytes"], "gc after forgetting {name}");
    }
    // And a policy that forgets many at once, neighbours of each other among them.
    let dry = json(&repo, &["forget", "--keep-last", "10", "--dry-run", "--json"]);
    assert!(dry["forgotten"].as_array().unwrap().len() > 20, "{dry}");
    snapfs_ok(&repo, &["forget", "--keep-last", "10"]);
    let gc = json(&repo, &["gc", "--json"]);
    assert_eq!(gc["bytes"], dry["frees_bytes"], "gc after forget --keep-last 10");
    assert!(gc["bytes"].as_u64().unwrap() > 0);
    m.umount();
    let check = snapfs_ok(&repo, &["check"]);
    assert!(check.contains("no problems found"), "{check}");
}
