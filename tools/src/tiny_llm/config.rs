//! `config.json` as transformers' `save_pretrained` writes it, reduced to what the forward pass
//! needs. Both RoPE forms are read: the current `rope_parameters` dict and the older top-level
//! `rope_theta` + `rope_scaling` that most Hub checkpoints still carry. The rules (which key wins,
//! which default applies) follow transformers' `modeling_rope_utils.py` and each model's
//! configuration class.

use std::path::Path;

use llama_kernels::{Layout, Rope, Scaling};
use serde_json::{Map, Value};

use super::model::{Error, Result};

/// The architectures `tiny_llm` runs (transformers' `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Phi3,
}

impl Arch {
    pub fn parse(model_type: &str) -> Option<Arch> {
        Some(match model_type {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma2" => Arch::Gemma2,
            "phi3" => Arch::Phi3,
            _ => return None,
        })
    }
    pub const NAMES: &'static str = "llama, mistral, qwen2, qwen3, gemma2, phi3";
}

/// Gate activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Silu,
    /// `gelu_pytorch_tanh`
    GeluTanh,
}

/// Everything the forward pass reads from `config.json`.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub eps: f32,
    pub act: Act,
    pub tie_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always; Llama/Qwen3/Gemma2 with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama/Qwen3/Gemma2 `attention_bias`; Qwen2 never).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// RMSNorm over each head of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Gemma: `(1 + w)` norms, embeddings times sqrt(hidden), post-attention and
    /// pre/post-feedforward norms.
    pub gemma: bool,
    /// Attention logit scale; `None` = `1/sqrt(head_dim)`.
    pub attn_scale: Option<f32>,
    /// `attn_logit_softcapping`; 0 = none.
    pub attn_softcap: f32,
    /// `final_logit_softcapping`; 0 = none.
    pub final_softcap: f32,
    /// Sliding window of each layer in keys; 0 = full attention.
    pub windows: Vec<u32>,
    /// RoPE of every layer (theta, rotary_dim, scaling).
    pub rope: Rope,
    /// Phi-3 LongRoPE: the length past which long factors apply; transformers' `generate()`
    /// re-encodes the whole sequence when it first crosses it.
    pub longrope_switch: Option<usize>,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error(format!("{}: {msg}", path.display()))
}

struct Reader<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| err(self.path, format!("missing `{key}`")))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                err(
                    self.path,
                    format!("`{key}` must be a non-negative integer, got {v}"),
                )
            }),
        }
    }
    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| err(self.path, format!("`{key}` must be a number, got {v}"))),
        }
    }
    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| err(self.path, format!("`{key}` must be true or false, got {v}"))),
        }
    }
    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| err(self.path, format!("`{key}` must be a string, got {v}"))),
        }
    }
    fn f64_list(&self, key: &str) -> Result<Vec<f64>> {
        let v = self
            .get(key)
            .ok_or_else(|| err(self.path, format!("missing `{key}`")))?;
        v.as_array()
            .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
            .ok_or_else(|| err(self.path, format!("`{key}` must be a list of numbers")))
    }
}

impl Config {
    /// Read and check `DIR/config.json`.
    pub fn load(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| err(&path, e))?;
        let map = json
            .as_object()
            .ok_or_else(|| err(&path, "not a JSON object"))?;
        Self::from_json(&path, map)
    }

    /// Parse an already read `config.json` (`path` only names it in errors).
    pub fn from_json(path: &Path, map: &Map<String, Value>) -> Result<Config> {
        let r = Reader { path, map };
        let model_type = r
            .str("model_type")?
            .ok_or_else(|| err(path, "missing `model_type`"))?;
        let arch = Arch::parse(model_type).ok_or_else(|| {
            err(
                path,
                format!(
                    "unknown model_type {model_type:?} (supported: {})",
                    Arch::NAMES
                ),
            )
        })?;
        let hidden = r.usize("hidden_size")?;
        let n_heads = r.usize("num_attention_heads")?;
        let n_kv_heads = r.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        let layers = r.usize("num_hidden_layers")?;
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(err(
                path,
                format!("num_attention_heads {n_heads} must be a multiple of num_key_value_heads {n_kv_heads}"),
            ));
        }
        let head_dim = r.opt_usize("head_dim")?.unwrap_or(hidden / n_heads);
        let gemma = arch == Arch::Gemma2;
        let act_name = r
            .str("hidden_activation")?
            .or(r.str("hidden_act")?)
            .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let act = match act_name {
            "silu" | "swish" => Act::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" => Act::GeluTanh,
            other => return Err(err(path, format!("unsupported activation {other:?}"))),
        };
        let attention_bias = r.bool("attention_bias", false)?;
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Mistral | Arch::Phi3 => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let sliding = r.opt_usize("sliding_window")?.unwrap_or(0) as u32;
        let windows = Self::windows(&r, arch, layers, sliding)?;
        let (rope, longrope_switch) = Self::rope(&r, head_dim)?;
        let cfg = Config {
            arch,
            vocab: r.usize("vocab_size")?,
            hidden,
            layers,
            n_heads,
            n_kv_heads,
            head_dim,
            intermediate: r.usize("intermediate_size")?,
            eps: r
                .f64("rms_norm_eps")?
                .unwrap_or(if gemma { 1e-6 } else { 1e-5 }) as f32,
            act,
            tie_embeddings: r.bool("tie_word_embeddings", gemma)?,
            qkv_bias,
            o_bias,
            mlp_bias: arch == Arch::Llama && r.bool("mlp_bias", false)?,
            qk_norm: arch == Arch::Qwen3,
            gemma,
            attn_scale: if gemma {
                Some((r.f64("query_pre_attn_scalar")?.unwrap_or(256.0)).powf(-0.5) as f32)
            } else {
                None
            },
            attn_softcap: if gemma {
                r.f64("attn_logit_softcapping")?.unwrap_or(0.0) as f32
            } else {
                0.0
            },
            final_softcap: if gemma {
                r.f64("final_logit_softcapping")?.unwrap_or(0.0) as f32
            } else {
                0.0
            },
            windows,
            rope,
            longrope_switch,
        };
        for (name, v) in [
            ("hidden_size", cfg.hidden),
            ("intermediate_size", cfg.intermediate),
            ("vocab_size", cfg.vocab),
        ] {
            if v == 0 || v % 2 != 0 {
                return Err(err(
                    path,
                    format!("`{name}` {v} must be even and > 0 (half storage packs two per word)"),
                ));
            }
        }
        if cfg.layers == 0 {
            return Err(err(path, "`num_hidden_layers` must be > 0"));
        }
        Ok(cfg)
    }

    /// Which layers use a sliding window. `layer_types` (current transformers) wins; older
    /// configs: Mistral and Phi-3 slide on every layer when `sliding_window` is set, Qwen2/3 from
    /// `max_window_layers` on when `use_sliding_window`, Gemma 2 on even layers.
    fn windows(r: &Reader, arch: Arch, layers: usize, sliding: u32) -> Result<Vec<u32>> {
        if let Some(types) = r.get("layer_types") {
            let types = types
                .as_array()
                .ok_or_else(|| err(r.path, "`layer_types` must be a list"))?;
            if types.len() != layers {
                return Err(err(
                    r.path,
                    format!(
                        "`layer_types` has {} entries for {layers} layers",
                        types.len()
                    ),
                ));
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(0),
                    Some("sliding_attention") if sliding > 0 => Ok(sliding),
                    Some("sliding_attention") => Err(err(
                        r.path,
                        "a sliding_attention layer needs `sliding_window`",
                    )),
                    _ => Err(err(r.path, format!("unsupported layer type {t}"))),
                })
                .collect();
        }
        Ok((0..layers)
            .map(|i| match arch {
                Arch::Mistral | Arch::Phi3 => sliding,
                Arch::Qwen2 | Arch::Qwen3 => {
                    let from = r
                        .opt_usize("max_window_layers")
                        .ok()
                        .flatten()
                        .unwrap_or(28);
                    let on = r.bool("use_sliding_window", false).unwrap_or(false);
                    if on && i >= from {
                        sliding
                    } else {
                        0
                    }
                }
                Arch::Gemma2 => {
                    if i % 2 == 0 {
                        sliding
                    } else {
                        0
                    }
                }
                Arch::Llama => 0,
            })
            .collect())
    }

    /// RoPE from `rope_parameters` (current) or `rope_scaling` + top-level `rope_theta` (older).
    fn rope(r: &Reader, head_dim: usize) -> Result<(Rope, Option<usize>)> {
        let empty = Map::new();
        let dict = match r.get("rope_parameters").or(r.get("rope_scaling")) {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(v) => {
                return Err(err(
                    r.path,
                    format!("`rope_parameters` must be an object, got {v}"),
                ))
            }
        };
        if dict.values().any(|v| v.is_object()) {
            return Err(err(
                r.path,
                "RoPE parameters nested per layer type are not supported by tiny_llm",
            ));
        }
        let d = Reader {
            path: r.path,
            map: dict,
        };
        let theta = d
            .f64("rope_theta")?
            .or(r.f64("rope_theta")?)
            .unwrap_or(10000.0);
        let partial = d
            .f64("partial_rotary_factor")?
            .or(r.f64("partial_rotary_factor")?)
            .unwrap_or(1.0);
        let rotary_dim = (head_dim as f64 * partial) as usize;
        let rope_type = d.str("rope_type")?.or(d.str("type")?).unwrap_or("default");
        let max_pos = r.f64("max_position_embeddings")?;
        // transformers: a top-level `original_max_position_embeddings` (Phi-3) wins over the dict's.
        let orig = r
            .f64("original_max_position_embeddings")?
            .or(d.f64("original_max_position_embeddings")?)
            .or(max_pos);
        let need = |v: Option<f64>, key: &str| {
            v.ok_or_else(|| err(r.path, format!("rope_type {rope_type:?} needs `{key}`")))
        };
        let factor = d.f64("factor")?;
        let mut switch = None;
        let scaling = match rope_type {
            "default" => Scaling::Default,
            "linear" => Scaling::Linear {
                factor: need(factor, "factor")?,
            },
            "dynamic" => Scaling::Dynamic {
                factor: need(factor, "factor")?,
                // transformers' dynamic NTK measures against `max_position_embeddings`.
                original_max_position_embeddings: need(max_pos, "max_position_embeddings")?,
            },
            "llama3" => Scaling::Llama3 {
                factor: need(factor, "factor")?,
                low_freq_factor: need(d.f64("low_freq_factor")?, "low_freq_factor")?,
                high_freq_factor: need(d.f64("high_freq_factor")?, "high_freq_factor")?,
                original_max_position_embeddings: need(orig, "original_max_position_embeddings")?,
            },
            "yarn" => {
                let orig = need(orig, "original_max_position_embeddings")?;
                Scaling::Yarn {
                    factor: match factor {
                        Some(f) => f,
                        None => need(max_pos, "max_position_embeddings")? / orig,
                    },
                    original_max_position_embeddings: orig,
                    // transformers uses `or`: a 0 also falls back to the default.
                    beta_fast: d.f64("beta_fast")?.filter(|v| *v != 0.0).unwrap_or(32.0),
                    beta_slow: d.f64("beta_slow")?.filter(|v| *v != 0.0).unwrap_or(1.0),
                    attention_factor: d.f64("attention_factor")?,
                    mscale: d.f64("mscale")?,
                    mscale_all_dim: d.f64("mscale_all_dim")?,
                    truncate: d.bool("truncate", true)?,
                }
            }
            "longrope" => {
                let orig = need(orig, "original_max_position_embeddings")?;
                switch = Some(orig as usize);
                Scaling::LongRope {
                    short_factor: d.f64_list("short_factor")?,
                    long_factor: d.f64_list("long_factor")?,
                    factor: match factor {
                        Some(f) => f,
                        None => need(max_pos, "max_position_embeddings")? / orig,
                    },
                    original_max_position_embeddings: orig,
                    attention_factor: d.f64("attention_factor")?,
                }
            }
            other => {
                return Err(err(
                    r.path,
                    format!("unsupported rope_type {other:?} (supported: default, linear, dynamic, llama3, yarn, longrope)"),
                ))
            }
        };
        let rope = Rope::new(theta, Layout::Half)
            .with_rotary_dim(rotary_dim)
            .with_scaling(scaling);
        rope.validate_params(head_dim).map_err(|e| err(r.path, e))?;
        Ok((rope, switch))
    }
}
