//! Newtypes for every identifier that crosses a module boundary.
//!
//! Owns: `ChunkId` (BLAKE3 of a chunk's plaintext), `InodeId` (catalog inode),
//! `GenId` (catalog generation), `MirrorId`, `PackId`, `Location` (a chunk's place in a
//! pack), `RepoId`. Depends on nothing but `blake3`.

use std::fmt;
use std::str::FromStr;

/// The name of a chunk: the BLAKE3 hash of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `plain`: its BLAKE3 hash.
    pub fn of(plain: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(plain).as_bytes())
    }

    /// The 64 lowercase hex digits of the id.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let bytes = unhex(s)?;
        Some(ChunkId(bytes.try_into().ok()?))
    }

    /// Builds an id from a 32-byte slice; `None` when the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<ChunkId> {
        Some(ChunkId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// A catalog inode: one file, folder, symlink or special file, across all generations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct InodeId(pub i64);

impl InodeId {
    /// The root folder of the tree, in every generation.
    pub const ROOT: InodeId = InodeId(1);
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A catalog generation. Frozen generations are snapshots; the newest one is live.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct GenId(pub i64);

impl GenId {
    /// The `gen_to` of a row that no generation has closed yet.
    pub const OPEN: GenId = GenId(i64::MAX);
}

impl fmt::Display for GenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which tree a kernel inode belongs to: the live tree or one snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum View {
    Live,
    Snapshot(GenId),
}

/// A kernel inode number: a catalog inode *in a view*. One catalog inode shows up
/// once in the live tree and once in every snapshot that has it, each with its own
/// `Ino`. Layout: generation in the top 24 bits (0 = live), `InodeId` in the low 40.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Ino(pub u64);

impl Ino {
    const ID_BITS: u32 = 40;
    const ID_MASK: u64 = (1 << Ino::ID_BITS) - 1;

    /// The mount root (the live root folder).
    pub const ROOT: Ino = Ino(1);

    /// `id` in the live tree.
    pub fn live(id: InodeId) -> Ino {
        Ino(id.0 as u64 & Ino::ID_MASK)
    }

    /// `id` in snapshot `gen`.
    pub fn snapshot(gen: GenId, id: InodeId) -> Ino {
        Ino(((gen.0 as u64) << Ino::ID_BITS) | (id.0 as u64 & Ino::ID_MASK))
    }

    /// `id` in `view`.
    pub fn in_view(view: View, id: InodeId) -> Ino {
        match view {
            View::Live => Ino::live(id),
            View::Snapshot(gen) => Ino::snapshot(gen, id),
        }
    }

    /// The view and the catalog inode.
    pub fn split(self) -> (View, InodeId) {
        let gen = self.0 >> Ino::ID_BITS;
        let id = InodeId((self.0 & Ino::ID_MASK) as i64);
        if gen == 0 {
            (View::Live, id)
        } else {
            (View::Snapshot(GenId(gen as i64)), id)
        }
    }
}

/// A mirror's number within its repository (0, 1, …). Stable for the mirror's life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MirrorId(pub u32);

impl fmt::Display for MirrorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A pack file's number within its repository (format 2): packs are numbered in the
/// order they are started, and every copy of a pack (one per mirror) has the same
/// number, name and bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PackId(pub u64);

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a chunk's pack entry lies: `len` bytes (the whole entry) at `offset` of pack
/// `pack`, the same on every disk of a mirrored repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Location {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
}

impl Location {
    /// One past the entry's last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// A repository's random identity, written into every mirror so that a mirror of
/// another repository is recognised and refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RepoId(pub [u8; 16]);

impl RepoId {
    /// A fresh random id (from the kernel's random source).
    pub fn random() -> std::io::Result<RepoId> {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes)?;
        Ok(RepoId(bytes))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl FromStr for RepoId {
    type Err = ();
    fn from_str(s: &str) -> Result<RepoId, ()> {
        let bytes = unhex(s).ok_or(())?;
        Ok(RepoId(bytes.try_into().map_err(|_| ())?))
    }
}

/// Fills `buf` from the kernel's random source.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_hex_round_trips() {
        let id = ChunkId::of(b"hello");
        assert_eq!(
            id.to_hex(),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
        assert_eq!(ChunkId::from_hex("abcd"), None);
    }

    #[test]
    fn ino_round_trips_view_and_id() {
        let id = InodeId(123_456_789);
        assert_eq!(Ino::live(id).split(), (View::Live, id));
        assert_eq!(
            Ino::snapshot(GenId(77), id).split(),
            (View::Snapshot(GenId(77)), id)
        );
        assert_eq!(Ino::ROOT.split(), (View::Live, InodeId::ROOT));
        assert_ne!(Ino::snapshot(GenId(1), id), Ino::live(id));
    }

    #[test]
    fn repo_id_parses_its_display() {
        let id = RepoId::random().unwrap();
        assert_eq!(id.to_string().parse::<RepoId>(), Ok(id));
        assert!("nothex".parse::<RepoId>().is_err());
    }
}
