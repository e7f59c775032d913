//! The nearest-neighbour index of one tenant's scope: unit vectors in one flat array.
//!
//! Small indexes are scanned exactly (a dot product per entry). Past [`EXACT_SCAN_BELOW`]
//! entries a full scan of 384 floats per entry is memory-bound (100,000 entries are 150 MB to
//! read per lookup), so each vector also keeps a 384-bit sign code: the scan ranks every entry
//! by Hamming distance over 48 bytes, then re-ranks the best [`RERANK`] candidates exactly.
//! Sign codes preserve angles well for sentence embeddings, and the verification stage only
//! ever looks at the top few, so the approximation can cost a rare hit, never a wrong answer.
//!
//! Speed (issue 8: a lookup over 100,000 entries under 2 ms p95). The Hamming scan is
//! compute-bound, and the baseline x86-64 target has no `popcnt` (a software popcount is a
//! dozen instructions per word). The hot loops therefore run through
//! [`pulp::Arch::dispatch`], which detects the CPU once and runs them compiled for x86-64-v3
//! (`popcnt`, AVX2, FMA) where available, else for the baseline — safe code, no `unsafe`
//! here. Only code inlined into the dispatched function gets the wider instruction set, so
//! the operations are [`pulp::WithSimd`] structs whose loops are `#[inline(always)]` (a
//! closure's call shim or a library iterator adaptor left out of line silently runs the
//! baseline code). The scan keeps the closest candidates in one pass ([`Closest`]) instead of
//! writing 100,000 distances and selecting from them (that buffer alone cost as much as the
//! scan). What remains is the re-rank, bound by memory latency: 256 vectors of 1.5 KB each,
//! scattered in a 150 MB array. `engine/benches/cache_index.rs` measures it; figures in
//! docs/benchmarks.md.

use std::collections::HashMap;

/// Below this many entries the exact scan is both exact and fast enough (2,000 vectors are
/// 3 MB to read; the Hamming path's re-rank alone reads a tenth of that, but scattered).
pub const EXACT_SCAN_BELOW: usize = 2048;
/// Candidates re-ranked exactly after the Hamming pre-selection.
pub const RERANK: usize = 256;

/// Vectors of one scope, addressed by entry id.
pub struct VectorIndex {
    dims: usize,
    words: usize,
    vectors: Vec<f32>,
    codes: Vec<u64>,
    ids: Vec<u64>,
    positions: HashMap<u64, usize>,
    /// The instruction set the hot loops run with (detected once).
    arch: pulp::Arch,
}

impl VectorIndex {
    pub fn new(dims: usize) -> VectorIndex {
        VectorIndex {
            dims,
            words: dims.div_ceil(64),
            vectors: Vec::new(),
            codes: Vec::new(),
            ids: Vec::new(),
            positions: HashMap::new(),
            arch: pulp::Arch::new(),
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds (or replaces) entry `id`; `vector` must be unit length and `dims` long.
    pub fn insert(&mut self, id: u64, vector: &[f32]) {
        if vector.len() != self.dims {
            return;
        }
        self.remove(id);
        self.positions.insert(id, self.ids.len());
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
        self.codes.extend(sign_code(vector));
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let Some(pos) = self.positions.remove(&id) else { return false };
        let last = self.ids.len() - 1;
        if pos != last {
            let moved = self.ids[last];
            self.ids.swap(pos, last);
            let (dims, words) = (self.dims, self.words);
            self.vectors.copy_within(last * dims..(last + 1) * dims, pos * dims);
            self.codes.copy_within(last * words..(last + 1) * words, pos * words);
            self.positions.insert(moved, pos);
        }
        self.ids.pop();
        self.vectors.truncate(last * self.dims);
        self.codes.truncate(last * self.words);
        true
    }

    /// The `k` entries most similar to `query` (cosine, best first).
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(u64, f32)> {
        if query.len() != self.dims || k == 0 || self.is_empty() {
            return Vec::new();
        }
        let candidates: Vec<usize> = if self.len() < EXACT_SCAN_BELOW {
            (0..self.len()).collect()
        } else {
            let q = sign_code(query);
            let mut candidates = Vec::new();
            self.arch.dispatch(Hamming {
                codes: &self.codes,
                words: self.words,
                query: &q,
                want: RERANK.max(k),
                candidates: &mut candidates,
            });
            candidates
        };
        let mut scored: Vec<(u64, f32)> = Vec::with_capacity(candidates.len());
        self.arch.dispatch(Score {
            index: self,
            query,
            candidates: &candidates,
            scored: &mut scored,
        });
        let keep = k.min(scored.len());
        if keep < scored.len() {
            scored.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1));
            scored.truncate(keep);
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored
    }
}

/// The Hamming scan, as an operation [`pulp::Arch::dispatch`] compiles per instruction set.
/// (A closure would do, but its call shim is not always inlined into the dispatched
/// function, and then the loop runs with the baseline instructions.)
struct Hamming<'a> {
    codes: &'a [u64],
    words: usize,
    query: &'a [u64],
    want: usize,
    /// Positions of the `want` codes closest to `query`.
    candidates: &'a mut Vec<usize>,
}

impl pulp::WithSimd for Hamming<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let mut closest = Closest::new(self.want, self.query.len() * 64);
        match self.words {
            6 => scan::<6>(self.codes, self.query, &mut closest), // 384 dimensions (MiniLM)
            12 => scan::<12>(self.codes, self.query, &mut closest), // 768
            24 => scan::<24>(self.codes, self.query, &mut closest), // 1536
            words => {
                for (i, code) in self.codes.chunks_exact(words).enumerate() {
                    let d: u32 =
                        code.iter().zip(self.query).map(|(a, b)| (a ^ b).count_ones()).sum();
                    closest.offer(i, d);
                }
            }
        }
        closest.finish(self.candidates);
    }
}

/// Offers every code's Hamming distance to `query`; the width fixed, so the inner loop
/// unrolls without bounds checks.
#[inline(always)]
fn scan<const W: usize>(codes: &[u64], q: &[u64], closest: &mut Closest) {
    let mut query = [0u64; W];
    query.copy_from_slice(&q[..W]);
    let n = codes.len() / W;
    let codes = &codes[..n * W];
    let mut i = 0;
    while i < n {
        let code = &codes[i * W..i * W + W];
        let mut d = 0u32;
        let mut w = 0;
        while w < W {
            d += (code[w] ^ query[w]).count_ones();
            w += 1;
        }
        closest.offer(i, d);
        i += 1;
    }
}

/// The `want` smallest distances offered, in one pass and small memory: offers at or above
/// a limit are dropped at once (after the first few thousand, nearly all are), and when more
/// than `4 × want` are kept, the kept set shrinks to the `want` smallest and the limit to
/// the largest of them. Ties go to the first offered.
struct Closest {
    want: usize,
    limit: u32,
    kept: Vec<(u32, u32)>,
    histogram: Vec<u32>,
}

impl Closest {
    fn new(want: usize, max_distance: usize) -> Closest {
        let want = want.max(1);
        Closest {
            want,
            limit: u32::MAX,
            kept: Vec::with_capacity(want * 4 + 1),
            histogram: vec![0; max_distance + 1],
        }
    }

    #[inline(always)]
    fn offer(&mut self, position: usize, distance: u32) {
        if distance < self.limit {
            self.kept.push((distance, position as u32));
            if self.kept.len() > self.want * 4 {
                self.tighten();
            }
        }
    }

    /// Keeps the `want` smallest (a counting selection over the few possible distances:
    /// linear, without a sort's bad cases); later offers must beat the largest kept.
    fn tighten(&mut self) {
        self.histogram.iter_mut().for_each(|h| *h = 0);
        let top = self.histogram.len() - 1;
        for (d, _) in &self.kept {
            self.histogram[(*d as usize).min(top)] += 1;
        }
        let (mut cutoff, mut below) = (0usize, 0usize);
        while cutoff < top && below + (self.histogram[cutoff] as usize) < self.want {
            below += self.histogram[cutoff] as usize;
            cutoff += 1;
        }
        let cutoff = cutoff as u32;
        // `kept` is in offer order, so the ties kept are the first offered.
        let mut ties = self.want - below;
        self.kept.retain(|(d, _)| {
            if *d < cutoff {
                true
            } else if *d == cutoff && ties > 0 {
                ties -= 1;
                true
            } else {
                false
            }
        });
        self.limit = cutoff;
    }

    /// The positions of the `want` smallest distances, closest first.
    fn finish(mut self, out: &mut Vec<usize>) {
        // By distance, then offer order: the ties kept are the first offered.
        self.kept.sort_unstable();
        self.kept.truncate(self.want);
        out.extend(self.kept.iter().map(|(_, p)| *p as usize));
    }
}

/// Exact re-ranking of candidate positions, dispatched like [`Hamming`].
struct Score<'a> {
    index: &'a VectorIndex,
    query: &'a [f32],
    candidates: &'a [usize],
    scored: &'a mut Vec<(u64, f32)>,
}

impl pulp::WithSimd for Score<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let dims = self.index.dims;
        for &i in self.candidates {
            let v = &self.index.vectors[i * dims..(i + 1) * dims];
            self.scored.push((self.index.ids[i], dot_inline(self.query, v)));
        }
    }
}

/// One bit per dimension: set where the component is positive.
fn sign_code(v: &[f32]) -> Vec<u64> {
    let mut code = vec![0u64; v.len().div_ceil(64)];
    for (i, x) in v.iter().enumerate() {
        if *x > 0.0 {
            code[i / 64] |= 1 << (i % 64);
        }
    }
    code
}

/// Dot product with eight independent accumulators, so it vectorises without `unsafe`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_inline(a, b)
}

#[inline(always)]
fn dot_inline(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += ca[j] * cb[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len().min(b.len()) {
        sum += a[i] * b[i];
    }
    sum
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn unit(rng: &mut rand::rngs::SmallRng, dims: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
        crate::cache::embed::normalize(&mut v);
        v
    }

    #[test]
    fn finds_the_nearest_and_forgets_removed_entries() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut index = VectorIndex::new(32);
        let vectors: Vec<Vec<f32>> = (0..100).map(|_| unit(&mut rng, 32)).collect();
        for (i, v) in vectors.iter().enumerate() {
            index.insert(i as u64, v);
        }
        let hit = index.search(&vectors[42], 3);
        assert_eq!(hit[0].0, 42);
        assert!((hit[0].1 - 1.0).abs() < 1e-5);
        assert!(hit[1].1 <= hit[0].1);
        assert!(index.remove(42));
        assert!(!index.remove(42));
        assert_ne!(index.search(&vectors[42], 1)[0].0, 42);
        assert_eq!(index.len(), 99);
        // The entry moved into the hole is still found.
        assert_eq!(index.search(&vectors[99], 1)[0].0, 99);
    }

    #[test]
    fn the_hamming_preselection_keeps_the_true_nearest() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        let mut index = VectorIndex::new(384);
        let n = EXACT_SCAN_BELOW + 1000;
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut rng, 384)).collect();
        for (i, v) in vectors.iter().enumerate() {
            index.insert(i as u64, v);
        }
        // A slightly perturbed copy of a stored vector must find it.
        for target in [0usize, 17, n - 1] {
            let mut q: Vec<f32> =
                vectors[target].iter().map(|x| x + rng.random_range(-0.01..0.01)).collect();
            crate::cache::embed::normalize(&mut q);
            assert_eq!(index.search(&q, 1)[0].0, target as u64);
        }
    }

    #[test]
    fn the_closest_are_kept_in_one_pass_ties_to_the_first_offered() {
        let distances = [3u32, 0, 64, 1, 2, 1, 5, 0, 1, 1, 1, 9, 1, 0];
        let pick = |want: usize| {
            let mut closest = Closest::new(want, 64);
            for (i, d) in distances.iter().enumerate() {
                closest.offer(i, *d);
            }
            let mut out = Vec::new();
            closest.finish(&mut out);
            out
        };
        // want = 1 tightens after 5 offers, several times over.
        assert_eq!(pick(1), [1]);
        assert_eq!(pick(3), [1, 7, 13]);
        assert_eq!(pick(5), [1, 7, 13, 3, 5]);
        assert_eq!(pick(100).len(), distances.len());
        // Hamming distances through the dispatched scan.
        let codes: Vec<u64> = vec![0b1011, 0, u64::MAX, 0b1, 0b11, 0b1];
        let mut candidates = Vec::new();
        pulp::Arch::new().dispatch(Hamming {
            codes: &codes,
            words: 1,
            query: &[0],
            want: 3,
            candidates: &mut candidates,
        });
        assert_eq!(candidates, [1, 3, 5]);
    }

    #[test]
    fn the_scan_agrees_with_exact_search_on_well_separated_data() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let n = EXACT_SCAN_BELOW * 2;
        let mut index = VectorIndex::new(384);
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut rng, 384)).collect();
        for (i, v) in vectors.iter().enumerate() {
            index.insert(i as u64, v);
        }
        // Removing entries moves others into the holes; they must stay findable.
        for id in (0..n as u64).step_by(7) {
            assert!(index.remove(id));
        }
        for target in (1..n).step_by(97).filter(|t| t % 7 != 0) {
            let mut q: Vec<f32> =
                vectors[target].iter().map(|x| x + rng.random_range(-0.02..0.02)).collect();
            crate::cache::embed::normalize(&mut q);
            let found = index.search(&q, 3);
            assert_eq!(found[0].0, target as u64);
            let exact = dot(&q, &vectors[target]);
            assert!((found[0].1 - exact).abs() < 1e-5);
            assert!(found[1].1 <= found[0].1 && found[2].1 <= found[1].1);
        }
    }
}
