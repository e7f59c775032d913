//! all-MiniLM-L6-v2 run in process with candle: a 6-layer, 384-wide BERT encoder, mean
//! pooling over the tokens, then L2 normalisation — the sentence-transformers recipe, so the
//! vectors match the reference implementation (unit test: "This is an example sentence").
//!
//! The directory has the sentence-transformers layout (`config.json`, `model.safetensors`,
//! `tokenizer.json`). Inputs are never padded, so every token counts in the mean and no
//! attention mask is needed. The three attention projections are fused into one matmul, so a
//! forward pass is 4 dense layers per block.
//!
//! Two ways to run it: [`int8`], int8 weights on AVX-512 VNNI, chosen at load when the CPU
//! has it (about 4× faster, `docs/benchmarks.md`); otherwise candle in F32 (weights
//! transposed once at load). The F32 path is also the reference the int8 path is tested
//! against ([`MiniLm::load_f32`]). Both produce vectors of the same space: they differ by
//! quantisation noise, well inside what the cache's threshold and verification absorb.

pub mod int8;

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::tokenizer::WordPiece;

#[derive(Debug, Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
}

/// `x · wᵀ + b` with `wᵀ` materialised at load.
struct Dense {
    wt: Tensor,
    b: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.wt)?.broadcast_add(&self.b)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.w, &self.b, self.eps as f32)
    }
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

/// The encoder in F32 on candle.
struct F32Encoder {
    word: Tensor,
    position: Tensor,
    token_type0: Tensor,
    embed_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

enum Encoder {
    F32(F32Encoder),
    Int8(int8::Encoder),
}

/// The loaded model and its tokenizer.
pub struct MiniLm {
    tokenizer: WordPiece,
    encoder: Encoder,
    hidden: usize,
    name: String,
}

impl MiniLm {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`, to run on
    /// the int8 kernel where the CPU has it. A model whose shapes the kernel cannot take
    /// still loads, in F32.
    pub fn load(dir: &Path) -> anyhow::Result<MiniLm> {
        let mut model = MiniLm::load_f32(dir)?;
        if let (Some(cpu), Encoder::F32(f32)) = (int8::Vnni::detect(), &model.encoder) {
            match f32.quantise(cpu) {
                Ok(int8) => model.encoder = Encoder::Int8(int8),
                Err(e) => tracing::warn!(error = %e, "embedding model runs in f32"),
            }
        }
        Ok(model)
    }

    /// Loads the model to run in F32 on candle, whatever the CPU.
    pub fn load_f32(dir: &Path) -> anyhow::Result<MiniLm> {
        let config_path = dir.join("config.json");
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("failed to read {}", config_path.display()))?,
        )
        .with_context(|| format!("{} is not a BERT config", config_path.display()))?;
        if config.hidden_act.as_deref().is_some_and(|a| a != "gelu") {
            bail!("{}: only hidden_act = gelu is supported", config_path.display());
        }
        if config.num_attention_heads == 0
            || !config.hidden_size.is_multiple_of(config.num_attention_heads)
        {
            bail!("{}: hidden_size must divide into the heads", config_path.display());
        }
        let tokenizer = WordPiece::from_tokenizer_json(&dir.join("tokenizer.json"))?;
        let weights_path = dir.join("model.safetensors");
        let device = Device::Cpu;
        let mut weights = candle_core::safetensors::load(&weights_path, &device)
            .with_context(|| format!("failed to read {}", weights_path.display()))?;
        // Some exports prefix every name with `bert.`.
        let prefix = if weights.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let mut take = |name: &str| -> anyhow::Result<Tensor> {
            let full = format!("{prefix}{name}");
            let t = weights
                .remove(&full)
                .with_context(|| format!("{}: missing tensor {full}", weights_path.display()))?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let eps = config.layer_norm_eps;
        let mut norm = |name: &str| -> anyhow::Result<Norm> {
            Ok(Norm { w: take(&format!("{name}.weight"))?, b: take(&format!("{name}.bias"))?, eps })
        };
        let embed_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let mut dense = |names: &[&str]| -> anyhow::Result<Dense> {
                let mut ws = Vec::new();
                let mut bs = Vec::new();
                for n in names {
                    ws.push(take(&format!("{p}.{n}.weight"))?);
                    bs.push(take(&format!("{p}.{n}.bias"))?);
                }
                Ok(Dense { wt: Tensor::cat(&ws, 0)?.t()?.contiguous()?, b: Tensor::cat(&bs, 0)? })
            };
            let qkv =
                dense(&["attention.self.query", "attention.self.key", "attention.self.value"])?;
            let attn_out = dense(&["attention.output.dense"])?;
            let up = dense(&["intermediate.dense"])?;
            let down = dense(&["output.dense"])?;
            let mut norm = |name: &str| -> anyhow::Result<Norm> {
                Ok(Norm {
                    w: take(&format!("{p}.{name}.weight"))?,
                    b: take(&format!("{p}.{name}.bias"))?,
                    eps,
                })
            };
            let attn_norm = norm("attention.output.LayerNorm")?;
            let out_norm = norm("output.LayerNorm")?;
            layers.push(Layer { qkv, attn_out, attn_norm, up, down, out_norm });
        }
        let word = take("embeddings.word_embeddings.weight")?;
        let position = take("embeddings.position_embeddings.weight")?;
        let token_type0 = take("embeddings.token_type_embeddings.weight")?.get(0)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "minilm".into());
        Ok(MiniLm {
            tokenizer,
            encoder: Encoder::F32(F32Encoder {
                word,
                position,
                token_type0,
                embed_norm,
                layers,
                heads: config.num_attention_heads,
                hidden: config.hidden_size,
            }),
            hidden: config.hidden_size,
            name: format!("local:{name}"),
        })
    }

    /// How the forward pass runs, for the start-up log.
    pub fn precision(&self) -> &'static str {
        match self.encoder {
            Encoder::F32(_) => "f32",
            Encoder::Int8(_) => "int8 (AVX-512 VNNI)",
        }
    }

    /// Identifies the vector space (entries of another model are never compared).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    /// Token ids as the model sees them (for tests against the reference tokenizer).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text)
    }

    /// The sentence embedding of `text`: unit length, `dimensions()` long.
    pub fn embed(&self, text: &str) -> anyhow::Result<Vec<f32>> {
        let ids = self.tokenizer.encode(text);
        match &self.encoder {
            Encoder::F32(encoder) => Ok(encoder.embed(ids)?),
            Encoder::Int8(encoder) => encoder.embed(&ids),
        }
    }
}

impl F32Encoder {
    fn embed(&self, ids: Vec<u32>) -> candle_core::Result<Vec<f32>> {
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
        let mut x = self
            .word
            .index_select(&ids, 0)?
            .add(&self.position.narrow(0, 0, n)?)?
            .broadcast_add(&self.token_type0)?;
        x = self.embed_norm.forward(&x)?;
        let head_dim = self.hidden / self.heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let split = |i: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, i * self.hidden, self.hidden)?
                    .reshape((n, self.heads, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs.matmul(&v)?.transpose(0, 1)?.reshape((n, self.hidden))?;
            let attended = layer.attn_out.forward(&context)?;
            x = layer.attn_norm.forward(&(attended + &x)?)?;
            let up = layer.up.forward(&x)?.gelu_erf()?;
            let down = layer.down.forward(&up)?;
            x = layer.out_norm.forward(&(down + &x)?)?;
        }
        let pooled = x.mean(0)?;
        let norm = pooled.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        let pooled = (pooled / f64::from(norm.max(1e-12)))?;
        pooled.to_vec1::<f32>()
    }

    /// The same weights as int8 dense layers for the fast path.
    fn quantise(&self, cpu: int8::Vnni) -> anyhow::Result<int8::Encoder> {
        let flat = |t: &Tensor| -> anyhow::Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let linear = |d: &Dense| -> anyhow::Result<int8::Linear> {
            let (inputs, outputs) = d.wt.dims2()?;
            int8::Linear::new(&flat(&d.wt.t()?.contiguous()?)?, flat(&d.b)?, outputs, inputs)
        };
        let norm = |n: &Norm| -> anyhow::Result<int8::Norm> {
            Ok(int8::Norm { weight: flat(&n.w)?, bias: flat(&n.b)?, eps: n.eps as f32 })
        };
        let blocks = self
            .layers
            .iter()
            .map(|l| {
                Ok(int8::Block {
                    qkv: linear(&l.qkv)?,
                    attn_out: linear(&l.attn_out)?,
                    attn_norm: norm(&l.attn_norm)?,
                    up: linear(&l.up)?,
                    down: linear(&l.down)?,
                    out_norm: norm(&l.out_norm)?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(int8::Encoder {
            cpu,
            word: flat(&self.word)?,
            position: flat(&self.position)?,
            token_type0: flat(&self.token_type0)?,
            embed_norm: norm(&self.embed_norm)?,
            blocks,
            heads: self.heads,
            hidden: self.hidden,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model directory for tests, if the files were fetched (`.ci/run` does).
    pub(crate) fn model_dir() -> Option<std::path::PathBuf> {
        let dir = std::env::var_os("SWITCHYARD_EMBEDDING_MODEL_DIR").map(std::path::PathBuf::from);
        match dir {
            Some(dir) if dir.join("model.safetensors").exists() => Some(dir),
            _ => {
                assert!(
                    std::env::var("SWITCHYARD_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "SWITCHYARD_EMBEDDING_MODEL_DIR must name the MiniLM files in CI"
                );
                eprintln!("SKIPPED: embedding model tests (set SWITCHYARD_EMBEDDING_MODEL_DIR)");
                None
            }
        }
    }

    #[test]
    fn matches_the_reference_tokenizer_and_embedding() {
        let Some(dir) = model_dir() else { return };
        let model = MiniLm::load_f32(&dir).unwrap();
        assert_eq!(model.precision(), "f32");
        // Reference: the `tokenizers` library with this tokenizer.json (padding off).
        assert_eq!(
            model.tokenize("This is an example sentence"),
            vec![101, 2023, 2003, 2019, 2742, 6251, 102]
        );
        assert_eq!(
            model.tokenize("Convert 30 km to miles, please!"),
            vec![101, 10463, 2382, 2463, 2000, 2661, 1010, 3531, 999, 102]
        );
        let v = model.embed("This is an example sentence").unwrap();
        assert_eq!(v.len(), 384);
        // Reference: sentence-transformers' encode() of the same sentence.
        let want = [0.0677, 0.0635, 0.0487, 0.0793, 0.0374];
        for (got, want) in v.iter().zip(want) {
            assert!((got - want).abs() < 2e-3, "{:?} vs {want:?}", &v[..5]);
        }
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    /// The int8 path stays within quantisation noise of the F32 reference, for short, long
    /// and truncated inputs, and keeps near-misses apart as the reference does.
    #[test]
    fn the_int8_path_agrees_with_f32() {
        let Some(dir) = model_dir() else { return };
        if int8::Vnni::detect().is_none() {
            eprintln!("SKIPPED: int8 embedding test (this CPU has no AVX-512 VNNI)");
            return;
        }
        let (fast, reference) = (MiniLm::load(&dir).unwrap(), MiniLm::load_f32(&dir).unwrap());
        assert_eq!(fast.precision(), "int8 (AVX-512 VNNI)");
        let long = "how do I rotate the signing keys without logging everyone out ".repeat(20);
        let texts = [
            "This is an example sentence",
            "hi",
            "Convert 30 km to miles, please!",
            "Could you please explain how I should configure the retry policy for failed \
             payment webhooks in our staging environment?",
            long.as_str(),
        ];
        for text in texts {
            let (a, b) = (fast.embed(text).unwrap(), reference.embed(text).unwrap());
            let cosine = crate::cache::index::dot(&a, &b);
            assert!(cosine > 0.995, "{text:?}: cosine {cosine} with the F32 vector");
            let norm = crate::cache::index::dot(&a, &a).sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
        }
        let pair = |m: &MiniLm, x: &str, y: &str| {
            crate::cache::index::dot(&m.embed(x).unwrap(), &m.embed(y).unwrap())
        };
        let (x, y) = ("convert 30 miles to km", "convert 30 km to miles");
        assert!((pair(&fast, x, y) - pair(&reference, x, y)).abs() < 0.01);
    }
}
