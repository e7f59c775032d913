//! The nearest-neighbour index of one tenant's scope: unit vectors in one flat array.
//!
//! Small indexes are scanned exactly (a dot product per entry, written so the compiler
//! vectorises it). Past [`EXACT_SCAN_BELOW`] entries a full scan of 384 floats per entry is
//! memory-bound (100,000 entries are 150 MB to read per lookup), so each vector also keeps a
//! 384-bit sign code: the scan ranks every entry by Hamming distance over 48 bytes (popcount),
//! then re-ranks the best [`RERANK`] candidates exactly. Sign codes preserve angles well for
//! sentence embeddings, and the verification stage only ever looks at the top few, so the
//! approximation can cost a rare hit, never a wrong answer.

use std::collections::HashMap;

/// Below this many entries the exact scan is both exact and fast enough.
pub const EXACT_SCAN_BELOW: usize = 4096;
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
            for d in 0..self.dims {
                self.vectors.swap(pos * self.dims + d, last * self.dims + d);
            }
            for w in 0..self.words {
                self.codes.swap(pos * self.words + w, last * self.words + w);
            }
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
            // Hamming distances, then a counting selection over the few possible distances
            // (0..=dims): linear, allocation-light and without a sort's bad cases.
            let distances: Vec<u16> = self
                .codes
                .chunks_exact(self.words)
                .map(|code| {
                    code.iter().zip(&q).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>() as u16
                })
                .collect();
            let mut histogram = vec![0usize; self.dims + 1];
            for d in &distances {
                histogram[usize::from(*d).min(self.dims)] += 1;
            }
            let want = RERANK.max(k);
            let (mut cutoff, mut below) = (0usize, 0usize);
            while cutoff < histogram.len() && below + histogram[cutoff] <= want {
                below += histogram[cutoff];
                cutoff += 1;
            }
            // Every entry closer than `cutoff`, then entries at `cutoff` until `want`.
            let mut at_cutoff = want.saturating_sub(below);
            let mut picked = Vec::with_capacity(want);
            for (i, d) in distances.iter().enumerate() {
                let d = usize::from(*d);
                if d < cutoff {
                    picked.push(i);
                } else if d == cutoff && at_cutoff > 0 {
                    at_cutoff -= 1;
                    picked.push(i);
                }
            }
            picked
        };
        let mut scored: Vec<(u64, f32)> = candidates
            .into_iter()
            .map(|i| (self.ids[i], dot(query, &self.vectors[i * self.dims..(i + 1) * self.dims])))
            .collect();
        let keep = k.min(scored.len());
        if keep < scored.len() {
            scored.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1));
            scored.truncate(keep);
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored
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
}
