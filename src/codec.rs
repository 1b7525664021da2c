//! Chunk frames: the bytes stored for one chunk, and their verification.
//!
//! Owns the frame format: a fixed 16-byte header, then the payload.
//!
//! ```text
//! offset size field
//!      0    4 magic b"SNFC"
//!      4    1 format version (1)
//!      5    1 codec: 0 raw, 1 zstd
//!      6    2 reserved, zero
//!      8    4 plaintext length, u32 little-endian
//!     12    4 payload length, u32 little-endian
//!     16    … payload (exactly payload length bytes, nothing after)
//! ```
//!
//! `decode` never returns bytes that do not hash to the chunk's id, and never allocates
//! more than the declared plaintext length (itself capped at `MAX_PLAIN_LEN`), so a
//! corrupt or hostile frame cannot exhaust memory.
//!
//! Pure: no I/O. Depends only on `types`; must not depend on the store or anything above.

use crate::types::ChunkId;

/// Length of the fixed frame header.
pub const FRAME_HEADER_LEN: usize = 16;

/// The frame magic.
pub const FRAME_MAGIC: [u8; 4] = *b"SNFC";

/// The frame format version this code writes and reads.
pub const FRAME_VERSION: u8 = 1;

/// The largest plaintext a frame may declare: fastcdc's largest maximum chunk size.
/// A frame declaring more is rejected before any allocation.
pub const MAX_PLAIN_LEN: u32 = 16 * 1024 * 1024;

/// How a frame's payload encodes the plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// The payload is the plaintext.
    Raw,
    /// The payload is one zstd frame of the plaintext.
    Zstd,
}

impl Codec {
    /// The codec's byte in the frame header.
    pub fn to_byte(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
        }
    }

    /// The codec for a header byte; `None` for an unknown one.
    pub fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A chunk ready to store: its id (BLAKE3 of the plaintext) and its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedChunk {
    /// BLAKE3 of the plaintext.
    pub id: ChunkId,
    /// Header and payload, the exact bytes to store.
    pub frame: Vec<u8>,
    /// Length of the plaintext.
    pub plain_len: u32,
    /// The codec the payload uses.
    pub codec: Codec,
}

/// Why a stored frame was rejected. Every variant means "this copy is bad".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the fixed header.
    #[error("frame truncated: {len} bytes, shorter than the {FRAME_HEADER_LEN}-byte header")]
    HeaderTruncated { len: usize },
    /// The first four bytes are not `SNFC`.
    #[error("bad magic")]
    BadMagic,
    /// A format version this code does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// An unknown codec byte.
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// The reserved header bytes are not zero.
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    /// The declared plaintext length is above `MAX_PLAIN_LEN`.
    #[error("declared plaintext length {0} exceeds the limit of {MAX_PLAIN_LEN}")]
    PlainTooLarge(u32),
    /// Fewer payload bytes than the header declares.
    #[error("payload truncated: {actual} of {declared} bytes")]
    PayloadTruncated { declared: u32, actual: usize },
    /// More bytes after the declared payload.
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(usize),
    /// A raw payload whose length differs from the plaintext length.
    #[error("raw payload of {payload} bytes but plaintext length {plain}")]
    RawLengthMismatch { plain: u32, payload: u32 },
    /// The zstd payload does not decompress within the declared plaintext length.
    #[error("zstd payload does not decompress to {declared} bytes: {reason}")]
    Decompress { declared: u32, reason: String },
    /// The zstd payload decompressed to another length than declared.
    #[error("decompressed to {actual} bytes, header declares {declared}")]
    PlainLengthMismatch { declared: u32, actual: usize },
    /// The plaintext does not hash to the chunk's id.
    #[error("hash mismatch: content hashes to {actual}")]
    HashMismatch { actual: ChunkId },
}

/// Encodes `plain` (at most `MAX_PLAIN_LEN` bytes) as a frame. With `Some(level)`,
/// zstd at that level is used when the compressed payload is strictly smaller than the
/// plaintext; otherwise (and with `None`, or if zstd fails) the payload is raw.
/// Lengths above `u32::MAX` are a caller bug: the chunker never produces them.
pub fn encode(plain: &[u8], zstd_level: Option<i32>) -> EncodedChunk {
    encode_with_id(ChunkId::of(plain), plain, zstd_level)
}

/// Bytes of a chunk's start that are compressed first to see whether the whole is
/// worth compressing.
const SAMPLE_LEN: usize = 4096;

/// True when compressing `plain` may pay: small chunks are always tried; for larger
/// ones a sample of the start must shrink by at least 3%. Random data (media,
/// archives, encrypted files) then costs one 4 KiB trial instead of a full one.
fn worth_compressing(plain: &[u8], level: i32) -> bool {
    if plain.len() <= 4 * SAMPLE_LEN {
        return true;
    }
    let sample = &plain[..SAMPLE_LEN];
    compress(sample, level).is_some_and(|c| c.len() * 100 < sample.len() * 97)
}

thread_local! {
    /// One zstd context per thread and level, reused: creating one per chunk costs
    /// more than compressing a small chunk.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd-compresses `data` at `level` with this thread's context.
fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        slot.as_mut().and_then(|(_, c)| c.compress(data).ok())
    })
}

thread_local! {
    /// One zstd decompression context per thread, reused for the same reason.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd-decompresses `data` into at most `capacity` bytes with this thread's context.
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(data, capacity)
    })
}

/// `encode` for a chunk whose id (BLAKE3 of `plain`) the caller already has.
pub fn encode_with_id(id: ChunkId, plain: &[u8], zstd_level: Option<i32>) -> EncodedChunk {
    debug_assert!(plain.len() <= MAX_PLAIN_LEN as usize);
    // Invariant: chunks come from the chunker (<= 16 MiB); saturate rather than panic,
    // decode then rejects the frame instead of returning wrong bytes.
    let plain_len = u32::try_from(plain.len()).unwrap_or(u32::MAX);
    let compressed = zstd_level
        .filter(|level| worth_compressing(plain, *level))
        .and_then(|level| compress(plain, level))
        .filter(|c| c.len() < plain.len());
    let (codec, payload): (Codec, &[u8]) = match &compressed {
        Some(c) => (Codec::Zstd, c),
        None => (Codec::Raw, plain),
    };
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.push(FRAME_VERSION);
    frame.push(codec.to_byte());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&plain_len.to_le_bytes());
    frame.extend_from_slice(&payload_len.to_le_bytes());
    frame.extend_from_slice(payload);
    EncodedChunk {
        id,
        frame,
        plain_len,
        codec,
    }
}

/// The parsed fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The payload's codec.
    pub codec: Codec,
    /// The declared plaintext length.
    pub plain_len: u32,
    /// The declared payload length.
    pub payload_len: u32,
}

/// Parses and checks the header of `frame` (magic, version, codec, reserved bytes,
/// plaintext length limit, payload length against the frame's length). Does not look
/// at the payload.
pub fn parse_header(frame: &[u8]) -> Result<FrameHeader, FrameError> {
    let header: &[u8; FRAME_HEADER_LEN] = frame
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::HeaderTruncated { len: frame.len() })?;
    if header[0..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if header[4] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(header[4]));
    }
    let codec = Codec::from_byte(header[5]).ok_or(FrameError::UnknownCodec(header[5]))?;
    if header[6..8] != [0, 0] {
        return Err(FrameError::ReservedNotZero);
    }
    let plain_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let payload_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if plain_len > MAX_PLAIN_LEN {
        return Err(FrameError::PlainTooLarge(plain_len));
    }
    let actual = frame.len() - FRAME_HEADER_LEN;
    match actual.cmp(&(payload_len as usize)) {
        std::cmp::Ordering::Less => {
            return Err(FrameError::PayloadTruncated {
                declared: payload_len,
                actual,
            })
        }
        std::cmp::Ordering::Greater => return Err(FrameError::TrailingBytes(actual - payload_len as usize)),
        std::cmp::Ordering::Equal => {}
    }
    if codec == Codec::Raw && plain_len != payload_len {
        return Err(FrameError::RawLengthMismatch {
            plain: plain_len,
            payload: payload_len,
        });
    }
    Ok(FrameHeader {
        codec,
        plain_len,
        payload_len,
    })
}

/// Decodes `frame` and verifies it: the header checks of `parse_header`, decompression
/// bounded by the declared plaintext length, the exact length, then BLAKE3 == `id`.
/// Returns the plaintext only if all pass; never wrong bytes.
pub fn decode(id: &ChunkId, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header = parse_header(frame)?;
    let payload = &frame[FRAME_HEADER_LEN..];
    let plain = match header.codec {
        Codec::Raw => payload.to_vec(),
        Codec::Zstd => {
            // The capacity bounds the output: a payload that expands beyond the declared
            // length fails here instead of allocating without limit.
            let plain =
                decompress(payload, header.plain_len as usize).map_err(|e| FrameError::Decompress {
                    declared: header.plain_len,
                    reason: e.to_string(),
                })?;
            if plain.len() != header.plain_len as usize {
                return Err(FrameError::PlainLengthMismatch {
                    declared: header.plain_len,
                    actual: plain.len(),
                });
            }
            plain
        }
    };
    let actual = ChunkId::of(&plain);
    if actual != *id {
        return Err(FrameError::HashMismatch { actual });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressible(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"snapshot filesystem "[i % 20]).collect()
    }

    fn random(len: usize, state: u64) -> Vec<u8> {
        crate::testing::noise(state, len)
    }

    fn frame_with(codec: u8, plain_len: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"SNFC");
        f.extend_from_slice(&[1, codec, 0, 0]);
        f.extend_from_slice(&plain_len.to_le_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn compressible_data_round_trips_through_zstd() {
        let plain = compressible(100_000);
        let enc = encode(&plain, Some(3));
        assert_eq!(enc.codec, Codec::Zstd);
        assert_eq!(enc.id, ChunkId::of(&plain));
        assert_eq!(enc.plain_len, 100_000);
        assert!(enc.frame.len() < plain.len() / 10);
        assert_eq!(&enc.frame[..6], b"SNFC\x01\x01");
        assert_eq!(decode(&enc.id, &enc.frame).unwrap(), plain);
    }

    #[test]
    fn raw_round_trips_and_none_never_compresses() {
        let plain = compressible(5000);
        let enc = encode(&plain, None);
        assert_eq!(enc.codec, Codec::Raw);
        assert_eq!(enc.frame.len(), FRAME_HEADER_LEN + plain.len());
        assert_eq!(&enc.frame[FRAME_HEADER_LEN..], &plain[..]);
        assert_eq!(decode(&enc.id, &enc.frame).unwrap(), plain);
    }

    #[test]
    fn incompressible_and_empty_data_stay_raw() {
        let plain = random(70_000, 5);
        let enc = encode(&plain, Some(19));
        assert_eq!(enc.codec, Codec::Raw);
        assert_eq!(decode(&enc.id, &enc.frame).unwrap(), plain);
        let empty = encode(b"", Some(3));
        assert_eq!(empty.codec, Codec::Raw);
        assert_eq!(empty.frame.len(), FRAME_HEADER_LEN);
        assert_eq!(decode(&empty.id, &empty.frame).unwrap(), b"");
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        for (plain, level) in [
            (compressible(3000), Some(3)),
            (random(600, 1), Some(3)),
            (random(300, 2), None),
        ] {
            let enc = encode(&plain, level);
            for i in 0..enc.frame.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = enc.frame.clone();
                    bad[i] ^= flip;
                    assert!(
                        decode(&enc.id, &bad).is_err(),
                        "flip {flip:#x} at byte {i} of a {:?} frame went unnoticed",
                        enc.codec
                    );
                }
            }
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_detected() {
        let enc = encode(&compressible(4000), Some(3));
        for len in 0..enc.frame.len() {
            assert!(decode(&enc.id, &enc.frame[..len]).is_err(), "truncated to {len}");
        }
        let e = decode(&enc.id, &enc.frame[..enc.frame.len() - 1]).unwrap_err();
        assert!(e.to_string().starts_with("payload truncated"), "{e}");
        let e = decode(&enc.id, &enc.frame[..3]).unwrap_err();
        assert!(e.to_string().starts_with("frame truncated"), "{e}");
        let mut long = enc.frame.clone();
        long.push(0);
        assert_eq!(decode(&enc.id, &long).unwrap_err(), FrameError::TrailingBytes(1));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let enc = encode(b"hello", None);
        let mut f = enc.frame.clone();
        f[0] = b'X';
        assert_eq!(decode(&enc.id, &f).unwrap_err().to_string(), "bad magic");
        let mut f = enc.frame.clone();
        f[4] = 7;
        assert_eq!(
            decode(&enc.id, &f).unwrap_err().to_string(),
            "unsupported format version 7"
        );
        let mut f = enc.frame.clone();
        f[5] = 9;
        assert_eq!(decode(&enc.id, &f).unwrap_err().to_string(), "unknown codec 9");
        let e = decode(&ChunkId::of(b"other"), &enc.frame).unwrap_err();
        assert!(e.to_string().starts_with("hash mismatch"), "{e}");
    }

    #[test]
    fn zstd_bomb_declaring_a_small_length_fails() {
        let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
        let plain_claim = vec![0u8; 4096];
        let f = frame_with(1, 4096, &bomb);
        let e = decode(&ChunkId::of(&plain_claim), &f).unwrap_err();
        assert!(matches!(e, FrameError::Decompress { declared: 4096, .. }), "{e}");
    }

    #[test]
    fn huge_declared_length_is_refused_before_allocating() {
        let f = frame_with(1, u32::MAX, b"x");
        assert_eq!(
            decode(&ChunkId::of(b""), &f).unwrap_err(),
            FrameError::PlainTooLarge(u32::MAX)
        );
    }

    #[test]
    fn short_zstd_output_is_a_length_mismatch() {
        let payload = zstd::bulk::compress(&[7u8; 100], 3).unwrap();
        let f = frame_with(1, 200, &payload);
        assert_eq!(
            decode(&ChunkId::of(&[7u8; 200]), &f).unwrap_err(),
            FrameError::PlainLengthMismatch {
                declared: 200,
                actual: 100
            }
        );
    }
}
