//! QK-norm: an RMSNorm over each query or key head, fused in front of the rotation (Qwen3,
//! Gemma 3), and the row map that writes rotated heads straight into KV-cache pages.

use super::OP;
use crate::error::Result;
use crate::kv_format::KvFormat;
use crate::tensor::{DType, Tensor};

/// An RMSNorm over each head, applied before RoPE rotates it:
/// `y = x / sqrt(mean(x²) + eps) * (w + weight_offset)` over the head's `head_dim` elements
/// (rotated and unrotated alike), with `weight: [head_dim]` in the rotated tensor's dtype.
///
/// - Qwen3 (`q_norm`, `k_norm`: `Qwen3RMSNorm(head_dim)`): [`HeadNorm::new`], offset 0.
/// - Gemma 3 (`Gemma3RMSNorm(head_dim)`, `(1 + w)`): [`HeadNorm::gemma`], offset 1.
///
/// The kernel computes the norm, the weight and the rotation in f32 and rounds once to the
/// storage dtype. transformers rounds more often in bf16/f16: Qwen3 rounds the normalised head
/// to the model dtype before multiplying by `w` (in the model dtype), Gemma 3 rounds after
/// `* (1 + w)`, and `apply_rotary_pos_emb` then rotates in the model dtype with cos/sin rounded
/// to it; in f32 the results agree to f32 rounding. OLMo 2's `q_norm`/`k_norm` normalise the
/// whole projection (`[n_heads * head_dim]`, all heads of a token together), not each head, so
/// they are a plain [`crate::RmsNorm`] over the `[tokens, n_heads * head_dim]` rows, not this.
#[derive(Clone, Debug)]
pub struct HeadNorm {
    /// `[head_dim]`, contiguous, the rotated tensor's dtype, in a buffer other than the rotated
    /// or written views'.
    pub weight: Tensor,
    /// Added to the mean square before the square root; finite and >= 0.
    pub eps: f32,
    /// Added to every weight: 0 (Qwen3), 1 (Gemma 3's `1 + w`); finite.
    pub weight_offset: f32,
}

impl HeadNorm {
    /// `x / sqrt(mean(x²) + eps) * w` (Qwen3's `q_norm` / `k_norm`).
    pub fn new(weight: &Tensor, eps: f32) -> Self {
        HeadNorm {
            weight: weight.clone(),
            eps,
            weight_offset: 0.0,
        }
    }
    /// `x / sqrt(mean(x²) + eps) * (1 + w)` (Gemma 3's `q_norm` / `k_norm`).
    pub fn gemma(weight: &Tensor, eps: f32) -> Self {
        HeadNorm {
            weight: weight.clone(),
            eps,
            weight_offset: 1.0,
        }
    }

    /// Check the weight against heads of `head_dim` elements stored as `dtype`, and the
    /// parameters; `name` says which norm (`q_norm`, `k_norm`, `norm`) in messages.
    pub(crate) fn validate(&self, name: &str, head_dim: usize, dtype: DType) -> Result<()> {
        let w = &self.weight;
        let wname = format!("{name} weight");
        w.validate(OP, &wname)?;
        crate::ensure!(
            w.shape() == [head_dim],
            Shape,
            OP,
            "{wname} has shape {:?} but must be [{head_dim}] (one weight per element of a head)",
            w.shape()
        );
        w.expect_dtype(OP, &wname, dtype)?;
        crate::ensure!(
            self.eps.is_finite() && self.eps >= 0.0,
            Param,
            OP,
            "{name} eps must be finite and >= 0, got {}",
            self.eps
        );
        crate::ensure!(
            self.weight_offset.is_finite(),
            Param,
            OP,
            "{name} weight_offset must be finite, got {}",
            self.weight_offset
        );
        Ok(())
    }
}

/// Where [`super::Rope::encode_rows`] writes: for token `t`, head `h` goes to element
/// `rows[rows_offset + t] + h * head_stride` of `dst` (`u32::MAX`: skip the token).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowMap<'a> {
    pub dst: &'a wgpu::Buffer,
    pub rows: &'a wgpu::Buffer,
    pub rows_offset: usize,
    pub head_stride: usize,
}

/// Where `rope_q` writes x's rotated rows: into `dst`, bound whole, quantized to `format` (a KV
/// cache's K). `dst` is a run of pages of `page_elems` elements, each a quantized buffer of
/// `page_words` words whose scale plane starts `scale_word` words in (`crate::kv_format`); a
/// head row's float-equivalent element `e` is element `e % page_elems` of page `e / page_elems`.
/// A contiguous cache is one page (`page_words` 0). The rows are placed by `view` (the element
/// offset and batch, token and head strides of x's rows), or by the call's row map.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuantOut<'a> {
    pub format: KvFormat,
    pub dst: &'a wgpu::Buffer,
    pub page_elems: usize,
    pub page_words: usize,
    pub scale_word: usize,
    /// fp8's per-tensor scale.
    pub scale: f32,
    pub view: Option<(usize, [usize; 3])>,
}

impl QuantOut<'_> {
    /// The destination of tokens `s0 ..` of batch row `b` (a piece of a split call).
    pub(crate) fn tokens(mut self, b: usize, s0: usize) -> Self {
        if let Some((off, [bs, ss, hs])) = self.view {
            self.view = Some((off + b * bs + s0 * ss, [bs, ss, hs]));
        }
        self
    }
}

/// What a call adds to the plain rotation: per-head norms of the two segments, a row map, a
/// quantized destination.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Extra<'a> {
    pub norm_a: Option<&'a HeadNorm>,
    pub norm_b: Option<&'a HeadNorm>,
    pub rows: Option<RowMap<'a>>,
    pub quant: Option<QuantOut<'a>>,
}
