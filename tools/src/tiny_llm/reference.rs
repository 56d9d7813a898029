//! A committed model's `reference.safetensors` (transformers' float64 and bf16 logits for a
//! prompt and its greedy continuation, see `scripts/gen_tiny_models.py`) and the check of a GPU
//! run against it, shared by `tests/models.rs` and any binary that includes this module tree.

use std::path::Path;
use std::time::Instant;

use llama_kernels::{Context, DType, KvFormat};
use safetensors::{Dtype, SafeTensors};

use super::model::{Error, Model, Result};

/// f32 logits against float64: the limit.
pub const F32_LIMIT: f64 = 1e-9;
/// bf16 logits may be this many times further from float64 than transformers' own bf16 run
/// (FlashAttention's rule for low-precision kernels).
pub const BF16_FACTOR: f64 = 2.0;

pub struct Reference {
    pub prompt: Vec<u32>,
    /// The `steps + 1` greedy tokens of the float64 run.
    pub tokens: Vec<u32>,
    /// `[prompt + steps, vocab]`
    pub logits_f64: Vec<f64>,
    pub logits_bf16: Vec<f64>,
    pub vocab: usize,
}

/// NMSE = sum (got - want)^2 / sum want^2.
pub fn nmse(got: &[f64], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    num / den
}

impl Reference {
    pub fn load(dir: &Path) -> Result<Reference> {
        let path = dir.join("reference.safetensors");
        let e = |m: String| Error(format!("{}: {m}", path.display()));
        let bytes = std::fs::read(&path).map_err(|x| e(x.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|x| e(x.to_string()))?;
        let get = |name: &str, dtype: Dtype| {
            let t = st
                .tensor(name)
                .map_err(|x| e(format!("tensor `{name}`: {x}")))?;
            if t.dtype() != dtype {
                return Err(e(format!(
                    "tensor `{name}` is {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        let ints = |name: &str| -> Result<Vec<u32>> {
            Ok(get(name, Dtype::I64)?
                .data()
                .chunks_exact(8)
                .map(|c| {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as u32
                })
                .collect())
        };
        let f64s = get("logits_f64", Dtype::F64)?;
        let vocab = *f64s.shape().last().unwrap_or(&0);
        let logits_f64: Vec<f64> = f64s
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let logits_bf16 =
            llama_kernels::tensor::decode_f32(get("logits_bf16", Dtype::BF16)?.data(), DType::BF16)
                .into_iter()
                .map(f64::from)
                .collect();
        let r = Reference {
            prompt: ints("prompt")?,
            tokens: ints("tokens")?,
            logits_f64,
            logits_bf16,
            vocab,
        };
        let rows = r.prompt.len() + r.tokens.len().saturating_sub(1);
        if r.tokens.is_empty()
            || r.logits_f64.len() != rows * vocab
            || r.logits_bf16.len() != rows * vocab
        {
            return Err(e(format!(
                "logits must be [{rows}, vocab] for the prompt and tokens"
            )));
        }
        Ok(r)
    }

    pub fn steps(&self) -> usize {
        self.tokens.len() - 1
    }

    /// transformers' own bf16 logits against its float64 run.
    pub fn hf_bf16_nmse(&self) -> f64 {
        nmse(&self.logits_bf16, &self.logits_f64)
    }

    /// The NMSE limit for a GPU run in `dtype`; `None` for f16 (no f16 reference).
    pub fn limit(&self, dtype: DType) -> Option<f64> {
        match dtype {
            DType::F32 => Some(F32_LIMIT),
            DType::BF16 => Some(BF16_FACTOR * self.hf_bf16_nmse()),
            DType::F16 => None,
        }
    }
}

/// One GPU run of a committed model against its reference.
pub struct Outcome {
    pub dtype: DType,
    pub kv: KvFormat,
    pub nmse: f64,
    pub max_abs: f64,
    pub limit: Option<f64>,
    pub tokens: Vec<u32>,
    pub tokens_match: bool,
    /// Logits NMSE over the rows computed from transformers' own context: the prompt rows and
    /// the decode rows up to the first greedy token that differs (past it the run feeds other
    /// tokens, and its rows answer other questions). Equal to `nmse` when the tokens match.
    pub nmse_shared: f64,
    /// Load (upload and convert weights) and generate, wall time.
    pub seconds: f64,
    pub reprefilled_at: Option<usize>,
}

impl Outcome {
    /// Same greedy tokens, finite logits and NMSE within the limit (if there is one).
    pub fn passed(&self) -> bool {
        self.tokens_match && self.nmse.is_finite() && self.limit.is_none_or(|l| self.nmse <= l)
    }
}

/// Load `dir` in `dtype`, run the reference prompt for its steps, compare with float64.
pub fn run(ctx: &Context, dir: &Path, dtype: DType) -> Result<Outcome> {
    run_kv(ctx, dir, dtype, KvFormat::from_dtype(dtype))
}

/// [`run`] with the KV caches stored in `kv` ([`Model::with_kv`]); the limit stays the
/// compute dtype's (a quantized cache's own error comes on top).
pub fn run_kv(ctx: &Context, dir: &Path, dtype: DType, kv: KvFormat) -> Result<Outcome> {
    let r = Reference::load(dir)?;
    let t0 = Instant::now();
    let model = Model::load(ctx, dir, dtype)?.with_kv(kv)?;
    if model.cfg.vocab != r.vocab {
        return Err(Error(format!(
            "{}: reference vocab {} but config vocab_size {}",
            dir.display(),
            r.vocab,
            model.cfg.vocab
        )));
    }
    let g = model.generate(ctx, &r.prompt, r.steps())?;
    let seconds = t0.elapsed().as_secs_f64();
    let got: Vec<f64> = g.logits.iter().map(|&v| f64::from(v)).collect();
    let max_abs = got
        .iter()
        .zip(&r.logits_f64)
        .map(|(g, w)| (g - w).abs())
        .fold(
            0.0,
            |m: f64, d| if d.is_nan() { f64::NAN } else { m.max(d) },
        );
    // Row P-1+j produced token j; rows up to the first differing token saw the same context.
    let first_diff = g.tokens.iter().zip(&r.tokens).position(|(a, b)| a != b);
    let shared = first_diff.map_or(got.len(), |j| (r.prompt.len() + j) * r.vocab);
    Ok(Outcome {
        dtype,
        kv,
        nmse: nmse(&got, &r.logits_f64),
        nmse_shared: nmse(&got[..shared], &r.logits_f64[..shared]),
        max_abs,
        limit: r.limit(dtype),
        tokens_match: g.tokens == r.tokens,
        tokens: g.tokens,
        seconds,
        reprefilled_at: g.reprefilled_at,
    })
}
