//! Helpers for the tests that run the real binary on a real FUSE mount: a guard that
//! always unmounts, the FUSE-or-skip check, killing the daemon, and a tree walker that
//! compares two folders in every attribute a user can see.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// True when this machine can mount FUSE file systems: /dev/fuse exists and
/// `fusermount3` is on PATH.
pub fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists() && on_path("fusermount3")
}

/// True when `program` is an executable file in one of the PATH folders.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Decides whether a mount test runs: true when FUSE is here. When it is not, says so
/// loudly and returns false (the test returns early), unless `SNAPFS_REQUIRE_FUSE=1`,
/// where a missing FUSE fails the test.
pub fn fuse_or_skip() -> bool {
    if fuse_available() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("mount test").to_string();
    if std::env::var("SNAPFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("{test}: no FUSE (/dev/fuse or fusermount3 missing) and SNAPFS_REQUIRE_FUSE=1");
    }
    eprintln!(
        "\n**********\nSKIPPED: no FUSE (/dev/fuse or fusermount3 missing): {test} did not run\n**********"
    );
    false
}

/// First line of every mount test: returns from the test when FUSE is missing
/// (see [`fuse_or_skip`]).
#[allow(unused_macros)]
macro_rules! require_fuse {
    () => {
        if !$crate::common::mount::fuse_or_skip() {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_fuse;

/// True when /proc/self/mountinfo lists a FUSE mount at exactly `mountpoint`.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = mountinfo_escape(&mountpoint.to_string_lossy());
    info.lines().any(|line| {
        let Some((head, tail)) = line.split_once(" - ") else {
            return false;
        };
        head.split(' ').nth(4) == Some(target.as_str()) && tail.starts_with("fuse")
    })
}

/// The kernel writes space, tab, newline and backslash in mountinfo as octal escapes.
fn mountinfo_escape(path: &str) -> String {
    path.replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012")
}

/// Runs `cmd` and waits at most `limit`; kills it (it is our child) when it overruns.
/// Returns None on timeout.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Output {
                status,
                stdout: out_reader.join().unwrap(),
                stderr: err_reader.join().unwrap(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `program args` in `dir` and asserts it succeeds; returns stdout.
pub fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    run_in_env(dir, program, args, &[])
}

/// [`run_in`] with extra environment variables.
pub fn run_in_env(dir: &Path, program: &str, args: &[&str], env: &[(&str, &OsStr)]) -> String {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(600))
        .unwrap_or_else(|| panic!("{program} {args:?} in {} took over 600 s", dir.display()));
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed ({}):\n{}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the snapfs binary against `repo`, giving up after `limit`.
fn snapfs_timed(repo: &Path, args: &[&OsStr], limit: Duration) -> Option<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapfs"));
    cmd.arg("--repo").arg(repo).args(args).env_remove("SNAPFS_REPO");
    run_with_timeout(&mut cmd, limit)
}

/// The pid the repository's lock file names (its first line), if any.
pub fn lock_pid(repo: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(repo.join("lock")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// True while `pid` is a live snapfs process serving `repo` (not a zombie, not a
/// recycled pid of something else).
pub fn is_daemon_alive(pid: i32, repo: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S …": the state follows the last ')'.
    let gone = |stat: &str| {
        let state = stat.rsplit_once(')').map(|(_, s)| s.trim_start()).unwrap_or("");
        state.starts_with('Z') || state.starts_with('X')
    };
    // The leader turns zombie before the other threads are gone, and the process's
    // descriptors (its control socket among them) close only with the last of them:
    // a command that connected in between had its connection reset (CI saw one).
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok());
    if gone(&stat) && threads.into_iter().all(|t| gone(&t)) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("snapfs") && cmdline.contains(repo.to_string_lossy().as_ref())
}

/// Waits until the daemon named by the repository lock has exited; false on timeout.
pub fn wait_daemon_exit(repo: &Path, limit: Duration) -> bool {
    let Some(pid) = lock_pid(repo) else {
        return true;
    };
    let deadline = Instant::now() + limit;
    while is_daemon_alive(pid, repo) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn kill9(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// kill -9 of the mount daemon of `repo` (the pid in REPO/lock's first line), waits for
/// it to die, then detaches the dead mount at `mountpoint` (`fusermount3 -uz`).
pub fn kill_daemon(repo: &Path, mountpoint: &Path) {
    let pid = lock_pid(repo).expect("REPO/lock names the daemon pid");
    assert!(
        is_daemon_alive(pid, repo),
        "pid {pid} from REPO/lock is not a live snapfs daemon"
    );
    kill_daemon_pid(pid, repo, mountpoint);
}

/// kill -9 of daemon `pid` of `repo`, waits for it to die, then detaches its dead
/// mount at `mountpoint` (`fusermount3 -uz`).
pub fn kill_daemon_pid(pid: i32, repo: &Path, mountpoint: &Path) {
    kill9(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_daemon_alive(pid, repo) {
        assert!(
            Instant::now() < deadline,
            "daemon {pid} survived kill -9 for 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // And until its control socket takes no connection: a command that connected
    // while the last of its threads was still on the way out had its connection
    // reset (CI saw it once more after the wait above).
    let socket = repo.join("control.sock");
    while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        assert!(
            Instant::now() < deadline,
            "daemon {pid}'s control socket still took connections 30 s after kill -9"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = run_with_timeout(
        Command::new("fusermount3").arg("-uz").arg(mountpoint),
        Duration::from_secs(30),
    );
    assert!(
        !is_mounted(mountpoint),
        "{} still mounted after kill",
        mountpoint.display()
    );
}

/// Folders of the repository's mirrors (REPO/mirror-*), sorted.
pub fn mirror_dirs(repo: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("mirror-"))
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no mirror-* folders in {}", repo.display());
    dirs
}

/// A mounted repository. Dropping it ALWAYS unmounts (snapfs umount, then
/// `fusermount3 -uz`, then `umount -l`) and waits for the daemon to go, also when the
/// test panicked; it then shows the end of the daemon's log.
pub struct Mount {
    pub repo: PathBuf,
    pub mountpoint: PathBuf,
    /// What `snapfs mount` printed.
    pub stdout: String,
    /// The daemon this guard waits for (and kills if it hangs) at cleanup.
    daemon: Option<i32>,
}

impl Mount {
    /// Runs `snapfs --repo REPO mount MOUNTPOINT` and asserts it succeeds and that the
    /// mount is there when it returns.
    pub fn new(repo: &Path, mountpoint: &Path) -> Mount {
        Mount::with_args(repo, mountpoint, &[])
    }

    /// [`Mount::new`] with extra arguments to `snapfs mount` (e.g. `-o allow_other`).
    pub fn with_args(repo: &Path, mountpoint: &Path, extra: &[&str]) -> Mount {
        let mountpoint = std::fs::canonicalize(mountpoint)
            .unwrap_or_else(|e| panic!("mount point {}: {e}", mountpoint.display()));
        let mut args = vec![OsStr::new("mount"), mountpoint.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let out = snapfs_timed(repo, &args, Duration::from_secs(120));
        // From here on the guard owns the cleanup, whatever happens.
        let mut mount = Mount {
            repo: repo.to_path_buf(),
            mountpoint,
            stdout: String::new(),
            daemon: None,
        };
        let out = out.expect("snapfs mount did not return within 120 s");
        assert!(
            out.status.success(),
            "snapfs mount failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        mount.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        mount.daemon = lock_pid(repo);
        assert!(
            is_mounted(&mount.mountpoint),
            "snapfs mount returned 0 but {} is not mounted",
            mount.mountpoint.display()
        );
        mount
    }

    /// A guard for a mount somebody else makes (e.g. `mount -f`): only cleans up.
    pub fn adopt(repo: &Path, mountpoint: &Path) -> Mount {
        Mount {
            repo: repo.to_path_buf(),
            mountpoint: std::fs::canonicalize(mountpoint).unwrap(),
            stdout: String::new(),
            daemon: None,
        }
    }

    /// `MOUNTPOINT/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The daemon's pid (from REPO/lock).
    pub fn pid(&self) -> i32 {
        lock_pid(&self.repo).expect("REPO/lock names the daemon pid")
    }

    /// `snapfs umount`, asserting it succeeds, that the mount is gone and that the
    /// daemon has exited.
    pub fn umount(self) {
        let out = snapfs_timed(
            &self.repo,
            &[OsStr::new("umount"), self.mountpoint.as_os_str()],
            Duration::from_secs(300),
        )
        .expect("snapfs umount did not return within 300 s");
        assert!(
            out.status.success(),
            "snapfs umount failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!is_mounted(&self.mountpoint), "still mounted after snapfs umount");
        assert!(
            wait_daemon_exit(&self.repo, Duration::from_secs(60)),
            "the daemon still runs 60 s after snapfs umount returned"
        );
    }

    /// [`kill_daemon`] for this mount.
    pub fn kill_daemon(&self) {
        kill_daemon(&self.repo, &self.mountpoint);
    }

    fn cleanup(&self) {
        let mp = self.mountpoint.as_os_str();
        // An adopted mount's daemon is known only once something is mounted here.
        let daemon = self.daemon.or_else(|| {
            is_mounted(&self.mountpoint)
                .then(|| lock_pid(&self.repo))
                .flatten()
        });
        if is_mounted(&self.mountpoint) {
            let _ = snapfs_timed(&self.repo, &[OsStr::new("umount"), mp], Duration::from_secs(60));
        }
        if is_mounted(&self.mountpoint) {
            let _ = run_with_timeout(
                Command::new("fusermount3").arg("-uz").arg(mp),
                Duration::from_secs(30),
            );
        }
        if is_mounted(&self.mountpoint) {
            let _ = run_with_timeout(Command::new("umount").arg("-l").arg(mp), Duration::from_secs(30));
        }
        let Some(pid) = daemon else { return };
        let wait = |limit: Duration| {
            let deadline = Instant::now() + limit;
            while is_daemon_alive(pid, &self.repo) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            !is_daemon_alive(pid, &self.repo)
        };
        if !wait(Duration::from_secs(30)) {
            eprintln!("snapfs daemon {pid} still runs 30 s after unmount; killing it");
            kill9(pid);
            wait(Duration::from_secs(10));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.cleanup();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.repo.join("mount.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!(
                "--- end of {}/mount.log ---\n{}",
                self.repo.display(),
                tail.join("\n")
            );
        }
    }
}

/// Which attributes [`walk_tree`] records.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub owner: bool,
    /// mtime in seconds and nanoseconds, of everything (files, folders, symlinks).
    pub mtime: bool,
    pub xattrs: bool,
    /// Link count of regular files.
    pub nlink: bool,
    /// Which regular files share an inode (named by the smallest path of the group).
    pub link_groups: bool,
    /// A hash of every regular file's bytes (reading them all).
    pub content: bool,
}

impl Fields {
    pub const ALL: Fields = Fields {
        owner: true,
        mtime: true,
        xattrs: true,
        nlink: true,
        link_groups: true,
        content: true,
    };
}

/// What one path holds, as a user sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// f(ile), d(ir), l(ink), p (fifo), s(ocket), c(har), b(lock)
    pub kind: char,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    /// Size of files and symlinks.
    pub size: Option<u64>,
    pub mtime: Option<(i64, i64)>,
    pub nlink: Option<u64>,
    /// BLAKE3 of a regular file's bytes.
    pub content: Option<String>,
    pub target: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub link_group: Option<String>,
}

/// Every path under `root` (relative, "." for the root itself) with what it holds; the
/// root may be a symlink. Symlinks are not followed.
pub fn walk_tree(root: &Path, fields: Fields) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), ".".to_string())];
    while let Some((path, rel)) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_file() {
            'f'
        } else if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_socket() {
            's'
        } else if ft.is_char_device() {
            'c'
        } else {
            'b'
        };
        let mut node = Node {
            kind,
            mode: meta.mode() & 0o7777,
            owner: fields.owner.then(|| (meta.uid(), meta.gid())),
            size: matches!(kind, 'f' | 'l').then(|| meta.len()),
            mtime: fields.mtime.then(|| (meta.mtime(), meta.mtime_nsec())),
            nlink: (fields.nlink && kind == 'f').then(|| meta.nlink()),
            content: None,
            target: None,
            xattrs: BTreeMap::new(),
            link_group: None,
        };
        match kind {
            'f' => {
                if fields.content {
                    let bytes =
                        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                    node.content = Some(blake3::hash(&bytes).to_hex().to_string());
                }
                if meta.nlink() > 1 {
                    inodes
                        .entry((meta.dev(), meta.ino()))
                        .or_default()
                        .push(rel.clone());
                }
            }
            'l' => node.target = Some(std::fs::read_link(&path).unwrap()),
            'd' => {
                for entry in
                    std::fs::read_dir(&path).unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
                {
                    let name = entry.unwrap().file_name();
                    let child_rel = if rel == "." {
                        name.to_string_lossy().into_owned()
                    } else {
                        format!("{rel}/{}", name.to_string_lossy())
                    };
                    stack.push((path.join(&name), child_rel));
                }
            }
            _ => {}
        }
        if fields.xattrs {
            node.xattrs = xattrs_of(&path);
        }
        out.insert(rel, node);
    }
    if fields.link_groups {
        for group in inodes.values() {
            let name = group.iter().min().unwrap().clone();
            for rel in group {
                out.get_mut(rel).unwrap().link_group = Some(name.clone());
            }
        }
    }
    out
}

/// All extended attributes of `path` (not following a symlink), by name.
pub fn xattrs_of(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 1 << 16];
    let n = rustix::fs::llistxattr(path, &mut names[..])
        .unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 1 << 16];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..])
            .unwrap_or_else(|e| panic!("lgetxattr {} {name}: {e}", path.display()));
        value.truncate(len);
        out.insert(name, value);
    }
    out
}

/// Asserts two walked trees are equal; the panic lists the first differences.
pub fn assert_trees_equal(expected: &BTreeMap<String, Node>, actual: &BTreeMap<String, Node>, what: &str) {
    let mut diffs = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => diffs.push(format!("missing: {path} ({e:?})")),
            Some(a) if a != e => diffs.push(format!("differs: {path}\n  expected {e:?}\n  actual   {a:?}")),
            Some(_) => {}
        }
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            diffs.push(format!("unexpected: {path} ({a:?})"));
        }
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(20);
        panic!(
            "{what}: {n} differences among {} paths; first ones:\n{}",
            expected.len(),
            diffs.join("\n")
        );
    }
}

/// Sets a path's mtime (and atime) to exact seconds and nanoseconds, not following
/// a symlink.
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}
