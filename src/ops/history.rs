//! `snapfs diff` and `snapfs log`: what changed between two views, and every
//! distinct version of one path across the snapshots. Read-only.
//!
//! Identity is the catalog inode: a file renamed between two views is reported as a
//! rename, not as a delete and an add. Content is compared by extent lists (chunk ids
//! and ranges), so nothing is read from the mirrors.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::catalog::{Catalog, FileKind, InodeAttr};
use crate::error::{Error, Result};
use crate::types::{GenId, InodeId};

/// One difference between two views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// added, deleted, modified, renamed or metadata.
    pub change: &'static str,
    pub path: String,
    /// The path in the older view, for renames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    /// What changed besides content: mode, owner, group, kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

fn content_sig(catalog: &Catalog, gen: GenId, attr: &InodeAttr) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update(&attr.size.to_le_bytes());
    h.update(&attr.target);
    if attr.kind == FileKind::File {
        for e in catalog.extents(gen, attr.id, 0, u64::MAX)? {
            h.update(&e.offset.to_le_bytes());
            h.update(&e.length.to_le_bytes());
            h.update(&e.chunk.0);
            h.update(&e.chunk_offset.to_le_bytes());
        }
    }
    Ok(*h.finalize().as_bytes())
}

/// The inode at `path` in `gen`; `None` when the path does not exist there.
pub fn find(catalog: &Catalog, gen: GenId, path: &str) -> Result<Option<InodeId>> {
    let mut id = InodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        match catalog.lookup(gen, id, part.as_bytes())? {
            Some(next) => id = next,
            None => return Ok(None),
        }
    }
    Ok(Some(id))
}

/// Whether `path` is `scope` or below it (`scope` is "/" or "/a/b").
fn within(path: &str, scope: &str) -> bool {
    scope == "/" || path == scope || path.strip_prefix(scope).is_some_and(|rest| rest.starts_with('/'))
}

/// What one view shows of an inode: its path (one of them, for hard links) and
/// attributes; `None` when no name reaches it there.
fn seen(catalog: &Catalog, gen: GenId, id: InodeId) -> Result<Option<(String, InodeAttr)>> {
    let Some(attr) = catalog.inode(gen, id)? else {
        return Ok(None);
    };
    Ok(catalog.path_of(gen, id)?.map(|path| (path, attr)))
}

/// What changed under `path` from generation `a` to generation `b`, sorted by path.
///
/// Costs what changed, not the tree: only inodes with a row born or closed between
/// the two generations are looked at, plus everything below a folder whose path
/// changed (a rename moves every path under it).
pub fn diff(catalog: &Catalog, a: GenId, b: GenId, path: &str) -> Result<Vec<Change>> {
    let (ra, rb) = (find(catalog, a, path)?, find(catalog, b, path)?);
    if ra.is_none() && rb.is_none() {
        return Err(Error::NotFound(format!(
            "{path} in either view (`snapfs log {path}` lists the snapshots that have it)"
        )));
    }
    let trimmed = path.trim_end_matches('/');
    let scope = if trimmed.is_empty() || trimmed == "." {
        "/".to_string()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    };
    let mut queue: Vec<InodeId> = catalog.changed_between(a, b)?;
    let mut done = BTreeSet::new();
    let mut changes = Vec::new();
    while let Some(id) = queue.pop() {
        if !done.insert(id) {
            continue;
        }
        let (old, new) = (seen(catalog, a, id)?, seen(catalog, b, id)?);
        if let (Some((po, o)), Some((pn, n))) = (&old, &new) {
            if po != pn && o.kind == FileKind::Dir && n.kind == FileKind::Dir {
                for (gen, dir) in [(a, id), (b, id)] {
                    queue.extend(catalog.readdir(gen, dir)?.into_iter().map(|e| e.inode));
                }
            }
        }
        let old = old.filter(|(p, _)| within(p, &scope));
        let new = new.filter(|(p, _)| within(p, &scope));
        let change =
            |change: &'static str, path: &str, old_path: Option<String>, details: Vec<String>| Change {
                change,
                path: path.to_string(),
                old_path,
                details,
            };
        match (old, new) {
            (None, None) => {}
            (Some((po, _)), None) => changes.push(change("deleted", &po, None, vec![])),
            (None, Some((pn, _))) => changes.push(change("added", &pn, None, vec![])),
            (Some((po, o)), Some((pn, n))) => {
                let mut details = Vec::new();
                if o.mode != n.mode {
                    details.push(format!("mode {:o} -> {:o}", o.mode, n.mode));
                }
                if o.uid != n.uid {
                    details.push(format!("owner {} -> {}", o.uid, n.uid));
                }
                if o.gid != n.gid {
                    details.push(format!("group {} -> {}", o.gid, n.gid));
                }
                if po != pn {
                    changes.push(change("renamed", &pn, Some(po.clone()), vec![]));
                }
                if o.kind != FileKind::Dir && content_sig(catalog, a, &o)? != content_sig(catalog, b, &n)? {
                    changes.push(change("modified", &pn, None, vec![]));
                }
                if !details.is_empty() {
                    changes.push(change("metadata", &pn, None, details));
                }
            }
        }
    }
    changes.sort_by(|x, y| x.path.cmp(&y.path).then(x.change.cmp(y.change)));
    Ok(changes)
}

/// One distinct version of a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Version {
    /// The snapshots (oldest first; "live" for the live tree) that show this version.
    pub seen_in: Vec<String>,
    /// False when the path did not exist there.
    pub exists: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub size: u64,
    /// RFC 3339 modification time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "folder",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "char device",
        FileKind::BlockDevice => "block device",
    }
}

/// What makes two views show the same version: the inode, its content or entries,
/// and its mtime.
type VersionKey = (InodeId, [u8; 32], i64);

/// Every distinct version of `path` across the snapshots and the live tree, oldest
/// first; consecutive views that show the same version are collapsed into one.
pub fn log(catalog: &Catalog, path: &str) -> Result<Vec<Version>> {
    let mut versions: Vec<(Option<VersionKey>, Version)> = Vec::new();
    for g in catalog.generations()? {
        let view = g.name.clone().unwrap_or_else(|| "live".into());
        let found = match find(catalog, g.id, path)? {
            Some(id) => catalog.inode(g.id, id)?,
            None => None,
        };
        let (key, version) = match found {
            Some(attr) => {
                let sig = if attr.kind == FileKind::Dir {
                    // A folder's version is its set of names.
                    let mut h = blake3::Hasher::new();
                    for e in catalog.readdir(g.id, attr.id)? {
                        h.update(&e.name);
                        h.update(&e.inode.0.to_le_bytes());
                    }
                    *h.finalize().as_bytes()
                } else {
                    content_sig(catalog, g.id, &attr)?
                };
                let mtime = chrono::DateTime::from_timestamp_nanos(attr.mtime_ns)
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                (
                    Some((attr.id, sig, attr.mtime_ns)),
                    Version {
                        seen_in: vec![view],
                        exists: true,
                        kind: Some(kind_name(attr.kind)),
                        size: attr.size,
                        mtime: Some(mtime),
                    },
                )
            }
            None => (
                None,
                Version {
                    seen_in: vec![view],
                    exists: false,
                    kind: None,
                    size: 0,
                    mtime: None,
                },
            ),
        };
        match versions.last_mut() {
            Some((last, v)) if *last == key => v.seen_in.extend(version.seen_in),
            _ => versions.push((key, version)),
        }
    }
    if versions.iter().all(|(k, _)| k.is_none()) {
        return Err(Error::NotFound(format!(
            "{path} in every snapshot and in the live tree"
        )));
    }
    Ok(versions.into_iter().map(|(_, v)| v).collect())
}
