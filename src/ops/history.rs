//! `snapfs diff` and `snapfs log`: what changed between two views, and every
//! distinct version of one path across the snapshots. Read-only.
//!
//! Identity is the catalog inode: a file renamed between two views is reported as a
//! rename, not as a delete and an add. Content is compared by extent lists (chunk ids
//! and ranges), so nothing is read from the mirrors.

use std::collections::BTreeMap;

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

struct Seen {
    path: String,
    attr: InodeAttr,
    content: [u8; 32],
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

fn walk(catalog: &Catalog, gen: GenId, root: InodeId, root_path: &str) -> Result<BTreeMap<InodeId, Seen>> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![(root, root_path.trim_end_matches('/').to_string())];
    while let Some((id, path)) = stack.pop() {
        let attr = catalog.inode(gen, id)?.ok_or_else(|| {
            Error::CorruptCatalog(format!("inode {id} is named but missing in generation {gen}"))
        })?;
        if attr.kind == FileKind::Dir {
            for e in catalog.readdir(gen, id)? {
                stack.push((e.inode, format!("{path}/{}", String::from_utf8_lossy(&e.name))));
            }
        }
        if seen.contains_key(&id) {
            continue; // another hard link: the first path stands for the inode
        }
        let content = content_sig(catalog, gen, &attr)?;
        seen.insert(
            id,
            Seen {
                path: if path.is_empty() { "/".into() } else { path },
                attr,
                content,
            },
        );
    }
    Ok(seen)
}

/// What changed under `path` from generation `a` to generation `b`, sorted by path.
pub fn diff(catalog: &Catalog, a: GenId, b: GenId, path: &str) -> Result<Vec<Change>> {
    let (ra, rb) = (find(catalog, a, path)?, find(catalog, b, path)?);
    if ra.is_none() && rb.is_none() {
        return Err(Error::NotFound(format!(
            "{path} in either view (`snapfs log {path}` lists the snapshots that have it)"
        )));
    }
    let old = match ra {
        Some(r) => walk(catalog, a, r, path)?,
        None => BTreeMap::new(),
    };
    let new = match rb {
        Some(r) => walk(catalog, b, r, path)?,
        None => BTreeMap::new(),
    };
    let mut changes = Vec::new();
    for (id, o) in &old {
        let Some(n) = new.get(id) else {
            changes.push(Change {
                change: "deleted",
                path: o.path.clone(),
                old_path: None,
                details: vec![],
            });
            continue;
        };
        let mut details = Vec::new();
        if o.attr.mode != n.attr.mode {
            details.push(format!("mode {:o} -> {:o}", o.attr.mode, n.attr.mode));
        }
        if o.attr.uid != n.attr.uid {
            details.push(format!("owner {} -> {}", o.attr.uid, n.attr.uid));
        }
        if o.attr.gid != n.attr.gid {
            details.push(format!("group {} -> {}", o.attr.gid, n.attr.gid));
        }
        if o.path != n.path {
            changes.push(Change {
                change: "renamed",
                path: n.path.clone(),
                old_path: Some(o.path.clone()),
                details: vec![],
            });
        }
        if o.attr.kind != FileKind::Dir && o.content != n.content {
            changes.push(Change {
                change: "modified",
                path: n.path.clone(),
                old_path: None,
                details: vec![],
            });
        }
        if !details.is_empty() {
            changes.push(Change {
                change: "metadata",
                path: n.path.clone(),
                old_path: None,
                details,
            });
        }
    }
    for (id, n) in &new {
        if !old.contains_key(id) {
            changes.push(Change {
                change: "added",
                path: n.path.clone(),
                old_path: None,
                details: vec![],
            });
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
