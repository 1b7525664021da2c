//! Differential test: the same seeded random sequence of namespace and data
//! operations (create, write, truncate, rename, link, unlink, mkdir, rmdir, chmod,
//! symlink, xattrs, writes through descriptors held across renames and unlinks,
//! every fallocate mode, and folder listings interleaved with creates and unlinks in
//! the same folder) on the mount and on a plain folder. After every step the results
//! and errno values must be equal, and so must the two trees (kinds, modes, sizes,
//! link counts, targets, xattrs, listings) and the bytes of what the step changed;
//! all bytes every 100 steps and after a remount. A listing must return every name
//! that stays in its folder throughout exactly once, on both sides.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::mount::*;
use common::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, repo) = temp_repo();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    (tmp, repo, mnt)
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        path: String,
        exclusive: bool,
        mode: u32,
    },
    Write {
        path: String,
        offset: u64,
        len: usize,
        seed: u64,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Read {
        path: String,
        offset: u64,
        len: usize,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Symlink {
        target: String,
        path: String,
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
        flags: u8,
    },
    GetXattr {
        path: String,
        name: String,
    },
    /// Opens `path` read-write into slot `slot` and keeps it open across later
    /// operations (renames, unlinks) until Release or another Hold of the slot.
    Hold {
        slot: usize,
        path: String,
    },
    HeldWrite {
        slot: usize,
        offset: u64,
        len: usize,
        seed: u64,
    },
    HeldRead {
        slot: usize,
        offset: u64,
        len: usize,
    },
    Release {
        slot: usize,
    },
    /// fallocate(2) with `mode` (FALLOC_FL_* bits) on `path`.
    Fallocate {
        path: String,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// Starts listing folder `path` (ending a listing in progress), one small
    /// getdents batch per `ListStep`, while other operations change the folder.
    ListOpen {
        path: String,
    },
    ListStep,
}

/// Descriptors the differential workload keeps open, per side.
type Held = [Option<File>; 3];

fn read_up_to(f: &File, offset: u64, len: usize) -> Outcome {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(e)),
        }
    }
    buf.truncate(got);
    Ok(Some(buf))
}

type Outcome = Result<Option<Vec<u8>>, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("error without errno: {e}"))
}

fn apply(root: &Path, op: &Op, held: &mut Held) -> Outcome {
    let p = |rel: &str| root.join(rel);
    let done = |r: std::io::Result<()>| r.map(|()| None).map_err(errno);
    match op {
        Op::Hold { slot, path } => {
            held[*slot] = None;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(p(path))
                .map_err(errno)?;
            held[*slot] = Some(f);
            Ok(None)
        }
        Op::HeldWrite {
            slot,
            offset,
            len,
            seed,
        } => match &held[*slot] {
            Some(f) => done(f.write_all_at(&random_bytes(*seed, *len), *offset)),
            None => Err(libc::EBADF),
        },
        Op::HeldRead { slot, offset, len } => match &held[*slot] {
            Some(f) => read_up_to(f, *offset, *len),
            None => Err(libc::EBADF),
        },
        Op::Release { slot } => {
            held[*slot] = None;
            Ok(None)
        }
        Op::Create {
            path,
            exclusive,
            mode,
        } => {
            let mut o = OpenOptions::new();
            o.write(true).mode(*mode);
            if *exclusive {
                o.create_new(true);
            } else {
                o.create(true);
            }
            done(o.open(p(path)).map(drop))
        }
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => done(
            OpenOptions::new()
                .write(true)
                .open(p(path))
                .and_then(|f| f.write_all_at(&random_bytes(*seed, *len), *offset)),
        ),
        Op::Truncate { path, len } => done(
            OpenOptions::new()
                .write(true)
                .open(p(path))
                .and_then(|f| f.set_len(*len)),
        ),
        Op::Read { path, offset, len } => {
            let f = File::open(p(path)).map_err(errno)?;
            read_up_to(&f, *offset, *len)
        }
        Op::Rename { from, to } => done(fs::rename(p(from), p(to))),
        Op::Link { from, to } => done(fs::hard_link(p(from), p(to))),
        Op::Unlink { path } => done(fs::remove_file(p(path))),
        Op::Mkdir { path, mode } => done(fs::DirBuilder::new().mode(*mode).create(p(path))),
        Op::Rmdir { path } => done(fs::remove_dir(p(path))),
        Op::Chmod { path, mode } => done(fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))),
        Op::Symlink { target, path } => done(symlink(target, p(path))),
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        } => {
            let flags = match flags {
                0 => rustix::fs::XattrFlags::empty(),
                1 => rustix::fs::XattrFlags::CREATE,
                _ => rustix::fs::XattrFlags::REPLACE,
            };
            rustix::fs::setxattr(p(path), name.as_str(), value, flags)
                .map(|()| None)
                .map_err(|e| e.raw_os_error())
        }
        Op::GetXattr { path, name } => {
            let mut buf = vec![0u8; 1 << 16];
            let n =
                rustix::fs::getxattr(p(path), name.as_str(), &mut buf[..]).map_err(|e| e.raw_os_error())?;
            buf.truncate(n);
            Ok(Some(buf))
        }
        Op::Fallocate {
            path,
            mode,
            offset,
            len,
        } => {
            let f = OpenOptions::new().write(true).open(p(path)).map_err(errno)?;
            let flags = rustix::fs::FallocateFlags::from_bits_retain(*mode as u32);
            rustix::fs::fallocate(&f, flags, *offset, *len)
                .map(|()| None)
                .map_err(|e| e.raw_os_error())
        }
        Op::ListOpen { .. } | Op::ListStep => unreachable!("listings are driven by the test"),
    }
}

/// A listing in progress on one side: the open folder, the names it had when the
/// listing began, and how often each name came back so far.
struct Listing {
    dir: String,
    fd: std::os::fd::OwnedFd,
    at_open: BTreeSet<String>,
    seen: HashMap<String, u32>,
    done: bool,
}

impl Listing {
    fn open(root: &Path, dir: &str) -> Result<Listing, i32> {
        let path = root.join(dir);
        let fd = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| e.raw_os_error())?;
        let at_open = fs::read_dir(&path)
            .map_err(errno)?
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        Ok(Listing {
            dir: dir.to_string(),
            fd,
            at_open,
            seen: HashMap::new(),
            done: false,
        })
    }

    /// One getdents64 call with a small buffer (a few entries).
    fn step(&mut self) {
        if self.done {
            return;
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        let mut dir = rustix::fs::RawDir::new(&self.fd, &mut buf);
        let mut any = false;
        while let Some(entry) = dir.next() {
            let entry = entry.expect("getdents64");
            any = true;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                *self.seen.entry(name).or_default() += 1;
            }
            if dir.is_buffer_empty() {
                break;
            }
        }
        self.done = !any;
    }

    /// Every name that was there when the listing began and that nothing touched
    /// since came back exactly once (when the listing ran to its end), and no
    /// untouched name came back twice.
    fn check(&self, touched: &BTreeSet<String>, what: &str) {
        for name in self.at_open.difference(touched).filter(|_| self.done) {
            assert_eq!(
                self.seen.get(name).copied().unwrap_or(0),
                1,
                "{what}: listing of {:?}: {name:?} was there throughout",
                self.dir
            );
        }
        for (name, n) in &self.seen {
            assert!(
                *n == 1 || touched.contains(name),
                "{what}: listing of {:?} returned {name:?} {n} times",
                self.dir
            );
        }
    }
}

/// The names an operation creates, removes or renames, as (folder, name).
fn names_changed(op: &Op) -> Vec<(String, String)> {
    let split = |p: &str| match p.rsplit_once('/') {
        Some((d, n)) => (d.to_string(), n.to_string()),
        None => (String::new(), p.to_string()),
    };
    match op {
        Op::Create { path, .. } | Op::Unlink { path } | Op::Mkdir { path, .. } | Op::Rmdir { path } => {
            vec![split(path)]
        }
        Op::Symlink { path, .. } => vec![split(path)],
        Op::Rename { from, to } | Op::Link { from, to } => vec![split(from), split(to)],
        _ => Vec::new(),
    }
}

/// The paths whose bytes an operation may change.
fn data_changed<'a>(op: &'a Op, held: &'a [Option<String>; 3]) -> Vec<&'a str> {
    match op {
        Op::Write { path, .. } | Op::Truncate { path, .. } | Op::Fallocate { path, .. } => {
            vec![path.as_str()]
        }
        Op::HeldWrite { slot, .. } => held[*slot].as_deref().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Relative paths of everything under `root` with their kind ('f', 'd', 'l', …).
fn existing(root: &Path) -> Vec<(String, char)> {
    walk_tree(
        root,
        Fields {
            owner: false,
            mtime: false,
            xattrs: false,
            nlink: false,
            link_groups: false,
            content: false,
        },
    )
    .into_iter()
    .filter(|(rel, _)| rel != ".")
    .map(|(rel, n)| (rel, n.kind))
    .collect()
}

/// Picks paths for operations: mostly ones that make the operation succeed, sometimes
/// any path at all, so that the error paths get compared too.
struct Paths<'a> {
    all: &'a [(String, char)],
}

impl Paths<'_> {
    const NAMES: [&'static str; 6] = ["a", "b", "c", "dd", "e.txt", "f f"];

    /// Any path: existing (of any kind) or new, sometimes under a missing folder.
    fn any(&self, rng: &mut Rng) -> String {
        if !self.all.is_empty() && rng.below(2) == 0 {
            rng.pick(self.all).0.clone()
        } else {
            self.new_name(rng)
        }
    }

    /// Mostly an existing path of `kind`, else any path.
    fn of_kind(&self, rng: &mut Rng, kind: char) -> String {
        let matching: Vec<&String> = self
            .all
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(p, _)| p)
            .collect();
        if !matching.is_empty() && rng.below(5) > 0 {
            rng.pick(&matching).to_string()
        } else {
            self.any(rng)
        }
    }

    /// Mostly a name that does not exist yet in an existing folder.
    fn new_name(&self, rng: &mut Rng) -> String {
        let parent = if rng.below(15) == 0 {
            "missing".to_string()
        } else {
            let dirs: Vec<&str> = std::iter::once("")
                .chain(
                    self.all
                        .iter()
                        .filter(|(_, k)| *k == 'd')
                        .map(|(p, _)| p.as_str()),
                )
                .collect();
            rng.pick(&dirs).to_string()
        };
        let name = rng.pick(&Self::NAMES);
        if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}/{name}")
        }
    }

    /// A target for rename, link, symlink and mkdir: mostly new, sometimes existing.
    fn target(&self, rng: &mut Rng) -> String {
        if rng.below(4) == 0 {
            self.any(rng)
        } else {
            self.new_name(rng)
        }
    }
}

fn random_op(rng: &mut Rng, seq: u64, all: &[(String, char)]) -> Op {
    let paths = Paths { all };
    const FILE_MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o640];
    const CHMODS: [u32; 8] = [0o700, 0o755, 0o750, 0o711, 0o777, 0o744, 0o720, 0o705];
    match rng.below(124) {
        0..=11 => Op::Create {
            path: if rng.below(3) == 0 {
                paths.any(rng)
            } else {
                paths.new_name(rng)
            },
            exclusive: rng.below(3) == 0,
            mode: *rng.pick(&FILE_MODES),
        },
        12..=31 => Op::Write {
            path: paths.of_kind(rng, 'f'),
            offset: if rng.below(4) == 0 {
                rng.below(2 * MIB)
            } else {
                rng.below(64 * KIB)
            },
            len: if rng.below(8) == 0 {
                rng.below(300 * KIB) as usize
            } else {
                rng.below(8 * KIB) as usize
            },
            seed: seq,
        },
        32..=37 => Op::Truncate {
            path: paths.of_kind(rng, 'f'),
            len: if rng.below(2) == 0 {
                rng.below(4 * KIB)
            } else {
                rng.below(2 * MIB)
            },
        },
        38..=42 => Op::Read {
            path: paths.of_kind(rng, 'f'),
            offset: rng.below(128 * KIB),
            len: rng.below(64 * KIB) as usize,
        },
        43..=52 => Op::Rename {
            from: paths.any(rng),
            to: paths.target(rng),
        },
        53..=58 => Op::Link {
            from: paths.of_kind(rng, 'f'),
            to: paths.target(rng),
        },
        59..=66 => Op::Unlink {
            path: if rng.below(2) == 0 {
                paths.of_kind(rng, 'l')
            } else {
                paths.of_kind(rng, 'f')
            },
        },
        67..=74 => Op::Mkdir {
            path: paths.target(rng),
            mode: *rng.pick(&[0o755, 0o700, 0o750]),
        },
        75..=79 => Op::Rmdir {
            path: paths.of_kind(rng, 'd'),
        },
        80..=85 => Op::Chmod {
            path: paths.any(rng),
            mode: *rng.pick(&CHMODS),
        },
        86..=91 => {
            let target = match rng.below(3) {
                0 => rng.pick(&Paths::NAMES).to_string(),
                1 => format!("../{}", rng.pick(&Paths::NAMES)),
                _ => paths.any(rng),
            };
            Op::Symlink {
                target,
                path: paths.target(rng),
            }
        }
        92..=97 => Op::SetXattr {
            path: if rng.below(2) == 0 {
                paths.of_kind(rng, 'd')
            } else {
                paths.of_kind(rng, 'f')
            },
            name: format!("user.k{}", rng.below(3)),
            value: random_bytes(seq, rng.below(100) as usize),
            flags: rng.below(3) as u8,
        },
        98..=109 => match rng.below(8) {
            0..=1 => Op::Hold {
                slot: rng.below(3) as usize,
                path: paths.of_kind(rng, 'f'),
            },
            2..=4 => Op::HeldWrite {
                slot: rng.below(3) as usize,
                offset: rng.below(256 * KIB),
                len: rng.below(16 * KIB) as usize,
                seed: seq,
            },
            5..=6 => Op::HeldRead {
                slot: rng.below(3) as usize,
                offset: rng.below(256 * KIB),
                len: rng.below(64 * KIB) as usize,
            },
            _ => Op::Release {
                slot: rng.below(3) as usize,
            },
        },
        110..=111 => Op::GetXattr {
            path: paths.any(rng),
            name: format!("user.k{}", rng.below(3)),
        },
        112..=117 => {
            use libc::{
                FALLOC_FL_COLLAPSE_RANGE as COLLAPSE, FALLOC_FL_INSERT_RANGE as INSERT,
                FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH, FALLOC_FL_ZERO_RANGE as ZERO,
            };
            // Every mode ext4 takes, and two it refuses (punch without keep size,
            // collapse with another flag).
            let mode = *rng.pick(&[
                0,
                KEEP,
                PUNCH | KEEP,
                ZERO,
                ZERO | KEEP,
                COLLAPSE,
                INSERT,
                PUNCH,
                COLLAPSE | KEEP,
            ]);
            let aligned = mode & (COLLAPSE | INSERT) != 0 && rng.below(5) > 0;
            let (offset, len) = if aligned {
                (rng.below(64) * 4 * KIB, (1 + rng.below(16)) * 4 * KIB)
            } else {
                (rng.below(300 * KIB), 1 + rng.below(200 * KIB))
            };
            Op::Fallocate {
                path: paths.of_kind(rng, 'f'),
                mode,
                offset,
                len,
            }
        }
        118..=119 => Op::ListOpen {
            path: if rng.below(3) == 0 {
                String::new()
            } else {
                paths.of_kind(rng, 'd')
            },
        },
        _ => Op::ListStep,
    }
}

const DIFF_FIELDS: Fields = Fields {
    owner: false,
    mtime: false,
    xattrs: true,
    nlink: true,
    link_groups: true,
    content: true,
};

/// What is compared after every operation: everything but the bytes (those of the
/// files an operation changed are compared on their own, all of them every 100).
const STEP_FIELDS: Fields = Fields {
    content: false,
    ..DIFF_FIELDS
};

/// Bytes of `root/rel`, or the errno of reading them.
fn bytes_of(root: &Path, rel: &str) -> Result<Vec<u8>, i32> {
    fs::read(root.join(rel)).map_err(errno)
}

#[test]
fn seeded_random_operations_match_a_plain_folder() {
    require_fuse!();
    let (tmp, repo, mnt) = setup();
    let plain = tmp.path().join("plain").join("t");
    fs::create_dir_all(&plain).unwrap();
    let m = Mount::new(&repo, &mnt);
    let live = m.path("t");
    fs::create_dir(&live).unwrap();
    // A folder big enough that a listing takes many getdents calls.
    for side in [&plain, &live] {
        fs::create_dir(side.join("many")).unwrap();
        for i in 0..300 {
            fs::write(side.join(format!("many/n{i:03}")), b"").unwrap();
        }
    }

    // SNAPFS_DIFF_SEED replays another sequence (e.g. to hunt with many seeds);
    // SNAPFS_DIFF_OPS sets the length.
    let seed = std::env::var("SNAPFS_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xd1ff);
    let ops: u64 = std::env::var("SNAPFS_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut rng = Rng(seed);
    let (mut ok, mut listings, mut refused_by_kernel) = (0, 0, 0);
    let (mut plain_held, mut live_held): (Held, Held) = Default::default();
    let mut held_paths: [Option<String>; 3] = Default::default();
    let mut listing: Option<(Listing, Listing, BTreeSet<String>)> = None;
    for seq in 0..ops {
        let paths = existing(&plain);
        let op = random_op(&mut rng, seq, &paths);
        let what = format!("seed {seed} op #{seq} {op:?}");
        match &op {
            Op::ListOpen { path } => {
                if let Some((p, l, touched)) = listing.take() {
                    p.check(&touched, &what);
                    l.check(&touched, &what);
                }
                let (p, l) = (Listing::open(&plain, path), Listing::open(&live, path));
                assert_eq!(p.as_ref().err(), l.as_ref().err(), "{what}: opening the folder");
                if let (Ok(p), Ok(l)) = (p, l) {
                    listing = Some((p, l, BTreeSet::new()));
                    listings += 1;
                }
                continue;
            }
            Op::ListStep => {
                if let Some((p, l, touched)) = &mut listing {
                    p.step();
                    l.step();
                    if p.done && l.done {
                        p.check(touched, &what);
                        l.check(touched, &what);
                        listing = None;
                    }
                }
                continue;
            }
            _ => {}
        }
        if let Some((p, _, touched)) = &mut listing {
            for (dir, name) in names_changed(&op) {
                if dir == p.dir {
                    touched.insert(name);
                }
            }
            // A folder renamed or removed under its listing (or above it): over.
            let gone = names_changed(&op).into_iter().any(|(d, n)| {
                let path = if d.is_empty() { n } else { format!("{d}/{n}") };
                p.dir == path || p.dir.starts_with(&format!("{path}/"))
            });
            if gone {
                listing = None;
            }
        }
        let shift = matches!(&op, Op::Fallocate { mode, .. }
            if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0);
        let got = apply(&live, &op, &mut live_held);
        if shift && got == Err(libc::EOPNOTSUPP) {
            // This kernel answers collapse and insert on FUSE itself (the daemon never
            // sees them); the fs core's own tests cover them. Skip the plain side.
            refused_by_kernel += 1;
            continue;
        }
        let want = apply(&plain, &op, &mut plain_held);
        assert_eq!(got, want, "{what}: mount vs plain folder (Err = errno)");
        if want.is_ok() {
            ok += 1;
            match &op {
                Op::Hold { slot, path } => held_paths[*slot] = Some(path.clone()),
                Op::Release { slot } => held_paths[*slot] = None,
                _ => {}
            }
        }
        for rel in data_changed(&op, &held_paths) {
            assert!(
                bytes_of(&plain, rel) == bytes_of(&live, rel),
                "{what}: bytes of {rel} differ (or one side cannot read them)"
            );
        }
        let full = seq % 100 == 99;
        assert_trees_equal(
            &walk_tree(&plain, if full { DIFF_FIELDS } else { STEP_FIELDS }),
            &walk_tree(&live, if full { DIFF_FIELDS } else { STEP_FIELDS }),
            &format!("after {what}"),
        );
    }
    assert!(
        ok > ops / 2,
        "the workload should mostly succeed, only {ok} of {ops} did"
    );
    assert!(listings > ops / 200, "listings ran: {listings}");
    eprintln!(
        "differential: {ok} of {ops} operations succeeded on both sides; {listings} listings; \
         {refused_by_kernel} collapse/insert answered EOPNOTSUPP by the kernel"
    );
    drop((plain_held, live_held, listing));
    m.umount();
    let m = Mount::new(&repo, &mnt);
    assert_trees_equal(
        &walk_tree(&plain, DIFF_FIELDS),
        &walk_tree(&m.path("t"), DIFF_FIELDS),
        "after remount",
    );
    m.umount();
}
