//! A bit-exact reimplementation of the random stream Gymnasium envs draw from: numpy's
//! `SeedSequence` feeding a `PCG64` bit generator, read through `Generator.uniform`.
//!
//! Gymnasium's `reset(seed=s)` builds `Generator(PCG64(SeedSequence(s)))` and the classic
//! control envs sample their start state with `uniform`. Reproducing that stream exactly is what
//! lets a native env start from the very same state as the Python one for the same seed, so
//! fixture tests can compare whole episodes, resets included, and users can mix native and
//! bridged runs of one experiment.

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

/// numpy's `SeedSequence` restricted to what Gymnasium uses: a non-negative integer entropy and
/// no spawn key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSequence {
    pool: [u32; POOL_SIZE],
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

impl SeedSequence {
    /// Mixes `entropy` into the pool exactly as `np.random.SeedSequence(entropy)` does.
    pub fn new(entropy: u128) -> Self {
        // numpy splits a Python int into little-endian 32-bit words, with at least one word.
        let mut words = Vec::with_capacity(4);
        let mut e = entropy;
        loop {
            words.push(e as u32);
            e >>= 32;
            if e == 0 {
                break;
            }
        }
        let mut pool = [0u32; POOL_SIZE];
        let mut hc = INIT_A;
        for (i, slot) in pool.iter_mut().enumerate() {
            *slot = hashmix(words.get(i).copied().unwrap_or(0), &mut hc);
        }
        for src in 0..POOL_SIZE {
            for dst in 0..POOL_SIZE {
                if src != dst {
                    let h = hashmix(pool[src], &mut hc);
                    pool[dst] = mix(pool[dst], h);
                }
            }
        }
        for &w in words.iter().skip(POOL_SIZE) {
            for slot in pool.iter_mut() {
                let h = hashmix(w, &mut hc);
                *slot = mix(*slot, h);
            }
        }
        Self { pool }
    }

    /// The mixed entropy pool (numpy's `SeedSequence.pool`).
    pub fn pool(&self) -> [u32; POOL_SIZE] {
        self.pool
    }

    /// `generate_state(n, np.uint64)`.
    pub fn generate_state_u64(&self, n_words: usize) -> Vec<u64> {
        let mut hc = INIT_B;
        let mut words32 = Vec::with_capacity(n_words * 2);
        for i in 0..n_words * 2 {
            let mut v = self.pool[i % POOL_SIZE] ^ hc;
            hc = hc.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hc);
            v ^= v >> XSHIFT;
            words32.push(v);
        }
        words32
            .chunks_exact(2)
            .map(|c| u64::from(c[0]) | (u64::from(c[1]) << 32))
            .collect()
    }
}

const PCG_MULT: u128 = (0x2360_ed05_1fc6_5da4_u128 << 64) | 0x4385_df64_9fcc_f645_u128;

/// numpy's `PCG64` (PCG XSL-RR 128/64) bit generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
}

impl Pcg64 {
    /// Seeds the generator the way `np.random.PCG64(seed_sequence)` does.
    pub fn from_seed_sequence(ss: &SeedSequence) -> Self {
        let v = ss.generate_state_u64(4);
        let seed = (u128::from(v[0]) << 64) | u128::from(v[1]);
        let initseq = (u128::from(v[2]) << 64) | u128::from(v[3]);
        let mut rng = Self {
            state: 0,
            inc: (initseq << 1) | 1,
        };
        rng.advance_state();
        rng.state = rng.state.wrapping_add(seed);
        rng.advance_state();
        rng
    }

    fn advance_state(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// Next raw 64-bit output (`bit_generator.random_raw()`).
    pub fn next_u64(&mut self) -> u64 {
        self.advance_state();
        let s = self.state;
        let xored = ((s >> 64) as u64) ^ (s as u64);
        xored.rotate_right((s >> 122) as u32)
    }

    /// A double in [0, 1) from the top 53 bits, as numpy's `next_double`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// The generator Gymnasium hands an env as `self.np_random`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpRandom {
    bits: Pcg64,
}

impl NpRandom {
    /// `gymnasium.utils.seeding.np_random(seed)`.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            bits: Pcg64::from_seed_sequence(&SeedSequence::new(u128::from(seed))),
        }
    }

    /// Seeded from OS entropy, as Gymnasium does on a first `reset()` without a seed.
    pub fn from_entropy() -> Self {
        let e: u128 = rand::random();
        Self {
            bits: Pcg64::from_seed_sequence(&SeedSequence::new(e)),
        }
    }

    /// `Generator.uniform(low, high)` for one value.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.bits.next_f64()
    }

    /// Raw access for draws other than `uniform`.
    pub fn bits(&mut self) -> &mut Pcg64 {
        &mut self.bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values printed by numpy 2.4 (`SeedSequence(42).pool`, `.generate_state(4,
    // np.uint64)`, `PCG64(SeedSequence(42)).random_raw(2)` and the two uniforms after them).
    #[test]
    fn matches_numpy_seed_sequence_and_pcg64() {
        let ss = SeedSequence::new(42);
        assert_eq!(ss.pool(), [1662858758, 128880814, 1875164712, 753753205]);
        assert_eq!(
            ss.generate_state_u64(4),
            vec![
                11465652750463011511,
                15382171918060459190,
                9018504550953525431,
                3703499796004394495
            ]
        );
        let mut rng = Pcg64::from_seed_sequence(&ss);
        assert_eq!(rng.next_u64(), 14276969152011380360);
        assert_eq!(rng.next_u64(), 8095878257575067585);
        let mut np = NpRandom { bits: rng };
        assert!((np.uniform(-0.05, 0.05) - 0.03585979).abs() < 1e-8);
        assert!((np.uniform(-0.05, 0.05) - 0.0197368).abs() < 1e-7);
    }

    #[test]
    fn multi_word_entropy_matches_numpy() {
        let ss = SeedSequence::new((1u128 << 40) + 5);
        assert_eq!(ss.pool(), [2635101428, 3437552004, 3468235908, 3153711952]);
    }
}
