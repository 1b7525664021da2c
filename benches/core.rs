//! Criterion benchmarks of the core pipeline: freezing a generation (snapshot cost
//! against tree size), chunking, and chunk encoding.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use snapfs::catalog::{Catalog, FileKind, NewCatalog, NewInode, Settings};
use snapfs::chunker::{chunk_reader, ChunkerParams};
use snapfs::types::{InodeId, RepoId};

fn catalog_with_files(dir: &std::path::Path, files: usize) -> Catalog {
    let mut cat = Catalog::create(
        &dir.join("catalog.db"),
        &NewCatalog {
            settings: Settings {
                repo_id: RepoId([1; 16]),
                chunker: ChunkerParams::default(),
                zstd_level: Some(3),
                created_ns: 0,
            },
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            mirrors: vec![dir.join("m0")],
        },
    )
    .unwrap();
    let txn = cat.write().unwrap();
    let mut parent = InodeId::ROOT;
    for i in 0..files {
        if i % 1000 == 0 {
            let d = txn.create_inode(&new(FileKind::Dir)).unwrap();
            txn.link(InodeId::ROOT, format!("d{i}").as_bytes(), d.id).unwrap();
            parent = d.id;
        }
        let f = txn.create_inode(&new(FileKind::File)).unwrap();
        txn.link(parent, format!("f{i}").as_bytes(), f.id).unwrap();
    }
    txn.commit().unwrap();
    cat
}

fn new(kind: FileKind) -> NewInode {
    NewInode {
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        time_ns: 0,
        target: Vec::new(),
    }
}

fn freeze(c: &mut Criterion) {
    let mut group = c.benchmark_group("freeze");
    for files in [100usize, 200_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = catalog_with_files(dir.path(), files);
        let mut n = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(files), &files, |b, _| {
            b.iter(|| {
                n += 1;
                black_box(cat.freeze(&format!("@bench-{n}"), None, n as i64).unwrap())
            })
        });
    }
    group.finish();
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def1u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn chunking(c: &mut Criterion) {
    let data = pseudo_random(16 << 20);
    let params = ChunkerParams {
        seed: 42,
        ..ChunkerParams::default()
    };
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("chunk 16 MiB", |b| {
        b.iter(|| {
            let mut n = 0usize;
            chunk_reader(&params, &data[..], &mut |c| {
                n += c.len();
                Ok(())
            })
            .unwrap();
            black_box(n)
        })
    });
    group.bench_function("blake3 16 MiB", |b| b.iter(|| black_box(blake3::hash(&data))));
    group.bench_function("encode zstd-3 16 MiB (64 KiB chunks)", |b| {
        b.iter(|| {
            for chunk in data.chunks(64 << 10) {
                black_box(snapfs::codec::encode(chunk, Some(3)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, freeze, chunking);
criterion_main!(benches);
