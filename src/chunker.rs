//! Content-defined chunking: FastCDC 2020 with a per-repository seed.
//!
//! Owns: `ChunkerParams` (sizes and seed, their validation and parsing), the push-based
//! `Chunker` whose memory is bounded by the maximum chunk size, and `chunk_reader`.
//! The cut points are exactly those of `fastcdc::v2020::FastCDC` over the whole stream
//! (normalization level 1), whatever the sizes of the pushed slices: a cut is only
//! decided once `max_size` bytes are buffered (the scan never looks further) or at the
//! end of the stream.
//!
//! Pure: no I/O except reading the caller's reader in `chunk_reader`. Must not depend on
//! the store, the catalog or anything above them.

use std::borrow::Cow;
use std::fmt;

use fastcdc::v2020;

use crate::error::{Error, Result};

const KIB: u32 = 1024;
const MIB: u32 = 1024 * 1024;

/// Chunk sizes (bytes) and the gear-table seed of one repository.
///
/// The seed is secret-ish per repository so that chunk boundaries do not leak content;
/// changing any field changes every boundary, so they are fixed at repository creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No chunk is shorter than this, except the last chunk of a stream.
    pub min_size: u32,
    /// The target average chunk size.
    pub avg_size: u32,
    /// No chunk is longer than this.
    pub max_size: u32,
    /// XORed into the gear tables; 0 means fastcdc's unseeded tables.
    pub seed: u64,
}

impl Default for ChunkerParams {
    /// 16 KiB / 64 KiB / 256 KiB, seed 0.
    fn default() -> ChunkerParams {
        ChunkerParams {
            min_size: 16 * KIB,
            avg_size: 64 * KIB,
            max_size: 256 * KIB,
            seed: 0,
        }
    }
}

impl fmt::Display for ChunkerParams {
    /// `MIN:AVG:MAX` in the form `parse_sizes` reads (seed not shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            show_size(self.min_size),
            show_size(self.avg_size),
            show_size(self.max_size)
        )
    }
}

impl ChunkerParams {
    /// Checks fastcdc's limits: 64 B <= min <= 1 MiB, 256 B <= avg <= 4 MiB,
    /// 1 KiB <= max <= 16 MiB, min <= avg <= max, and every size even (fastcdc scans
    /// byte pairs; an odd size silently shifts boundaries).
    /// Errors: `Error::InvalidArgument` naming the offending size.
    pub fn validate(&self) -> Result<()> {
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let range = |what: &str, v: usize, lo: usize, hi: usize| -> Result<()> {
            if v < lo || v > hi {
                return Err(Error::InvalidArgument(format!(
                    "{what} chunk size {} is outside {}..={}",
                    show_size(v as u32),
                    show_size(lo as u32),
                    show_size(hi as u32)
                )));
            }
            Ok(())
        };
        range("minimum", min, v2020::MINIMUM_MIN, v2020::MINIMUM_MAX)?;
        range("average", avg, v2020::AVERAGE_MIN, v2020::AVERAGE_MAX)?;
        range("maximum", max, v2020::MAXIMUM_MIN, v2020::MAXIMUM_MAX)?;
        if !(min <= avg && avg <= max) {
            return Err(Error::InvalidArgument(format!(
                "chunk sizes {self} must satisfy minimum <= average <= maximum"
            )));
        }
        if !(min.is_multiple_of(2) && avg.is_multiple_of(2) && max.is_multiple_of(2)) {
            return Err(Error::InvalidArgument(format!(
                "chunk sizes {self} must be even numbers of bytes"
            )));
        }
        Ok(())
    }

    /// Parses `MIN:AVG:MAX`, each a number of bytes with an optional `K`/`KiB` or
    /// `M`/`MiB` suffix (binary units, case-insensitive), e.g. `16K:64K:256K` or
    /// `16384:65536:262144`; then validates. Errors: `Error::InvalidArgument`.
    pub fn parse_sizes(s: &str, seed: u64) -> Result<ChunkerParams> {
        let bad = |why: String| {
            Error::InvalidArgument(format!(
                "chunk sizes {s:?}: {why}; expected MIN:AVG:MAX such as 16K:64K:256K"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(bad(format!("{} fields instead of 3", parts.len())));
        }
        let mut sizes = [0u32; 3];
        for (slot, part) in sizes.iter_mut().zip(&parts) {
            *slot = parse_size(part).ok_or_else(|| bad(format!("{:?} is not a size", part)))?;
        }
        let params = ChunkerParams {
            min_size: sizes[0],
            avg_size: sizes[1],
            max_size: sizes[2],
            seed,
        };
        params.validate()?;
        Ok(params)
    }

    /// A copy forced into fastcdc's limits, so that even invalid params never make
    /// fastcdc panic (its asserts and mask lookup assume valid sizes).
    fn clamped(&self) -> ChunkerParams {
        let even = |v: u32| v & !1;
        let max = even(
            self.max_size
                .clamp(v2020::MAXIMUM_MIN as u32, v2020::MAXIMUM_MAX as u32),
        );
        let avg = even(
            self.avg_size
                .clamp(v2020::AVERAGE_MIN as u32, v2020::AVERAGE_MAX as u32)
                .min(max),
        );
        let min = even(
            self.min_size
                .clamp(v2020::MINIMUM_MIN as u32, v2020::MINIMUM_MAX as u32)
                .min(avg),
        );
        ChunkerParams {
            min_size: min,
            avg_size: avg,
            max_size: max,
            seed: self.seed,
        }
    }
}

/// One size field: digits with an optional binary suffix; `None` if malformed or > u32.
fn parse_size(part: &str) -> Option<u32> {
    let part = part.trim();
    let split = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
    let (digits, suffix) = part.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let unit: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" => 1024,
        "m" | "mib" => 1024 * 1024,
        _ => return None,
    };
    u32::try_from(n.checked_mul(unit)?).ok()
}

fn show_size(v: u32) -> String {
    if v != 0 && v.is_multiple_of(MIB) {
        format!("{}M", v / MIB)
    } else if v != 0 && v.is_multiple_of(KIB) {
        format!("{}K", v / KIB)
    } else {
        v.to_string()
    }
}

/// A push-based FastCDC chunker for one stream.
///
/// Memory: a buffer of at most `max_size` bytes (the undecided tail), whatever the sizes
/// of the pushed slices. Cut points equal those of `fastcdc::v2020::FastCDC` with
/// `Normalization::Level1` and the seed over the concatenation of every pushed slice.
/// A clone goes on from the same point of the stream (it copies the buffered tail).
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
    /// Bytes pushed whose chunk end is not decided yet; always shorter than `max_size`
    /// between calls.
    buf: Vec<u8>,
}

impl fmt::Debug for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker")
            .field("params", &self.params)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl Chunker {
    /// A chunker with empty state. `params` should have passed `validate`; invalid
    /// sizes are clamped into fastcdc's limits (never a panic), which changes the
    /// boundaries, so callers validate user input first.
    pub fn new(params: &ChunkerParams) -> Chunker {
        debug_assert!(params.validate().is_ok(), "invalid {params:?}");
        let params = params.clamped();
        let (mask_s, mask_l) = v2020::select_masks(params.avg_size as usize, v2020::Normalization::Level1);
        let (gear, gear_ls) = v2020::get_gear_with_seed(params.seed);
        Chunker {
            params,
            mask_s,
            mask_l,
            gear,
            gear_ls,
            buf: Vec::new(),
        }
    }

    /// The parameters in use (after clamping).
    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// Length of the first chunk of `data`. Final when `data.len() >= max_size` or
    /// when `data` is the end of the stream; provisional otherwise.
    fn cut(&self, data: &[u8]) -> usize {
        let (_, n) = v2020::cut_gear(
            data,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            self.params.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        n
    }

    /// Feeds the next bytes of the stream; calls `emit(chunk)`, in stream order, for
    /// each chunk whose end is now decided. The slices passed to `emit` are only valid
    /// during the call. If `emit` fails, its error is returned and the chunker is reset
    /// to empty (the stream must be restarted).
    pub fn push(&mut self, data: &[u8], emit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let result = self.push_inner(data, emit);
        if result.is_err() {
            self.buf.clear();
        }
        result
    }

    fn push_inner(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let max = self.params.max_size as usize;
        // Slow path: a tail is buffered. Top it up to exactly max bytes, cut there, and
        // return to the caller's slice as soon as a cut falls in the bytes taken from it.
        while !self.buf.is_empty() {
            let old = self.buf.len();
            let take = (max - old).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            if self.buf.len() < max {
                return Ok(()); // `data` was consumed entirely (take == data.len()).
            }
            let n = self.cut(&self.buf);
            emit(&self.buf[..n])?;
            if n >= old {
                // The cut is inside the bytes copied from `data`: continue from there.
                data = &data[n - old..];
                self.buf.clear();
            } else {
                // The cut is inside the old tail: keep its rest, give back what we took.
                self.buf.truncate(old);
                self.buf.drain(..n);
            }
        }
        // Fast path: cut straight from the caller's slice while a full window remains.
        while data.len() >= max {
            let n = self.cut(data);
            emit(&data[..n])?;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// End of stream: emits every buffered byte as chunks (the last one possibly shorter
    /// than `min_size`). Afterwards the chunker is empty and can start a new stream,
    /// also when `emit` fails.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let mut rest = &buf[..];
        let mut result = Ok(());
        while !rest.is_empty() {
            let n = self.cut(rest);
            if let Err(e) = emit(&rest[..n]) {
                result = Err(e);
                break;
            }
            rest = &rest[n..];
        }
        // Keep the allocation for the next stream.
        self.buf = buf;
        self.buf.clear();
        result
    }

    /// Bytes pushed but not emitted yet (always < `max_size` between calls).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The bytes pushed but not emitted yet, the stream's last `buffered()` bytes.
    pub fn buffered_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Chunks everything `reader` yields, with memory bounded by about twice `max_size`;
/// calls `emit` for each chunk in order and returns the number of bytes read.
/// Errors: invalid `params` (`InvalidArgument`), a read error (`Io`), or `emit`'s error.
pub fn chunk_reader(
    params: &ChunkerParams,
    mut reader: impl std::io::Read,
    emit: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    params.validate()?;
    let mut chunker = Chunker::new(params);
    let mut block = vec![0u8; (params.max_size as usize).clamp(64 * 1024, 1024 * 1024)];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("reading input to chunk (after {total} bytes)"),
                    e,
                ))
            }
        };
        total += n as u64;
        chunker.push(&block[..n], emit)?;
    }
    chunker.finish(emit)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes (xorshift64) for fixtures.
    fn xorshift_bytes(len: usize, mut state: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    const FIXTURE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/chunker.bin");
    const FIXTURE_LEN: usize = 1 << 20;
    const FIXTURE_STATE: u64 = 0x9e37_79b9_7f4a_7c15;
    const PINNED_SEED: u64 = 0x5eed_5eed_5eed_5eed;

    fn fixture() -> Vec<u8> {
        std::fs::read(FIXTURE_PATH).expect("tests/fixtures/chunker.bin is committed")
    }

    /// Writes the fixture once: `cargo test --lib write_chunker_fixture -- --ignored`.
    #[test]
    #[ignore]
    fn write_chunker_fixture() {
        let path = std::path::Path::new(FIXTURE_PATH);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, xorshift_bytes(FIXTURE_LEN, FIXTURE_STATE)).unwrap();
    }

    /// (offset, length, first 16 hex digits of BLAKE3) of every chunk.
    fn chunk_list(params: &ChunkerParams, data: &[u8]) -> Vec<(u64, usize, String)> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        chunk_reader(params, data, &mut |c: &[u8]| {
            out.push((offset, c.len(), blake3::hash(c).to_hex()[..16].to_string()));
            offset += c.len() as u64;
            Ok(())
        })
        .unwrap();
        out
    }

    fn reference_cuts(p: &ChunkerParams, data: &[u8]) -> Vec<(usize, usize)> {
        v2020::FastCDC::with_level_and_seed(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            v2020::Normalization::Level1,
            p.seed,
        )
        .map(|c| (c.offset, c.length))
        .collect()
    }

    fn pushed_cuts(p: &ChunkerParams, data: &[u8], sizes: &[usize]) -> Vec<(usize, usize)> {
        let mut chunker = Chunker::new(p);
        let mut cuts = Vec::new();
        let mut offset = 0usize;
        let mut rest = data;
        let mut i = 0;
        let mut emit = |c: &[u8]| {
            cuts.push((offset, c.len()));
            offset += c.len();
            Ok(())
        };
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            i += 1;
            chunker.push(&rest[..n], &mut emit).unwrap();
            assert!(chunker.buffered() < p.max_size as usize);
            rest = &rest[n..];
        }
        chunker.finish(&mut emit).unwrap();
        assert_eq!(chunker.buffered(), 0);
        cuts
    }

    #[test]
    fn fixture_file_is_the_xorshift_stream() {
        assert_eq!(fixture(), xorshift_bytes(FIXTURE_LEN, FIXTURE_STATE));
    }

    #[test]
    fn fixture_chunks_are_pinned_for_default_sizes_and_seed() {
        let params = ChunkerParams {
            seed: PINNED_SEED,
            ..ChunkerParams::default()
        };
        let got = chunk_list(&params, &fixture());
        let want: &[(u64, usize, &str)] = &[
            (0, 24039, "211ccecf9b51e6c4"),
            (24039, 18399, "77ff8e03a8ea3684"),
            (42438, 94021, "eb85a34a19e55f18"),
            (136459, 116142, "3dc2a4b892b029be"),
            (252601, 106471, "91fe8beeca187643"),
            (359072, 74781, "48b8ed528c865f7d"),
            (433853, 27797, "b789a24bff4b53a4"),
            (461650, 61710, "e7fbd454f0eba1d8"),
            (523360, 134242, "f06a0073f6376253"),
            (657602, 84253, "d5056c44f84d5dc1"),
            (741855, 98069, "53f14d1fa0672444"),
            (839924, 80885, "441da11812650843"),
            (920809, 112314, "13faaa354ab8cd21"),
            (1033123, 15453, "ffc89739ff69970f"),
        ];
        let got_ref: Vec<(u64, usize, &str)> = got.iter().map(|(o, l, h)| (*o, *l, h.as_str())).collect();
        assert_eq!(got_ref, want, "chunk boundaries of the fixture changed");
    }

    #[test]
    fn another_seed_gives_other_pinned_boundaries() {
        let params = ChunkerParams::default();
        let got = chunk_list(&params, &fixture());
        let offsets: Vec<u64> = got.iter().map(|c| c.0).collect();
        let want: &[u64] = &[
            0, 44750, 264712, 364837, 393237, 484666, 513133, 532150, 646885, 735049, 801916, 954199,
        ];
        assert_eq!(offsets, want, "chunk boundaries of the fixture changed");
        let seeded = ChunkerParams {
            seed: PINNED_SEED,
            ..params
        };
        let seeded_offsets: Vec<u64> = chunk_list(&seeded, &fixture()).iter().map(|c| c.0).collect();
        assert_ne!(offsets, seeded_offsets);
    }

    #[test]
    fn whole_fixture_matches_fastcdc_for_any_push_size() {
        let data = fixture();
        let p = ChunkerParams {
            seed: PINNED_SEED,
            ..ChunkerParams::default()
        };
        let want = reference_cuts(&p, &data);
        for sizes in [&[1 << 20][..], &[1], &[4096], &[262_144], &[262_145, 7, 100_000]] {
            if sizes == [1] {
                // One byte at a time over 1 MiB is slow in debug builds; use a prefix.
                let prefix = &data[..300_000];
                assert_eq!(pushed_cuts(&p, prefix, sizes), reference_cuts(&p, prefix));
                continue;
            }
            assert_eq!(pushed_cuts(&p, &data, sizes), want, "push sizes {sizes:?}");
        }
    }

    #[test]
    fn zeros_are_cut_at_max_size() {
        let p = ChunkerParams::default();
        let data = vec![0u8; 600 * 1024];
        let cuts = pushed_cuts(&p, &data, &[10_000]);
        assert_eq!(cuts, vec![(0, 262_144), (262_144, 262_144), (524_288, 90_112)]);
    }

    #[test]
    fn empty_stream_emits_nothing_and_chunker_is_reusable() {
        let p = ChunkerParams::default();
        let mut chunker = Chunker::new(&p);
        let mut n = 0;
        chunker
            .finish(&mut |_| {
                n += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 0);
        let data = xorshift_bytes(100_000, 7);
        let mut emitted = Vec::new();
        for _ in 0..2 {
            emitted.clear();
            chunker
                .push(&data, &mut |c| {
                    emitted.extend_from_slice(c);
                    Ok(())
                })
                .unwrap();
            chunker
                .finish(&mut |c| {
                    emitted.extend_from_slice(c);
                    Ok(())
                })
                .unwrap();
            assert_eq!(emitted, data);
        }
    }

    #[test]
    fn emit_error_propagates_and_resets_the_chunker() {
        let p = ChunkerParams::default();
        let mut chunker = Chunker::new(&p);
        let data = xorshift_bytes(1 << 20, 3);
        let err = chunker
            .push(&data, &mut |_| Err(Error::InvalidArgument("stop".into())))
            .unwrap_err();
        assert_eq!(err.to_string(), "stop");
        assert_eq!(chunker.buffered(), 0);
    }

    #[test]
    fn chunk_reader_reports_read_errors_and_byte_count() {
        struct Failing;
        impl std::io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let err = chunk_reader(&ChunkerParams::default(), Failing, &mut |_| Ok(())).unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        let data = xorshift_bytes(123_457, 1);
        let n = chunk_reader(&ChunkerParams::default(), &data[..], &mut |_| Ok(())).unwrap();
        assert_eq!(n, 123_457);
    }

    #[test]
    fn parse_sizes_accepts_suffixes_and_plain_bytes() {
        let want = ChunkerParams {
            seed: 9,
            ..ChunkerParams::default()
        };
        assert_eq!(ChunkerParams::parse_sizes("16K:64K:256K", 9).unwrap(), want);
        assert_eq!(ChunkerParams::parse_sizes("16384:65536:262144", 9).unwrap(), want);
        assert_eq!(ChunkerParams::parse_sizes("16kib:64KiB:256k", 9).unwrap(), want);
        let big = ChunkerParams::parse_sizes("1M:4M:16M", 0).unwrap();
        assert_eq!(
            (big.min_size, big.avg_size, big.max_size),
            (1 << 20, 4 << 20, 16 << 20)
        );
        assert_eq!(want.to_string(), "16K:64K:256K");
    }

    #[test]
    fn parse_sizes_rejects_bad_input_with_clear_messages() {
        for (input, needle) in [
            ("16K:64K", "2 fields"),
            ("16K:64K:256K:1M", "4 fields"),
            ("16X:64K:256K", "\"16X\" is not a size"),
            (":64K:256K", "is not a size"),
            ("99999999999:1:1", "is not a size"),
            ("32:64K:256K", "minimum chunk size 32 is outside 64..=1M"),
            ("16K:128:256K", "average chunk size 128"),
            ("16K:64K:32M", "maximum chunk size 32M is outside 1K..=16M"),
            ("64K:16K:256K", "minimum <= average <= maximum"),
            ("16K:64K:16K", "minimum <= average <= maximum"),
            ("16385:64K:256K", "must be even"),
        ] {
            let err = ChunkerParams::parse_sizes(input, 0).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{input}");
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn invalid_params_never_panic() {
        let p = ChunkerParams {
            min_size: 0,
            avg_size: 0,
            max_size: 0,
            seed: 1,
        };
        let c = p.clamped();
        assert!(c.validate().is_ok(), "{c:?}");
        let odd = ChunkerParams {
            min_size: 1001,
            avg_size: 3001,
            max_size: 9001,
            seed: 1,
        };
        assert!(odd.clamped().validate().is_ok());
    }

    fn params_strategy() -> impl Strategy<Value = ChunkerParams> {
        (
            prop_oneof![
                Just((64u32, 256u32, 1024u32)),
                Just((256, 1024, 4096)),
                Just((512, 2048, 3072)),
                Just((1024, 1024, 1024))
            ],
            prop_oneof![Just(0u64), any::<u64>()],
        )
            .prop_map(|((min, avg, max), seed)| ChunkerParams {
                min_size: min,
                avg_size: avg,
                max_size: max,
                seed,
            })
    }

    fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
        // Random bytes, with some long runs of one byte to force max-size cuts.
        (
            proptest::collection::vec(any::<u8>(), 0..40_000),
            proptest::collection::vec((0usize..40_000, 0usize..6000, any::<u8>()), 0..3),
        )
            .prop_map(|(mut data, runs)| {
                let len = data.len();
                for (at, run, byte) in runs {
                    if len > 0 {
                        let at = at % len;
                        let end = (at + run).min(len);
                        data[at..end].fill(byte);
                    }
                }
                data
            })
    }

    proptest! {
        #[test]
        fn cuts_equal_fastcdc_whatever_the_push_sizes(
            p in params_strategy(),
            data in data_strategy(),
            sizes in proptest::collection::vec(1usize..5000, 1..8),
        ) {
            prop_assert_eq!(pushed_cuts(&p, &data, &sizes), reference_cuts(&p, &data));
        }
    }
}
