//! gc cost against garbage, not repository size: a catalog of 1,000,000 chunks of
//! which 10,000 are unreferenced, against the same with all 1,000,000 unreferenced.
//! A plain timing program (one gc per case; building the catalog is the slow part),
//! printing a markdown table. Run with `cargo bench --bench gc`.

use std::time::Instant;

use snapfs::catalog::{Catalog, Extent, FileKind, NewCatalog, NewInode, Settings};
use snapfs::chunker::ChunkerParams;
use snapfs::ops::gc::gc;
use snapfs::store::{MemoryStore, MirrorStore, ObjectStore};
use snapfs::types::{ChunkId, InodeId, MirrorId, RepoId};

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
        txn.add_chunk(&chunk(i), 65536, 65552, 1).unwrap();
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
        let stores: Vec<(MirrorId, snapfs::Result<Box<dyn ObjectStore>>)> = vec![(
            MirrorId(0),
            Ok(Box::new(MemoryStore::new()) as Box<dyn ObjectStore>),
        )];
        let store = MirrorStore::new(stores).unwrap();
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
