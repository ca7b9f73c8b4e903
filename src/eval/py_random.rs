//! Python's `random.Random(seed).sample`, draw for draw, so that keel picks the few-shot exemplars
//! lm-evaluation-harness's default sampler picks (`lm_eval/api/samplers.py::ContextSampler`:
//! `Random(fewshot_seed).sample(fewshot_docs, n)` once per evaluated document, in document order).
//!
//! CPython's generator is MT19937 seeded by `init_by_array` with the seed's 32-bit words
//! (`Modules/_randommodule.c`); `sample` and `_randbelow_with_getrandbits` are `Lib/random.py`'s.

/// CPython's `random.Random` (MT19937 with `init_by_array` seeding) as far as `random.sample`
/// needs it, so that keel draws the exemplars lm-eval's seeded sampler draws.
pub struct PyRandom {
    mt: [u32; 624],
    next: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed: `init_by_array` over the seed's 32-bit
    /// words, least significant first (`_randommodule.c::random_seed`).
    pub fn new(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut mt = [0u32; 624];
        mt[0] = 19650218;
        for i in 1..624 {
            mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1664525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        PyRandom { mt, next: 624 }
    }

    fn genrand_u32(&mut self) -> u32 {
        if self.next >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ if y & 1 == 1 { 0x9908_b0df } else { 0 };
            }
            self.next = 0;
        }
        let mut y = self.mt[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `k <= 64`: 32-bit words, least significant first, the last one shifted.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits({k})");
        let mut out = 0u64;
        let mut done = 0;
        while done < k {
            let take = (k - done).min(32);
            out |= ((self.genrand_u32() >> (32 - take)) as u64) << done;
            done += take;
        }
        out
    }

    /// `_randbelow_with_getrandbits(n)` for `n > 0`: rejection sampling on `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// The indices `random.sample(range(n), k)` picks, in its order (`k <= n`): a partial shuffle of
    /// a pool when the population is small, else rejection of repeats.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample of {k} from {n}");
        let mut setsize = 21usize;
        if k > 5 {
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.randbelow(n - i);
                    let picked = pool[j];
                    pool[j] = pool[n - i - 1];
                    picked
                })
                .collect()
        } else {
            let mut selected = std::collections::HashSet::new();
            (0..k)
                .map(|_| loop {
                    let j = self.randbelow(n);
                    if selected.insert(j) {
                        break j;
                    }
                })
                .collect()
        }
    }
}
