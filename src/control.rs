//! The control socket: how commands reach a running mount.
//!
//! Owns: `REPO/control.sock` (mode 0600; a peer whose uid is neither ours nor root is
//! refused), the protocol (one typed `Request` and one typed `Answer` or
//! `RemoteError`, a JSON line each way, shared by both ends), the client
//! (`request`) and the server loop (`serve`). What a request does is the
//! server's handler's business; this module only carries it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the socket inside the repository.
pub const SOCKET_FILE: &str = "control.sock";

/// What a command asks of the running mount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Take a snapshot (buffered writes included).
    Snapshot { label: Option<String> },
    /// Forget snapshots by name or by policy.
    Forget {
        target: crate::ops::snapshots::ForgetTarget,
        dry_run: bool,
    },
    /// Make the live tree as it was in a snapshot.
    Rollback {
        name: String,
        path: Option<String>,
        dry_run: bool,
    },
    /// Delete unreferenced chunks.
    Gc { dry_run: bool, sweep: bool },
    /// Pin or unpin a snapshot.
    Hold { name: String, held: bool },
    /// Commit buffered writes, so that readers in other processes see them.
    Commit,
    /// Add (or finish filling) the mirror folder `dir` while mounted.
    MirrorAdd { dir: std::path::PathBuf },
    /// Stop using the mirror folder `dir`.
    MirrorRemove { dir: std::path::PathBuf },
    /// Use again the mirrors set aside that can be opened (after `snapfs scrub`
    /// refilled them, or their disk came back), filling what they lack.
    Reinstate,
}

/// What the mount answers, one kind per request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The snapshot taken (its `@name`).
    Snapshot {
        name: Option<String>,
    },
    Forget {
        report: crate::ops::snapshots::ForgetReport,
    },
    Rollback {
        report: crate::ops::snapshots::RollbackReport,
    },
    Gc {
        stats: crate::ops::gc::GcStats,
    },
    /// The snapshot held or released.
    Hold {
        name: String,
    },
    /// Buffered writes are committed.
    Committed,
    /// The mirror is complete.
    MirrorAdded {
        report: crate::ops::mirrors::ResilverReport,
    },
    /// The mirror with this number is no longer used.
    MirrorRemoved {
        id: u32,
    },
    /// The mirrors brought back, with what each fill copied.
    Reinstated {
        reports: Vec<crate::ops::mirrors::ResilverReport>,
    },
}

/// An error as it crosses the socket: its errno, which stands for its kind in
/// `Error::errno`, and its message. The client turns it into `Error::Remote`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteError {
    pub errno: i32,
    pub message: String,
}

/// The end of an answer: the operation's result or its error.
type Response = std::result::Result<Answer, RemoteError>;

/// One line from the server: progress of a long operation (any number, at most a
/// few per second), then the response, which ends the exchange.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Progress { done: u64, total: u64 },
    Response(Response),
}

/// How often the server sends progress at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Progress of a long operation: units done, units in all.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// The socket path of repository `repo`.
pub fn socket_path(repo: &Path) -> PathBuf {
    repo.join(SOCKET_FILE)
}

/// Sends `req` to the mount serving `repo`. `Ok(None)` when no mount is listening
/// (no socket, or a stale one): the caller then works on the repository directly.
/// The mount's errors come back as `Error::Remote`, with their errno.
pub fn request(repo: &Path, req: &Request) -> Result<Option<Answer>> {
    request_with_progress(repo, req, &mut |_, _| {})
}

/// `request`, calling `progress(done, total)` as the mount reports it (gc draws
/// its bar from these, as it does when run without a mount).
pub fn request_with_progress(repo: &Path, req: &Request, progress: Progress<'_>) -> Result<Option<Answer>> {
    let path = socket_path(repo);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(Error::io(format!("connecting to {}", path.display()), e)),
    };
    let mut line = serde_json::to_string(req).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(Error::io_with("sending a request to the mount"))?;
    let mut reader = BufReader::new(stream);
    let response = loop {
        let mut text = String::new();
        let read = reader
            .read_line(&mut text)
            .map_err(Error::io_with("reading the mount's answer"))?;
        if read == 0 {
            return Err(Error::io(
                "reading the mount's answer",
                std::io::Error::other("the mount closed the connection without answering"),
            ));
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| {
            Error::io(
                "reading the mount's answer",
                std::io::Error::other(format!(
                    "malformed answer ({e}); is the daemon the same snapfs version?"
                )),
            )
        })?;
        match line {
            Line::Progress { done, total } => progress(done, total),
            Line::Response(response) => break response,
        }
    };
    match response {
        Ok(answer) => Ok(Some(answer)),
        Err(e) => Err(Error::Remote {
            errno: e.errno,
            message: e.message,
        }),
    }
}

/// True when a mount is serving `repo` (its control socket accepts a connection).
pub fn is_served(repo: &Path) -> bool {
    UnixStream::connect(socket_path(repo)).is_ok()
}

/// The handler a server runs for each request; it reports progress through the
/// callback, which sends it to the client (and goes on quietly if the client left).
pub type Handler = Arc<dyn Fn(Request, Progress<'_>) -> Result<Answer> + Send + Sync>;

/// Listens on the socket of `repo` (replacing a stale one: the caller holds the
/// repository lock) and answers each connection on a thread of its own.
pub fn serve(repo: &Path, handler: Handler) -> Result<()> {
    let path = socket_path(repo);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(Error::io_with(format!("listening on {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io_with(format!("securing {}", path.display())))?;
    let me = rustix::process::getuid().as_raw();
    std::thread::Builder::new()
        .name("snapfs-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("snapfs-control-conn".into())
                    .spawn(move || answer(stream, me, &handler));
            }
        })
        .map_err(Error::io_with("starting the control thread"))?;
    Ok(())
}

fn answer(stream: UnixStream, me: u32, handler: &Handler) {
    let allowed = rustix::net::sockopt::socket_peercred(&stream)
        .map(|cred| cred.uid.as_raw() == me || cred.uid.is_root())
        .unwrap_or(false);
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let response: Response = if !allowed {
        Err(RemoteError {
            errno: libc::EACCES,
            message: "permission denied: the mount belongs to another user".into(),
        })
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Err(RemoteError {
                errno: libc::EINVAL,
                message: format!("malformed request: {e}"),
            }),
            Ok(req) => {
                let mut last_sent: Option<std::time::Instant> = None;
                let mut progress = |done: u64, total: u64| {
                    if last_sent.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) && done < total {
                        return;
                    }
                    last_sent = Some(std::time::Instant::now());
                    send(&stream, &Line::Progress { done, total });
                };
                handler(req, &mut progress).map_err(|e| RemoteError {
                    errno: e.errno(),
                    message: e.to_string(),
                })
            }
        }
    };
    send(&stream, &Line::Response(response));
}

/// Writes one line to the client. A client that went away (Ctrl-C on its bar) does
/// not stop the operation: it finishes, and its result goes to the log.
fn send(stream: &UnixStream, line: &Line) {
    if let Ok(mut text) = serde_json::to_string(line) {
        text.push('\n');
        let _ = (&*stream).write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_errors_cross_the_socket_typed() {
        let dir = tempfile::tempdir().unwrap();
        let handler: Handler = Arc::new(|req, progress| match req {
            Request::Commit => {
                for done in 0..=3 {
                    progress(done, 3);
                }
                Ok(Answer::Committed)
            }
            Request::Hold { name, .. } => Err(Error::NotFound(format!("{name} (see `snapfs list`)"))),
            Request::Snapshot { .. } => Err(Error::no_space("catalog: taking a snapshot")),
            _ => Err(Error::ReadOnly("nope".into())),
        });
        serve(dir.path(), handler).unwrap();
        let mut seen = Vec::new();
        assert_eq!(
            request_with_progress(dir.path(), &Request::Commit, &mut |d, t| seen.push((d, t))).unwrap(),
            Some(Answer::Committed)
        );
        // The first and the last always arrive; those between are rate-limited.
        assert_eq!(seen.first(), Some(&(0, 3)), "{seen:?}");
        assert_eq!(seen.last(), Some(&(3, 3)), "{seen:?}");
        let hold = Request::Hold {
            name: "@x".into(),
            held: true,
        };
        let err = request(dir.path(), &hold).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT, "the kind survives: {err:?}");
        assert_eq!(err.to_string(), "@x (see `snapfs list`): not found");
        let err = request(
            dir.path(),
            &Request::Gc {
                dry_run: true,
                sweep: false,
            },
        )
        .unwrap_err();
        assert_eq!(err.errno(), libc::EROFS);
        let err = request(dir.path(), &Request::Snapshot { label: None }).unwrap_err();
        assert_eq!(err.errno(), libc::ENOSPC, "a full disk stays one: {err:?}");
        assert!(err.is_no_space());
        assert_eq!(
            err.to_string(),
            Error::no_space("catalog: taking a snapshot").to_string()
        );
    }
}
