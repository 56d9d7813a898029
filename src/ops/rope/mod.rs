//! RoPE (Su et al. 2021): rotary position embedding, in place or out of place, exact at any
//! 32-bit position.
//!
//! ```text
//! theta_i = pos * inv_freq[i],  i < rotary_dim / 2
//! a' = (a cos theta_i - b sin theta_i) * attention_factor
//! b' = (b cos theta_i + a sin theta_i) * attention_factor
//! ```
//! for each pair `(a, b)` of each head; elements from `rotary_dim` to `head_dim` are untouched.
//! - [`Layout::Half`] pairs `(i, i + rotary_dim/2)` (HF `rotate_half`, GPT-NeoX, Qwen, Phi);
//!   [`Layout::Interleaved`] pairs `(2i, 2i + 1)` (Meta Llama, GPT-J).
//! - `inv_freq` and `attention_factor` follow HF's `rope_type` ([`Scaling`]); the f64 table is
//!   [`Rope::inv_freq`], the same function the reference uses.
//! - Positions are an i32 buffer ([`PositionIds`], `[seq]` or `[batch, seq]`, any values) or a
//!   start offset (`start .. start + seq`, decode and chunked prefill).
//!
//! Layouts: `x` is a token-major view `[seq, heads, head_dim]` or `[batch, seq, heads, head_dim]`
//! with any strides (last dim contiguous), so Q and K are rotated where a fused QKV projection
//! wrote them ([`qkv_views`]); [`Rope::encode_qk`] rotates both in one dispatch. Storage f32, f16
//! or bf16; math f32.
//!
//! ## Accuracy: exact angles, own sin/cos
//! `pos * inv_freq` in f32 is off by ~0.06 rad at pos = 1M (what HF, MLX and ggml compute), and
//! WGSL's `sin`/`cos` are only specified on [-pi, pi], to 2^-11 absolute. This kernel instead:
//! 1. gets from the host, per pair, `frac(inv_freq / 2pi)` as a 64-bit fixed-point turn (two u32
//!    words, from the f64 table with a double-double division by 2pi);
//! 2. multiplies it by the integer position in u32 arithmetic (a 32x64-bit product mod 2^64,
//!    exact), keeping the top 32 bits: the angle modulo 2pi to 2^-32 turns (1.5e-9 rad) for
//!    every i32 position;
//! 3. reduces to the nearest quarter turn in fixed point and evaluates Cephes' sinf/cosf
//!    polynomials on [-pi/4, pi/4] (degree 7 and 8, < 1 ulp), then swaps/negates by quadrant.
//!
//! Measured on lavapipe (tests/rope.rs, `accuracy_at_large_positions`; unit pairs, so the output
//! is cos and sin themselves), against the f64 rotation, theta 1e4 / 5e5 / 1e6:
//!
//! | positions | this kernel | fixed-point turn + built-in sin/cos | f32 `pos * inv_freq` + built-ins |
//! |---|---|---|---|
//! | 0..4096 | NMSE 1e-15, max 1e-7 | 6e-15, 3e-7 | 4e-10, 2e-4 |
//! | ~1M | 1e-15, 1e-7 | 7e-15, 3e-7 | 6e-5, 6e-2 |
//! | ~2^24 | 1e-15, 1e-7 | 7e-15, 3e-7 | 1e-2, 0.9 |
//! | ~2^31 | 1.6e-15, 1.4e-7 | 7e-15, 3e-7 | 1.2, 2.0 |
//!
//! The target is NMSE 1e-10. Lavapipe's built-ins are far better than the 2^-11 WGSL promises,
//! but other adapters need not be, so the kernel does not use them.
//!
//! Chosen over the alternative, a cos/sin table built in f64 on the host: with positions in a
//! GPU buffer that table must cover every position (`max_position x rotary_dim/2 x 8` bytes:
//! 512 MiB at 1M positions and 8 GiB at 2^24 for rotary_dim 128, past a 128 MiB binding), or be
//! rebuilt per call (4M `sin_cos` and a 64 MiB upload for 65536 tokens: 230 ms against 43 ms on
//! lavapipe). The fixed-point table is `rotary_dim/2 x 16` bytes (1 KiB), and the polynomial costs
//! little, since cos/sin are shared by every head of a token: Llama-3-8B Q+K, 2048 tokens in a
//! fused QKV buffer, median per call (submit and wait) on lavapipe with the `rope_vec4` path
//! 25 ms exact, 26 ms built-in reduced, 24 ms naive f32, 28 ms host table; with one head per
//! token (65536 tokens), where nothing shares them, 43 / 46 / 37 / 230 ms
//! (`cargo run --release --example rope_sincos`). `SinCos` keeps the other methods for such measurements.
//!
//! ## Strategy
//! Three entry points for float outputs (a fourth, `rope_q`, below); the dispatcher picks by
//! alignment and norm ([`Rope::variant`] reports the choice for the plain rotation):
//! - `rope_vec4`, in place when the view's first element and every stride (of a dimension
//!   longer than 1) are multiples of 16 bytes and `rotary_dim` is a multiple of 8 (f32) or 16
//!   (f16, bf16) elements, i.e. every access is a whole, aligned vec4 of the view. One invocation
//!   per (token, group of heads, unit of 4 (f32) or 8 (halves) pairs): the unit's cos/sin are
//!   computed once, with the attention factor folded in, then each head of the group costs two
//!   vec4 loads, the rotation in vec4 arithmetic, and two vec4 stores (half layout: the a's and
//!   the b's, `rotary_dim/2` apart; interleaved: two consecutive vec4s). Halves are converted
//!   four at a time without branches. A group spans at most 4 KiB of a token
//!   (`VEC4_GROUP_BYTES`), so consecutive invocations stream through memory.
//! - `rope`, everything else (odd offsets or strides, partial rotary of other sizes, out of
//!   place): one invocation per (token, group of heads, two pairs), scalar 32-bit accesses; the
//!   two cos/sin are computed once and applied to every head of the group (a packed f16/bf16
//!   word is only written by one invocation). Out of place, extra invocations copy the
//!   unrotated tail.
//!
//! - `rope_norm`, with a per-head RMSNorm ([`HeadNorm`], Qwen3 / Gemma 3 QK-norm) in front of
//!   the rotation: one invocation per (token, group of up to 8 heads) reads each head once for
//!   its sum of squares (f32), then pair by pair computes cos/sin once and normalises, rotates
//!   and stores every head of the group (the unrotated tail normalised too). Q and K each have
//!   their own weights, as runtime flags of one dispatch.
//!
//! Every entry point stores f16 through WGSL's `pack2x16float` where the adapter prefers it
//! (devices that are not CPU adapters, with the f16-in-f32 capability; a second module,
//! `rope_f16_store.wgsl`) and through common.wgsl's exact integer encoder elsewhere; bf16
//! always through its integer encoder (four ops a value, no built-in). [`Rope::native_f16_store`]
//! forces either.
//!
//! The first two split heads into more groups when tokens x columns alone would not fill the
//! device (`TARGET_INVOCATIONS`). That grouping is for CPU adapters, where an invocation is a
//! loop over SIMD lanes and few long invocations pay; on every other device an invocation walks
//! at most `GPU_HEADS_PER_INVOCATION` (2) heads, so a GPU keeps many loads in flight instead of
//! a long serial read-modify-write per invocation (`plan::head_groups`, pinned per described
//! device in its tests).
//!
//! Out of place, `rope` and `rope_norm` can take the output rows from a row map
//! ([`Rope::encode_rows`]: a runtime flag and the `rows` binding, no extra specialisation), so a
//! paged KV cache gets its new K rows rotated (and normalised) straight into their pages.
//!
//! - `rope_q` (module `rope_q.wgsl`, [`Variant::kv_format`]), for the KV caches' `append_rope`
//!   into q8_0 / q4_0 / fp8 storage: one invocation per (token, head) owns the head's row,
//!   computes each value from its pair partner (normalised first with a k_norm, a runtime flag)
//!   with `rope` / `rope_norm`'s own products and rounding, and quantizes the row block by block
//!   straight into the cache (a strided view of a contiguous cache, or the row map into pages),
//!   so no float copy of the rotated rows exists.
//!
//! Measured on lavapipe (2 shared cores, so absolute numbers move; ratios are taken in the same
//! run): `cargo run --release --example rope_speed`, GPU timestamps, median of 7, as a fraction
//! of the best WGSL vec4 streaming copy of the same bytes (read + write of the rotated elements),
//! three runs each:
//!
//! | case (>= 64 MiB rotated) | f32 before -> after | f16 | bf16 |
//! |---|---|---|---|
//! | Llama-3-8B Q+K in fused QKV, half | 41-46% -> 66-71% | 24-25% -> 46-47% | 29-35% -> 68-69% |
//! | plain `[tokens, 32, 128]`, half | 46% -> 80-83% | 25-26% -> 49-50% | 35-39% -> 75-78% |
//! | plain, interleaved | 31-38% -> 83-85% | 23% -> 51-52% | 30-36% -> 77-81% |
//!
//! What limits the rest on a CPU adapter is arithmetic, not memory: with the f16 conversions
//! replaced by bit casts the same kernel reaches 62-80%, and the fused layout loses 10-15% to
//! the plain one (token rows of 24 KiB with V skipped) for reasons not pinned down. Trusted
//! shader modules (no runtime checks) and workgroup sizes 32-256 made no difference measurable
//! above the noise there (wgpu already leaves buffer bounds to the driver's robustBufferAccess2
//! on Vulkan), so neither is used.

mod chunk;
mod freq;
mod norm;
mod plan;
mod positions;
mod record;
pub(crate) mod sincos;
mod variant;

use crate::context::Context;

use crate::error::Result;
use crate::tensor::Tensor;

use freq::TableCache;
pub use freq::{fixed_point_turn, frequencies, Freq, Layout, Scaling, MAX_INV_FREQ};
use norm::Extra;
pub use norm::HeadNorm;
pub(crate) use norm::QuantOut;
pub(crate) use norm::RowMap;
pub(crate) use plan::Plan;
pub use positions::{qkv_views, PositionIds, Positions};
pub(crate) use sincos::SinCos;
pub use variant::{all_variant_keys, f16_store_variant_keys, quantized_variant_keys, Variant};

pub(crate) const OP: &str = "rope";
pub(crate) const WG: u32 = 64;
/// Invocations a dispatch aims for before it splits heads into more groups.
pub(crate) const TARGET_INVOCATIONS: usize = 1 << 16;
/// Most heads one `rope_norm` invocation owns (`NORM_GROUP` in `shaders/rope.wgsl`).
pub(crate) const NORM_GROUP: usize = 8;
/// Invocations a `rope_norm` dispatch aims for before it gives an invocation fewer heads.
pub(crate) const NORM_TARGET_INVOCATIONS: usize = 4096;
/// Bytes of a token that one `rope_vec4` invocation walks over (its group of heads).
pub(crate) const VEC4_GROUP_BYTES: usize = 4096;
/// Most heads one invocation walks on devices that are not CPU adapters (`plan::head_groups`).
pub(crate) const GPU_HEADS_PER_INVOCATION: usize = 2;

/// One RoPE configuration: copy `theta`, `rotary_dim` and `rope_scaling` from a model's config.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Which elements pair up.
    pub layout: Layout,
    /// Leading elements of each head that are rotated (even, `<= head_dim`); `None` = `head_dim`.
    pub rotary_dim: Option<usize>,
    /// `rope_theta` (the base), finite and > 0.
    pub theta: f64,
    /// `rope_type` and its parameters.
    pub scaling: Scaling,
    /// Sequence length that dynamic NTK and LongRoPE see (HF: `max(position_ids) + 1`). `None`:
    /// `start + seq` with a start offset; a positions buffer needs it set (the host cannot read
    /// GPU positions without a stall).
    pub seq_len: Option<usize>,
    /// Multimodal RoPE (Qwen2-VL, Qwen2.5-VL `mrope_section`): pairs `[0, t)` rotate by the
    /// time position, `[t, t + h)` by the height position, the last `w` by the width position
    /// (`t + h + w = rotary_dim / 2`); positions are then `[3, seq]` or `[3, batch, seq]`.
    pub mrope_section: Option<[usize; 3]>,
    /// Interleaved multimodal RoPE (Qwen3-VL's `apply_interleaved_mrope`): with
    /// `mrope_section = [t, h, w]`, pair `k` rotates by the height position when `k % 3 == 1`
    /// and `k < 3h`, by the width position when `k % 3 == 2` and `k < 3w`, else by the time
    /// position. Ignored without `mrope_section`.
    pub mrope_interleaved: bool,
    /// How f16 results are stored: `None` lets the adapter decide (`pack2x16float` on devices
    /// that are not CPU adapters and have the f16-in-f32 capability,
    /// [`crate::ops::native_f16_store_wanted`]); `Some(false)` keeps common.wgsl's exact integer
    /// encoder (round to nearest even, overflow to inf), which every other dtype and device
    /// uses; `Some(true)` forces `pack2x16float` (one instruction per value on a GPU instead of
    /// about twelve integer ops), an `Err` for other dtypes or on a device without the
    /// capability. WGSL leaves `pack2x16float`'s rounding and out-of-range results open, so
    /// the two agree within the f16 tolerance, not necessarily bit for bit.
    pub native_f16_store: Option<bool>,
    /// How cos and sin are computed: always exact, but for the benchmark's comparisons.
    pub(crate) sincos: SinCos,
    /// The last frequency table this configuration built (shared by clones).
    pub(crate) table: TableCache,
}

impl Default for Rope {
    fn default() -> Self {
        Rope {
            layout: Layout::Half,
            rotary_dim: None,
            theta: 10000.0,
            scaling: Scaling::Default,
            seq_len: None,
            mrope_section: None,
            mrope_interleaved: false,
            native_f16_store: None,
            sincos: SinCos::Exact,
            table: TableCache::default(),
        }
    }
}

/// Uniform parameters; mirrors `struct Params` in `shaders/rope.wgsl` (176 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Tokens (batch x seq).
    pub n_tokens: u32,
    /// Tokens per sequence.
    pub seq: u32,
    /// Columns per token (pairs, or out-of-place copy columns).
    pub n_cols: u32,
    /// Units of pairs per token.
    pub n_quads: u32,
    /// Groups the heads are split into.
    pub n_hgroups: u32,
    /// Heads per group.
    pub heads_per_group: u32,
    /// `rotary_dim / 2`.
    pub half_rot: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// First tensor (x or q): element offset.
    pub a_off: u32,
    /// First tensor: batch stride.
    pub a_bstride: u32,
    /// First tensor: token stride.
    pub a_sstride: u32,
    /// First tensor: head stride.
    pub a_hstride: u32,
    /// Heads of the first tensor.
    pub a_heads: u32,
    /// Heads of the second tensor (k with `encode_qk`, else 0).
    pub b_heads: u32,
    /// Second tensor: element offset.
    pub b_off: u32,
    /// Second tensor: batch stride.
    pub b_bstride: u32,
    /// Second tensor: token stride.
    pub b_sstride: u32,
    /// Second tensor: head stride.
    pub b_hstride: u32,
    /// Output (out of place): element offset.
    pub o_off: u32,
    /// Output: batch stride.
    pub o_bstride: u32,
    /// Output: token stride.
    pub o_sstride: u32,
    /// Output: head stride.
    pub o_hstride: u32,
    /// Positions: element offset.
    pub pos_off: u32,
    /// Positions: batch stride (0 for `[seq]`).
    pub pos_bstride: u32,
    /// Positions: token stride.
    pub pos_sstride: u32,
    /// Position of token 0 with [`Positions::Start`].
    pub pos_start: i32,
    /// The attention factor cos and sin are multiplied by.
    pub scale: f32,
    /// `FLAG_*` bits: which segments are normalised, whether a row map places the output.
    pub flags: u32,
    /// `rope_vec4` only: vec4 distance between the halves of a head (`half_rot / lanes`).
    pub v_half: u32,
    /// Row map: the call's first entry in the `rows` buffer.
    pub rows_off: u32,
    /// Multimodal RoPE: first pair of the height section (`u32::MAX` for 1-D RoPE); interleaved:
    /// `3h`, the end of the height pairs.
    pub sec1: u32,
    /// Multimodal RoPE: first pair of the width section (`u32::MAX` for 1-D RoPE); interleaved:
    /// `3w`, the end of the width pairs.
    pub sec2: u32,
    /// Multimodal RoPE: distance between the rows of the positions tensor.
    pub pos_rstride: u32,
    /// Segment A's norm: eps.
    pub eps_a: f32,
    /// Segment B's norm: eps.
    pub eps_b: f32,
    /// Segment A's norm: weight offset (1 for Gemma 3's `1 + w`).
    pub woff_a: f32,
    /// Segment B's norm: weight offset.
    pub woff_b: f32,
    /// Segment A's norm weight: element offset in its binding.
    pub wa_off: u32,
    /// Segment B's norm weight: element offset in its binding.
    pub wb_off: u32,
    /// `rope_q`: elements per page of the quantized destination (the whole buffer for a
    /// contiguous cache).
    pub q_page_elems: u32,
    /// `rope_q`: 32-bit words per page (0 for a contiguous cache: one page).
    pub q_page_words: u32,
    /// `rope_q`: word offset of the scale plane in a page.
    pub q_scale_word: u32,
    /// `rope_q`: fp8's per-tensor scale (stored value = e4m3(x / scale)).
    pub q_scale: f32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
}

/// `Params::flags`: segment A (x or q) is normalised before the rotation.
pub(crate) const FLAG_NORM_A: u32 = 1;
/// `Params::flags`: segment B (k) is normalised before the rotation.
pub(crate) const FLAG_NORM_B: u32 = 2;
/// `Params::flags`: the output rows come from a row map.
pub(crate) const FLAG_ROW_MAP: u32 = 4;
/// `Params::flags`: multimodal sections interleave (`sec1 = 3h`, `sec2 = 3w` bound the height
/// and width pairs, `k % 3` picks the row).
pub(crate) const FLAG_MROPE_INTERLEAVED: u32 = 8;

impl Rope {
    /// Default RoPE (`rope_type` "default") with base `theta` in the given layout.
    pub fn new(theta: f64, layout: Layout) -> Self {
        Rope {
            theta,
            layout,
            ..Default::default()
        }
    }
    /// The same op with `scaling`.
    pub fn with_scaling(mut self, scaling: Scaling) -> Self {
        self.scaling = scaling;
        self
    }
    /// The same op rotating only the first `rotary_dim` elements of each head.
    pub fn with_rotary_dim(mut self, rotary_dim: usize) -> Self {
        self.rotary_dim = Some(rotary_dim);
        self
    }
    /// The same op as multimodal RoPE with HF's `mrope_section` `[t, h, w]` (Qwen2-VL:
    /// `[16, 24, 24]`, pairs counted, summing to `rotary_dim / 2`): each section of the pairs
    /// rotates by its own row of `[3, seq]` / `[3, batch, seq]` positions (time, height, width),
    /// exactly like 1-D RoPE. A start offset gives every row the same positions (text tokens).
    pub fn with_mrope_section(mut self, section: [usize; 3]) -> Self {
        self.mrope_section = Some(section);
        self.mrope_interleaved = false;
        self
    }
    /// The same op as interleaved multimodal RoPE (Qwen3-VL, `mrope_interleaved`, HF's
    /// `apply_interleaved_mrope`): the pair index cycles time, height, width (`k % 3`) until
    /// the height pairs (`3h`) or width pairs (`3w`) run out; the rest rotate by time.
    /// `section = [t, h, w]` (Qwen3-VL: `[24, 20, 20]`) sums to `rotary_dim / 2`.
    pub fn with_mrope_interleaved(mut self, section: [usize; 3]) -> Self {
        self.mrope_section = Some(section);
        self.mrope_interleaved = true;
        self
    }
    /// The same op with the sequence length that dynamic NTK and LongRoPE see.
    pub fn with_seq_len(mut self, seq_len: usize) -> Self {
        self.seq_len = Some(seq_len);
        self
    }
    /// The same op storing f16 through `pack2x16float` (`true`) or the exact integer encoder
    /// (`false`) whatever the adapter prefers; see [`Rope::native_f16_store`].
    pub fn with_native_f16_store(mut self, native: bool) -> Self {
        self.native_f16_store = Some(native);
        self
    }

    /// The kernel variant that [`Rope::encode`] (`k` and `out` `None`), [`Rope::encode_qk`]
    /// (`k` in the same buffer as `x`) or [`Rope::encode_to`] (`out`) would dispatch for these
    /// views, after the same validation; nothing touches the GPU. `vec4` tells whether the
    /// fast `rope_vec4` entry point is taken: in place, every offset and every stride of a
    /// dimension longer than 1 a multiple of 16 bytes, and `rotary_dim` a multiple of 8 (f32) or
    /// 16 (f16, bf16) elements. Otherwise the general `rope` entry point runs.
    pub fn variant(
        &self,
        ctx: &Context,
        x: &Tensor,
        k: Option<&Tensor>,
        out: Option<&Tensor>,
        positions: Positions<'_>,
    ) -> Result<Variant> {
        Ok(self.plan(ctx, x, k, out, positions)?.variant)
    }

    /// Build the pipeline that the call [`Rope::variant`] describes would use (the same
    /// arguments: `x` alone for [`Rope::encode`], `k` for [`Rope::encode_qk`], `out` for
    /// [`Rope::encode_to`]), so the first call does not stall on a shader compile; nothing is
    /// recorded. Returns how many pipelines were built (0 when already cached).
    pub fn prepare(
        &self,
        ctx: &Context,
        x: &Tensor,
        k: Option<&Tensor>,
        out: Option<&Tensor>,
        positions: Positions<'_>,
    ) -> Result<usize> {
        let v = self.variant(ctx, x, k, out, positions)?;
        let before = ctx.cached_pipelines();
        ctx.kernel(OP, &v.key())?;
        Ok(ctx.cached_pipelines().saturating_sub(before))
    }

    /// Record an in-place rotation of `x` (`[seq, heads, head_dim]` or
    /// `[batch, seq, heads, head_dim]`, any strides) into `encoder`.
    pub fn encode(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        positions: Positions<'_>,
    ) -> Result<()> {
        self.encode_views(ctx, encoder, x, None, None, positions)
    }

    /// Record `out = rope(x)`; `out` has `x`'s shape and dtype, any strides, and is either
    /// disjoint from `x` or exactly `x`. The unrotated tail of each head is copied.
    pub fn encode_to(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        out: &Tensor,
        positions: Positions<'_>,
    ) -> Result<()> {
        self.encode_views(ctx, encoder, x, None, Some(out), positions)
    }

    /// Record an in-place rotation of `q` and `k` (same batch, seq and head_dim; head counts may
    /// differ), in one dispatch when they live in one buffer token by token with the same strides
    /// (a fused QKV projection, see [`qkv_views`]), otherwise in two.
    pub fn encode_qk(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        positions: Positions<'_>,
    ) -> Result<()> {
        self.encode_qk_norm(ctx, encoder, q, k, None, None, positions)
    }

    /// Record an in-place per-head RMSNorm ([`HeadNorm`]) followed by the rotation of `x`
    /// (`[seq, heads, head_dim]` or `[batch, seq, heads, head_dim]`, any strides): Qwen3's and
    /// Gemma 3's QK-norm on one of Q or K. One invocation per (token, head) (`rope_norm`).
    pub fn encode_norm(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        norm: &HeadNorm,
        positions: Positions<'_>,
    ) -> Result<()> {
        let extra = Extra {
            norm_a: Some(norm),
            ..Extra::default()
        };
        self.encode_views_with(ctx, encoder, x, None, None, extra, positions)
    }

    /// Record `out = rope(norm(x))` ([`Rope::encode_norm`] out of place; `out` as in
    /// [`Rope::encode_to`]). The unrotated tail is normalised too.
    pub fn encode_norm_to(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        out: &Tensor,
        norm: &HeadNorm,
        positions: Positions<'_>,
    ) -> Result<()> {
        let extra = Extra {
            norm_a: Some(norm),
            ..Extra::default()
        };
        self.encode_views_with(ctx, encoder, x, None, Some(out), extra, positions)
    }

    /// [`Rope::encode_qk`] with optional per-head norms of Q and K (Qwen3 and Gemma 3 have
    /// separate `q_norm` and `k_norm` weights): every Q and K head of a fused QKV buffer is
    /// normalised and rotated in one dispatch (two when Q and K live in separate buffers). With
    /// both norms `None` this is exactly [`Rope::encode_qk`].
    #[allow(clippy::too_many_arguments)]
    pub fn encode_qk_norm(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        q_norm: Option<&HeadNorm>,
        k_norm: Option<&HeadNorm>,
        positions: Positions<'_>,
    ) -> Result<()> {
        fn one(norm: Option<&HeadNorm>) -> Extra<'_> {
            Extra {
                norm_a: norm,
                ..Extra::default()
            }
        }
        if q.buffer() != k.buffer() {
            // Both views checked before either is recorded.
            self.plan_with(ctx, q, None, None, one(q_norm), positions)?;
            self.plan_with(ctx, k, None, None, one(k_norm), positions)?;
            crate::ensure!(
                q.rank() == k.rank()
                    && q.shape()[..q.rank() - 2] == k.shape()[..k.rank() - 2]
                    && q.shape().last() == k.shape().last(),
                Shape,
                OP,
                "k has shape {:?} but q has {:?}: batch, seq and head_dim must match",
                k.shape(),
                q.shape()
            );
            crate::ensure!(
                q.dtype() == k.dtype(),
                DType,
                OP,
                "k is {} but q is {}",
                k.dtype(),
                q.dtype()
            );
            self.encode_views_with(ctx, encoder, q, None, None, one(q_norm), positions)?;
            return self.encode_views_with(ctx, encoder, k, None, None, one(k_norm), positions);
        }
        let extra = Extra {
            norm_a: q_norm,
            norm_b: k_norm,
            ..Extra::default()
        };
        self.encode_views_with(ctx, encoder, q, Some(k), None, extra, positions)
    }

    /// Record RoPE of `x: [n, heads, head_dim]` (optionally after a per-head `norm`) written
    /// through a row map, e.g. new K rows straight into the pages of a paged KV cache: token
    /// `t`'s rotated head `h` goes to element `rows[rows_offset + t] + h * head_stride` of `dst`
    /// (elements of x's dtype); an entry `u32::MAX` skips the token (its page lives in another
    /// buffer). The unrotated tail is copied (normalised with a norm). Positions are per token as
    /// for [`Rope::encode`] (`[n]` ids or a start).
    ///
    /// `rows` is a `STORAGE` buffer of u32 entries; `dst` a `STORAGE` buffer of its own (not x's,
    /// not `rows`, not the positions' or the norm weight's), bound whole, so at most
    /// `max_storage_buffer_binding_size` bytes. Row entries are GPU data the host cannot check:
    /// the kernel skips any head that would end past `dst` (or, for f16/bf16, start at an odd
    /// element), so a bad entry never writes out of bounds; distinct tokens must map to disjoint
    /// rows, else the result is whichever write lands last.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_rows(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dst: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        rows_offset: usize,
        head_stride: usize,
        positions: Positions<'_>,
        norm: Option<&HeadNorm>,
    ) -> Result<()> {
        let plan = self.plan_rows(ctx, x, dst, rows, rows_offset, head_stride, positions, norm)?;
        ctx.scoped(OP, || {
            self.record_unscoped(ctx, encoder, plan, x, None, None, positions)
        })?
    }

    /// The validated plan of [`Rope::encode_rows`], for ops that record it under their own
    /// error scope with `record_unscoped(ctx, enc, plan, x, None, None, positions)` (a paged KV
    /// cache's append).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan_rows(
        &self,
        ctx: &Context,
        x: &Tensor,
        dst: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        rows_offset: usize,
        head_stride: usize,
        positions: Positions<'_>,
        norm: Option<&HeadNorm>,
    ) -> Result<plan::Plan> {
        let extra = Extra {
            norm_a: norm,
            norm_b: None,
            rows: Some(RowMap {
                dst,
                rows,
                rows_offset,
                head_stride,
            }),
            quant: None,
        };
        self.plan_with(ctx, x, None, None, extra, positions)
    }

    /// Plan `rope_q`: x's rows (`[tokens, heads, head_dim]` with a row map, else any rank-3 or
    /// rank-4 view) normalised by `norm` when given, rotated and quantized into `out` (a
    /// quantized KV cache's K), at the places `out.view` or the row map `rows` (whose `dst` is
    /// `out.dst`) gives. For ops that record it under their own error scope with
    /// `record_unscoped(ctx, enc, plan, x, None, None, positions)`.
    pub(crate) fn plan_quantized(
        &self,
        ctx: &Context,
        x: &Tensor,
        out: QuantOut<'_>,
        rows: Option<RowMap<'_>>,
        norm: Option<&HeadNorm>,
        positions: Positions<'_>,
    ) -> Result<plan::Plan> {
        let extra = Extra {
            norm_a: norm,
            norm_b: None,
            rows,
            quant: Some(out),
        };
        self.plan_with(ctx, x, None, None, extra, positions)
    }

    /// Record [`Rope::plan_quantized`] without a row map (under its own error scope), split
    /// into runs of tokens when x does not fit one binding.
    pub(crate) fn encode_quantized(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        out: QuantOut<'_>,
        positions: Positions<'_>,
    ) -> Result<()> {
        let quant = Some(out);
        let extra = Extra {
            quant,
            ..Extra::default()
        };
        self.encode_views_with(ctx, encoder, x, None, None, extra, positions)
    }

    /// [`Rope::encode`], submitted and waited for.
    pub fn run(&self, ctx: &Context, x: &Tensor, positions: Positions<'_>) -> Result<()> {
        self.plan(ctx, x, None, None, positions)?;
        ctx.submit_and_wait(OP, |enc| {
            self.encode_views(ctx, enc, x, None, None, positions)
        })
    }

    /// [`Rope::encode_to`], submitted and waited for.
    pub fn run_to(
        &self,
        ctx: &Context,
        x: &Tensor,
        out: &Tensor,
        positions: Positions<'_>,
    ) -> Result<()> {
        self.plan(ctx, x, None, Some(out), positions)?;
        ctx.submit_and_wait(OP, |enc| {
            self.encode_views(ctx, enc, x, None, Some(out), positions)
        })
    }

    /// [`Rope::encode_norm`], submitted and waited for.
    pub fn run_norm(
        &self,
        ctx: &Context,
        x: &Tensor,
        norm: &HeadNorm,
        positions: Positions<'_>,
    ) -> Result<()> {
        ctx.submit_and_wait(OP, |enc| self.encode_norm(ctx, enc, x, norm, positions))
    }

    /// [`Rope::encode_qk_norm`], submitted and waited for.
    pub fn run_qk_norm(
        &self,
        ctx: &Context,
        q: &Tensor,
        k: &Tensor,
        q_norm: Option<&HeadNorm>,
        k_norm: Option<&HeadNorm>,
        positions: Positions<'_>,
    ) -> Result<()> {
        ctx.submit_and_wait(OP, |enc| {
            self.encode_qk_norm(ctx, enc, q, k, q_norm, k_norm, positions)
        })
    }

    /// [`Rope::encode_qk`], submitted and waited for.
    pub fn run_qk(
        &self,
        ctx: &Context,
        q: &Tensor,
        k: &Tensor,
        positions: Positions<'_>,
    ) -> Result<()> {
        ctx.submit_and_wait(OP, |enc| self.encode_qk(ctx, enc, q, k, positions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Shader;

    /// Member offsets and sizes of the WGSL structs, as naga lays them out.
    fn wgsl_struct(name: &str) -> (Vec<(String, u32)>, u32) {
        let module = naga::front::wgsl::parse_str(&Shader::ROPE.source()).unwrap();
        for (_, ty) in module.types.iter() {
            if ty.name.as_deref() == Some(name) {
                if let naga::TypeInner::Struct { members, span } = &ty.inner {
                    return (
                        members
                            .iter()
                            .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
                            .collect(),
                        *span,
                    );
                }
            }
        }
        panic!("no struct {name} in rope.wgsl");
    }

    #[test]
    fn params_match_the_wgsl_structs() {
        let (members, span) = wgsl_struct("Params");
        assert_eq!(span as usize, std::mem::size_of::<Params>());
        // Every member is a 4-byte scalar, declared in the same order as the Rust fields.
        let rust = [
            std::mem::offset_of!(Params, n_tokens),
            std::mem::offset_of!(Params, a_off),
            std::mem::offset_of!(Params, b_heads),
            std::mem::offset_of!(Params, o_off),
            std::mem::offset_of!(Params, pos_start),
            std::mem::offset_of!(Params, scale),
            std::mem::offset_of!(Params, flags),
            std::mem::offset_of!(Params, rows_off),
            std::mem::offset_of!(Params, pos_rstride),
            std::mem::offset_of!(Params, eps_a),
            std::mem::offset_of!(Params, wb_off),
            std::mem::offset_of!(Params, q_page_elems),
            std::mem::offset_of!(Params, q_scale),
        ];
        for (name, off) in [
            "n_tokens",
            "a_off",
            "b_heads",
            "o_off",
            "pos_start",
            "scale",
            "flags",
            "rows_off",
            "pos_rstride",
            "eps_a",
            "wb_off",
            "q_page_elems",
            "q_scale",
        ]
        .iter()
        .zip(rust)
        {
            let m = members.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(m.1 as usize, off, "Params.{name}");
        }
        assert_eq!(members.len() * 4, std::mem::size_of::<Params>());
        let (fm, fspan) = wgsl_struct("Freq");
        assert_eq!(fspan as usize, std::mem::size_of::<Freq>());
        assert_eq!(fm[2].1 as usize, std::mem::offset_of!(Freq, inv_freq));
    }

    #[test]
    fn params_layout_is_16_byte_padded() {
        assert_eq!(std::mem::size_of::<Params>() % 16, 0);
        assert_eq!(std::mem::size_of::<Params>(), 176);
        assert_eq!(std::mem::size_of::<Freq>(), 16);
    }
}
