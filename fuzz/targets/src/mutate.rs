//! A small deterministic mutator for the stable replay (no libFuzzer there): bit flips, byte
//! overwrites with interesting values, truncation, insertion, duplication of a slice and splicing
//! with another seed, driven by a seeded xorshift so every run sees the same inputs.

/// A xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next_u64() % u64::try_from(n).unwrap()).unwrap()
    }
}

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, 0x08, 0x0a, 0x10, 0x12, 0x1a];

/// `input` with one to four random edits; `other` is spliced from.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if !v.is_empty() => {
                let n = rng.below(v.len());
                v.truncate(n);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, bytes);
            }
            4 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = a + rng.below((v.len() - a).min(64) + 1);
                let piece = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, piece);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 if v.len() > 1 => {
                // Remove a slice.
                let a = rng.below(v.len());
                let b = a + rng.below(v.len() - a) + 1;
                v.drain(a..b.min(v.len()));
            }
            _ => {
                // A varint-sized field header or length somewhere.
                let i = rng.below(v.len() + 1);
                let n = [0x80, 0xff, 0xff, 0xff, 0x0f];
                v.splice(i..i, n[..1 + rng.below(n.len())].iter().copied());
            }
        }
    }
    v
}

/// Random bytes of random length (below `max`).
pub fn random(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.below(max);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}
