//! The options of one attention call ([`Attention`]), their rules, and the sizes read from the
//! tensors ([`Dims`]).

use super::{Kind, MAX_HEAD_DIM, OP};
use crate::error::Result;
use crate::tensor::Tensor;

/// Options of one attention call; `Default` is causal, default scale, no window/softcap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    /// Mask key `j` for query position `pos` when `j > pos`.
    pub causal: bool,
    /// Position of query 0; default `kv_len - q_len`. May be negative (those rows see no key when
    /// causal); `q_offset + q_len <= kv_len` is required.
    pub q_offset: Option<i64>,
    /// Logit scale; default `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Sliding window in keys (HF's `sliding_window`): key `j` is masked when `pos - j >= window`;
    /// 0 = none. The same as `window_left = Some(window - 1)`; setting both is an error.
    pub window: u32,
    /// Left side of a two-sided window (FlashAttention's `window_size[0]`): key `j` is masked when
    /// `pos - j > window_left`; `None` = unbounded.
    pub window_left: Option<u32>,
    /// Right side of a two-sided window (`window_size[1]`): key `j` is masked when
    /// `j - pos > window_right`; `None` = unbounded (causal masking bounds it at 0 anyway).
    pub window_right: Option<u32>,
    /// Chunked local attention (Llama 4's `attention_chunk_size`): only keys in the query's chunk
    /// of `chunk_size` positions are visible; 0 = none.
    pub chunk_size: u32,
    /// Logit softcap; 0 = none.
    pub softcap: f32,
    /// ALiBi (BLOOM, MPT, Falcon-RW; Press et al. 2021): query head `h` at position `pos` adds
    /// `slope(h) * (j - pos)` to its logit for key `j` (after the softcap), with the slopes of
    /// transformers' `build_alibi_tensor` ([`crate::reference::attention::alibi_slopes`]: for
    /// the largest power of two `n <= n_heads`, `2^(-8 (h + 1) / n)`, then the odd powers of
    /// `2^(-4 / n)` for the remaining heads). BLOOM adds `slope * j`; the two differ by a
    /// constant per row, so the softmax is the same. A uniform flag: every kernel pays one
    /// multiply-add per score, on or off.
    pub alibi: bool,
    /// Force a kernel instead of choosing by shape.
    pub kind: Option<Kind>,
    /// Force the decode split count. Honoured exactly (chunks past kv_len are empty and
    /// contribute nothing), except that on CPU adapters it is raised to what
    /// [`loop_cap_keys`](super::loop_cap_keys) needs. Honoured the same way by [`Kind::PrefillKeys`]
    /// and [`Kind::PrefillSubgroup`]; ignored by [`Kind::Prefill`].
    pub splits: Option<u32>,
    /// Opt-in half-precision arithmetic for [`Kind::Prefill`] (ignored by the other kernels; it
    /// makes the default prefill [`Kind::Prefill`] instead of [`Kind::PrefillKeys`] on CPU
    /// adapters and of [`Kind::PrefillSubgroup`] on GPUs):
    /// q, the K/V tiles and the products q·k and p·v in `f16` (WGSL `enable f16`), the scores,
    /// the softmax and the output accumulator in f32, as FlashAttention-2 feeds half inputs to
    /// its matmuls. Needs `wgpu::Features::SHADER_F16` on the device ([`Context::new`](crate::Context::new) requests
    /// it when the adapter has it; `Err` otherwise). Looser than the f32 default (each q·k of
    /// four terms and each product is rounded to f16, and values past f16's range, 65504,
    /// become infinite); its test limit is [`F16_ARITHMETIC_NMSE`].
    pub f16_arithmetic: bool,
    /// How [`Kind::DecodeSubgroup`] reads f16 K/V: `None` lets the adapter decide (native on
    /// GPUs with `SHADER_F16` when the K/V rows are 16-byte aligned, see
    /// [`crate::ops::native_f16_wanted`]); `Some(false)` keeps the integer decode every kernel
    /// uses; `Some(true)` forces native reads (K and V also bound as `array<vec4<f16>>` and
    /// widened by the hardware, about one instruction per value instead of fourteen), an error
    /// without `SHADER_F16`, for other dtypes or kernels, or for unaligned K/V rows. Widening is
    /// exact: both give the same bits.
    pub native_f16: Option<bool>,
    /// The subgroup size [`Kind::DecodeSubgroup`] may assume: `None` takes the adapter's smallest
    /// (`wgpu::AdapterInfo::subgroup_min_size`, at least 4). A smaller power of two, down to 4, is
    /// always correct (more vec4 slots per lane, more virtual subgroups; the kernel leaves lanes
    /// past head_dim idle), for drivers that run subgroups smaller than they report; more than
    /// the adapter's smallest is an `Err`, as the kernel would leave parts of head_dim unread.
    pub subgroup_min_size: Option<u32>,
    /// Opt-in packed 8-bit scoring for [`Kind::DecodeSubgroup`] and [`Kind::PrefillSubgroup`]
    /// (its K tiles staged as int8 words with their block scales) over q8_0 or q4_0 K
    /// (llama.cpp's DP4A path): each 32-value block of the pre-scaled query row is quantized to
    /// int8 as q8_0 (`d = amax / 127`, round half away from zero, `d` kept in f32), and `q·k`
    /// is per block an i32 sum of `dot4I8Packed` products times `d_q · d_k` in f32; V, the
    /// softmax and P·V stay f32. Off by default: quantizing q changes the scores (the f64
    /// reference models it with [`crate::reference::quant::int8_dot_q`]). An `Err` for other
    /// K/V formats (float, fp8) and other kernels; a paged call applies it to the batch's
    /// `DecodeSubgroup` and `PrefillSubgroup` rows and is refused when it has neither. No device
    /// feature is needed (WGSL's `dot4I8Packed`: native where the device has integer dot
    /// products, a polyfill elsewhere).
    pub int8_dot: bool,
}

/// The NMSE limit the tests hold [`Attention::f16_arithmetic`] to against the f64 reference
/// with f32 and f16 storage (f16 rounding of q, k, v, q·k and p·v; the f32 path's limits are
/// 1e-10 and 1e-6); bf16 storage keeps its own limit, 5e-5, which is looser already.
pub const F16_ARITHMETIC_NMSE: f64 = 2e-5;

impl Default for Attention {
    fn default() -> Self {
        Attention {
            causal: true,
            q_offset: None,
            scale: None,
            window: 0,
            window_left: None,
            window_right: None,
            chunk_size: 0,
            softcap: 0.0,
            alibi: false,
            kind: None,
            splits: None,
            f16_arithmetic: false,
            native_f16: None,
            subgroup_min_size: None,
            int8_dot: false,
        }
    }
}

/// Sizes read from the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch size (1 for rank-3 views).
    pub batch: usize,
    /// Query rows.
    pub q_len: usize,
    /// Key/value rows.
    pub kv_len: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

impl Dims {
    /// The head rules every call's sizes obey: `n_heads` a multiple of `n_kv_heads`, `head_dim`
    /// a multiple of 4 up to [`MAX_HEAD_DIM`].
    pub(crate) fn check_heads(&self) -> Result<()> {
        let (n_heads, n_kv_heads, head_dim) = (self.n_heads, self.n_kv_heads, self.head_dim);
        crate::ensure!(
            n_kv_heads > 0 && n_heads % n_kv_heads == 0,
            Shape,
            OP,
            "n_heads {n_heads} is not divisible by n_kv_heads {n_kv_heads}"
        );
        crate::ensure!(
            head_dim % 4 == 0 && head_dim <= MAX_HEAD_DIM && head_dim > 0,
            Shape,
            OP,
            "unsupported head_dim {head_dim}: must be a multiple of 4 and <= {MAX_HEAD_DIM}"
        );
        Ok(())
    }
}

/// Largest [`Attention::chunk_size`] (chunk arithmetic stays inside i32 in the shaders).
pub const MAX_CHUNK_SIZE: u32 = 1 << 29;

impl Attention {
    /// The shader's (left, right) window bounds, -1 for none. A bound that masks nothing for any
    /// query position `q_offset ..< kv_len` and key `0 ..< kv_len` becomes -1, so the shader's
    /// `pos - left` and `pos + right` stay inside i32 whatever the user passed.
    pub fn window_bounds(&self, kv_len: usize, q_offset: i64) -> (i32, i32) {
        let left = match (self.window, self.window_left) {
            (0, l) => l.map(|l| l as i64),
            (w, _) => Some(w as i64 - 1),
        };
        let right = self.window_right.map(|r| r as i64);
        // Every |pos - j| of the call is below this.
        let span = kv_len as i64 - q_offset.min(0);
        let clamp = |b: Option<i64>| match b {
            Some(b) if b < span => b as i32,
            _ => -1,
        };
        (clamp(left), clamp(right))
    }

    /// Causal attention with the default scale.
    pub fn causal() -> Self {
        Self::default()
    }
    /// Non-causal attention with the default scale.
    pub fn non_causal() -> Self {
        Attention {
            causal: false,
            ..Self::default()
        }
    }

    /// The sizes of a call, after checking ranks and shapes.
    pub fn dims(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
        let rank = q.rank();
        crate::ensure!(
            rank == 3 || rank == 4,
            Shape,
            OP,
            "q must be [q_len, n_heads, head_dim] or [batch, q_len, n_heads, head_dim], got shape {:?}",
            q.shape()
        );
        crate::ensure!(
            k.rank() == rank && v.rank() == rank,
            Shape,
            OP,
            "k {:?} and v {:?} must have q's rank {rank} (q {:?})",
            k.shape(),
            v.shape(),
            q.shape()
        );
        let qs = q.shape();
        let ks = k.shape();
        let vs = v.shape();
        let o = rank - 3;
        let batch = if rank == 4 { qs[0] } else { 1 };
        crate::ensure!(
            rank == 3 || (ks[0] == batch && vs[0] == batch),
            Shape,
            OP,
            "batch mismatch: q has {batch}, k has {}, v has {}",
            ks[0],
            vs[0]
        );
        let (q_len, n_heads, head_dim) = (qs[o], qs[o + 1], qs[o + 2]);
        let (kv_len, n_kv_heads) = (ks[o], ks[o + 1]);
        crate::ensure!(
            ks[o + 2] == head_dim && vs[o + 2] == head_dim,
            Shape,
            OP,
            "head_dim mismatch: q has {head_dim}, k has {}, v has {}",
            ks[o + 2],
            vs[o + 2]
        );
        crate::ensure!(
            vs[o] == kv_len && vs[o + 1] == n_kv_heads,
            Shape,
            OP,
            "k {:?} and v {:?} must have the same shape",
            ks,
            vs
        );
        let d = Dims {
            batch,
            q_len,
            kv_len,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        d.check_heads()?;
        Ok(d)
    }

    /// The rules of the masking and logit options (scale, softcap, windows, chunk), shared by the
    /// contiguous and paged calls.
    pub(crate) fn check_options(&self, op: &'static str) -> Result<()> {
        if let Some(sc) = self.scale {
            crate::ensure!(sc.is_finite(), Param, op, "scale must be finite, got {sc}");
        }
        crate::ensure!(
            self.softcap.is_finite() && self.softcap >= 0.0,
            Param,
            op,
            "softcap must be finite and >= 0 (0 = none), got {}",
            self.softcap
        );
        crate::ensure!(
            self.window <= i32::MAX as u32,
            Param,
            op,
            "window {} exceeds {}",
            self.window,
            i32::MAX
        );
        crate::ensure!(
            self.window == 0 || self.window_left.is_none(),
            Param,
            op,
            "window {} and window_left {:?} both set: window W is window_left W - 1, give one",
            self.window,
            self.window_left
        );
        crate::ensure!(
            self.chunk_size <= MAX_CHUNK_SIZE,
            Param,
            op,
            "chunk_size {} exceeds {MAX_CHUNK_SIZE}",
            self.chunk_size
        );
        Ok(())
    }
}
