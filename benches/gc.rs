//! gc cost against garbage, not repository size, compaction included: a repository
//! of 1,000,000 chunks in real packs, of which 10,000 are unreferenced (2,000 in each
//! of five packs, so those five fall below half live and are compacted), against the
//! same with all 1,000,000 unreferenced (every pack dead, deleted whole). A plain
//! timing program (one gc per case; building the repository is the slow part),
//! printing a markdown table. Run with `cargo bench --bench gc`.

use std::time::Instant;

use snapfs::catalog::{Catalog, Extent, FileKind, NewCatalog, NewInode, Settings};
use snapfs::chunker::ChunkerParams;
use snapfs::ops::gc::{gc, GcStats};
use snapfs::store::{PackMirrors, Redundancy};
use snapfs::types::{ChunkId, InodeId, MirrorId, PackId, RepoId};

const CHUNKS: u64 = 1_000_000;
/// Plaintext bytes per chunk: small, so that a million real entries fit in ~330 MB.
const CHUNK_BYTES: usize = 256;
/// Packs of 1 MiB: 3,000 entries each (three puts of 1,000), 334 packs.
const PACK_BYTES: u64 = 1 << 20;
const REPO: RepoId = RepoId([2; 16]);

/// Which chunks are garbage: (chunk number, its place in its pack from 1).
type Garbage<'a> = &'a dyn Fn(u64, u64) -> bool;

fn plain(i: u64) -> Vec<u8> {
    i.to_le_bytes()
        .iter()
        .cycle()
        .take(CHUNK_BYTES)
        .copied()
        .collect()
}

/// A repository of CHUNKS chunks stored in packs, those for which `garbage(i, place
/// in its pack)` holds referenced by no extent. Returns the catalog, the store and the
/// number of garbage chunks.
fn build(dir: &std::path::Path, garbage: Garbage) -> (Catalog, PackMirrors, u64) {
    let mut cat = Catalog::create(
        &dir.join("catalog.db"),
        &NewCatalog {
            settings: Settings {
                repo_id: REPO,
                chunker: ChunkerParams::default(),
                zstd_level: None,
                created_ns: 0,
            },
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            mirrors: vec![dir.join("m0")],
        },
    )
    .unwrap();
    cat.set_durable_commits(false).unwrap();
    let folder = dir.join("m0");
    snapfs::store::claim_folder(&folder, REPO, MirrorId(0)).unwrap();
    let store = PackMirrors::open(REPO, &[(MirrorId(0), folder, true)], PackId(1), PACK_BYTES).unwrap();
    let txn = cat.write().unwrap();
    let (mut file, mut unreferenced, mut in_pack, mut pack) = (InodeId(0), 0, 0, PackId(0));
    // One file per 10 chunk numbers, made at its first referenced chunk (a file of
    // many extents makes each extent insert scan the ones before it).
    let mut block = None;
    for start in (0..CHUNKS).step_by(1000) {
        let encoded: Vec<_> = (start..start + 1000)
            .map(|i| snapfs::codec::encode(&plain(i), None))
            .collect();
        let frames: Vec<(ChunkId, &[u8])> = encoded.iter().map(|e| (e.id, e.frame.as_slice())).collect();
        let placed = store.put(&frames).unwrap();
        for (k, (e, at)) in encoded.iter().zip(placed).enumerate() {
            let i = start + k as u64;
            if at.pack != pack {
                (pack, in_pack) = (at.pack, 0);
            }
            in_pack += 1;
            txn.add_chunk(&e.id, CHUNK_BYTES as u64, e.frame.len() as u64, at)
                .unwrap();
            if garbage(i, in_pack) {
                unreferenced += 1;
                continue;
            }
            if block != Some(i / 10) {
                block = Some(i / 10);
                let new = NewInode {
                    kind: FileKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    time_ns: 0,
                    target: vec![],
                };
                file = txn.create_inode(&new).unwrap().id;
                txn.link(InodeId::ROOT, format!("f{i}").as_bytes(), file).unwrap();
            }
            let offset = (i % 10) * CHUNK_BYTES as u64;
            txn.set_extents(
                file,
                offset,
                offset + CHUNK_BYTES as u64,
                &[Extent {
                    offset,
                    length: CHUNK_BYTES as u64,
                    chunk: e.id,
                    chunk_offset: 0,
                }],
            )
            .unwrap();
        }
    }
    store.sync().unwrap();
    txn.commit().unwrap();
    (cat, store, unreferenced)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes bench binaries; nothing to list here
    }
    let mut rows: Vec<(u64, f64, GcStats)> = Vec::new();
    // A put of 1,000 entries goes where it fits, so each pack holds 3,000: the first
    // 2,000 of packs 2 to 6 (one third live each), then every chunk.
    let some = |i: u64, in_pack: u64| (3000..18_000).contains(&i) && in_pack <= 2000;
    let cases: [(&str, Garbage); 2] = [("10,000", &some), ("all", &|_, _| true)];
    for (name, garbage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let (mut cat, store, unreferenced) = build(dir.path(), garbage);
        let build_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let stats = gc(&mut cat, &store, false, false).unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(stats.chunks, unreferenced);
        eprintln!(
            "{name}: built {CHUNKS} chunks ({unreferenced} unreferenced) in {build_secs:.1} s; gc {secs:.3} s: {stats:?}"
        );
        rows.push((unreferenced, secs, stats));
    }
    println!("| repository | unreferenced | packs deleted | packs compacted (chunks copied) | gc time |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (garbage, secs, s) in &rows {
        println!(
            "| {CHUNKS} chunks in 1 MiB packs | {garbage} | {} | {} ({}) | {secs:.3} s |",
            s.packs, s.compacted_packs, s.moved_chunks
        );
    }
    println!("| ratio | | | | {:.1}% |", rows[0].1 / rows[1].1 * 100.0);
}
