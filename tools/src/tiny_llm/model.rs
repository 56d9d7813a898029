//! A decoder-only transformer in HF layout on the GPU: the crate's RMSNorm, RoPE, attention and
//! KV cache, plus the small kernels of `kernels.wgsl` (embedding gather, matmul + bias, gated
//! MLP activation, final softcap). A whole forward step is recorded into one command encoder;
//! only the logits are read back.
//!
//! The semantics follow transformers' modeling code for each `model_type` (see `config.rs`):
//! pre-norm blocks, Gemma 2's sandwich norms and softcaps, Qwen3's per-head q/k norms, sliding
//! windows per layer, and Phi-3's LongRoPE switch, which re-encodes the whole sequence with the
//! long factors when `generate()` first crosses `original_max_position_embeddings`.

use std::path::Path;

use llama_kernels::{
    Attention, Context, DType, KvCache, KvCacheConfig, KvFormat, Positions, Residual, RmsNorm,
    Tensor,
};

use super::config::{Act, Arch, Config};
use super::kernels::{Call, Kernels, Params};
use super::weights::Weights;

/// A message for the user: what failed, naming the file and tensor where there is one.
#[derive(Debug, Clone)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<llama_kernels::Error> for Error {
    fn from(e: llama_kernels::Error) -> Self {
        Error(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

struct Layer {
    /// `input_layernorm`
    attn_norm: Tensor,
    /// Gemma 2's `post_attention_layernorm` (applied to the attention output).
    post_attn_norm: Option<Tensor>,
    /// Before the MLP: `post_attention_layernorm` (Llama family), `pre_feedforward_layernorm`
    /// (Gemma 2).
    mlp_norm: Tensor,
    /// Gemma 2's `post_feedforward_layernorm`.
    post_mlp_norm: Option<Tensor>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Tensor,
    o_bias: Option<Tensor>,
    /// `[2 * intermediate, hidden]`: gate rows, then up rows (Phi-3's `gate_up_proj` as stored).
    gate_up: Tensor,
    gate_up_bias: Option<Tensor>,
    down: Tensor,
    down_bias: Option<Tensor>,
}

/// Weights on the GPU in the chosen dtype, and the kernels.
pub struct Model {
    pub cfg: Config,
    pub dtype: DType,
    /// Storage format of the KV caches (`dtype`'s own unless [`Model::with_kv`]).
    pub kv: KvFormat,
    embed: Tensor,
    lm_head: Tensor,
    final_norm: Tensor,
    layers: Vec<Layer>,
    kernels: Kernels,
}

/// Logits of a prompt and its greedy continuation.
pub struct Generation {
    /// The `steps + 1` argmaxes of rows `P-1 ..= P+steps-1`.
    pub tokens: Vec<u32>,
    /// `[P + steps, vocab]`, row-major: prompt rows from the prefill, then one per decode step.
    pub logits: Vec<f32>,
    /// Whether a LongRoPE switch re-encoded the sequence (transformers' `generate()` does).
    pub reprefilled_at: Option<usize>,
    /// Pipelines the warm-up (`prepare` on each op) built before the prefill.
    pub warmed_up: usize,
}

/// Scratch activations for up to `rows` tokens, and one KV cache per layer.
pub(crate) struct State {
    rows: usize,
    ids: wgpu::Buffer,
    x: Tensor,
    h: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn: Tensor,
    o: Tensor,
    gu: Tensor,
    act: Tensor,
    logits: Tensor,
    caches: Vec<KvCache>,
}

/// The first `rows` rows of a contiguous `[_, cols]` buffer as `shape` (whose product is
/// `rows * cols`).
fn rows_of(t: &Tensor, shape: &[usize]) -> Tensor {
    Tensor::new(t.buffer(), 0, shape, t.dtype())
}

impl Model {
    /// Load `DIR/config.json` and the weights, converted to `dtype`.
    pub fn load(ctx: &Context, dir: &Path, dtype: DType) -> Result<Model> {
        let cfg = Config::load(dir)?;
        let w = Weights::open(dir)?;
        let (h, nh, nkv, hd, inter, vocab) = (
            cfg.hidden,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            cfg.intermediate,
            cfg.vocab,
        );
        let up = |data: Vec<f32>, shape: &[usize]| -> Result<Tensor> {
            Ok(ctx.upload_as(&data, shape, dtype)?)
        };
        let get =
            |name: &str, shape: &[usize]| -> Result<Tensor> { up(w.get(name, shape)?, shape) };
        let opt = |on: bool, name: &str, shape: &[usize]| -> Result<Option<Tensor>> {
            if on {
                Ok(Some(get(name, shape)?))
            } else {
                Ok(None)
            }
        };
        let embed_data = w.get("model.embed_tokens.weight", &[vocab, h])?;
        let lm_head = if w.contains("lm_head.weight") || !cfg.tie_embeddings {
            get("lm_head.weight", &[vocab, h])?
        } else {
            up(embed_data.clone(), &[vocab, h])?
        };
        let embed = up(embed_data, &[vocab, h])?;
        let final_norm = get("model.norm.weight", &[h])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}.");
            let n = |s: &str| format!("{p}{s}");
            let (q, k, v) = if cfg.arch == Arch::Phi3 {
                // Fused `qkv_proj` rows: q heads, then k heads, then v heads.
                let all = w.get(&n("self_attn.qkv_proj.weight"), &[(nh + 2 * nkv) * hd, h])?;
                let (qs, rest) = all.split_at(nh * hd * h);
                let (ks, vs) = rest.split_at(nkv * hd * h);
                (
                    up(qs.to_vec(), &[nh * hd, h])?,
                    up(ks.to_vec(), &[nkv * hd, h])?,
                    up(vs.to_vec(), &[nkv * hd, h])?,
                )
            } else {
                (
                    get(&n("self_attn.q_proj.weight"), &[nh * hd, h])?,
                    get(&n("self_attn.k_proj.weight"), &[nkv * hd, h])?,
                    get(&n("self_attn.v_proj.weight"), &[nkv * hd, h])?,
                )
            };
            let gate_up = if cfg.arch == Arch::Phi3 {
                get(&n("mlp.gate_up_proj.weight"), &[2 * inter, h])?
            } else {
                let mut g = w.get(&n("mlp.gate_proj.weight"), &[inter, h])?;
                g.extend(w.get(&n("mlp.up_proj.weight"), &[inter, h])?);
                up(g, &[2 * inter, h])?
            };
            let gate_up_bias = if cfg.mlp_bias {
                let mut g = w.get(&n("mlp.gate_proj.bias"), &[inter])?;
                g.extend(w.get(&n("mlp.up_proj.bias"), &[inter])?);
                Some(up(g, &[2 * inter])?)
            } else {
                None
            };
            let gemma = cfg.gemma;
            layers.push(Layer {
                attn_norm: get(&n("input_layernorm.weight"), &[h])?,
                post_attn_norm: opt(gemma, &n("post_attention_layernorm.weight"), &[h])?,
                mlp_norm: if gemma {
                    get(&n("pre_feedforward_layernorm.weight"), &[h])?
                } else {
                    get(&n("post_attention_layernorm.weight"), &[h])?
                },
                post_mlp_norm: opt(gemma, &n("post_feedforward_layernorm.weight"), &[h])?,
                q,
                k,
                v,
                q_bias: opt(cfg.qkv_bias, &n("self_attn.q_proj.bias"), &[nh * hd])?,
                k_bias: opt(cfg.qkv_bias, &n("self_attn.k_proj.bias"), &[nkv * hd])?,
                v_bias: opt(cfg.qkv_bias, &n("self_attn.v_proj.bias"), &[nkv * hd])?,
                q_norm: opt(cfg.qk_norm, &n("self_attn.q_norm.weight"), &[hd])?,
                k_norm: opt(cfg.qk_norm, &n("self_attn.k_norm.weight"), &[hd])?,
                o: get(&n("self_attn.o_proj.weight"), &[h, nh * hd])?,
                o_bias: opt(cfg.o_bias, &n("self_attn.o_proj.bias"), &[h])?,
                gate_up,
                gate_up_bias,
                down: get(&n("mlp.down_proj.weight"), &[h, inter])?,
                down_bias: opt(cfg.mlp_bias, &n("mlp.down_proj.bias"), &[h])?,
            });
        }
        Ok(Model {
            kernels: Kernels::new(ctx)?,
            cfg,
            dtype,
            kv: KvFormat::from_dtype(dtype),
            embed,
            lm_head,
            final_norm,
            layers,
        })
    }

    /// The same model with its KV caches stored in `kv` (e.g. q8_0, or fp8 e4m3 with scales 1):
    /// an error when the format cannot hold this model's heads.
    pub fn with_kv(mut self, kv: KvFormat) -> Result<Model> {
        if kv.dtype().is_some_and(|d| d != self.dtype) {
            return Err(Error(format!(
                "--kv {kv}: a float KV cache is stored as the compute dtype {}",
                self.dtype
            )));
        }
        kv.check_head_dim("tiny_llm", self.cfg.head_dim)?;
        self.kv = kv;
        Ok(self)
    }

    pub(crate) fn state(&self, ctx: &Context, rows: usize) -> Result<State> {
        let c = &self.cfg;
        let d = self.dtype;
        let e = |cols: usize| ctx.empty(&[rows, cols], d);
        Ok(State {
            rows,
            ids: ctx.create_buffer("tiny_llm ids", (rows * 4) as u64)?,
            x: e(c.hidden)?,
            h: e(c.hidden)?,
            q: e(c.n_heads * c.head_dim)?,
            k: e(c.n_kv_heads * c.head_dim)?,
            v: e(c.n_kv_heads * c.head_dim)?,
            attn: e(c.n_heads * c.head_dim)?,
            o: e(c.hidden)?,
            gu: e(2 * c.intermediate)?,
            act: e(c.intermediate)?,
            logits: e(c.vocab)?,
            caches: (0..c.layers)
                .map(|_| {
                    KvCache::new(
                        ctx,
                        KvCacheConfig {
                            batch: 1,
                            n_kv_heads: c.n_kv_heads,
                            capacity: rows,
                            head_dim: c.head_dim,
                            dtype: d,
                            kv_format: Some(self.kv),
                        },
                    )
                })
                .collect::<std::result::Result<_, _>>()?,
        })
    }

    /// `y[t, :] = x[t, :] @ w^T (+ bias)` for the first `t` rows.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        t: usize,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<()> {
        let (cols, inner) = (w.shape()[0], w.shape()[1]);
        self.kernels.record(
            ctx,
            enc,
            Call {
                entry: "matmul",
                act: 0,
                bias,
                a: Some(x),
                b: Some(w),
                ids: None,
                y,
                params: Params {
                    rows: t as u32,
                    cols: cols as u32,
                    inner: inner as u32,
                    ..Default::default()
                },
                pairs: (t * cols / 2) as u64,
            },
        )
    }

    /// One forward call over `ids` at positions `cache len ..`, recorded into one encoder and
    /// submitted; returns the logits `[ids.len(), vocab]`. `sequential`: the tokens are decode
    /// steps fed at once (a speculative verification chunk), so a RoPE scaling whose table
    /// depends on the sequence length (dynamic NTK, LongRoPE) rotates each row as its own decode
    /// step would (`seq_len` = its position + 1), not the chunk at its last position as a
    /// prefill does.
    fn forward(
        &self,
        ctx: &Context,
        st: &mut State,
        ids: &[u32],
        sequential: bool,
    ) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let t = ids.len();
        if t == 0 || t > st.rows || st.caches[0].len() + t > st.rows {
            return Err(Error(format!(
                "{t} tokens after {} do not fit the {} rows allocated",
                st.caches[0].len(),
                st.rows
            )));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= c.vocab) {
            return Err(Error(format!(
                "token id {bad} is past vocab_size {}",
                c.vocab
            )));
        }
        ctx.queue()
            .write_buffer(&st.ids, 0, bytemuck::cast_slice(ids));
        let pos = st.caches[0].len() as i32;
        let (h, nh, nkv, hd) = (c.hidden, c.n_heads, c.n_kv_heads, c.head_dim);
        let x = rows_of(&st.x, &[t, h]);
        let hn = rows_of(&st.h, &[t, h]);
        let o = rows_of(&st.o, &[t, h]);
        let q3 = rows_of(&st.q, &[t, nh, hd]);
        // Batched `[1, t, nkv, hd]`: `KvCache::append_rope` refuses rank-3 new rows when it
        // rotates them into the cache (its cache-row view is rank 4).
        let k4 = rows_of(&st.k, &[1, t, nkv, hd]);
        let v4 = rows_of(&st.v, &[1, t, nkv, hd]);
        let attn3 = rows_of(&st.attn, &[t, nh, hd]);
        let logits = rows_of(&st.logits, &[t, c.vocab]);
        let norm = if c.gemma {
            RmsNorm::gemma(c.eps)
        } else {
            RmsNorm::new(c.eps)
        };
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("tiny_llm forward"),
            });
        let e = &mut enc;

        // Embeddings; Gemma multiplies by sqrt(hidden) rounded to the model dtype, as
        // transformers does (its f32 scale cast to the weights' dtype).
        let scale = if c.gemma {
            self.dtype.round((h as f32).sqrt() as f64) as f32
        } else {
            1.0
        };
        self.kernels.record(
            ctx,
            e,
            Call {
                entry: "embed",
                act: 0,
                bias: None,
                a: Some(&self.embed),
                b: None,
                ids: Some(&st.ids),
                y: &x,
                params: Params {
                    rows: c.vocab as u32,
                    cols: h as u32,
                    inner: t as u32,
                    scale,
                    ..Default::default()
                },
                pairs: (t * h / 2) as u64,
            },
        )?;
        norm.encode(ctx, e, &x, &self.layers[0].attn_norm, &hn)?;

        for (i, l) in self.layers.iter().enumerate() {
            // Attention block. `hn` holds this layer's normalised input.
            self.matmul(ctx, e, t, &hn, &l.q, l.q_bias.as_ref(), &st.q)?;
            self.matmul(ctx, e, t, &hn, &l.k, l.k_bias.as_ref(), &st.k)?;
            self.matmul(ctx, e, t, &hn, &l.v, l.v_bias.as_ref(), &st.v)?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                let q2 = rows_of(&st.q, &[t * nh, hd]);
                let k2 = rows_of(&st.k, &[t * nkv, hd]);
                RmsNorm::new(c.eps).encode(ctx, e, &q2, qn, &q2)?;
                RmsNorm::new(c.eps).encode(ctx, e, &k2, kn, &k2)?;
            }
            // RoPE sees `seq_len = pos + t` (transformers: max(position_ids) + 1), which
            // selects LongRoPE's factors and dynamic NTK's base; sequential rows see their own.
            if sequential && t > 1 && c.rope.scaling.needs_seq_len() {
                for r in 0..t {
                    let at = |buf: &Tensor, shape: &[usize], row: usize| {
                        Tensor::new(buf.buffer(), r * row, shape, buf.dtype())
                    };
                    let q1 = at(&st.q, &[1, nh, hd], nh * hd);
                    c.rope
                        .encode(ctx, e, &q1, Positions::Start(pos + r as i32))?;
                    let k1 = at(&st.k, &[1, 1, nkv, hd], nkv * hd);
                    let v1 = at(&st.v, &[1, 1, nkv, hd], nkv * hd);
                    st.caches[i].append_rope(ctx, e, &k1, &v1, &c.rope, None)?;
                }
            } else {
                c.rope.encode(ctx, e, &q3, Positions::Start(pos))?;
                st.caches[i].append_rope(ctx, e, &k4, &v4, &c.rope, None)?;
            }
            let attention = Attention {
                window: c.windows[i],
                softcap: c.attn_softcap,
                scale: c.attn_scale,
                ..Default::default()
            };
            attention.encode_cached(ctx, e, &q3, &st.caches[i], None, &attn3)?;
            self.matmul(ctx, e, t, &st.attn, &l.o, l.o_bias.as_ref(), &o)?;
            if let Some(post) = &l.post_attn_norm {
                norm.encode(ctx, e, &o, post, &o)?;
            }
            // x += o; hn = norm(x)
            norm.encode_residual(ctx, e, &o, &l.mlp_norm, &hn, Residual::in_place(&x))?;

            // MLP block.
            self.matmul(ctx, e, t, &hn, &l.gate_up, l.gate_up_bias.as_ref(), &st.gu)?;
            let inter = c.intermediate;
            self.kernels.record(
                ctx,
                e,
                Call {
                    entry: "gated_act",
                    act: match c.act {
                        Act::Silu => 0,
                        Act::GeluTanh => 1,
                    },
                    bias: None,
                    a: Some(&st.gu),
                    b: None,
                    ids: None,
                    y: &st.act,
                    params: Params {
                        rows: t as u32,
                        cols: inter as u32,
                        ..Default::default()
                    },
                    pairs: (t * inter / 2) as u64,
                },
            )?;
            self.matmul(ctx, e, t, &st.act, &l.down, l.down_bias.as_ref(), &o)?;
            if let Some(post) = &l.post_mlp_norm {
                norm.encode(ctx, e, &o, post, &o)?;
            }
            // x += mlp; hn = norm(x) with the next layer's input norm, or the final norm.
            let next = match self.layers.get(i + 1) {
                Some(n) => &n.attn_norm,
                None => &self.final_norm,
            };
            norm.encode_residual(ctx, e, &o, next, &hn, Residual::in_place(&x))?;
        }

        self.matmul(ctx, e, t, &hn, &self.lm_head, None, &logits)?;
        if c.final_softcap > 0.0 {
            self.kernels.record(
                ctx,
                e,
                Call {
                    entry: "softcap",
                    act: 0,
                    bias: None,
                    a: None,
                    b: None,
                    ids: None,
                    y: &logits,
                    params: Params {
                        rows: t as u32,
                        cols: c.vocab as u32,
                        scale: c.final_softcap,
                        ..Default::default()
                    },
                    pairs: (t * c.vocab / 2) as u64,
                },
            )?;
        }
        ctx.scoped("tiny_llm submit", || ctx.queue().submit([enc.finish()]))?;
        Ok(ctx.read_f32(&logits)?)
    }

    /// Build the crate's pipelines the prefill of `prompt_len` tokens and the decode steps up to
    /// `st.rows` will use (`prepare` on each op), so the first forward does not stall on shader
    /// compiles; returns how many were built. The model's own kernels (embedding, matmul) build
    /// on first use.
    fn warm_up(&self, ctx: &Context, st: &State, prompt_len: usize) -> Result<usize> {
        let c = &self.cfg;
        let (h, nh, nkv, hd) = (c.hidden, c.n_heads, c.n_kv_heads, c.head_dim);
        let norm = if c.gemma {
            RmsNorm::gemma(c.eps)
        } else {
            RmsNorm::new(c.eps)
        };
        let mut built = 0;
        for (t, pos) in [(prompt_len, 0), (1, prompt_len)] {
            let x = rows_of(&st.x, &[t, h]);
            let hn = rows_of(&st.h, &[t, h]);
            let o = rows_of(&st.o, &[t, h]);
            let q3 = rows_of(&st.q, &[t, nh, hd]);
            let k4 = rows_of(&st.k, &[1, t, nkv, hd]);
            let v4 = rows_of(&st.v, &[1, t, nkv, hd]);
            for l in &self.layers {
                built += norm.prepare(ctx, &x, &l.attn_norm, &hn, None)?;
                built += norm.prepare(ctx, &o, &l.mlp_norm, &hn, Some(Residual::in_place(&x)))?;
                if let Some(post) = &l.post_attn_norm {
                    built += norm.prepare(ctx, &o, post, &o, None)?;
                }
                if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                    let q2 = rows_of(&st.q, &[t * nh, hd]);
                    let k2 = rows_of(&st.k, &[t * nkv, hd]);
                    built += RmsNorm::new(c.eps).prepare(ctx, &q2, qn, &q2, None)?;
                    built += RmsNorm::new(c.eps).prepare(ctx, &k2, kn, &k2, None)?;
                }
            }
            built += c
                .rope
                .prepare(ctx, &q3, None, None, Positions::Start(pos as i32))?;
            built += st.caches[0].prepare(ctx, &k4, &v4, Some((&c.rope, None)))?;
            for (i, _) in self.layers.iter().enumerate() {
                let attention = Attention {
                    window: c.windows[i],
                    softcap: c.attn_softcap,
                    scale: c.attn_scale,
                    ..Default::default()
                };
                let dims = llama_kernels::ops::attention::Dims {
                    batch: 1,
                    q_len: t,
                    kv_len: if t == 1 { st.rows } else { t },
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                };
                let cache = &st.caches[i];
                built += attention.prepare_kv(ctx, &[dims], cache.dtype(), cache.format())?;
            }
        }
        Ok(built)
    }

    /// Prefill `prompt` in one call, then `steps` greedy decode steps, each feeding the argmax
    /// of the previous row. Phi-3 LongRoPE: when the sequence first grows past
    /// `original_max_position_embeddings`, the KV cache is dropped and the whole sequence is
    /// encoded again with the long factors, as transformers' `generate()` does.
    pub fn generate(&self, ctx: &Context, prompt: &[u32], steps: usize) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error("the prompt is empty".into()));
        }
        let vocab = self.cfg.vocab;
        let rows = prompt.len() + steps;
        let mut st = self.state(ctx, rows)?;
        let warmed_up = self.warm_up(ctx, &st, prompt.len())?;
        let mut logits = self.forward(ctx, &mut st, prompt, false)?;
        let mut seq = prompt.to_vec();
        let mut tokens = vec![argmax(&logits[(prompt.len() - 1) * vocab..])];
        let mut reprefilled_at = None;
        for _ in 0..steps {
            seq.push(*tokens.last().unwrap_or(&0));
            let fed = self.feed(ctx, &mut st, &seq)?;
            reprefilled_at = reprefilled_at.or(fed.reprefilled_at);
            tokens.push(argmax(&fed.logits));
            logits.extend_from_slice(&fed.logits);
        }
        Ok(Generation {
            tokens,
            logits,
            reprefilled_at,
            warmed_up,
        })
    }

    /// Feed the tokens of `seq` past the cache (`seq[cache len ..]`, at least one) as greedy
    /// decoding feeds them, one step each, but in as few forward calls as that allows: one
    /// ([`Model::forward`] with sequential rows), or, when the tokens reach Phi-3's LongRoPE
    /// switch, the tokens before it and then transformers' re-encode of the whole sequence with
    /// the long factors (whose rows serve every token from the switch on). Returns the logits of
    /// the fed tokens, `[n, vocab]`.
    pub(crate) fn feed(&self, ctx: &Context, st: &mut State, seq: &[u32]) -> Result<Fed> {
        let vocab = self.cfg.vocab;
        let cached = st.len();
        if cached >= seq.len() {
            return Err(Error(format!(
                "nothing to feed: the cache holds {cached} of {} tokens",
                seq.len()
            )));
        }
        match self.cfg.longrope_switch {
            // transformers' Phi3ForCausalLM.prepare_inputs_for_generation: input length >=
            // original + 1 while the cache holds <= original tokens.
            Some(orig) if seq.len() > orig && cached <= orig => {
                let mut logits = Vec::new();
                let mut passes = 0;
                if cached < orig {
                    logits = self.forward(ctx, st, &seq[cached..orig], true)?;
                    passes += 1;
                }
                st.truncate(0)?;
                let all = self.forward(ctx, st, seq, false)?;
                logits.extend_from_slice(&all[orig * vocab..]);
                Ok(Fed {
                    logits,
                    passes: passes + 1,
                    reprefilled_at: Some(orig + 1),
                })
            }
            _ => Ok(Fed {
                logits: self.forward(ctx, st, &seq[cached..], true)?,
                passes: 1,
                reprefilled_at: None,
            }),
        }
    }
}

/// What [`Model::feed`] did.
pub(crate) struct Fed {
    /// `[fed tokens, vocab]`.
    pub logits: Vec<f32>,
    /// Forward calls it took (two when the tokens reached the LongRoPE switch past its start).
    pub passes: usize,
    /// The sequence length at a LongRoPE re-encode, if one happened.
    pub reprefilled_at: Option<usize>,
}

impl State {
    /// Tokens in the KV caches.
    pub(crate) fn len(&self) -> usize {
        self.caches[0].len()
    }
    /// Roll every layer's cache back to `len` tokens (rejected drafts).
    pub(crate) fn truncate(&mut self, len: usize) -> Result<()> {
        for cache in &mut self.caches {
            cache.truncate(len)?;
        }
        Ok(())
    }
}

/// Index of the largest value (the first on ties, as torch.argmax).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
