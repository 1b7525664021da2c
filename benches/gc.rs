//! gc cost against garbage, not repository size: a catalog of 1,000,000 chunks of
//! which 10,000 are unreferenced, against the same with all 1,000,000 unreferenced.
//! A plain timing program (one gc per case; building the catalog is the slow part),
//! printing a markdown table. Run with `cargo bench --bench gc`.

use std::time::Instant;

use snapfs::catalog::{Catalog, Extent, FileKind, NewCatalog, NewInode, Settings};
use snapfs::chunker::ChunkerParams;
use snapfs::ops::gc::gc;
use snapfs::store::PackMirrors;
use snapfs::types::{ChunkId, InodeId, Location, MirrorId, PackId, RepoId};

const CHUNKS: u64 = 1_000_000;

fn chunk(i: u64) -> ChunkId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&i.to_be_bytes());
    id[8] = 0xc5;
    ChunkId(id)
}

/// A catalog of CHUNKS chunks, `garbage` of them referenced by no extent.
fn build(dir: &std::path::Path, garbage: u64) -> Catalog {
    let mut cat = Catalog::create(
        &dir.join("catalog.db"),
        &NewCatalog {
            settings: Settings {
                repo_id: RepoId([2; 16]),
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
    let txn = cat.write().unwrap();
    let referenced = CHUNKS - garbage;
    let mut file = InodeId(0);
    for i in 0..CHUNKS {
        // 256 entries of 65,600 bytes per pack: about 16 MiB packs, as written.
        let at = Location {
            pack: PackId(1 + i / 256),
            offset: 48 + (i % 256) * 65600,
            len: 65600,
        };
        txn.add_chunk(&chunk(i), 65536, 65552, at).unwrap();
        if i < referenced {
            if i % 1000 == 0 {
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
            let offset = (i % 1000) * 65536;
            txn.set_extents(
                file,
                offset,
                offset + 65536,
                &[Extent {
                    offset,
                    length: 65536,
                    chunk: chunk(i),
                    chunk_offset: 0,
                }],
            )
            .unwrap();
        }
    }
    txn.commit().unwrap();
    cat
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes bench binaries; nothing to list here
    }
    let mut rows = Vec::new();
    for garbage in [10_000u64, CHUNKS] {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut cat = build(dir.path(), garbage);
        let build_secs = started.elapsed().as_secs_f64();
        // A real mirror folder; the packs the catalog names were never written, so
        // deleting them costs one failed unlink each (their share of the time).
        let folder = dir.path().join("m0");
        snapfs::store::claim_folder(&folder, RepoId([2; 16]), MirrorId(0)).unwrap();
        let store = PackMirrors::open(
            RepoId([2; 16]),
            &[(MirrorId(0), folder, true)],
            PackId(1 + CHUNKS / 256),
            snapfs::store::TARGET_PACK_BYTES,
        )
        .unwrap();
        let started = Instant::now();
        let stats = gc(&mut cat, &store, false, false).unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(stats.chunks, garbage);
        eprintln!("built {CHUNKS} chunks ({garbage} unreferenced) in {build_secs:.1} s; gc {secs:.3} s");
        rows.push((garbage, secs));
    }
    println!("| repository | unreferenced | gc time |");
    println!("| --- | ---: | ---: |");
    for (garbage, secs) in &rows {
        println!("| {CHUNKS} chunks | {garbage} | {secs:.3} s |");
    }
    println!("| ratio | | {:.1}% |", rows[0].1 / rows[1].1 * 100.0);
}
