//! Power cuts under a real mount: the repository (or its mirrors) sits on the
//! power-cut layer (tests/common/powercut.rs), a FUSE filesystem that keeps only what
//! was fsynced when the power goes, where kill -9 keeps the kernel's page cache and so
//! can never catch a missing or misordered sync.
//!
//! Focused cases first, then seeded cuts at random moments of a random workload,
//! checked against a model of what was promised (`SNAPFS_POWERCUT_CUTS`, default 60
//! per layout; README's Testing section has the 200-cut runs).

mod common;

use std::io::Write;

use common::mount::{kill_daemon_pid, require_fuse, Mount};
use common::powercut::PowerCut;
use common::*;

/// The mergerfs case of the issue: both mirror folders on a FUSE filesystem, the
/// repository (catalog) on a local disk that keeps everything. An fsynced file must
/// read back exactly after a power cut, and check must find every copy. With one
/// syncfs per mirror, nothing reached the layer's durable state: the file read EIO.
#[test]
fn fsynced_file_survives_a_power_cut_of_mirrors_on_a_fuse_filesystem() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (layer_dir, mnt, repo) = (
        tmp.path().join("layer"),
        tmp.path().join("mnt"),
        tmp.path().join("repo"),
    );
    for d in [&layer_dir, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let mut layer = PowerCut::mount(&layer_dir);
    let (m0, m1) = (layer_dir.join("m0"), layer_dir.join("m1"));
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
    // Packs are made durable by fdatasync of each pack and fsync of its folder, on
    // every filesystem (never syncfs), so mirrors on FUSE need no mode of their own.

    let data = random_bytes(8, 8 << 20);
    {
        let mount = Mount::new(&repo, &mnt);
        let mut f = std::fs::File::create(mount.path("big.bin")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        layer.cut_now(1);
        kill_daemon_pid(mount.pid(), &repo, &mount.mountpoint);
    }
    let report = layer.restart();
    eprintln!("cut: {report:?}");

    let mount = Mount::new(&repo, &mnt);
    let back = std::fs::read(mount.path("big.bin")).expect("the fsynced file reads after the power cut");
    assert!(back == data, "the fsynced file reads back different bytes");
    let out = snapfs(&repo, &["check", "--read-data"]);
    assert!(
        out.status.success(),
        "check --read-data after the power cut: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    mount.umount();
    drop(layer);
}

/// One mirror on the layer, one on a local disk. The layer's power goes while the
/// mount runs: the mirror on it fails its next sync and is set aside, and writes go
/// on with the other. A file fsynced after that is on the local mirror only. After a
/// remount (the layer back, holding only what was durable) the catalog must not
/// trust the returning mirror: `check --read-data` is clean (saying the mirror is
/// being filled), every file reads back, and the mount fills it in the background
/// until `status` counts it complete and it holds every copy again.
#[test]
fn a_mirror_that_fails_mid_mount_is_filled_again_when_it_returns() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (layer_dir, mnt, repo, local) = (
        tmp.path().join("layer"),
        tmp.path().join("mnt"),
        tmp.path().join("repo"),
        tmp.path().join("local"),
    );
    for d in [&layer_dir, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let mut layer = PowerCut::mount(&layer_dir);
    let on_layer = layer_dir.join("m1");
    snapfs_ok(
        &repo,
        &[
            "init",
            "--mirror",
            local.to_str().unwrap(),
            "--mirror",
            on_layer.to_str().unwrap(),
        ],
    );
    let (before, after) = (random_bytes(21, 3 << 20), random_bytes(22, 5 << 20));
    {
        let mount = Mount::new(&repo, &mnt);
        let mut f = std::fs::File::create(mount.path("before.bin")).unwrap();
        f.write_all(&before).unwrap();
        f.sync_all().unwrap();
        layer.cut_now(7);
        let mut f = std::fs::File::create(mount.path("after.bin")).unwrap();
        f.write_all(&after).unwrap();
        f.sync_all()
            .expect("an fsync with one of two mirrors gone succeeds on the other");
        kill_daemon_pid(mount.pid(), &repo, &mount.mountpoint);
    }
    layer.restart();
    let mut problems = Vec::new();
    // Before any mount fills it: not trusted, its gaps no problem.
    let check = snapfs(&repo, &["check", "--read-data"]);
    if !check.status.success() || !String::from_utf8_lossy(&check.stdout).contains("is being filled") {
        problems.push(format!(
            "check --read-data before the remount: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    let mount = Mount::new(&repo, &mnt);
    for (name, want) in [("before.bin", &before), ("after.bin", &after)] {
        match std::fs::read(mount.path(name)) {
            Ok(bytes) if bytes == *want => {}
            other => problems.push(format!("{name} reads {:?}", other.map(|b| b.len()))),
        }
    }
    // The mount fills the returning mirror by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let healthy = loop {
        let status: serde_json::Value =
            serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).expect("status --json");
        let states: Vec<String> = status["mirrors"]
            .as_array()
            .expect("status lists mirrors")
            .iter()
            .map(|m| m["state"].to_string())
            .collect();
        if states.iter().all(|s| s == "\"complete\"") {
            break true;
        }
        if Instant::now() > deadline {
            problems.push(format!("60 s after the remount the mirrors are {states:?}"));
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    mount.umount();
    if healthy {
        // Every copy on both mirrors, the returning one included.
        let check = snapfs(&repo, &["check", "--read-data", "--json"]);
        let text = String::from_utf8_lossy(&check.stdout).to_string();
        let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let still_filling = report["filling"].as_array().is_none_or(|f| !f.is_empty());
        if !check.status.success()
            || still_filling
            || report["copies_verified"].as_u64() != report["chunks"].as_u64().map(|c| 2 * c)
        {
            problems.push(format!("check --read-data after the fill: {text}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    drop(layer);
}

/// A temporary folder holding the layer's mount point (`layer`, mounted) and a
/// mount point for snapfs (`mnt`), with a new repository at `layer/repo`.
fn repository_on_the_layer() -> (tempfile::TempDir, PathBuf, PowerCut, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (layer_dir, mnt) = (tmp.path().join("layer"), tmp.path().join("mnt"));
    for d in [&layer_dir, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let layer = PowerCut::mount(&layer_dir);
    let repo = layer_dir.join("repo");
    snapfs_ok(&repo, &["init"]);
    (tmp, mnt, layer, repo)
}

/// The whole repository on the layer (catalog.db and its WAL too): a file fsynced
/// through the mount, and a snapshot `snapfs snapshot` named, survive a power cut.
#[test]
fn fsynced_file_and_reported_snapshot_survive_a_power_cut_of_the_whole_repository() {
    require_fuse!();
    let (_tmp, mnt, mut layer, repo) = repository_on_the_layer();
    let (a, b) = (random_bytes(1, 300_000), random_bytes(2, 5_000));
    let snapshot = {
        let mount = Mount::new(&repo, &mnt);
        std::fs::write(mount.path("in-snapshot.bin"), &a).unwrap();
        let name = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
        let mut f = std::fs::File::create(mount.path("fsynced.bin")).unwrap();
        f.write_all(&b).unwrap();
        f.sync_all().unwrap();
        // The lock file names the daemon; after the cut it cannot be read.
        let pid = mount.pid();
        layer.cut_now(3);
        kill_daemon_pid(pid, &repo, &mount.mountpoint);
        name
    };
    layer.restart();
    let mount = Mount::new(&repo, &mnt);
    let fsynced = std::fs::read(mount.path("fsynced.bin"));
    let in_snapshot = std::fs::read(mount.path(&format!("{snapshot}/in-snapshot.bin")));
    let check = snapfs(&repo, &["check", "--read-data"]);
    mount.umount();
    let mut problems = Vec::new();
    if !fsynced.as_ref().is_ok_and(|bytes| *bytes == b) {
        problems.push(format!("the fsynced file reads {:?}", fsynced.map(|v| v.len())));
    }
    if !in_snapshot.as_ref().is_ok_and(|bytes| *bytes == a) {
        problems.push(format!(
            "snapshot {snapshot} reads {:?}",
            in_snapshot.map(|v| v.len())
        ));
    }
    if !check.status.success() {
        problems.push(format!(
            "check --read-data: {}",
            String::from_utf8_lossy(&check.stdout)
        ));
    }
    assert!(
        problems.is_empty(),
        "after the power cut: {}",
        problems.join("; ")
    );
    drop(layer);
}

/// gc in a mounted repository deletes the objects of chunks that a forget made
/// garbage. If a power cut can undo the forget (or gc's own row deletions) after those
/// deletions became durable, a snapshot comes back without its chunks. The deletions
/// become durable as soon as their folders are fsynced, which a later commit's chunk
/// writes do (fsync mode); here that later commit is a plain one (`snapfs list` asks
/// the mount to commit), with no fsync or snapshot after it.
#[test]
fn power_cut_after_gc_and_a_later_commit_leaves_no_snapshot_without_its_chunks() {
    require_fuse!();
    let (_tmp, mnt, mut layer, repo) = repository_on_the_layer();
    let old = random_bytes(11, 8 << 20);
    let snapshot = {
        let mount = Mount::new(&repo, &mnt);
        std::fs::write(mount.path("old.bin"), &old).unwrap();
        let name = snapfs_ok(&repo, &["snapshot"]).trim().to_string();
        std::fs::remove_file(mount.path("old.bin")).unwrap();
        // Durable: the old file is only in the snapshot now, and the canary is there.
        let mut canary = std::fs::File::create(mount.path("canary")).unwrap();
        canary.write_all(b"fsynced before the forget").unwrap();
        canary.sync_all().unwrap();
        snapfs_ok(&repo, &["forget", &name]);
        snapfs_ok(&repo, &["gc"]);
        // New chunks land in many of the folders gc deleted objects from; a commit
        // syncs them (and so those folders) without syncing the catalog.
        std::fs::write(mount.path("new.bin"), random_bytes(12, 8 << 20)).unwrap();
        snapfs_ok(&repo, &["list"]);
        let pid = mount.pid();
        layer.cut_now(5);
        kill_daemon_pid(pid, &repo, &mount.mountpoint);
        name
    };
    layer.restart();
    let mount = Mount::new(&repo, &mnt);
    let back = std::fs::read(mount.path(&format!("{snapshot}/old.bin")));
    let canary = std::fs::read(mount.path("canary"));
    let check = snapfs(&repo, &["check", "--read-data"]);
    mount.umount();
    let mut problems = Vec::new();
    if !canary.as_ref().is_ok_and(|c| c == b"fsynced before the forget") {
        problems.push(format!("the file fsynced before the forget reads {canary:?}"));
    }
    match back {
        // The forget was undone: the snapshot must read exactly.
        Ok(bytes) if bytes != old => problems.push(format!("{snapshot}/old.bin reads different bytes")),
        Ok(_) => {}
        // The forget held: the snapshot is gone.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("{snapshot}/old.bin: {e}")),
    }
    if !check.status.success() {
        problems.push(format!(
            "check --read-data: {}",
            String::from_utf8_lossy(&check.stdout)
        ));
    }
    assert!(
        problems.is_empty(),
        "after the power cut: {}",
        problems.join("; ")
    );
    drop(layer);
}

/// Compaction through a mount moves a live file's chunks out of a sparse pack and gc
/// deletes the pack. The moves are committed under the mount's lock and made durable
/// after it is released, before the deletion: a power cut right after gc must find
/// the file whole (rows that went back to the deleted pack would read EIO). Seed 3
/// writes nothing back, so only what was synced survives.
#[test]
fn power_cut_right_after_a_compaction_keeps_the_moved_chunks() {
    require_fuse!();
    let (_tmp, mnt, mut layer, repo) = repository_on_the_layer();
    let (kept, dropped) = (random_bytes(31, 1 << 20), random_bytes(32, 6 << 20));
    let gc = {
        let mount = Mount::new(&repo, &mnt);
        for (name, bytes) in [("kept.bin", &kept), ("dropped.bin", &dropped)] {
            let mut f = std::fs::File::create(mount.path(name)).unwrap();
            f.write_all(bytes).unwrap();
            f.sync_all().unwrap();
        }
        std::fs::remove_file(mount.path("dropped.bin")).unwrap();
        std::fs::File::open(&mount.mountpoint)
            .unwrap()
            .sync_all()
            .unwrap();
        let gc: serde_json::Value =
            serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).expect("gc --json");
        // A journal commit can make the deletion durable on its own (ext4 does within
        // seconds); the layer does not model that, so the folders are synced here.
        for mirror in common::mount::mirror_dirs(&repo) {
            for folder in std::fs::read_dir(mirror.join("packs")).unwrap() {
                std::fs::File::open(folder.unwrap().path())
                    .unwrap()
                    .sync_all()
                    .unwrap();
            }
        }
        let pid = mount.pid();
        layer.cut_now(3);
        kill_daemon_pid(pid, &repo, &mount.mountpoint);
        gc
    };
    assert!(
        gc["compacted_packs"].as_u64() >= Some(1) && gc["packs"].as_u64() >= Some(1),
        "the gc compacted a pack and deleted it: {gc}"
    );
    let report = layer.restart();
    eprintln!("cut: {report:?}");
    let mount = Mount::new(&repo, &mnt);
    let back = std::fs::read(mount.path("kept.bin"));
    let check = snapfs(&repo, &["check", "--read-data"]);
    mount.umount();
    assert!(
        back.as_ref().is_ok_and(|b| *b == kept),
        "the compacted file after the power cut reads {:?}",
        back.map(|b| b.len())
    );
    assert!(
        check.status.success(),
        "check --read-data: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    drop(layer);
}

// ---- 200 cuts at random moments, against a model of what was promised ----

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mount::run_with_timeout;
use common::powercut::{CutWatch, Rng};

/// Cuts in one run, unless `SNAPFS_POWERCUT_CUTS` says otherwise.
const DEFAULT_CUTS: u64 = 60;
/// Folders of the workload (never renamed or removed: a file's path is its folder
/// and a name used once).
const DIRS: usize = 4;
/// Live files the workload keeps at most, and their size.
const MAX_FILES: usize = 24;
const MAX_FILE: usize = 384 << 10;
/// Largest single write (one FUSE request, so a commit never splits it).
const MAX_WRITE: usize = 64 << 10;
/// Snapshots kept before the workload forgets the oldest.
const MAX_SNAPSHOTS: usize = 4;
/// A cut by request count lands within this many changing requests on the layer.
const CUT_WITHIN_REQUESTS: u64 = 6_000;
/// A cut by time lands within this long after the workload starts.
const CUT_WITHIN: Duration = Duration::from_millis(2_500);

type Hash = [u8; 32];

fn hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// One file of the model: every state it went through since its last durable point,
/// by operation number. Names are never reused, so a path finds its file for good.
#[derive(Clone, Debug)]
struct FileModel {
    /// (op, path or None for no name): the name it has from that op on.
    names: Vec<(u64, Option<String>)>,
    /// (op, hash, length): the content it has from that op on.
    contents: Vec<(u64, Hash, usize)>,
    bytes: Vec<u8>,
    /// The last op after which its content was durable (fsync of it, a snapshot).
    data_durable: u64,
}

/// The states a cut may leave: the one in force at `durable`, and every later one.
fn since<T>(states: &[(u64, T)], durable: u64) -> &[(u64, T)] {
    let from = states.iter().rposition(|(op, _)| *op <= durable).unwrap_or(0);
    &states[from..]
}

fn contents_since(states: &[(u64, Hash, usize)], durable: u64) -> &[(u64, Hash, usize)] {
    let from = states.iter().rposition(|(op, _, _)| *op <= durable).unwrap_or(0);
    &states[from..]
}

/// A snapshot's tree: path -> (file, bytes).
type Tree = BTreeMap<String, (usize, Arc<Vec<u8>>)>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum SnapState {
    /// `snapfs snapshot` (or rollback) printed its name: it must read exactly.
    Promised,
    /// A forget of it was sent: it may be gone (forget is not durable), and if it is
    /// there it must read exactly.
    MaybeGone,
}

#[derive(Clone, Debug)]
struct SnapModel {
    name: String,
    tree: Tree,
    state: SnapState,
    /// The op that took it (for messages).
    op: u64,
}

/// What the workload was promised, and what it did.
struct Model {
    op: u64,
    /// The last op after which every name was durable (an fsync of any file or folder
    /// commits and syncs the catalog; a snapshot syncs everything).
    meta_durable: u64,
    files: Vec<FileModel>,
    by_name: HashMap<String, usize>,
    next_name: u64,
    snapshots: Vec<SnapModel>,
    /// A snapshot taken without its name reaching us (cut meanwhile): its tree.
    in_flight: Option<Tree>,
    log: VecDeque<String>,
    /// gc runs that compacted a pack (the workload's tally).
    compactions: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            op: 0,
            meta_durable: 0,
            files: Vec::new(),
            by_name: HashMap::new(),
            next_name: 0,
            snapshots: Vec::new(),
            in_flight: None,
            log: VecDeque::new(),
            compactions: 0,
        }
    }

    /// Counts a gc run whose output says it compacted a pack.
    fn note_gc(&mut self, out: &str) {
        self.compactions += u64::from(out.contains("once compaction had copied"));
    }

    /// Starts op number `self.op + 1`; its states are recorded before it runs.
    fn begin(&mut self, what: String) -> u64 {
        self.op += 1;
        if self.log.len() == 5000 {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {what}", self.op));
        self.op
    }

    fn fresh_path(&mut self, rng: &mut Rng) -> String {
        self.next_name += 1;
        format!("d{}/f{}", rng.below(DIRS as u64), self.next_name)
    }

    fn set_name(&mut self, id: usize, path: Option<String>) {
        if let Some(p) = &path {
            self.by_name.insert(p.clone(), id);
        }
        let op = self.op;
        self.files[id].names.push((op, path));
    }

    fn set_content(&mut self, id: usize, bytes: Vec<u8>) {
        let op = self.op;
        let f = &mut self.files[id];
        f.contents.push((op, hash(&bytes), bytes.len()));
        f.bytes = bytes;
    }

    fn path(&self, id: usize) -> Option<&str> {
        self.files[id].names.last().and_then(|(_, p)| p.as_deref())
    }

    fn live(&self) -> Vec<usize> {
        (0..self.files.len())
            .filter(|&id| self.path(id).is_some())
            .collect()
    }

    fn tree(&self) -> Tree {
        self.live()
            .into_iter()
            .map(|id| {
                let path = self.path(id).unwrap_or_default().to_string();
                (path, (id, Arc::new(self.files[id].bytes.clone())))
            })
            .collect()
    }

    /// Every name, and every catalog change, up to op `op` is durable: an fsync of a
    /// file or folder, or a snapshot, returned (each commits and syncs the catalog).
    /// Forgotten snapshots are gone for good then.
    fn names_durable(&mut self, op: u64) {
        self.meta_durable = op;
        self.snapshots.retain(|s| s.state != SnapState::MaybeGone);
    }

    /// Everything up to op `op` is durable, file contents too (a snapshot returned).
    fn all_durable(&mut self, op: u64) {
        self.names_durable(op);
        for f in &mut self.files {
            f.data_durable = op;
        }
    }

    /// A snapshot's name was printed: it must read as `tree`. A forgotten snapshot of
    /// the same name is gone (the new one's sync made the forget durable); a promised
    /// one must not share its name.
    fn add_snapshot(&mut self, name: String, tree: Tree) -> Result<(), String> {
        if self.snapshots.iter().any(|s| s.name == name) {
            return Err(format!("snapshot name {name} was given twice"));
        }
        let op = self.op;
        self.snapshots.push(SnapModel {
            name,
            tree,
            state: SnapState::Promised,
            op,
        });
        Ok(())
    }

    /// The model's state is what a remount found (it is all durable now).
    fn rebase(&mut self, found: &Found) {
        self.log.clear();
        let op = self.begin("remount".into());
        for id in 0..self.files.len() {
            let here = found.files.iter().find(|(_, (fid, _))| *fid == id);
            let f = &mut self.files[id];
            match here {
                Some((path, (_, bytes))) => {
                    f.names = vec![(op, Some(path.clone()))];
                    f.contents = vec![(op, hash(bytes), bytes.len())];
                    f.bytes = bytes.to_vec();
                }
                None => {
                    f.names = vec![(op, None)];
                    f.contents = vec![(op, hash(&[]), 0)];
                    f.bytes = Vec::new();
                }
            }
            f.data_durable = op;
        }
        self.meta_durable = op;
        let mut kept = Vec::new();
        for (name, tree) in &found.snapshots {
            kept.push(SnapModel {
                name: name.clone(),
                tree: tree.clone(),
                state: SnapState::Promised,
                op,
            });
        }
        self.snapshots = kept;
        self.in_flight = None;
    }
}

/// What a remount shows: live files (path -> (file, bytes)) and snapshots.
struct Found {
    files: Tree,
    snapshots: Vec<(String, Tree)>,
}

/// Reads the files of the workload's folders under `root`; problems for unreadable or
/// unknown entries.
fn read_tree(root: &Path, model: &Model, problems: &mut Vec<String>, what: &str) -> Tree {
    let mut tree = Tree::new();
    for d in 0..DIRS {
        let dir = root.join(format!("d{d}"));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{what}: listing d{d}: {e}"));
                continue;
            }
        };
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let path = format!("d{d}/{name}");
            let Some(&id) = model.by_name.get(&path) else {
                problems.push(format!("{what}: {path} is a name the workload never made"));
                continue;
            };
            match std::fs::read(dir.join(&name)) {
                Ok(bytes) => {
                    tree.insert(path, (id, Arc::new(bytes)));
                }
                Err(e) => problems.push(format!("{what}: reading {path}: {e}")),
            }
        }
    }
    tree
}

/// Differences between a snapshot's tree as promised and as read.
fn tree_diffs(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, (_, bytes)) in expected {
        match actual.get(path) {
            None => out.push(format!("{path} missing")),
            Some((_, b)) if b != bytes => out.push(format!(
                "{path} differs ({} bytes, promised {})",
                b.len(),
                bytes.len()
            )),
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        out.push(format!("{path} should not be there"));
    }
    out
}

/// Checks what a remount at `root` shows against what the model was promised.
fn verify(root: &Path, model: &Model) -> (Found, Vec<String>) {
    let mut problems = Vec::new();
    let files = read_tree(root, model, &mut problems, "live tree");
    let mut seen: HashMap<usize, &str> = HashMap::new();
    for (path, (id, bytes)) in &files {
        if let Some(other) = seen.insert(*id, path) {
            problems.push(format!("file {id} has two names: {other} and {path}"));
        }
        let f = &model.files[*id];
        let names = since(&f.names, model.meta_durable);
        if !names.iter().any(|(_, p)| p.as_deref() == Some(path.as_str())) {
            problems.push(format!(
                "{path} (file {id}) should not be there: its names since op {} are {:?}",
                model.meta_durable,
                names
                    .iter()
                    .map(|(op, p)| format!("#{op} {p:?}"))
                    .collect::<Vec<_>>()
            ));
        }
        let contents = contents_since(&f.contents, f.data_durable);
        let h = hash(bytes);
        if !contents.iter().any(|(_, c, _)| *c == h) {
            problems.push(format!(
                "{path} (file {id}) reads {} bytes matching none of its contents since op {} (lengths {:?})",
                bytes.len(),
                f.data_durable,
                contents
                    .iter()
                    .map(|(op, _, len)| format!("#{op} {len}"))
                    .collect::<Vec<_>>()
            ));
        }
    }
    for (id, f) in model.files.iter().enumerate() {
        let names = since(&f.names, model.meta_durable);
        if names.iter().all(|(_, p)| p.is_some()) && !seen.contains_key(&id) {
            problems.push(format!(
                "file {id} is lost: it must be at one of {:?}",
                names
                    .iter()
                    .map(|(_, p)| p.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
            ));
        }
    }
    let mut snapshots = Vec::new();
    let names: Vec<String> = match std::fs::read_dir(root) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('@'))
            .collect(),
        Err(e) => {
            problems.push(format!("listing the mount root: {e}"));
            Vec::new()
        }
    };
    for s in &model.snapshots {
        if s.state == SnapState::Promised && !names.contains(&s.name) {
            problems.push(format!("snapshot {} is lost", s.name));
        }
    }
    for name in &names {
        let tree = read_tree(&root.join(name), model, &mut problems, name);
        // A name may be a snapshot's, or (once that one is forgotten, within the same
        // second) the name of the snapshot taken as the power went.
        let mut candidates: Vec<&Tree> = model
            .snapshots
            .iter()
            .filter(|s| &s.name == name)
            .map(|s| &s.tree)
            .collect();
        let promised = model
            .snapshots
            .iter()
            .any(|s| &s.name == name && s.state == SnapState::Promised);
        if !promised {
            candidates.extend(model.in_flight.as_ref());
        }
        if candidates.is_empty() {
            problems.push(format!("snapshot {name} was never taken"));
        } else if !candidates.iter().any(|t| tree_diffs(t, &tree).is_empty()) {
            problems.push(format!(
                "snapshot {name} does not read as taken: {}",
                tree_diffs(candidates[0], &tree).join("; ")
            ));
        }
        snapshots.push((name.clone(), tree));
    }
    (Found { files, snapshots }, problems)
}

/// Why the workload stopped.
enum Stop {
    /// The power was cut (or the test asked it to stop).
    Cut,
    /// An operation failed with the power on: a defect.
    Failed(String),
}

thread_local! {
    /// Set on a kill test's workload thread: the flag its kill sets.
    static KILLED: std::cell::RefCell<Option<Arc<AtomicBool>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `snapfs args` against `repo`, at most 120 s.
fn snapfs_cmd(repo: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapfs"));
    cmd.arg("--repo").arg(repo).args(args).env_remove("SNAPFS_REPO");
    // Once the kill is near, no command starts: one that found the daemon dead would
    // run offline, on what the kill left, and its answer would promise nothing about
    // the state before.
    if KILLED.with(|k| k.borrow().as_ref().is_some_and(|k| k.load(Ordering::SeqCst))) {
        return Err(format!(
            "snapfs {args:?}: not run, the daemon is about to be killed"
        ));
    }
    let out =
        run_with_timeout(&mut cmd, Duration::from_secs(120)).ok_or(format!("snapfs {args:?}: over 120 s"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        // The report (check's problems) is on stdout.
        Err(format!(
            "snapfs {args:?} failed: {} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// The workload: random operations through the mount at `root`, recorded in `model`
/// before each runs, until the power is cut or one fails.
fn workload(root: &Path, repo: &Path, watch: &Stopper, model: &mut Model, rng: &mut Rng) -> Stop {
    loop {
        if watch.is_cut() {
            return Stop::Cut;
        }
        if let Err(e) = step(root, repo, model, rng) {
            // A failure after the cut is the cut; before it, a defect. (The cut is
            // recorded before the request that meets it fails.)
            return if watch.is_cut() {
                Stop::Cut
            } else {
                Stop::Failed(e)
            };
        }
    }
}

/// What ends a workload: a power cut of the layer, or a kill -9 of the daemon (set
/// just before the kill).
enum Stopper {
    Cut(CutWatch),
    Killed(Arc<AtomicBool>),
}

impl Stopper {
    fn is_cut(&self) -> bool {
        match self {
            Stopper::Cut(watch) => watch.is_cut(),
            Stopper::Killed(killed) => killed.load(Ordering::SeqCst),
        }
    }
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// New content: random bytes, or (for dedup) a piece of another file.
fn new_bytes(model: &Model, rng: &mut Rng, len: usize) -> Vec<u8> {
    let live = model.live();
    if !live.is_empty() && rng.chance(1, 4) {
        let src = &model.files[live[rng.below(live.len() as u64) as usize]].bytes;
        if src.len() >= len {
            let at = rng.below((src.len() - len) as u64 + 1) as usize;
            return src[at..at + len].to_vec();
        }
    }
    random_bytes(rng.next(), len)
}

/// Writes `bytes` at `offset` into file `id` (open as `file`), in pieces of at most
/// MAX_WRITE, each recorded as one state.
fn write_pieces(
    model: &mut Model,
    id: usize,
    file: &std::fs::File,
    offset: usize,
    bytes: &[u8],
    rng: &mut Rng,
) -> Result<(), String> {
    let mut done = 0;
    while done < bytes.len() {
        let n = (1 + rng.below(MAX_WRITE as u64) as usize).min(bytes.len() - done);
        let at = offset + done;
        let path = model.path(id).unwrap_or_default().to_string();
        model.begin(format!("write {path} [{at}, +{n})"));
        let mut content = model.files[id].bytes.clone();
        if content.len() < at + n {
            content.resize(at + n, 0);
        }
        content[at..at + n].copy_from_slice(&bytes[done..done + n]);
        model.set_content(id, content);
        io(
            &format!("writing {path}"),
            file.write_all_at(&bytes[done..done + n], at as u64),
        )?;
        done += n;
    }
    Ok(())
}

fn open_write(root: &Path, path: &str) -> Result<std::fs::File, String> {
    io(
        &format!("opening {path}"),
        std::fs::OpenOptions::new().write(true).open(root.join(path)),
    )
}

/// One random operation.
fn step(root: &Path, repo: &Path, model: &mut Model, rng: &mut Rng) -> Result<(), String> {
    let live = model.live();
    let pick = |rng: &mut Rng| live[rng.below(live.len() as u64) as usize];
    let promised: Vec<usize> = (0..model.snapshots.len())
        .filter(|&i| model.snapshots[i].state == SnapState::Promised)
        .collect();
    let roll = rng.below(100);
    match roll {
        // Create a file and write it.
        _ if live.len() < 3 || (roll < 22 && live.len() < MAX_FILES) => {
            let path = model.fresh_path(rng);
            let id = model.files.len();
            model.begin(format!("create {path}"));
            model.files.push(FileModel {
                names: vec![(0, None)],
                contents: vec![(model.op, hash(&[]), 0)],
                bytes: Vec::new(),
                data_durable: 0,
            });
            model.set_name(id, Some(path.clone()));
            let file = io(
                &format!("creating {path}"),
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(root.join(&path)),
            )?;
            let len = rng.below(MAX_FILE as u64 / 2) as usize;
            let bytes = new_bytes(model, rng, len);
            write_pieces(model, id, &file, 0, &bytes, rng)?;
            if rng.chance(1, 3) {
                model.begin(format!("fsync {path}"));
                io(&format!("fsync {path}"), file.sync_all())?;
                let op = model.op;
                model.names_durable(op);
                model.files[id].data_durable = op;
            }
        }
        // Overwrite or append.
        0..=39 => {
            let id = pick(rng);
            let path = model.path(id).unwrap_or_default().to_string();
            let len = model.files[id].bytes.len();
            let offset = if roll < 30 {
                rng.below(len as u64 + 1) as usize
            } else {
                len
            };
            let n = (1 + rng.below(2 * MAX_WRITE as u64) as usize).min(MAX_FILE.saturating_sub(offset));
            let bytes = new_bytes(model, rng, n);
            let file = open_write(root, &path)?;
            write_pieces(model, id, &file, offset, &bytes, rng)?;
        }
        // Truncate.
        40..=43 => {
            let id = pick(rng);
            let path = model.path(id).unwrap_or_default().to_string();
            let len = rng.below(model.files[id].bytes.len() as u64 + 1) as usize;
            let file = open_write(root, &path)?;
            model.begin(format!("truncate {path} to {len}"));
            let mut content = model.files[id].bytes.clone();
            content.truncate(len);
            model.set_content(id, content);
            io(&format!("truncating {path}"), file.set_len(len as u64))?;
        }
        // fsync a file.
        44..=59 => {
            let id = pick(rng);
            let path = model.path(id).unwrap_or_default().to_string();
            let file = io(&format!("opening {path}"), std::fs::File::open(root.join(&path)))?;
            let op = model.begin(format!("fsync {path}"));
            io(&format!("fsync {path}"), file.sync_all())?;
            model.names_durable(op);
            model.files[id].data_durable = op;
        }
        // fsync a folder.
        60..=63 => {
            let d = format!("d{}", rng.below(DIRS as u64));
            let dir = io(&format!("opening {d}"), std::fs::File::open(root.join(&d)))?;
            let op = model.begin(format!("fsync {d}/"));
            io(&format!("fsync {d}/"), dir.sync_all())?;
            model.names_durable(op);
        }
        // Rename.
        64..=71 => {
            let id = pick(rng);
            let from = model.path(id).unwrap_or_default().to_string();
            let to = model.fresh_path(rng);
            model.begin(format!("rename {from} -> {to}"));
            model.set_name(id, Some(to.clone()));
            io(
                &format!("renaming {from} to {to}"),
                std::fs::rename(root.join(&from), root.join(&to)),
            )?;
        }
        // Unlink.
        72..=77 => {
            let id = pick(rng);
            let path = model.path(id).unwrap_or_default().to_string();
            model.begin(format!("unlink {path}"));
            model.set_name(id, None);
            io(
                &format!("unlinking {path}"),
                std::fs::remove_file(root.join(&path)),
            )?;
        }
        // Snapshot.
        78..=85 => {
            let op = model.begin("snapfs snapshot".into());
            model.in_flight = Some(model.tree());
            let out = snapfs_cmd(repo, &["snapshot"])?;
            let name = out.trim().to_string();
            let tree = model.in_flight.take().unwrap_or_default();
            if !name.starts_with('@') {
                return Err(format!("snapfs snapshot printed {out:?}"));
            }
            model.all_durable(op);
            model.add_snapshot(name, tree)?;
        }
        // Rollback to a promised snapshot.
        86..=89 if !promised.is_empty() => {
            let target = model.snapshots[promised[rng.below(promised.len() as u64) as usize]].clone();
            let op = model.begin(format!("snapfs rollback {}", target.name));
            model.in_flight = Some(model.tree());
            for id in 0..model.files.len() {
                match target.tree.iter().find(|(_, (fid, _))| *fid == id) {
                    Some((path, (_, bytes))) => {
                        if model.path(id) != Some(path.as_str()) {
                            model.set_name(id, Some(path.clone()));
                        }
                        if model.files[id].bytes != **bytes {
                            model.set_content(id, bytes.to_vec());
                        }
                    }
                    None if model.path(id).is_some() => {
                        model.set_name(id, None);
                        model.files[id].bytes.clear();
                    }
                    None => {}
                }
            }
            let out = snapfs_cmd(repo, &["rollback", &target.name])?;
            let safety = out
                .lines()
                .find_map(|l| l.strip_prefix("safety snapshot "))
                .and_then(|l| l.split_whitespace().next())
                .ok_or(format!("rollback printed no safety snapshot: {out:?}"))?
                .to_string();
            let tree = model.in_flight.take().unwrap_or_default();
            // The safety snapshot made everything before the rollback durable.
            model.all_durable(op - 1);
            model.add_snapshot(safety, tree)?;
        }
        // Forget the oldest snapshots, then gc.
        90..=95 if promised.len() > 1 => {
            let keep = 1 + rng.below(MAX_SNAPSHOTS as u64) as usize;
            let forget: Vec<usize> = promised
                .iter()
                .copied()
                .take(promised.len().saturating_sub(keep))
                .collect();
            if !forget.is_empty() {
                let names: Vec<String> = forget.iter().map(|&i| model.snapshots[i].name.clone()).collect();
                model.begin(format!("snapfs forget {}", names.join(" ")));
                for &i in &forget {
                    model.snapshots[i].state = SnapState::MaybeGone;
                }
                let mut args = vec!["forget"];
                args.extend(names.iter().map(String::as_str));
                snapfs_cmd(repo, &args)?;
            }
            model.begin("snapfs gc".into());
            let out = snapfs_cmd(repo, &["gc"])?;
            model.note_gc(&out);
        }
        // A commit without a sync (what the flusher does every second): read-only
        // commands ask the mount for one.
        96..=97 => {
            model.begin("snapfs list".into());
            snapfs_cmd(repo, &["list"])?;
        }
        // gc alone.
        _ => {
            model.begin("snapfs gc".into());
            let out = snapfs_cmd(repo, &["gc"])?;
            model.note_gc(&out);
        }
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the repository lives for a run of cuts.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// All of it on the layer: catalog.db, its WAL and -shm, the lock, both default
    /// mirrors.
    WholeRepository,
    /// Both mirror folders on the layer, the repository folder (catalog) on the local
    /// disk, which keeps everything: the mergerfs case.
    MirrorsOnly,
}

/// The whole repository on the layer; seeded cuts at random moments of a random
/// workload (writes, fsyncs, renames, unlinks, truncations, snapshot, rollback, forget,
/// gc, plain commits). After each: a remount, every promised file and snapshot as
/// promised, no file in a state it never had, and `check --read-data` clean.
/// `SNAPFS_POWERCUT_CUTS` sets the number of cuts, `SNAPFS_POWERCUT_SEED` the first
/// seed (a failure names its cut; replaying needs the same first seed and count).
#[test]
fn power_cuts_at_random_moments_lose_nothing_that_was_promised() {
    power_cuts(Layout::WholeRepository);
}

/// The same with only the mirrors on the layer (the catalog survives every cut whole):
/// what the store promises, that a chunk is durable in every mirror before a committed
/// row names it, under the same workload and cuts.
#[test]
fn power_cuts_of_the_mirrors_lose_no_chunk_a_committed_row_names() {
    power_cuts(Layout::MirrorsOnly);
}

fn power_cuts(layout: Layout) {
    require_fuse!();
    let cuts = env_u64("SNAPFS_POWERCUT_CUTS", DEFAULT_CUTS);
    let first_seed = env_u64("SNAPFS_POWERCUT_SEED", 1);
    let started = Instant::now();
    let mut tmp = tempfile::tempdir().unwrap();
    let (layer_dir, mnt) = (tmp.path().join("layer"), tmp.path().join("mnt"));
    for d in [&layer_dir, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let mut layer = PowerCut::mount(&layer_dir);
    let repo: PathBuf = match layout {
        Layout::WholeRepository => {
            let repo = layer_dir.join("repo");
            snapfs_ok(&repo, &["init"]);
            repo
        }
        Layout::MirrorsOnly => {
            let repo = tmp.path().join("repo");
            let (m0, m1) = (layer_dir.join("m0"), layer_dir.join("m1"));
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
            repo
        }
    };
    let mut model = Model::new();
    let mut tally: BTreeMap<&str, u64> = BTreeMap::new();
    for cut in 0..=cuts {
        let seed = first_seed + cut;
        let mount = Mount::new(&repo, &mnt);
        let root = mount.mountpoint.clone();
        if cut == 0 {
            for d in 0..DIRS {
                std::fs::create_dir(root.join(format!("d{d}"))).unwrap();
            }
            std::fs::File::open(&root).unwrap().sync_all().unwrap();
        } else {
            let (found, mut problems) = verify(&root, &model);
            let check = snapfs_cmd(&repo, &["check", "--read-data", "--json"]);
            if let Err(e) = &check {
                problems.push(format!("check --read-data: {e}"));
            }
            let history = match problems.is_empty() {
                true => String::new(),
                false => {
                    // Kept for a post-mortem (the mounts go on the way out).
                    eprintln!("the repository is kept at {}", tmp.path().display());
                    tmp.disable_cleanup(true);
                    catalog_history(&repo, &problems)
                }
            };
            assert!(
                problems.is_empty(),
                "after cut {} (seed {}):\n  {}\n{history}snapshots: {:?}\nlast operations before the cut:\n  {}",
                cut,
                seed - 1,
                problems.join("\n  "),
                model
                    .snapshots
                    .iter()
                    .map(|s| format!("{} {:?} (#{})", s.name, s.state, s.op))
                    .collect::<Vec<_>>(),
                model.log.iter().cloned().collect::<Vec<_>>().join("\n  ")
            );
            model.rebase(&found);
        }
        if cut == cuts {
            mount.umount();
            break;
        }
        // The daemon's pid now: after the cut its lock file cannot be read.
        let pid = mount.pid();
        let mut rng = Rng::new(seed);
        let by_requests = rng.chance(1, 2);
        let delay = Duration::from_millis(rng.below(CUT_WITHIN.as_millis() as u64));
        if by_requests {
            layer.arm(1 + rng.below(CUT_WITHIN_REQUESTS), seed);
        }
        let watch = Stopper::Cut(layer.watch());
        let (root2, repo2) = (root.clone(), repo.clone());
        let mut wl_rng = Rng::new(seed ^ 0xA5A5);
        let worker = std::thread::spawn(move || {
            let stop = workload(&root2, &repo2, &watch, &mut model, &mut wl_rng);
            (model, stop)
        });
        if !(by_requests && layer.wait_cut(Duration::from_secs(10))) {
            if !by_requests {
                std::thread::sleep(delay);
            }
            layer.cut_now(seed);
        }
        kill_daemon_pid(pid, &repo, &root);
        let (m, stop) = worker.join().expect("the workload thread panicked");
        model = m;
        if let Stop::Failed(e) = stop {
            panic!(
                "cut {cut} (seed {seed}): an operation failed with the power on: {e}\nlast operations:\n  {}",
                model.log.iter().cloned().collect::<Vec<_>>().join("\n  ")
            );
        }
        drop(mount);
        let report = layer.restart();
        *tally
            .entry(if by_requests { "by request" } else { "by time" })
            .or_default() += 1;
        *tally.entry("written back").or_default() += report.written_back as u64;
        *tally.entry("torn").or_default() += report.torn as u64;
        let last = model.log.back().cloned().unwrap_or_default();
        eprintln!(
            "cut {cut} (seed {seed}): after {} requests, {report:?}, during {last}",
            report.requests
        );
    }
    eprintln!(
        "{layout:?}: {cuts} power cuts in {:.0?}, {} gc runs compacted: {tally:?}",
        started.elapsed(),
        model.compactions
    );
    drop(layer);
}

/// Kills in one run of the kill -9 test, unless `SNAPFS_CRASH_KILLS` says otherwise
/// (README's Testing section has the 100-kill run).
const DEFAULT_KILLS: u64 = 25;

/// The same workload on a local disk, the daemon killed with SIGKILL at a random
/// moment (writes, fsyncs, snapshots, gc and its compaction, commits). kill -9 keeps
/// the page cache, so this finds what a crash of the process alone breaks: after
/// each, every promised file and snapshot as promised, the next gc (offline) leaves
/// no pack file that no catalog row names and no pack without a live entry, and,
/// remounted, `check --read-data` clean. `SNAPFS_CRASH_KILLS` sets the number of
/// kills, `SNAPFS_CRASH_SEED` the first seed.
#[test]
fn kill_9_at_random_moments_loses_nothing_fsynced_and_leaks_no_pack() {
    require_fuse!();
    let kills = env_u64("SNAPFS_CRASH_KILLS", DEFAULT_KILLS);
    let first_seed = env_u64("SNAPFS_CRASH_SEED", 1);
    let started = Instant::now();
    let mut tmp = tempfile::tempdir().unwrap();
    let (repo, mnt) = (tmp.path().join("repo"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    snapfs_ok(&repo, &["init"]);
    let mut model = Model::new();
    let mut swept = 0;
    for kill in 0..=kills {
        let seed = first_seed + kill;
        let mount = Mount::new(&repo, &mnt);
        let root = mount.mountpoint.clone();
        if kill == 0 {
            for d in 0..DIRS {
                std::fs::create_dir(root.join(format!("d{d}"))).unwrap();
            }
            std::fs::File::open(&root).unwrap().sync_all().unwrap();
        } else {
            let (found, mut problems) = verify(&root, &model);
            if let Err(e) = snapfs_cmd(&repo, &["check", "--read-data", "--json"]) {
                problems.push(format!("check --read-data: {e}"));
            }
            let mut history = String::new();
            if !problems.is_empty() {
                // Kept for a post-mortem (the mount is unmounted on the way out).
                eprintln!("the repository is kept at {}", tmp.path().display());
                tmp.disable_cleanup(true);
                history = catalog_history(&repo, &problems);
            }
            assert!(
                problems.is_empty(),
                "after kill {} (seed {}):\n  {}\n{history}last operations before the kill:\n  {}",
                kill,
                seed - 1,
                problems.join("\n  "),
                model.log.iter().cloned().collect::<Vec<_>>().join("\n  ")
            );
            model.rebase(&found);
        }
        if kill == kills {
            mount.umount();
            break;
        }
        let pid = mount.pid();
        let mut rng = Rng::new(seed);
        let delay = Duration::from_millis(rng.below(CUT_WITHIN.as_millis() as u64));
        let killed = Arc::new(AtomicBool::new(false));
        let watch = Stopper::Killed(killed.clone());
        let (root2, repo2, killed2) = (root.clone(), repo.clone(), killed.clone());
        let mut wl_rng = Rng::new(seed ^ 0x5A5A);
        let worker = std::thread::spawn(move || {
            KILLED.with(|k| *k.borrow_mut() = Some(killed2));
            let stop = workload(&root2, &repo2, &watch, &mut model, &mut wl_rng);
            (model, stop)
        });
        std::thread::sleep(delay);
        // Commands already started reach the daemon before it dies (see snapfs_cmd).
        killed.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        kill_daemon_pid(pid, &repo, &root);
        let (m, stop) = worker.join().expect("the workload thread panicked");
        model = m;
        if let Stop::Failed(e) = stop {
            panic!(
                "kill {kill} (seed {seed}): an operation failed before the kill: {e}\nlast operations:\n  {}",
                model.log.iter().cloned().collect::<Vec<_>>().join("\n  ")
            );
        }
        drop(mount);
        // The next gc, offline: a crashed daemon asked it to sweep.
        let gc: serde_json::Value =
            serde_json::from_str(&snapfs_ok(&repo, &["gc", "--json"])).expect("gc --json");
        swept += u64::from(gc["swept"] == true);
        let leaks = leaked_packs(&repo);
        assert!(
            leaks.is_empty(),
            "kill {kill} (seed {seed}): after the next gc ({gc}): {}\nlast operations:\n  {}",
            leaks.join("; "),
            model.log.iter().cloned().collect::<Vec<_>>().join("\n  ")
        );
        eprintln!(
            "kill {kill} (seed {seed}) after {delay:?}, during {}; then gc: {}",
            model.log.back().cloned().unwrap_or_default(),
            gc
        );
    }
    eprintln!(
        "{kills} kills in {:.0?}: {} gc runs compacted, {swept} sweeps after a kill",
        started.elapsed(),
        model.compactions
    );
}

/// Pack files on a mirror of `repo` that no catalog row names, and packs the catalog
/// counts that hold no live entry (what gc should have deleted), in words.
fn leaked_packs(repo: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        repo.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db.prepare("SELECT pack_id, live_bytes FROM packs").unwrap();
    let rows: BTreeMap<u64, i64> = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut problems: Vec<String> = rows
        .iter()
        .filter(|(_, live)| **live <= 0)
        .map(|(id, live)| format!("pack {id} has {live} live bytes but is kept"))
        .collect();
    for mirror in common::mount::mirror_dirs(repo) {
        for file in pack_files(&mirror) {
            let id = file
                .file_stem()
                .and_then(|s| u64::from_str_radix(&s.to_string_lossy(), 16).ok());
            if !id.is_some_and(|id| rows.contains_key(&id)) {
                problems.push(format!("{} is named by no catalog row", file.display()));
            }
        }
    }
    problems
}

/// The catalog's rows for every workload path a problem names (`dN/fM`): each
/// version of its name, inode and extents, with the generations, for a post-mortem
/// of a failure in CI, where the repository is gone afterwards.
fn catalog_history(repo: &Path, problems: &[String]) -> String {
    let Ok(db) = rusqlite::Connection::open_with_flags(
        repo.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return "(the catalog cannot be opened)".into();
    };
    let mut out = String::new();
    let gens: Vec<String> = db
        .prepare("SELECT gen_id, IFNULL(name, 'live') FROM generations ORDER BY gen_id")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(format!("{}={}", r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!("generations: {}\n", gens.join(" ")));
    let mut paths: Vec<&str> = problems
        .iter()
        .flat_map(|p| p.split_whitespace())
        .filter(|w| w.starts_with('d') && w.contains("/f"))
        .map(|w| w.trim_end_matches([':', ',', ')']))
        .collect();
    paths.sort();
    paths.dedup();
    for path in paths.into_iter().take(5) {
        let Some((dir, file)) = path.split_once('/') else {
            continue;
        };
        let rows = |sql: &str, key: &dyn rusqlite::ToSql| -> Vec<String> {
            db.prepare(sql)
                .and_then(|mut s| {
                    s.query_map([key], |r| {
                        let n = r.as_ref().column_count();
                        let cols: Vec<String> = (0..n)
                            .map(|i| match r.get_ref(i) {
                                Ok(rusqlite::types::ValueRef::Integer(v)) if v == i64::MAX => "open".into(),
                                Ok(rusqlite::types::ValueRef::Integer(v)) => v.to_string(),
                                Ok(rusqlite::types::ValueRef::Blob(b)) => {
                                    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
                                }
                                Ok(other) => format!("{other:?}"),
                                Err(e) => e.to_string(),
                            })
                            .collect();
                        Ok(cols.join(","))
                    })?
                    .collect()
                })
                .unwrap_or_else(|e| vec![e.to_string()])
        };
        let dirs = rows(
            "SELECT inode_id FROM dir_entries WHERE parent_id = 1 AND name = ?1",
            &dir.as_bytes(),
        );
        for d in dirs {
            let Ok(dir_id) = d.parse::<i64>() else { continue };
            let names = db
                .prepare(
                    "SELECT inode_id, gen_from, gen_to FROM dir_entries WHERE parent_id = ?1 AND name = ?2",
                )
                .and_then(|mut s| {
                    s.query_map(rusqlite::params![dir_id, file.as_bytes()], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .unwrap_or_default();
            for (ino, from, to) in names {
                let to = if to == i64::MAX {
                    "open".into()
                } else {
                    to.to_string()
                };
                out.push_str(&format!("{path}: inode {ino} in [{from}, {to})\n"));
                for r in rows(
                    "SELECT gen_from, gen_to, size, mtime_ns, nlink FROM inodes WHERE inode_id = ?1",
                    &ino,
                ) {
                    out.push_str(&format!("  inode gen_from,gen_to,size,mtime,nlink: {r}\n"));
                }
                for r in rows(
                    "SELECT file_offset, length, gen_from, gen_to, chunk_id FROM extents WHERE inode_id = ?1 ORDER BY gen_from, file_offset",
                    &ino,
                ) {
                    out.push_str(&format!("  extent offset,len,gen_from,gen_to,chunk: {r}\n"));
                }
            }
        }
    }
    out
}

// ---- power cuts during `snapfs upgrade` ----

/// Copies the tree `from` to `to` (on the layer) and makes all of it durable.
fn copy_durably(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_durably(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            std::fs::File::open(&target).unwrap().sync_all().unwrap();
        }
    }
    std::fs::File::open(to).unwrap().sync_all().unwrap();
}

/// What is wrong with the upgraded format-1 fixture at `repo`: its two snapshots,
/// their files' bytes, and `check --read-data`.
fn fixture_problems(repo: &Path, scratch: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let list: serde_json::Value = match snapfs_cmd(repo, &["list", "--json"]) {
        Ok(out) => serde_json::from_str(&out).unwrap(),
        Err(e) => return vec![e],
    };
    let labels: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["label"].as_str())
        .collect();
    if labels != ["v1", "v2"] {
        problems.push(format!("snapshots {labels:?}"));
    }
    let _ = std::fs::remove_dir_all(scratch);
    let v1 = list[0]["name"].as_str().unwrap_or_default();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if let Err(e) = snapfs_cmd(repo, &["restore", v1, "/", scratch.to_str().unwrap()]) {
        problems.push(e);
    }
    let expect = [
        ("docs/notes.txt", b"notes of version one\n".to_vec()),
        (
            "data.bin",
            std::fs::read(fixtures.join("repo-v1-data.bin")).unwrap(),
        ),
    ];
    for (path, bytes) in expect {
        if std::fs::read(scratch.join(path)).ok().as_deref() != Some(&bytes[..]) {
            problems.push(format!("{v1}/{path} does not read back exactly"));
        }
    }
    let later = scratch.join("later.txt");
    match snapfs_cmd(
        repo,
        &["restore", "@latest", "/later.txt", later.to_str().unwrap()],
    ) {
        Ok(_) if std::fs::read(&later).ok().as_deref() == Some(&b"added for version two\n"[..]) => {}
        Ok(_) => problems.push("@latest/later.txt reads different bytes".into()),
        Err(e) => problems.push(e),
    }
    if let Err(e) = snapfs_cmd(repo, &["check", "--read-data"]) {
        problems.push(format!("check --read-data: {e}"));
    }
    problems
}

/// Power cuts at every moment of `snapfs upgrade` of the format-1 fixture (on the
/// layer, made durable first): each cut at a random changing request of the upgrade
/// (or just after it finished), then a restart of the layer, then `snapfs upgrade`
/// again to the end. Nothing is lost: both snapshots read exactly and `check
/// --read-data` is clean. `SNAPFS_POWERCUT_UPGRADE_CUTS` sets the number of cuts.
#[test]
fn power_cuts_during_snapfs_upgrade_lose_nothing() {
    require_fuse!();
    let cuts = env_u64("SNAPFS_POWERCUT_UPGRADE_CUTS", 60);
    let first_seed = env_u64("SNAPFS_POWERCUT_SEED", 1);
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let layer_dir = tmp.path().join("layer");
    std::fs::create_dir(&layer_dir).unwrap();
    let mut layer = PowerCut::mount(&layer_dir);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1");
    // How many changing requests a whole upgrade makes.
    let probe = layer_dir.join("probe");
    copy_durably(&fixture, &probe);
    let before = layer.requests();
    snapfs_ok(&probe, &["upgrade"]);
    let upgrade_requests = layer.requests() - before;
    std::fs::remove_dir_all(&probe).unwrap();
    let mut interrupted = 0;
    for cut in 0..cuts {
        let seed = first_seed + cut;
        let repo = layer_dir.join(format!("repo{cut}"));
        copy_durably(&fixture, &repo);
        std::fs::File::open(&layer_dir).unwrap().sync_all().unwrap();
        let mut rng = Rng::new(seed);
        // One cut in eight after the upgrade reported success.
        let at = 1 + rng.below(upgrade_requests + upgrade_requests / 8);
        layer.arm(at, seed);
        let first = snapfs_cmd(&repo, &["upgrade"]);
        if !layer.is_cut() {
            layer.cut_now(seed);
        }
        interrupted += u64::from(first.is_err());
        let report = layer.restart();
        let finish = snapfs_cmd(&repo, &["upgrade"]);
        let mut problems = match &finish {
            Ok(out) if out.contains("is storage format 2") => Vec::new(),
            Ok(out) => vec![format!("the second upgrade printed {out:?}")],
            Err(e) => vec![format!("the second upgrade: {e}")],
        };
        if first.is_ok() && !finish.as_ref().is_ok_and(|o| o.contains("already")) {
            problems.push(format!(
                "an upgrade that reported success was undone by the cut: {finish:?}"
            ));
        }
        if problems.is_empty() {
            problems = fixture_problems(&repo, &tmp.path().join("out"));
        }
        assert!(
            problems.is_empty(),
            "cut {cut} (seed {seed}) at request {at} of {upgrade_requests} ({report:?}):\n  {}",
            problems.join("\n  ")
        );
        eprintln!("upgrade cut {cut} (seed {seed}) at request {at} of {upgrade_requests}: {report:?}");
        std::fs::remove_dir_all(&repo).unwrap();
    }
    eprintln!(
        "{cuts} power cuts of snapfs upgrade in {:.0?} ({interrupted} interrupted it, {upgrade_requests} requests a whole upgrade)",
        started.elapsed()
    );
    drop(layer);
}
