//! Import keeps everything a folder tree holds: checked through the library against
//! the source, byte for byte and attribute for attribute.

mod common;

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use common::*;
use snapfs::catalog::FileKind;
use snapfs::repo::{InitOptions, Repo};
use snapfs::types::InodeId;

fn lookup_path(repo: &Repo, path: &str) -> InodeId {
    let mut id = InodeId::ROOT;
    for part in path.split('/') {
        id = repo
            .catalog
            .lookup(repo.catalog.live(), id, part.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{path}"));
    }
    id
}

fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    };
    utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

#[test]
fn import_keeps_bytes_holes_links_modes_owners_times_and_xattrs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir/deeper")).unwrap();
    let data = random_bytes(7, 3 << 20);
    std::fs::write(src.join("dir/data.bin"), &data).unwrap();
    std::fs::hard_link(src.join("dir/data.bin"), src.join("hard.bin")).unwrap();
    symlink("dir/data.bin", src.join("link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    // Sparse: 1 MiB of data at 0 and at 64 MiB, 100 MiB long.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(src.join("sparse")).unwrap();
        f.write_all_at(&data[..1 << 20], 0).unwrap();
        f.write_all_at(&data[1 << 20..2 << 20], 64 << 20).unwrap();
        f.set_len(100 << 20).unwrap();
    }
    std::fs::write(src.join("dir/deeper/small.txt"), b"hello\n").unwrap();
    rustix::fs::lsetxattr(
        src.join("dir/deeper/small.txt"),
        "user.note",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let owner_changed = rustix::process::getuid().is_root();
    if owner_changed {
        std::os::unix::fs::lchown(src.join("dir/deeper/small.txt"), Some(1234), Some(5678)).unwrap();
    }
    // After chown, which clears setuid.
    rustix::fs::chmod(
        src.join("dir/deeper/small.txt"),
        rustix::fs::Mode::from_raw_mode(0o4751),
    )
    .unwrap();
    set_times(
        &src.join("dir/deeper/small.txt"),
        (1_600_000_000, 123_456_789),
        (1_500_000_000, 987_654_321),
    );
    set_times(&src.join("link"), (1_400_000_000, 1), (1_400_000_001, 2));

    let repo_path = tmp.path().join("repo");
    let mut repo = Repo::init(&repo_path, &InitOptions::default(), 1).unwrap();
    let stats = snapfs::ops::import::import(&mut repo, &src, "/", 2, &mut |_| {}).unwrap();
    assert_eq!(
        (
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.specials,
            stats.hard_links
        ),
        (3, 2, 1, 1, 1)
    );
    let live = repo.catalog.live();

    let small = repo
        .catalog
        .inode(live, lookup_path(&repo, "dir/deeper/small.txt"))
        .unwrap()
        .unwrap();
    assert_eq!(small.mode, 0o4751);
    assert_eq!(small.mtime_ns, 1_500_000_000_987_654_321);
    assert_eq!(small.atime_ns, 1_600_000_000_123_456_789);
    if owner_changed {
        assert_eq!((small.uid, small.gid), (1234, 5678));
    }
    assert_eq!(
        repo.catalog.xattr(live, small.id, b"user.note").unwrap(),
        Some(b"kept".to_vec())
    );
    assert_eq!(
        snapfs::fs::read_at(&repo.catalog, &*repo.store, live, &small, 0, 100).unwrap(),
        b"hello\n"
    );

    let a = lookup_path(&repo, "dir/data.bin");
    assert_eq!(lookup_path(&repo, "hard.bin"), a, "hard links share one inode");
    let attr = repo.catalog.inode(live, a).unwrap().unwrap();
    assert_eq!(attr.nlink, 2);
    assert_eq!(
        snapfs::fs::read_at(&repo.catalog, &*repo.store, live, &attr, 0, data.len()).unwrap(),
        data
    );
    assert_eq!(
        snapfs::fs::read_at(&repo.catalog, &*repo.store, live, &attr, 12345, 100_000).unwrap(),
        &data[12345..112_345]
    );

    let link = repo
        .catalog
        .inode(live, lookup_path(&repo, "link"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (link.kind, link.target.as_slice()),
        (FileKind::Symlink, &b"dir/data.bin"[..])
    );
    assert_eq!(link.mtime_ns, 1_400_000_001_000_000_002);

    let fifo = repo
        .catalog
        .inode(live, lookup_path(&repo, "fifo"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (fifo.kind, fifo.mode),
        (
            FileKind::Fifo,
            0o640 & !rustix::process::umask(rustix::fs::Mode::empty()).bits()
        )
    );

    let sparse = repo
        .catalog
        .inode(live, lookup_path(&repo, "sparse"))
        .unwrap()
        .unwrap();
    assert_eq!(sparse.size, 100 << 20);
    let extents = repo.catalog.extents(live, sparse.id, 0, u64::MAX).unwrap();
    let data_bytes: u64 = extents.iter().map(|e| e.length).sum();
    assert_eq!(data_bytes, 2 << 20, "holes cost no extents");
    let middle = snapfs::fs::read_at(&repo.catalog, &*repo.store, live, &sparse, 32 << 20, 4096).unwrap();
    assert!(middle.iter().all(|&b| b == 0));
    let second = snapfs::fs::read_at(&repo.catalog, &*repo.store, live, &sparse, 64 << 20, 1 << 20).unwrap();
    assert_eq!(second, &data[1 << 20..2 << 20]);
    let meta = std::fs::metadata(src.join("sparse")).unwrap();
    assert!(meta.blocks() * 512 < 10 << 20, "the source really is sparse");
}

#[test]
fn import_goes_on_with_one_mirror_lost_and_status_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), random_bytes(3, 300_000)).unwrap();
    let repo_path = tmp.path().join("repo");
    drop(Repo::init(&repo_path, &InitOptions::default(), 1).unwrap());
    std::fs::remove_dir_all(repo_path.join("mirror-1")).unwrap();
    let mut repo = Repo::open(&repo_path, "test").unwrap();
    snapfs::ops::import::import(&mut repo, &src, "/", 2, &mut |_| {}).unwrap();
    let live = repo.catalog.live();
    let attr = repo
        .catalog
        .inode(live, lookup_path(&repo, "f"))
        .unwrap()
        .unwrap();
    assert_eq!(
        snapfs::fs::read_at(&repo.catalog, &*repo.store, live, &attr, 0, 300_000).unwrap(),
        random_bytes(3, 300_000)
    );
    drop(repo);
    let report = snapfs::ops::status::status(&repo_path).unwrap();
    assert!(report.degraded());
    assert_eq!(report.mirrors[1].state, "lost");
    assert!(
        report.mirrors[1]
            .problem
            .as_deref()
            .unwrap_or("")
            .contains("mirror-1"),
        "{:?}",
        report.mirrors[1]
    );
    assert_eq!(report.mirrors[0].state, "complete");
    assert!(report.mirrors[0].packs > 0);
    assert_eq!(report.mirrors[1].packs, 0);
    let catalog = snapfs::repo::open_catalog_read_only(&repo_path).unwrap();
    assert_eq!(
        catalog.mirrors().unwrap()[1].state,
        "filling",
        "packs written while it was lost are not claimed for it: it must be filled"
    );
}
