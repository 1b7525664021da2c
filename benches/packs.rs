//! Chunks in pack files against one object file per chunk, at the store: two mirrors
//! on the disk that holds `BENCH_DIR` (default: the system's temporary folder), the
//! sides alternating round by round. A plain timing program printing markdown tables;
//! run with `cargo bench --bench packs` (as root, so it can drop the page cache before
//! the cold reads; otherwise those rows read warm and say so).
//!
//! 1. A commit of 10 to 100 small chunks (300 B to 3 KB): put every chunk, then sync
//!    (what a commit of a metadata storm or of small files waits for).
//! 2. 256 MiB of incompressible 64 KiB chunks, synced every MiB, with packs of 4, 16
//!    and 64 MiB: write rate, then a cold read of everything in the order written.

use std::path::Path;
use std::time::Instant;

use snapfs::codec;
use snapfs::store::{DirStore, MirrorStore, ObjectStore, PackMirrors, Redundancy, TARGET_PACK_BYTES};
use snapfs::types::{ChunkId, Location, MirrorId, PackId, RepoId};

const REPO: RepoId = RepoId([4; 16]);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn objects(dir: &Path) -> MirrorStore {
    let stores: Vec<(MirrorId, snapfs::Result<Box<dyn ObjectStore>>)> = (0..2)
        .map(|i| {
            let store = DirStore::create(&dir.join(format!("m{i}")), REPO, MirrorId(i))
                .map(|s| Box::new(s) as Box<dyn ObjectStore>);
            (MirrorId(i), store)
        })
        .collect();
    MirrorStore::new(stores).unwrap()
}

fn packs(dir: &Path, target: u64) -> PackMirrors {
    let folders: Vec<(MirrorId, std::path::PathBuf, bool)> = (0..2)
        .map(|i| {
            let folder = dir.join(format!("m{i}"));
            snapfs::store::claim_folder(&folder, REPO, MirrorId(i)).unwrap();
            (MirrorId(i), folder, true)
        })
        .collect();
    PackMirrors::open(REPO, &folders, PackId(1), target).unwrap()
}

fn encoded(rng: &mut Rng, len: usize) -> (ChunkId, Vec<u8>) {
    let e = codec::encode(&rng.bytes(len), None);
    (e.id, e.frame)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() * 9 / 10]
}

/// Writes back everything and drops the page cache; false when not allowed (not root).
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn small_commits(base: &Path) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let obj = objects(&dir.path().join("objects"));
    let pk = packs(&dir.path().join("packs"), TARGET_PACK_BYTES);
    let mut rng = Rng(0x5eed);
    let (mut o, mut p) = (Vec::new(), Vec::new());
    for round in 0..200 {
        let n = 10 + rng.below(91) as usize;
        let batch: Vec<(ChunkId, Vec<u8>)> = (0..n)
            .map(|_| {
                let len = 300 + rng.below(2700) as usize;
                encoded(&mut rng, len)
            })
            .collect();
        let run_objects = |o: &mut Vec<f64>| {
            let t = Instant::now();
            for (id, frame) in &batch {
                obj.put_all(id, frame).unwrap();
            }
            obj.sync().unwrap();
            o.push(t.elapsed().as_secs_f64() * 1e3);
        };
        let run_packs = |p: &mut Vec<f64>| {
            let t = Instant::now();
            let refs: Vec<(ChunkId, &[u8])> = batch.iter().map(|(id, f)| (*id, f.as_slice())).collect();
            pk.put(&refs).unwrap();
            pk.sync().unwrap();
            p.push(t.elapsed().as_secs_f64() * 1e3);
        };
        if round % 2 == 0 {
            run_objects(&mut o);
            run_packs(&mut p);
        } else {
            run_packs(&mut p);
            run_objects(&mut o);
        }
    }
    println!("| a commit of 10-100 chunks of 300 B-3 KB, two mirrors (200 each) | median | p90 |");
    println!("| --- | ---: | ---: |");
    println!(
        "| a file per chunk + sync | {:.2} ms | {:.2} ms |",
        median(&mut o),
        p90(&mut o)
    );
    println!(
        "| packs: one append per mirror + fdatasync | {:.2} ms | {:.2} ms |",
        median(&mut p),
        p90(&mut p)
    );
    println!();
}

const STREAM_BYTES: usize = 256 << 20;
const CHUNK: usize = 64 << 10;

fn stream(base: &Path) {
    let mut rng = Rng(0xfeed);
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..STREAM_BYTES / CHUNK)
        .map(|_| encoded(&mut rng, CHUNK))
        .collect();
    let cold = drop_caches();
    println!(
        "| 256 MiB of 64 KiB chunks, two mirrors, synced every MiB | write | read back{} |",
        if cold {
            ", cold"
        } else {
            " (warm: could not drop the page cache)"
        }
    );
    println!("| --- | ---: | ---: |");
    let mb = STREAM_BYTES as f64 / 1e6;
    // Objects, then packs of each size; each in a fresh folder.
    {
        let dir = tempfile::tempdir_in(base).unwrap();
        let obj = objects(dir.path());
        let t = Instant::now();
        for (i, (id, frame)) in chunks.iter().enumerate() {
            obj.put_all(id, frame).unwrap();
            if i % 16 == 15 {
                obj.sync().unwrap();
            }
        }
        obj.sync().unwrap();
        let write = mb / t.elapsed().as_secs_f64();
        drop_caches();
        let t = Instant::now();
        for (id, _) in &chunks {
            obj.get_verified(id).unwrap();
        }
        let read = mb / t.elapsed().as_secs_f64();
        println!("| a file per chunk | {write:.0} MB/s | {read:.0} MB/s |");
    }
    for target in [4u64 << 20, 16 << 20, 64 << 20] {
        let dir = tempfile::tempdir_in(base).unwrap();
        let pk = packs(dir.path(), target);
        let t = Instant::now();
        let mut locs: Vec<Location> = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(16) {
            let refs: Vec<(ChunkId, &[u8])> = batch.iter().map(|(id, f)| (*id, f.as_slice())).collect();
            locs.extend(pk.put(&refs).unwrap());
            pk.sync().unwrap();
        }
        let write = mb / t.elapsed().as_secs_f64();
        drop_caches();
        let t = Instant::now();
        for ((id, _), at) in chunks.iter().zip(&locs) {
            pk.read(id, *at).unwrap();
        }
        let read = mb / t.elapsed().as_secs_f64();
        println!(
            "| packs of {} MiB | {write:.0} MB/s | {read:.0} MB/s |",
            target >> 20
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    small_commits(&base);
    stream(&base);
}
