//! The MiniLM forward pass with int8 weights on AVX-512 VNNI: the fast path of
//! [`super::MiniLm`].
//!
//! Why: the F32 candle pass costs 17–26 ms for a 30-token prompt on one core, and the cache
//! embeds every cacheable question before it can answer. Most of that is the four dense
//! layers per block. Here their weights are int8 (one scale per output), a quarter of the
//! memory to stream, and each token's activations are rounded to 16-bit integers just before
//! each dense layer (one scale per token), so `vpdpwssd` does 32 multiply-adds per
//! instruction. Everything else (embeddings, attention, layer norm, GELU, pooling) stays f32,
//! compiled for AVX-512 too.
//!
//! Why 16-bit activations and not 8: the layer norm outputs that feed the query/key/value and
//! feed-forward layers have a few outlier channels, and one 8-bit scale per token leaves the
//! other channels a handful of levels. With 8-bit activations the vectors drifted to cosine
//! 0.991 from the F32 ones; with 16-bit ones they stay above 0.998, about what int8 weights
//! alone cost (the unit tests bound it; `cache-eval` measures the cache's decisions on it).
//!
//! The kernel needs `avx512f`, `avx512bw` and `avx512vnni`. [`Vnni::detect`] checks them at
//! run time; without them the model runs the F32 candle path instead. This is the one module
//! of the workspace that uses `unsafe`: the intrinsics' loads and stores, and calling the
//! `#[target_feature]` functions, which is sound only once [`Vnni`] proves the CPU has them.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use anyhow::bail;

use crate::cache::index::dot;

/// Proof that this CPU runs the kernel: only [`Vnni::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Vnni(());

impl Vnni {
    pub fn detect() -> Option<Vnni> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            return Some(Vnni(()));
        }
        None
    }
}

/// Outputs per kernel panel: two 16-lane registers.
const PANEL: usize = 32;
/// Token rows per kernel tile: 8 rows × 2 registers = 16 accumulators.
const ROWS: usize = 8;

/// A dense layer `y = x · wᵀ + b` with int8 weights, packed for the kernel.
pub struct Linear {
    inputs: usize,
    outputs: usize,
    /// Panels of [`PANEL`] outputs; in each, pairs of inputs; in each pair, 2 bytes per
    /// output (its weights for those 2 inputs). Half a pair (16 outputs) widens to one
    /// register of 16-bit pairs.
    packed: Vec<i8>,
    /// Per output: its weights' scale (`w ≈ q · scale`).
    scale: Vec<f32>,
    bias: Vec<f32>,
    /// The largest 16-bit activation level that cannot overflow the 32-bit sums:
    /// `level · 127 · inputs < 2³¹`.
    levels: f32,
}

impl Linear {
    /// `weight` is `outputs × inputs`, row-major (PyTorch's `Linear.weight`).
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        outputs: usize,
        inputs: usize,
    ) -> anyhow::Result<Linear> {
        if !outputs.is_multiple_of(PANEL) || !inputs.is_multiple_of(16) || inputs == 0 {
            bail!("int8 kernel needs outputs in multiples of {PANEL} and inputs of 16");
        }
        if weight.len() != outputs * inputs || bias.len() != outputs {
            bail!("weight is not {outputs} × {inputs}");
        }
        let mut quantised = vec![0i8; outputs * inputs];
        let mut scale = Vec::with_capacity(outputs);
        for (row, q) in weight.chunks_exact(inputs).zip(quantised.chunks_exact_mut(inputs)) {
            let max = row.iter().fold(0f32, |m, w| m.max(w.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            for (q, w) in q.iter_mut().zip(row) {
                *q = (w / s).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
            scale.push(s);
        }
        let mut packed = Vec::with_capacity(outputs * inputs);
        for panel in 0..outputs / PANEL {
            for pair in 0..inputs / 2 {
                for o in panel * PANEL..(panel + 1) * PANEL {
                    let at = o * inputs + pair * 2;
                    packed.extend_from_slice(&quantised[at..at + 2]);
                }
            }
        }
        let levels = (((i32::MAX as usize) / (127 * inputs)).min(32767)) as f32;
        Ok(Linear { inputs, outputs, packed, scale, bias, levels })
    }

    /// `x` is `rows × inputs`; returns `rows × outputs`. `_cpu` is the proof the kernel
    /// may run.
    pub fn forward(&self, _cpu: Vnni, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.inputs, "input is not rows × inputs");
        let mut y = vec![0f32; rows * self.outputs];
        // SAFETY: `_cpu` proves the features; the sizes were checked above and in `new`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let tokens = Quantised::of(x, rows, self.inputs, self.levels);
            gemm(self, &tokens, &mut y, rows);
        }
        y
    }
}

/// Activations of `rows` tokens as 16-bit integers, one scale per token, rows padded with
/// zeros to a multiple of [`ROWS`] so the kernel has no remainder case.
struct Quantised {
    values: Vec<i16>,
    scale: Vec<f32>,
}

impl Quantised {
    /// # Safety
    /// The CPU must have avx512f and avx512bw; `x` is `rows × inputs`, `inputs` a multiple
    /// of 16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn of(x: &[f32], rows: usize, inputs: usize, levels: f32) -> Quantised {
        let padded = rows.div_ceil(ROWS) * ROWS;
        let mut values = vec![0i16; padded * inputs];
        let mut scale = vec![1f32; padded];
        for ((row, out), s) in
            x.chunks_exact(inputs).zip(values.chunks_exact_mut(inputs)).zip(&mut scale)
        {
            // SAFETY (loads and stores): 16 floats in, 16 values out, per chunk of 16.
            let mut max = _mm512_setzero_ps();
            for c in row.chunks_exact(16) {
                max = _mm512_max_ps(max, _mm512_abs_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }));
            }
            let max = _mm512_reduce_max_ps(max);
            if max > 0.0 {
                *s = max / levels;
                let inv = _mm512_set1_ps(levels / max);
                for (c, o) in row.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
                    // Rounds to nearest (the default MXCSR mode); |q| <= levels fits i16.
                    let q = _mm512_cvtps_epi32(_mm512_mul_ps(
                        unsafe { _mm512_loadu_ps(c.as_ptr()) },
                        inv,
                    ));
                    unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(q)) };
                }
            }
        }
        Quantised { values, scale }
    }
}

/// `y = dequantise(a · wᵀ) + b` over `rows` real rows.
///
/// For each panel of 32 outputs and each tile of 8 tokens, 16 accumulators take one
/// `vpdpwssd` per pair of inputs: the panel's pair is two loads widened to 16 bits, each
/// token's pair one broadcast. A panel of the widest layer (1536 inputs) is 48 KiB, so it
/// stays in L1/L2 while the tiles of tokens pass over it.
///
/// # Safety
/// The CPU must have avx512f, avx512bw and avx512vnni ([`Vnni`]); `a` must come from
/// [`Quantised::of`] with `w.inputs` columns and at least `rows` rows; `y` must hold
/// `rows × w.outputs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm(w: &Linear, a: &Quantised, y: &mut [f32], rows: usize) {
    let k = w.inputs;
    let padded = rows.div_ceil(ROWS) * ROWS;
    debug_assert!(a.values.len() >= padded * k && y.len() >= rows * w.outputs);
    for panel in 0..w.outputs / PANEL {
        let weights = w.packed[panel * PANEL * k..(panel + 1) * PANEL * k].as_ptr();
        let o = panel * PANEL;
        // SAFETY (all loads and stores below): `o + 32 <= outputs` for the per-output
        // vectors; `weights` spans `k / 2` pairs of 64 bytes; token rows stay below `padded`.
        let (scale0, scale1, bias0, bias1) = unsafe {
            (
                _mm512_loadu_ps(w.scale.as_ptr().add(o)),
                _mm512_loadu_ps(w.scale.as_ptr().add(o + 16)),
                _mm512_loadu_ps(w.bias.as_ptr().add(o)),
                _mm512_loadu_ps(w.bias.as_ptr().add(o + 16)),
            )
        };
        for tile in (0..padded).step_by(ROWS) {
            let mut acc = [_mm512_setzero_si512(); 2 * ROWS];
            let tokens = unsafe { a.values.as_ptr().add(tile * k) };
            for pair in 0..k / 2 {
                let (w0, w1) = unsafe {
                    let at = weights.add(pair * 64);
                    (
                        _mm512_cvtepi8_epi16(_mm256_loadu_si256(at.cast())),
                        _mm512_cvtepi8_epi16(_mm256_loadu_si256(at.add(32).cast())),
                    )
                };
                for r in 0..ROWS {
                    let two =
                        unsafe { tokens.add(r * k + pair * 2).cast::<i32>().read_unaligned() };
                    let x = _mm512_set1_epi32(two);
                    acc[2 * r] = dpwssd(acc[2 * r], x, w0);
                    acc[2 * r + 1] = dpwssd(acc[2 * r + 1], x, w1);
                }
            }
            for r in 0..ROWS.min(rows.saturating_sub(tile)) {
                let token_scale = _mm512_set1_ps(a.scale[tile + r]);
                let out0 = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(acc[2 * r]),
                    _mm512_mul_ps(token_scale, scale0),
                    bias0,
                );
                let out1 = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(acc[2 * r + 1]),
                    _mm512_mul_ps(token_scale, scale1),
                    bias1,
                );
                let row = &mut y[(tile + r) * w.outputs + o..(tile + r) * w.outputs + o + PANEL];
                unsafe {
                    _mm512_storeu_ps(row.as_mut_ptr(), out0);
                    _mm512_storeu_ps(row.as_mut_ptr().add(16), out1);
                }
            }
        }
    }
}

/// Layer norm parameters.
pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

/// One transformer block: fused query/key/value, attention output, feed-forward.
pub struct Block {
    pub qkv: Linear,
    pub attn_out: Linear,
    pub attn_norm: Norm,
    pub up: Linear,
    pub down: Linear,
    pub out_norm: Norm,
}

/// The whole encoder, the same recipe as the F32 path in `super`.
pub struct Encoder {
    pub cpu: Vnni,
    /// `vocabulary × hidden`, row-major.
    pub word: Vec<f32>,
    /// `positions × hidden`, row-major.
    pub position: Vec<f32>,
    pub token_type0: Vec<f32>,
    pub embed_norm: Norm,
    pub blocks: Vec<Block>,
    pub heads: usize,
    pub hidden: usize,
}

impl Encoder {
    /// The mean-pooled, unit-length sentence embedding of `ids`.
    pub fn embed(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        let h = self.hidden;
        if ids.len() * h > self.position.len() {
            bail!("{} tokens is more than the model's positions", ids.len());
        }
        if ids.iter().any(|&id| (id as usize + 1) * h > self.word.len()) {
            bail!("a token id is outside the vocabulary");
        }
        // SAFETY: `self.cpu` proves the features `embed_avx512` is compiled for.
        #[cfg(target_arch = "x86_64")]
        return Ok(unsafe { self.embed_avx512(ids) });
        #[cfg(not(target_arch = "x86_64"))]
        bail!("the int8 path needs x86-64")
    }

    /// The forward pass compiled for AVX-512, so the f32 parts vectorise 16 wide too.
    ///
    /// # Safety
    /// The CPU must have the features [`Vnni`] checks; `ids` must be in range.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn embed_avx512(&self, ids: &[u32]) -> Vec<f32> {
        let (h, n) = (self.hidden, ids.len());
        let mut x = Vec::with_capacity(n * h);
        for (i, &id) in ids.iter().enumerate() {
            let word = &self.word[id as usize * h..][..h];
            let position = &self.position[i * h..][..h];
            x.extend(word.iter().zip(position).zip(&self.token_type0).map(|((w, p), t)| w + p + t));
        }
        layer_norm(&mut x, &self.embed_norm);
        for block in &self.blocks {
            let qkv = block.qkv.forward(self.cpu, &x, n);
            let context = attention(&qkv, n, h, self.heads);
            let mut attended = block.attn_out.forward(self.cpu, &context, n);
            add(&mut attended, &x);
            layer_norm(&mut attended, &block.attn_norm);
            let mut up = block.up.forward(self.cpu, &attended, n);
            for v in &mut up {
                *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
            let mut down = block.down.forward(self.cpu, &up, n);
            add(&mut down, &attended);
            layer_norm(&mut down, &block.out_norm);
            x = down;
        }
        let mut pooled = vec![0f32; h];
        for row in x.chunks_exact(h) {
            add(&mut pooled, row);
        }
        let norm = dot(&pooled, &pooled).sqrt().max(1e-12);
        pooled.iter_mut().for_each(|v| *v /= norm);
        pooled
    }
}

#[inline(always)]
fn add(into: &mut [f32], other: &[f32]) {
    into.iter_mut().zip(other).for_each(|(a, b)| *a += b);
}

/// A sum in 16 independent lanes, so it vectorises.
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, x)| *l += x);
    }
    lanes.iter().sum::<f32>() + tail
}

/// Each row of `x` (one token) normalised over the hidden size.
#[inline(always)]
fn layer_norm(x: &mut [f32], norm: &Norm) {
    let h = norm.weight.len();
    for row in x.chunks_exact_mut(h) {
        let mean = sum(row) / h as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let inv = 1.0 / (dot(row, row) / h as f32 + norm.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = *v * inv * w + b;
        }
    }
}

/// Softmax attention of every head; `qkv` is `n × 3·hidden` (queries, keys, values).
///
/// Shaped so every inner loop runs along a contiguous row and vectorises: a head's keys are
/// transposed once, so one query's scores are `d` axpys over the `n` keys.
#[inline(always)]
fn attention(qkv: &[f32], n: usize, hidden: usize, heads: usize) -> Vec<f32> {
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let stride = 3 * hidden;
    let mut context = vec![0f32; n * hidden];
    let mut keys = vec![0f32; d * n];
    let mut scores = vec![0f32; n];
    for head in 0..heads {
        for j in 0..n {
            let key = &qkv[j * stride + hidden + head * d..][..d];
            for (c, k) in key.iter().enumerate() {
                keys[c * n + j] = *k;
            }
        }
        for i in 0..n {
            let query = &qkv[i * stride + head * d..][..d];
            scores.fill(0.0);
            for (q, key_row) in query.iter().zip(keys.chunks_exact(n)) {
                let q = q * scale;
                scores.iter_mut().zip(key_row).for_each(|(s, k)| *s += q * k);
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
            scores.iter_mut().for_each(|s| *s = exp(*s - max));
            let inv = 1.0 / sum(&scores);
            let out = &mut context[i * hidden + head * d..][..d];
            for (j, p) in scores.iter().enumerate() {
                let p = p * inv;
                let value = &qkv[j * stride + 2 * hidden + head * d..][..d];
                out.iter_mut().zip(value).for_each(|(o, v)| *o += p * v);
            }
        }
    }
    context
}

/// `acc + Σ pairs of a·b` as the one instruction `vpdpwssd`. Written in assembly because
/// LLVM rewrites the intrinsic into `vpmaddwd` + `vpaddd`, twice the instructions in the
/// kernel's inner loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    // SAFETY: register-only, and the function's target features require avx512vnni.
    unsafe {
        std::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) acc,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `e^x` to about 1e-7 relative, in plain arithmetic so it vectorises (softmax, GELU).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    // ln 2 split in two so `x - n·ln2` keeps its low bits.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    // 2ⁿ built from bits without a float-to-int cast (which would not vectorise): adding
    // 2²³ leaves `n + 127` (1..=254 after the clamp) in the low mantissa bits.
    p * f32::from_bits((n + 127.0 + 8_388_608.0).to_bits() << 23)
}

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-x * x);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_the_standard_library() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let want = x.exp();
            assert!(((exp(x) - want) / want).abs() < 5e-7, "exp({x}) = {} vs {want}", exp(x));
        }
        // erf values from the standard normal table: erf(x) = 2Φ(x√2) − 1.
        for (x, want) in [(0.0, 0.0), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (2.0, 0.995_322_3)] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 3e-7, "erf(-{x}) = {}", erf(-x));
        }
    }

    /// The kernel against the same sum in plain f32, for shapes with and without a partial
    /// tile of tokens.
    #[test]
    fn the_kernel_computes_the_dense_layer() {
        let Some(cpu) = Vnni::detect() else {
            eprintln!("SKIPPED: int8 kernel test (this CPU has no AVX-512 VNNI)");
            return;
        };
        let (outputs, inputs) = (64, 48);
        let weight: Vec<f32> =
            (0..outputs * inputs).map(|i| ((i * 7919 % 201) as f32 - 100.0) / 250.0).collect();
        let bias: Vec<f32> = (0..outputs).map(|o| o as f32 / 10.0).collect();
        let layer = Linear::new(&weight, bias.clone(), outputs, inputs).unwrap();
        for rows in [1, 8, 11] {
            let x: Vec<f32> =
                (0..rows * inputs).map(|i| ((i * 104_729 % 97) as f32 - 48.0) / 30.0).collect();
            let y = layer.forward(cpu, &x, rows);
            assert_eq!(y.len(), rows * outputs);
            for r in 0..rows {
                for o in 0..outputs {
                    let want: f32 = bias[o]
                        + (0..inputs)
                            .map(|i| x[r * inputs + i] * weight[o * inputs + i])
                            .sum::<f32>();
                    let got = y[r * outputs + o];
                    // 8-bit weights up to 0.4 against inputs up to 1.6, over 48 inputs.
                    assert!((got - want).abs() < 0.05, "row {r} output {o}: {got} vs {want}");
                }
            }
        }
        assert!(Linear::new(&weight[..40 * 48], vec![0.0; 40], 40, 48).is_err());
        assert!(Linear::new(&weight[..64 * 40], bias, 64, 40).is_err());
    }
}
