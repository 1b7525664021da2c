//! Helpers shared by the unit tests of several modules. Test builds only.

/// `len` bytes of xorshift noise from `seed` (0 is taken as 1): incompressible,
/// and the same for the same seed, so chunk boundaries and ids are repeatable.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
