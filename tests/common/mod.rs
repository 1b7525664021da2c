//! Helpers shared by the end-to-end tests: running the real binary, making data.
#![allow(dead_code)]

pub mod mount;
pub mod powercut;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the snapfs binary with `args` against repository `repo`.
pub fn snapfs(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("SNAPFS_REPO")
        .output()
        .expect("running the snapfs binary")
}

/// Runs snapfs and asserts success; returns stdout.
pub fn snapfs_ok(repo: &Path, args: &[&str]) -> String {
    let out = snapfs(repo, args);
    assert!(
        out.status.success(),
        "snapfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs snapfs, asserts it fails with exit code 1 and a one-line error that contains
/// every one of `needles`; returns the message.
pub fn snapfs_fails(repo: &Path, args: &[&str], needles: &[&str]) -> String {
    snapfs_fails_with(1, repo, args, needles)
}

/// Like `snapfs_fails`, for a command line that is wrong: exit code 2.
pub fn snapfs_usage_error(repo: &Path, args: &[&str], needles: &[&str]) -> String {
    snapfs_fails_with(2, repo, args, needles)
}

fn snapfs_fails_with(code: i32, repo: &Path, args: &[&str], needles: &[&str]) -> String {
    let out = snapfs(repo, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "snapfs {args:?} should fail with {code}; stderr: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "error should be one line: {stderr}"
    );
    assert!(stderr.starts_with("snapfs: error: "), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "error {stderr:?} should mention {n:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// splitmix64: a small seeded generator for reproducible workloads.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A generator for `seed` (mixed, so that nearby seeds start far apart).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like bytes: words from a fixed vocabulary of 4096 words, chosen at random.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let noise = random_bytes(seed ^ 0xabcdef, 4096 * 16);
    let vocab: Vec<String> = (0..4096)
        .map(|i| {
            let n = 3 + (noise[i * 16] % 8) as usize;
            (0..n)
                .map(|j| (b'a' + noise[i * 16 + 1 + j] % 26) as char)
                .collect()
        })
        .collect();
    let picks = random_bytes(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        let w = u16::from_le_bytes([picks[i % len], picks[(i + 1) % len]]) as usize % vocab.len();
        out.extend_from_slice(vocab[w].as_bytes());
        out.push(if i % 13 == 12 { b'\n' } else { b' ' });
        i += 2;
    }
    out.truncate(len);
    out
}

/// Bytes of every file under `dir`, recursively (what the folder holds on disk).
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// A fresh repository folder path (not created) inside a temp dir.
pub fn temp_repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    (dir, repo)
}

/// Every pack file of the mirror folder `mirror` (`packs/XX/<16 hex>.pack`), sorted.
pub fn pack_files(mirror: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(mirror.join("packs")) else {
        return out;
    };
    for dir in dirs {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "pack") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One entry of a pack, read off its bytes by the layout README's "How it works"
/// gives (48-byte pack header; entry: "SNPE", frame length u32 LE, chunk id, frame,
/// 8-byte checksum).
#[derive(Clone, Debug)]
pub struct PackEntry {
    pub offset: u64,
    pub len: u64,
    pub chunk: [u8; 32],
}

impl PackEntry {
    /// Where the entry's frame (the chunk's stored bytes) starts.
    pub fn frame_offset(&self) -> u64 {
        self.offset + 40
    }
}

/// The entries of the pack file `path`, in order, up to the first one that is not
/// whole.
pub fn pack_entries(path: &Path) -> Vec<PackEntry> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"SNFSPACK", "{} is a pack", path.display());
    let mut out = Vec::new();
    let mut at = 48usize;
    while at + 48 <= bytes.len() && &bytes[at..at + 4] == b"SNPE" {
        let frame = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if at + 48 + frame > bytes.len() {
            break;
        }
        out.push(PackEntry {
            offset: at as u64,
            len: (48 + frame) as u64,
            chunk: bytes[at + 8..at + 40].try_into().unwrap(),
        });
        at += 48 + frame;
    }
    out
}

/// Flips one byte of the file `path` at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x55;
    f.write_all_at(&b, offset).unwrap();
}
