//! Power cuts under a real mount: the repository (or its mirrors) sits on the
//! power-cut layer (tests/common/powercut.rs), a FUSE filesystem that keeps only what
//! was fsynced when the power goes, where kill -9 keeps the kernel's page cache and so
//! can never catch a missing or misordered sync.

mod common;

use std::io::Write;

use common::mount::{kill_daemon, require_fuse, Mount};
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
    let status: serde_json::Value = serde_json::from_str(&snapfs_ok(&repo, &["status", "--json"])).unwrap();
    for m in status["mirrors"].as_array().unwrap() {
        assert_eq!(m["filesystem"], "fuse", "{m}");
        assert_eq!(m["sync"], "fsync", "{m}");
    }

    let data = random_bytes(8, 8 << 20);
    {
        let mount = Mount::new(&repo, &mnt);
        let mut f = std::fs::File::create(mount.path("big.bin")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        layer.cut_now(1);
        kill_daemon(&repo, &mnt);
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
