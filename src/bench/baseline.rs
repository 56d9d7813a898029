//! Host side of the unfused baselines in `shaders/baseline.wgsl`, which only the benchmark runs.
//! A test checks each against the f64 reference, so the speed-ups compare correct code.

use crate::context::Context;
use crate::error::Result;
use crate::pipeline::{PipelineKey, Window};
use crate::tensor::{DType, Tensor};

const OP: &str = "rms_norm_naive";
const WG: u32 = 256;

/// Uniform parameters; mirrors `struct NormParams` in `shaders/baseline.wgsl` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormParams {
    /// Rows to normalise.
    pub n_rows: u32,
    /// Row length.
    pub n: u32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Added to the weight (1 for Gemma).
    pub weight_offset: f32,
}

fn key(entry: &'static str, dtype: DType) -> PipelineKey {
    PipelineKey::new(
        super::BASELINE,
        entry,
        vec![("DTYPE", dtype.shader_code()), ("WG", WG)],
    )
}

/// Every pipeline key of the baselines (the portability tests compile each).
pub fn all_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for dtype in DType::ALL {
        keys.push(key("rms_norm_reduce", dtype));
        keys.push(key("rms_norm_scale", dtype));
    }
    keys.extend(rope_variant_keys());
    keys.extend(attention_variant_keys());
    keys
}

/// Unfused RMSNorm: a reduce pass writes `1/rms` per row to `scratch` (f32, one per row), a scale
/// pass multiplies. `x` and `out` are contiguous `[rows, n]` views at the start of their own
/// buffers; `weight` is `[n]`.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_naive(
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    x: &Tensor,
    weight: &Tensor,
    out: &Tensor,
    scratch: &Tensor,
    eps: f32,
    weight_offset: f32,
) -> Result<()> {
    for (name, t) in [
        ("x", x),
        ("weight", weight),
        ("out", out),
        ("scratch", scratch),
    ] {
        t.validate(OP, name)?;
        crate::ensure!(
            t.is_contiguous() && t.offset() == 0,
            Shape,
            OP,
            "{name} must be a contiguous view at the start of its buffer"
        );
    }
    let dtype = x.dtype();
    weight.expect_dtype(OP, "weight", dtype)?;
    out.expect_dtype(OP, "out", dtype)?;
    scratch.expect_dtype(OP, "scratch", DType::F32)?;
    crate::ensure!(
        x.rank() == 2 && out.shape() == x.shape(),
        Shape,
        OP,
        "x {:?} must be [rows, n] and out {:?} the same",
        x.shape(),
        out.shape()
    );
    let (rows, n) = (x.shape()[0], x.shape()[1]);
    crate::ensure!(
        weight.shape() == [n] && scratch.numel() >= rows,
        Shape,
        OP,
        "weight {:?} must be [{n}] and scratch {:?} hold {rows} values",
        weight.shape(),
        scratch.shape()
    );
    let words = (rows * n) as u64 / if dtype.is_half() { 2 } else { 1 };
    crate::ensure!(
        words <= u32::MAX as u64,
        Limit,
        OP,
        "{rows} rows of {n} exceed 32-bit indexing"
    );
    let params = NormParams {
        n_rows: rows as u32,
        n: n as u32,
        eps,
        weight_offset,
    };
    let xw = Window::covering(ctx, OP, &[x])?;
    let ww = Window::covering(ctx, OP, &[weight])?;
    let sw = Window::covering(ctx, OP, &[scratch])?;
    let ow = Window::covering(ctx, OP, &[out])?;

    ctx.encode_kernel(
        OP,
        enc,
        &key("rms_norm_reduce", dtype),
        &params,
        &[("src", xw.resource()), ("inv_out", sw.resource())],
        rows as u64,
    )?;
    ctx.encode_kernel(
        OP,
        enc,
        &key("rms_norm_scale", dtype),
        &params,
        &[
            ("src", xw.resource()),
            ("weight", ww.resource()),
            ("dst", ow.resource()),
            ("inv_in", sw.resource()),
        ],
        words.div_ceil(WG as u64),
    )
}

/// Uniform parameters; mirrors `struct RopeParams` in `shaders/baseline.wgsl` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RopeParams {
    /// Tokens.
    pub seq: u32,
    /// Heads per token.
    pub heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Position of token 0.
    pub start: u32,
}

/// Every pipeline key of the RoPE baseline (the portability tests compile each).
pub fn rope_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for dtype in DType::ALL {
        keys.push(key("rope_table", dtype));
        keys.push(key("rope_rotate", dtype));
    }
    keys
}

/// Unfused RoPE, rotate-half layout, rotary_dim = head_dim, positions `start..start + seq`: a
/// table pass writes f32 (cos, sin) per (token, pair) to `table` (f32, `2 * seq * head_dim / 2`
/// values), a rotate pass reads it. `x` is a contiguous `[seq, heads, head_dim]` view at the
/// start of its buffer, rotated in place; `inv_freq` is f32 `[head_dim / 2]`.
pub fn rope_naive(
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    x: &Tensor,
    inv_freq: &Tensor,
    table: &Tensor,
    start: u32,
) -> Result<()> {
    const OP: &str = "rope_naive";
    for (name, t) in [("x", x), ("inv_freq", inv_freq), ("table", table)] {
        t.validate(OP, name)?;
        crate::ensure!(
            t.is_contiguous() && t.offset() == 0,
            Shape,
            OP,
            "{name} must be a contiguous view at the start of its buffer"
        );
    }
    crate::ensure!(
        x.rank() == 3,
        Shape,
        OP,
        "x {:?} must be [seq, heads, head_dim]",
        x.shape()
    );
    let (seq, heads, head_dim) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    crate::ensure!(
        head_dim % 4 == 0
            && inv_freq.shape() == [head_dim / 2]
            && inv_freq.dtype() == DType::F32
            && table.dtype() == DType::F32
            && table.numel() >= seq * head_dim,
        Shape,
        OP,
        "head_dim {head_dim} must be a multiple of 4, inv_freq f32 [{}] and table f32 with {} values",
        head_dim / 2,
        seq * head_dim
    );
    let work = (seq * heads * head_dim / 4) as u64;
    crate::ensure!(
        work <= u32::MAX as u64 && (seq * head_dim) as u64 <= u32::MAX as u64,
        Limit,
        OP,
        "{seq} tokens of {heads} heads exceed 32-bit indexing"
    );
    let params = RopeParams {
        seq: seq as u32,
        heads: heads as u32,
        head_dim: head_dim as u32,
        start,
    };
    let dtype = x.dtype();
    let fw = Window::covering(ctx, OP, &[inv_freq])?;
    let tw = Window::covering(ctx, OP, &[table])?;
    let xw = Window::covering(ctx, OP, &[x])?;
    ctx.encode_kernel(
        OP,
        enc,
        &key("rope_table", dtype),
        &params,
        &[("inv_freq", fw.resource()), ("table_out", tw.resource())],
        ((seq * head_dim / 2) as u64).div_ceil(WG as u64),
    )?;
    ctx.encode_kernel(
        OP,
        enc,
        &key("rope_rotate", dtype),
        &params,
        &[("table_in", tw.resource()), ("xs", xw.resource())],
        work.div_ceil(WG as u64),
    )
}

/// Uniform parameters; mirrors `struct AttnParams` in `shaders/baseline.wgsl` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AttnParams {
    /// Query rows.
    pub q_len: u32,
    /// Key/value rows.
    pub kv_len: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Position of query 0.
    pub q_offset: u32,
    /// 1 for a causal mask.
    pub causal: u32,
    /// Logit scale.
    pub scale: f32,
}

const ATTN_ENTRIES: [&str; 4] = ["attn_repeat_kv", "attn_scores", "attn_softmax", "attn_pv"];

/// Every pipeline key of the attention baseline (f32 only).
pub fn attention_variant_keys() -> Vec<PipelineKey> {
    ATTN_ENTRIES.iter().map(|e| key(e, DType::F32)).collect()
}

/// Scratch for [`attention_naive`]: K and V repeated per query head, and the score matrix.
pub struct AttentionScratch {
    /// K repeated for every query head.
    pub k_rep: Tensor,
    /// V repeated for every query head.
    pub v_rep: Tensor,
    /// The explicit `[heads, q_len, kv_len]` score matrix.
    pub scores: Tensor,
}

impl AttentionScratch {
    /// Allocate the intermediate buffers for one attention shape.
    pub fn new(
        ctx: &Context,
        q_len: usize,
        kv_len: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        Ok(AttentionScratch {
            k_rep: ctx.empty(&[kv_len, n_heads, head_dim], DType::F32)?,
            v_rep: ctx.empty(&[kv_len, n_heads, head_dim], DType::F32)?,
            scores: ctx.empty(&[n_heads, q_len, kv_len], DType::F32)?,
        })
    }
}

/// Unfused attention (f32, batch 1, contiguous views at the start of their buffers, scale
/// `1/sqrt(head_dim)`, queries aligned bottom-right): K/V repeated per head, explicit scores with
/// the causal mask, a separate softmax, then P·V.
#[allow(clippy::too_many_arguments)]
pub fn attention_naive(
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    scratch: &AttentionScratch,
    causal: bool,
) -> Result<()> {
    const OP: &str = "attention_naive";
    for (name, t) in [
        ("q", q),
        ("k", k),
        ("v", v),
        ("out", out),
        ("k_rep", &scratch.k_rep),
        ("v_rep", &scratch.v_rep),
        ("scores", &scratch.scores),
    ] {
        t.validate(OP, name)?;
        crate::ensure!(
            t.is_contiguous() && t.offset() == 0 && t.dtype() == DType::F32,
            Shape,
            OP,
            "{name} must be a contiguous f32 view at the start of its buffer"
        );
    }
    crate::ensure!(
        q.rank() == 3 && k.rank() == 3 && k.shape() == v.shape() && out.shape() == q.shape(),
        Shape,
        OP,
        "q {:?} / out {:?} must be [q_len, n_heads, d] and k {:?} / v {:?} [kv_len, n_kv_heads, d]",
        q.shape(),
        out.shape(),
        k.shape(),
        v.shape()
    );
    let (q_len, n_heads, head_dim) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let (kv_len, n_kv_heads) = (k.shape()[0], k.shape()[1]);
    crate::ensure!(
        k.shape()[2] == head_dim
            && n_kv_heads > 0
            && n_heads % n_kv_heads == 0
            && q_len <= kv_len
            && scratch.k_rep.numel() >= kv_len * n_heads * head_dim
            && scratch.v_rep.numel() >= kv_len * n_heads * head_dim
            && scratch.scores.numel() >= n_heads * q_len * kv_len,
        Shape,
        OP,
        "shapes q {:?}, k {:?} or the scratch do not fit",
        q.shape(),
        k.shape()
    );
    let params = AttnParams {
        q_len: q_len as u32,
        kv_len: kv_len as u32,
        n_heads: n_heads as u32,
        n_kv_heads: n_kv_heads as u32,
        head_dim: head_dim as u32,
        q_offset: (kv_len - q_len) as u32,
        causal: causal as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    let win = |t: &Tensor| Window::covering(ctx, OP, &[t]);
    let (qw, kw, vw, ow) = (win(q)?, win(k)?, win(v)?, win(out)?);
    let (krw, vrw, sw) = (
        win(&scratch.k_rep)?,
        win(&scratch.v_rep)?,
        win(&scratch.scores)?,
    );
    let groups = |n: usize| (n as u64).div_ceil(WG as u64);
    for (src, dst) in [(&kw, &krw), (&vw, &vrw)] {
        ctx.encode_kernel(
            OP,
            enc,
            &key("attn_repeat_kv", DType::F32),
            &params,
            &[("kv_src", src.resource()), ("kv_rep", dst.resource())],
            groups(kv_len * n_heads * head_dim),
        )?;
    }
    ctx.encode_kernel(
        OP,
        enc,
        &key("attn_scores", DType::F32),
        &params,
        &[
            ("q_in", qw.resource()),
            ("k_rep", krw.resource()),
            ("scores", sw.resource()),
        ],
        groups(n_heads * q_len * kv_len),
    )?;
    ctx.encode_kernel(
        OP,
        enc,
        &key("attn_softmax", DType::F32),
        &params,
        &[("scores", sw.resource())],
        groups(n_heads * q_len),
    )?;
    ctx.encode_kernel(
        OP,
        enc,
        &key("attn_pv", DType::F32),
        &params,
        &[
            ("p_in", sw.resource()),
            ("v_rep", vrw.resource()),
            ("o_out", ow.resource()),
        ],
        groups(q_len * n_heads * head_dim),
    )
}
