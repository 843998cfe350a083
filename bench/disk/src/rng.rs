//! The block offsets of the random workloads: SplitMix64 from a fixed
//! seed, so both sides (and every run of the benchmark) touch the same
//! blocks in the same order.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to
/// spread I/O over a disk.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (Lemire's multiply-shift; `n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).expect("the high half of a u64 product fits u64")
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The seed of one workload's offsets: a random write and the random read
/// after it touch different blocks.
pub fn workload_seed(seed: u64, workload_index: usize) -> u64 {
    SplitMix64::new(seed ^ (workload_index as u64).wrapping_mul(0xa076_1d64_78bd_642f)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // SplitMix64 from seed 1234567 (the reference implementation's output).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(rng.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn same_seed_same_offsets() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(42);
            (0..100).map(|_| r.below(131_072)).collect()
        };
        let mut r = SplitMix64::new(42);
        let b: Vec<u64> = (0..100).map(|_| r.below(131_072)).collect();
        assert_eq!(a, b);
        let mut other = SplitMix64::new(43);
        let c: Vec<u64> = (0..100).map(|_| other.below(131_072)).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn below_stays_in_range_and_spreads() {
        let mut rng = SplitMix64::new(7);
        let n = 1000;
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let x = rng.below(n);
            assert!(x < n);
            buckets[usize::try_from(x / 100).unwrap()] += 1;
        }
        // Each tenth gets close to 10000 of 100000 draws.
        for count in buckets {
            assert!((9_500..10_500).contains(&count), "{buckets:?}");
        }
        assert_eq!(SplitMix64::new(1).below(1), 0);
    }

    #[test]
    fn fill_covers_odd_lengths() {
        let mut buf = [0u8; 13];
        SplitMix64::new(9).fill(&mut buf);
        assert!(buf.iter().filter(|&&b| b != 0).count() > 8);
        let mut again = [0u8; 13];
        SplitMix64::new(9).fill(&mut again);
        assert_eq!(buf, again);
    }

    #[test]
    fn workload_seeds_differ() {
        let seeds: Vec<u64> = (0..4).map(|w| workload_seed(5, w)).collect();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(seeds[i], seeds[j]);
            }
        }
        assert_eq!(workload_seed(5, 2), workload_seed(5, 2));
    }
}
