//! GQA attention: FlashAttention-2 style prefill and split-KV ("flash-decoding") decode.
//!
//! ```text
//! out[b, t, h] = softmax_j(softcap(scale · q[b, t, h] · k[b, j, h/g]) + mask[t, j]) · v[b, :, h/g]
//! ```
//! with `g = n_heads / n_kv_heads` (1 = MHA, `n_heads` = MQA; Llama-3-8B: 32 over 8).
//!
//! Masking (query `t` sits at position `pos = q_offset + t`; the default `q_offset = kv_len - q_len`
//! aligns the queries bottom-right, so prefill, chunked prefill and decode are one call):
//! - causal (default): key `j` is visible iff `j <= pos`;
//! - sliding window `W > 0`: additionally `j > pos - W` (applied with or without causal); the
//!   same as `window_left = W - 1`;
//! - two-sided windows as FlashAttention's `window_size = (left, right)`: `pos - j <= left` and
//!   `j - pos <= right`, each side optional ([`Attention::window_left`],
//!   [`Attention::window_right`]); with `causal = false` and `left = right = W` this is the
//!   bidirectional sliding window of ModernBERT and EmbeddingGemma (`|pos - j| <= W`);
//! - chunked local attention (Llama 4's `attention_chunk_size` `C`, [`Attention::chunk_size`]):
//!   key `j` is visible only when `j` and `pos` lie in the same chunk, `j / C == pos / C`
//!   (floor division), combined with the other rules;
//! - a row with no visible key outputs exactly 0.
//!
//! Logits: `scale` defaults to `1/sqrt(head_dim)`; softcap `c > 0` maps `s -> c·tanh(s/c)` after
//! scaling (Gemma 2); `sinks: [n_heads]` (f32) adds one logit per head that joins only the softmax
//! denominator (gpt-oss).
//!
//! Layouts: `q`, `out` are `[q_len, n_heads, head_dim]` or `[batch, q_len, n_heads, head_dim]`;
//! `k`, `v` are `[kv_len, n_kv_heads, head_dim]` or `[batch, kv_len, n_kv_heads, head_dim]`. Any
//! strides on the outer dims (so k/v can be views into a [`crate::KvCache`]), the last dim
//! contiguous. q, k, v and out share one storage dtype (f32, f16, bf16); all math is f32.
//! `head_dim` is any multiple of 4 up to 256.
//!
//! Variants, each with its strategy (every pipeline is specialised on dtype, tile size and
//! `head_dim / 4`, so the loops over a head have fixed trip counts and q / acc live in registers):
//! - [`Kind::Prefill`] (`shaders/attention_prefill.wgsl`, FlashAttention-2, Dao 2023): one
//!   workgroup per block of [`PREFILL_WG`] query rows of one (batch, kv head); rows are the g
//!   query heads of the group times the tokens (`r = t·g + i`), so every K/V tile staged in
//!   workgroup memory serves the whole group. Register tiling: each of the
//!   `PREFILL_WG / PREFILL_ROWS_PER_INVOCATION` invocations owns
//!   [`PREFILL_ROWS_PER_INVOCATION`] neighbouring rows (pre-scaled q and f32 accumulators in
//!   private memory), so each K/V element read from workgroup memory feeds that many rows; per
//!   tile the scores come first, then one running-max update and rescale, then P·V. Tiles
//!   outside the union of the block's visible ranges are never loaded, and each row's mask is
//!   one interval computed once. Memory is O(q_len + kv_len): no score matrix exists.
//!   [`Attention::f16_arithmetic`] selects the same kernel with f16 products (its own module,
//!   `SHADER_F16`).
//! - [`Kind::PrefillKeys`] (`attn_prefill_keys` in `shaders/attention_prefill.wgsl`), prefill
//!   for CPU adapters, shaped like the register-tiled matmul that runs fastest on llvmpipe: a
//!   workgroup of [`KEYS_WG`] invocations owns [`PREFILL_KEYS_ROWS`] query rows (q staged once
//!   in workgroup memory, pre-scaled, as f32) and walks [`PREFILL_KEYS_TILE`]-key tiles. For
//!   Q K^T each invocation owns 8 keys (16-byte K loads, 8 4x4 matrix products per 4 head
//!   elements); the softmax is in the log2 domain with the row maxima reduced through
//!   workgroup memory and the accumulators rescaled only when a maximum moves; for P V each
//!   invocation owns a slice of the head (one 16-byte V load per slot and key for 16 rows).
//!   Every per-invocation value is a named vector or matrix indexed by constants: llvmpipe
//!   (Mesa 22.3) keeps a private array in registers only then and, by measurement, does not
//!   unroll these loops (a loop-indexed private array is a memory access per invocation),
//!   and it issues every storage or workgroup-memory load as one access per invocation, so the
//!   count of loads per multiply-add is what this kernel minimises. Split over the keys (past
//!   [`prefill_keys_loop_cap_keys`], or a forced [`Attention::splits`]) the same pipeline writes
//!   partials for `attn_prefill_merge`. Needs 16-byte aligned K/V rows ([`kv_rows_aligned`]) and
//!   [`prefill_keys_workgroup_bytes`] of workgroup memory; GPUs keep [`Kind::Prefill`].
//! - [`Kind::Decode`] (`shaders/attention_decode.wgsl`, flash-decoding): the same rows, in blocks
//!   of a power of two <= [`DECODE_WG`]; spare invocations of a workgroup become key lanes (lane
//!   `l` takes keys `l, l + lanes, ...` of each tile). kv_len is split into chunks over
//!   workgroups; each K/V row of a chunk is read once per kv head and shared by the g query heads.
//!   Every (row, split, lane) writes a partial (m, l, acc); a second pass merges them in that fixed
//!   order, so results are bitwise repeatable. Empty chunks write (-3e38, 0, 0) and add nothing.
//! - [`Kind::DecodeKeys`] (`attn_decode_keys` in `shaders/attention_decode.wgsl`, its key-lane
//!   step `keys_partial` in `shaders/attention_keys.wgsl`, shared with the paged kernel's
//!   `attn_paged_keys`), decode for CPU adapters: each of the [`KEYS_WG`] invocations of a workgroup owns whole keys (`lane`,
//!   `lane + 8`, ... of the split's chunk), reads each K/V row once with 16-byte loads (8 halves
//!   or 4 f32 per load) and uses it for all `kr` (<= [`KEYS_MAX_ROWS`]) query rows of the
//!   workgroup's row block, so a GQA group shares every load. No workgroup memory, no barriers;
//!   every (row, split, lane) writes a partial, merged by the same fixed-order pass as Decode.
//!   Why: llvmpipe (Mesa 22.3) runs 8 invocations per SIMD vector and issues every load as one
//!   scalar access per invocation (also for workgroup-uniform addresses and workgroup memory),
//!   while a 16-byte load costs about as much as a 4-byte one; so the count of load
//!   instructions per invocation is what costs, and Decode's staging in workgroup memory (a
//!   global load, a shared store and one shared load per row for every element) is 5-10x slower
//!   here. Needs 16-byte aligned K/V rows ([`kv_rows_aligned`]).
//! - [`Kind::DecodeSubgroup`] (`attn_decode_sg` in `shaders/attention_decode_subgroup.wgsl`, a
//!   module of its own: subgroup operations fail validation without `SUBGROUP`), decode for
//!   GPUs, after flash-decoding and FlashInfer's decode kernel: one workgroup of [`SG_WG`]
//!   invocations per (batch, kv head, row block, split), up to [`SG_MAX_ROWS`] rows of the GQA
//!   group per workgroup; the lanes of a subgroup split head_dim (vec4 slots `lane + size·i`,
//!   coalesced 16-byte pieces of each K/V row), score 4 keys at a time with a partial dot per
//!   lane and one `subgroupAdd` per row, and use every K/V row they load for all rows of the
//!   group. The key lanes are `SG_WG / subgroup_min_size` fixed virtual subgroups, each with its
//!   own partial, so the fixed-order merge sees the same partials whatever subgroup size the
//!   device runs. Only the adapter's smallest subgroup size is assumed. On devices with
//!   `SHADER_F16`, f16 K/V with 16-byte aligned rows are read natively
//!   ([`ATTENTION_DECODE_SUBGROUP_F16`], [`Attention::native_f16`]): widened by the hardware
//!   instead of the integer decode, which at about fourteen integer ops per value would bound
//!   an f16 decode by ALU rather than memory on a GPU; the bits are the same. The paged
//!   subgroup decode keeps the integer decode.
//! - Prefill on CPU adapters (llvmpipe) with more keys than one invocation may loop over
//!   ([`loop_cap_keys`]): the same kernel over chunks of the keys (`attn_prefill_partial`),
//!   writing partials that `attn_prefill_merge` combines in a fixed order, as decode's do.
//!
//! Choice ([`default_kind`]), unless forced with [`Attention::kind`]: prefill iff
//! `q_len > DECODE_MAX_Q_LEN` (8), PrefillKeys on CPU adapters when K/V rows are 16-byte aligned
//! (and neither `f16_arithmetic` nor a small workgroup memory rules it out), Prefill elsewhere;
//! otherwise DecodeKeys on CPU adapters when K/V rows are
//! 16-byte aligned, DecodeSubgroup on other adapters with `SUBGROUP`
//! ([`subgroup_decode_wanted`]), Decode elsewhere (DecodeSubgroup splits like Decode). DecodeKeys takes `kr = min(next_pow2(q_len * g), 4)` rows
//! per workgroup and aims at [`KEYS_TARGET_WORKGROUPS`] (32) workgroups with chunks of at least
//! [`KEYS_MIN_CHUNK`] (512) keys, and at least what [`keys_loop_cap_keys`] needs.
//! The Decode split count aims at [`DECODE_TARGET_WORKGROUPS`] (512) workgroups with chunks of at
//! least [`DECODE_MIN_CHUNK`] (64) keys, so kv_len <= 64 uses one split and one token over 32k
//! keys with Llama-3-8B's 8 kv heads gets 64 splits of 512 keys; force it with
//! [`Attention::splits`]. K/V tiles hold `bk = min(64, TILE_V4 / (head_dim / 4))` keys, where
//! `TILE_V4` (vec4s per tile) is the largest power of two with both f32 tiles inside the device's
//! `max_compute_workgroup_storage_size` (capped at 32 KiB): 32 KiB gives bk 32 at head_dim 128,
//! WebGPU's default 16 KiB gives 16 (8 at head_dim 256). [`Attention::plan`] reports the choice.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{PipelineKey, Shader, Window};
use crate::tensor::{DType, Tensor};

const OP: &str = "attention";

/// Rows per prefill workgroup.
pub const PREFILL_WG: u32 = 64;
/// Query rows each prefill invocation computes (register tiling): a workgroup has
/// `PREFILL_WG / PREFILL_ROWS_PER_INVOCATION` invocations.
pub const PREFILL_ROWS_PER_INVOCATION: u32 = 4;
/// Rows per decode workgroup (and invocations per merge workgroup).
pub const DECODE_WG: u32 = 32;
/// The dispatcher uses the decode kernel for `q_len <= DECODE_MAX_Q_LEN`.
pub const DECODE_MAX_Q_LEN: usize = 8;
/// Decode aims at this many workgroups (a single token at kv_len 32k over 8 kv heads gets 64
/// splits of 512 keys).
pub const DECODE_TARGET_WORKGROUPS: usize = 512;
/// Decode chunks hold at least this many keys.
pub const DECODE_MIN_CHUNK: usize = 64;
/// Key lanes per workgroup of [`Kind::DecodeKeys`]: llvmpipe's SIMD width (8 f32 at 256 bits).
pub const KEYS_WG: u32 = 8;
/// Most query rows one [`Kind::DecodeKeys`] invocation computes (more rows take more row blocks).
pub const KEYS_MAX_ROWS: usize = 4;
/// [`Kind::DecodeKeys`] aims at this many workgroups (a few per CPU core, for load balance),
/// with chunks of at least [`KEYS_MIN_CHUNK`] keys.
pub const KEYS_TARGET_WORKGROUPS: usize = 32;
/// [`Kind::DecodeKeys`] chunks hold at least this many keys (fewer partials to merge).
pub const KEYS_MIN_CHUNK: usize = 512;
/// Query rows per [`Kind::PrefillKeys`] workgroup (its [`KEYS_WG`] invocations share them).
pub const PREFILL_KEYS_ROWS: usize = 16;
/// Keys per [`Kind::PrefillKeys`] tile (8 per invocation).
pub const PREFILL_KEYS_TILE: usize = 64;
/// Largest supported head_dim.
pub const MAX_HEAD_DIM: usize = 256;
const MAX_BK: usize = 64;

/// Which kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Tiled prefill (FlashAttention-2 style), for more than [`DECODE_MAX_Q_LEN`] query rows.
    Prefill,
    /// Prefill for CPU adapters (`attn_prefill_keys`): 8 invocations per workgroup own 16 query
    /// rows; for Q K^T each invocation owns 8 keys of a 64-key tile, for P V a slice of the head,
    /// every per-invocation value a named register (see [`PREFILL_KEYS_ROWS`]).
    PrefillKeys,
    /// Split-KV decode with a merge pass, a workgroup per (batch, kv head, split).
    Decode,
    /// Decode for CPU adapters (`attn_decode_keys`): each invocation owns whole keys, reads
    /// their K/V rows once with 16-byte loads and serves all rows of the group with them.
    DecodeKeys,
    /// Decode for GPUs with `SUBGROUP` (`attn_decode_sg`): the lanes of a subgroup split
    /// head_dim, finish each score with `subgroupAdd`, and share every K/V row they load across
    /// the GQA group's query rows.
    DecodeSubgroup,
}

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
    /// Force a kernel instead of choosing by shape.
    pub kind: Option<Kind>,
    /// Force the decode split count. Honoured exactly (chunks past kv_len are empty and
    /// contribute nothing), except that on CPU adapters it is raised to what
    /// [`loop_cap_keys`] needs. Honoured the same way by [`Kind::PrefillKeys`]; ignored by
    /// [`Kind::Prefill`].
    pub splits: Option<u32>,
    /// Opt-in half-precision arithmetic for [`Kind::Prefill`] (ignored by the other kernels; on
    /// CPU adapters it makes the default prefill [`Kind::Prefill`] instead of
    /// [`Kind::PrefillKeys`]):
    /// q, the K/V tiles and the products q·k and p·v in `f16` (WGSL `enable f16`), the scores,
    /// the softmax and the output accumulator in f32, as FlashAttention-2 feeds half inputs to
    /// its matmuls. Needs `wgpu::Features::SHADER_F16` on the device ([`Context::new`] requests
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
            kind: None,
            splits: None,
            f16_arithmetic: false,
            native_f16: None,
        }
    }
}

/// Uniform parameters; mirrors `struct Params` in both attention shaders (160 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Batch size.
    pub batch: u32,
    /// Query rows per sequence.
    pub q_len: u32,
    /// Key/value rows per sequence.
    pub kv_len: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Query heads per key/value head.
    pub group: u32,
    /// Query rows per (batch, kv head): `q_len * group`.
    pub rows: u32,
    /// q: element offset, batch, token and head strides.
    pub q: [u32; 4],
    /// k: element offset, batch, token and head strides.
    pub k: [u32; 4],
    /// v: element offset, batch, token and head strides.
    pub v: [u32; 4],
    /// out: element offset, batch, token and head strides.
    pub o: [u32; 4],
    /// Position of query 0.
    pub q_offset: i32,
    /// Keys with `pos - j > win_left` are masked (-1 = no left bound).
    pub win_left: i32,
    /// 1 for a causal mask.
    pub causal: u32,
    /// 1 when sinks are bound.
    pub has_sinks: u32,
    /// Logit scale.
    pub scale: f32,
    /// Logit softcap (0 = none).
    pub softcap: f32,
    /// Element offset of the sinks.
    pub s_off: u32,
    /// Keys per K/V tile.
    pub bk: u32,
    /// Workgroups per (batch, kv head, split).
    pub row_blocks: u32,
    /// Key chunks (split-KV).
    pub n_splits: u32,
    /// Keys per chunk.
    pub chunk: u32,
    /// Query rows per workgroup.
    pub rows_per_wg: u32,
    /// Invocations that share a row (split-KV).
    pub lanes: u32,
    /// Keys with `j - pos > win_right` are masked (-1 = no right bound).
    pub win_right: i32,
    /// Chunked local attention: chunk size in positions (0 = none).
    pub attn_chunk: u32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// The code-shaping decisions; the pipeline keys derive from it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Which kernel.
    pub kind: Kind,
    /// Storage dtype of q, k, v and out.
    pub dtype: DType,
    /// vec4 capacity of each of the K and V workgroup tiles.
    pub tile_v4: u32,
    /// `head_dim / 4` (loops over a head get a fixed trip count).
    pub hd4: u32,
    /// Partial results per kv chunk and a merge pass (always for decode; for prefill only when
    /// one invocation may not loop over all keys, see [`loop_cap_keys`]).
    pub split_kv: bool,
    /// [`Kind::DecodeKeys`]: query rows per workgroup (1, 2 or 4); [`Kind::DecodeSubgroup`]:
    /// the same (1, 2, 4 or 8); 1 for the other kinds.
    pub kr: u32,
    /// [`Kind::Prefill`]: f16 arithmetic ([`Attention::f16_arithmetic`], the
    /// [`ATTENTION_PREFILL_F16`] module); false for the other kinds.
    pub f16: bool,
    /// [`Kind::DecodeSubgroup`]: the adapter's smallest subgroup size (lanes per head slice and
    /// key lanes derive from it); 0 for the other kinds.
    pub sg_min: u32,
    /// [`Kind::DecodeSubgroup`] over f16 K/V: read them natively ([`Attention::native_f16`], the
    /// [`ATTENTION_DECODE_SUBGROUP_F16`] module); false otherwise.
    pub native_f16: bool,
}

/// One prefill module: `shaders/attention_prefill.wgsl` with its arithmetic type and the size of
/// the per-invocation q and accumulator arrays (4 rows x the head_dim class / 4 vec4s).
macro_rules! prefill_module {
    ($name:literal, $enable:literal, $ht:literal, $max_q:literal, $variants:expr) => {
        &Shader {
            name: $name,
            parts: &[
                $enable,
                crate::pipeline::COMMON_WGSL,
                crate::pipeline::ATTENTION_COMMON_WGSL,
                crate::pipeline::ATTENTION_SPLIT_WGSL,
                concat!("// The prefill's arithmetic type.\nalias ht = ", $ht, ";"),
                concat!("const MAX_Q: u32 = ", $max_q, "u;"),
                include_str!("../../shaders/attention_prefill.wgsl"),
            ],
            variants: $variants,
        }
    };
}

/// `shaders/attention_prefill.wgsl` with f16 arithmetic: a module of its own, because a module
/// with `enable f16` fails validation on devices without `SHADER_F16` (head_dim up to 256).
pub const ATTENTION_PREFILL_F16: &Shader = prefill_module!(
    "attention_prefill_f16.wgsl",
    "enable f16;",
    "f16",
    256,
    || keys_of(ATTENTION_PREFILL_F16)
);
/// The prefill for head_dim up to 64 (private arrays a quarter of the 256 class's). The prefill
/// keeps 4 rows of q and of the accumulator per invocation in private arrays whose size is a
/// constant of the module, and lavapipe's LLVM compile time grows with them (a head_dim-16 test
/// compiled in half the time with arrays sized for 64 instead of 256), so each head_dim class
/// has its own module ([`prefill_shader`]).
pub const ATTENTION_PREFILL_HD64: &Shader =
    prefill_module!("attention_prefill_hd64.wgsl", "", "f32", 64, || keys_of(
        ATTENTION_PREFILL_HD64
    ));
/// The prefill for head_dim up to 128.
pub const ATTENTION_PREFILL_HD128: &Shader =
    prefill_module!("attention_prefill_hd128.wgsl", "", "f32", 128, || keys_of(
        ATTENTION_PREFILL_HD128
    ));
/// The f16-arithmetic prefill for head_dim up to 64.
pub const ATTENTION_PREFILL_F16_HD64: &Shader = prefill_module!(
    "attention_prefill_f16_hd64.wgsl",
    "enable f16;",
    "f16",
    64,
    || keys_of(ATTENTION_PREFILL_F16_HD64)
);
/// The f16-arithmetic prefill for head_dim up to 128.
pub const ATTENTION_PREFILL_F16_HD128: &Shader = prefill_module!(
    "attention_prefill_f16_hd128.wgsl",
    "enable f16;",
    "f16",
    128,
    || keys_of(ATTENTION_PREFILL_F16_HD128)
);

/// The prefill module for `hd4` (head_dim / 4) with f16 or f32 arithmetic: the smallest head_dim
/// class that holds it.
pub fn prefill_shader(hd4: u32, f16: bool) -> &'static Shader {
    match (f16, hd4) {
        (false, 0..=16) => ATTENTION_PREFILL_HD64,
        (false, 17..=32) => ATTENTION_PREFILL_HD128,
        (false, _) => Shader::ATTENTION_PREFILL,
        (true, 0..=16) => ATTENTION_PREFILL_F16_HD64,
        (true, 17..=32) => ATTENTION_PREFILL_F16_HD128,
        (true, _) => ATTENTION_PREFILL_F16,
    }
}

/// `shader`'s share of [`all_variant_keys`].
fn keys_of(shader: &Shader) -> Vec<PipelineKey> {
    all_variant_keys()
        .into_iter()
        .filter(|k| k.shader == shader)
        .collect()
}

impl Variant {
    fn wg(&self) -> u32 {
        match self.kind {
            Kind::Prefill => PREFILL_WG / PREFILL_ROWS_PER_INVOCATION,
            Kind::PrefillKeys => KEYS_WG,
            Kind::Decode => DECODE_WG,
            Kind::DecodeKeys => KEYS_WG,
            Kind::DecodeSubgroup => SG_WG,
        }
    }
    /// [`Kind::DecodeSubgroup`]: vec4 slots of a head per lane and key lanes per workgroup.
    fn sg_shape(&self) -> (u32, u32) {
        sg_shape(self.hd4, self.sg_min)
    }
    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("DTYPE", self.dtype.shader_code()),
            ("WG", self.wg()),
            ("TILE_V4", self.tile_v4),
            ("HD4", self.hd4),
        ]
    }

    /// The pipeline keys of this variant: one for prefill, partial and merge for decode.
    pub fn keys(&self) -> Vec<PipelineKey> {
        if self.kind == Kind::DecodeSubgroup {
            let (slots, nsg) = self.sg_shape();
            let mut c = self.constants();
            c.extend([("RS", self.kr), ("SLOTS", slots), ("NSG", nsg)]);
            let module = if self.native_f16 {
                ATTENTION_DECODE_SUBGROUP_F16
            } else {
                ATTENTION_DECODE_SUBGROUP
            };
            return vec![
                PipelineKey::new(module, "attn_decode_sg", c),
                PipelineKey::new(
                    Shader::ATTENTION_DECODE,
                    "attn_decode_merge",
                    self.constants(),
                ),
            ];
        }
        if self.kind == Kind::DecodeKeys {
            let mut c = self.constants();
            c.push(("KR", self.kr));
            return vec![
                PipelineKey::new(Shader::ATTENTION_DECODE, "attn_decode_keys", c),
                PipelineKey::new(
                    Shader::ATTENTION_DECODE,
                    "attn_decode_merge",
                    self.constants(),
                ),
            ];
        }
        if matches!(self.kind, Kind::Prefill | Kind::PrefillKeys) {
            let shader = prefill_shader(self.hd4, self.f16);
            let mut c = self.constants();
            c.push(("PR", PREFILL_ROWS_PER_INVOCATION));
            // The merge runs one invocation per 4 output elements, PREFILL_WG per workgroup; both
            // prefill kinds share it.
            let m = c
                .iter()
                .map(|&(n, v)| if n == "WG" { (n, PREFILL_WG) } else { (n, v) })
                .collect();
            if self.kind == Kind::PrefillKeys {
                // One pipeline writes the output or, split over the keys, the partials (chosen
                // by the split count at run time).
                let main = PipelineKey::new(shader, "attn_prefill_keys", c);
                return match self.split_kv {
                    false => vec![main],
                    true => vec![main, PipelineKey::new(shader, "attn_prefill_merge", m)],
                };
            }
            if !self.split_kv {
                return vec![PipelineKey::new(shader, "attn_prefill", c)];
            }
            return vec![
                PipelineKey::new(shader, "attn_prefill_partial", c),
                PipelineKey::new(shader, "attn_prefill_merge", m),
            ];
        }
        // Decode always splits over the keys.
        vec![
            PipelineKey::new(
                Shader::ATTENTION_DECODE,
                "attn_decode_partial",
                self.constants(),
            ),
            PipelineKey::new(
                Shader::ATTENTION_DECODE,
                "attn_decode_merge",
                self.constants(),
            ),
        ]
    }
}

/// vec4s per K (and per V) tile for a device with `limit` bytes of workgroup memory: the largest
/// power of two with both tiles within `min(limit, 32 KiB)`.
pub fn tile_v4_for(limit: u32) -> u32 {
    let per_tile = (limit.min(32768) / 2 / 16).max(1);
    1 << (31 - per_tile.leading_zeros())
}

/// The prefill shader's (head_dim class 256) share of [`all_variant_keys`].
pub fn prefill_variant_keys() -> Vec<PipelineKey> {
    keys_of(Shader::ATTENTION_PREFILL)
}

/// The decode shader's share of [`all_variant_keys`].
pub fn decode_variant_keys() -> Vec<PipelineKey> {
    all_variant_keys()
        .into_iter()
        .filter(|k| k.shader == Shader::ATTENTION_DECODE)
        .collect()
}

/// Pipeline keys for the portability tests: every kind, dtype and tile size (16 KiB and 32 KiB of
/// workgroup memory) at the head_dims of real models (64, 80, 96, 128, 256), plus every other
/// head_dim (4 ..= 256 in steps of 4) for one dtype and tile size. `head_dim` only changes loop
/// trip counts, so the second set covers the rest of what the dispatcher can produce.
pub fn all_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    let kinds = [
        (Kind::Prefill, false),
        (Kind::Prefill, true),
        (Kind::PrefillKeys, false),
        (Kind::PrefillKeys, true),
        (Kind::Decode, true),
        (Kind::DecodeKeys, true),
    ];
    for (kind, split_kv) in kinds {
        for dtype in DType::ALL {
            for limit in [16384, 32768] {
                for hd in [64u32, 80, 96, 128, 256] {
                    keys.extend(
                        Variant {
                            kind,
                            dtype,
                            tile_v4: tile_v4_for(limit),
                            hd4: hd / 4,
                            split_kv,
                            kr: 1,
                            f16: false,
                            native_f16: false,
                            sg_min: 0,
                        }
                        .keys(),
                    );
                    if kind == Kind::DecodeKeys {
                        for kr in [2, 4] {
                            keys.extend(
                                Variant {
                                    kind,
                                    dtype,
                                    tile_v4: tile_v4_for(limit),
                                    hd4: hd / 4,
                                    split_kv,
                                    kr,
                                    f16: false,
                                    native_f16: false,
                                    sg_min: 0,
                                }
                                .keys(),
                            );
                        }
                    }
                }
            }
        }
        if kind == Kind::DecodeKeys {
            keys.extend(subgroup_variant_keys());
        }
        for hd4 in 1..=(MAX_HEAD_DIM as u32 / 4) {
            if [16, 20, 24, 32, 64].contains(&hd4) {
                continue;
            }
            keys.extend(
                Variant {
                    kind,
                    dtype: DType::F16,
                    tile_v4: tile_v4_for(32768),
                    hd4,
                    split_kv,
                    kr: 1,
                    f16: false,
                    native_f16: false,
                    sg_min: 0,
                }
                .keys(),
            );
        }
    }
    // The f16-arithmetic prefill: every dtype, tile size and split mode at real head_dims, and
    // every head_dim for one dtype and tile size.
    for split_kv in [false, true] {
        for dtype in DType::ALL {
            for limit in [16384, 32768] {
                for hd4 in 1..=(MAX_HEAD_DIM as u32 / 4) {
                    let real = [16, 20, 24, 32, 64].contains(&hd4);
                    if !real && (dtype != DType::F16 || limit != 32768) {
                        continue;
                    }
                    keys.extend(
                        Variant {
                            kind: Kind::Prefill,
                            dtype,
                            tile_v4: tile_v4_for(limit),
                            hd4,
                            split_kv,
                            kr: 1,
                            f16: true,
                            native_f16: false,
                            sg_min: 0,
                        }
                        .keys(),
                    );
                }
            }
        }
    }
    keys
}

/// Every pipeline key of [`Kind::DecodeSubgroup`]: every dtype at the head_dims of real models,
/// for the smallest subgroups of lavapipe and Intel (8) and of NVIDIA and AMD RDNA (32), every row
/// count the planner can pick; and for WARP's 4 at head_dim 128 in f32.
pub fn subgroup_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    let mut add = |dtype, hd4: u32, sg_min: u32| {
        for kr in [1, 2, 4, 8] {
            if kr <= sg_rows_max(hd4, sg_min) {
                let v = Variant {
                    kind: Kind::DecodeSubgroup,
                    dtype,
                    tile_v4: tile_v4_for(16384),
                    hd4,
                    split_kv: true,
                    kr,
                    sg_min,
                    f16: false,
                    native_f16: false,
                };
                keys.extend(v.keys());
            }
        }
    };
    for dtype in DType::ALL {
        for hd in [64u32, 80, 96, 128, 256] {
            for sg_min in [8, 32] {
                add(dtype, hd / 4, sg_min);
            }
        }
    }
    add(DType::F32, 32, 4);
    // Native f16 reads (GPUs with SHADER_F16): every row count at the common head_dims.
    for hd in [64u32, 128, 256] {
        for sg_min in [8, 32] {
            for kr in [1, 2, 4, 8] {
                if kr <= sg_rows_max(hd / 4, sg_min) {
                    let v = Variant {
                        kind: Kind::DecodeSubgroup,
                        dtype: DType::F16,
                        tile_v4: tile_v4_for(16384),
                        hd4: hd / 4,
                        split_kv: true,
                        kr,
                        sg_min,
                        f16: false,
                        native_f16: true,
                    };
                    keys.extend(v.keys());
                }
            }
        }
    }
    keys
}

/// One contiguous subgroup-decode module: `shaders/attention_decode.wgsl` with the subgroup
/// step and entry point, its K/V reads (`sg_load4`) given by `$reads` after the `$enable` line.
macro_rules! subgroup_decode_module {
    ($name:literal, $enable:literal, $reads:expr, $this:ident) => {
        &Shader {
            name: $name,
            parts: &[
                $enable,
                crate::pipeline::COMMON_WGSL,
                crate::pipeline::ATTENTION_COMMON_WGSL,
                crate::pipeline::ATTENTION_SPLIT_WGSL,
                crate::pipeline::ATTENTION_KEYS_WGSL,
                include_str!("../../shaders/attention_decode.wgsl"),
                crate::pipeline::ATTENTION_SUBGROUP_WGSL,
                $reads,
                include_str!("../../shaders/attention_decode_subgroup.wgsl"),
            ],
            variants: || {
                subgroup_variant_keys()
                    .into_iter()
                    .filter(|k| k.shader == $this)
                    .collect()
            },
        }
    };
}

/// `shaders/attention_decode.wgsl` with the subgroup decode entry point
/// (`shaders/attention_decode_subgroup.wgsl`, [`Kind::DecodeSubgroup`]): a module of its own,
/// because a module that uses subgroup operations anywhere fails validation on devices without
/// `SUBGROUP`. K/V are read through the packed words (`load4`, the integer decode of
/// common.wgsl).
pub const ATTENTION_DECODE_SUBGROUP: &Shader = subgroup_decode_module!(
    "attention_decode_subgroup.wgsl",
    "",
    "fn sg_load4(src: u32, e: u32) -> vec4<f32> {
    return load4(src, e);
}",
    ATTENTION_DECODE_SUBGROUP
);

/// [`ATTENTION_DECODE_SUBGROUP`] reading f16 K/V natively
/// (`shaders/attention_subgroup_f16.wgsl`, `enable f16`; [`Attention::native_f16`]).
pub const ATTENTION_DECODE_SUBGROUP_F16: &Shader = subgroup_decode_module!(
    "attention_decode_subgroup_f16.wgsl",
    "enable f16;",
    include_str!("../../shaders/attention_subgroup_f16.wgsl"),
    ATTENTION_DECODE_SUBGROUP_F16
);

/// Invocations per [`Kind::DecodeSubgroup`] workgroup.
pub const SG_WG: u32 = 64;
/// Most query rows per [`Kind::DecodeSubgroup`] workgroup.
pub const SG_MAX_ROWS: usize = 8;
// Registers per lane the subgroup kernel holds for q rows (MAX_SG_REGS in the shader).
const SG_MAX_REGS: u32 = 64;

/// Most rows per [`Kind::DecodeSubgroup`] workgroup at `hd4` with subgroups of at least
/// `sg_min` lanes: [`SG_MAX_ROWS`], fewer where the rows' slots would pass the shader's
/// register arrays.
pub fn sg_rows_max(hd4: u32, sg_min: u32) -> u32 {
    let slots = hd4.div_ceil(sg_min.max(4));
    let fit = SG_MAX_REGS / slots;
    (1u32 << (31 - fit.leading_zeros())).min(SG_MAX_ROWS as u32)
}

/// True when decode on this adapter takes [`Kind::DecodeSubgroup`] where it would take
/// [`Kind::Decode`]: the device has `SUBGROUP` and is not a CPU adapter (llvmpipe's
/// `subgroupAdd` is slower than its alternatives, BENCHMARKS.md).
pub fn subgroup_decode_wanted(ctx: &Context) -> bool {
    ctx.caps().subgroups && ctx.adapter_info().device_type != wgpu::DeviceType::Cpu
}

/// Keys one [`Kind::DecodeSubgroup`] split may hold on this adapter, if limited (see
/// [`loop_cap_keys`]): per block of 4 keys of a key lane, the K and V loops (4 keys x `slots` x
/// (1 + rows)) and the softmax loop per row, counted as if the compiler unrolled nothing;
/// every key lane runs on its own subgroup on CPU adapters (the smallest subgroup is the only
/// one there).
fn sg_loop_cap_keys(ctx: &Context, v: &Variant) -> Option<usize> {
    sg_cap_keys(ctx, v.hd4, v.sg_min, v.kr)
}

/// [`Kind::DecodeSubgroup`]'s (vec4 slots of a head per lane, key lanes per workgroup) at `hd4`
/// with subgroups of at least `sg_min` lanes.
pub(crate) fn sg_shape(hd4: u32, sg_min: u32) -> (u32, u32) {
    let min = sg_min.max(4);
    (hd4.div_ceil(min), (SG_WG / min).max(1))
}

/// `sg_loop_cap_keys` for `rs` rows per workgroup at `hd4`, subgroups of at least `sg_min`.
pub(crate) fn sg_cap_keys(ctx: &Context, hd4: u32, sg_min: u32, rs: u32) -> Option<usize> {
    if ctx.adapter_info().device_type != wgpu::DeviceType::Cpu {
        return None;
    }
    let (slots, nsg) = sg_shape(hd4, sg_min);
    let (slots, nsg, rs) = (slots as usize, nsg as usize, rs as usize);
    let per_block = 2 + rs + 8 * (1 + slots * (1 + rs)) + rs * (1 + slots);
    Some(4 * nsg * (45_000 / per_block))
}

/// Keys one invocation may loop over on this adapter, if limited. llvmpipe (lavapipe) stops
/// every loop of an invocation once all its loops together have iterated 65535 times, so on CPU
/// adapters chunks are kept below that, counting the loop trips per key as if the compiler
/// unrolled none of the head_dim loops; other adapters have no such cap.
pub fn loop_cap_keys(ctx: &Context, head_dim: usize) -> Option<usize> {
    if ctx.adapter_info().device_type != wgpu::DeviceType::Cpu {
        return None;
    }
    let hd4 = head_dim / 4;
    let per_key = 4 + 2 * hd4 + hd4.div_ceil(PREFILL_WG as usize);
    Some(50_000 / per_key)
}

/// Keys one [`Kind::PrefillKeys`] workgroup may loop over on this adapter, if limited (see
/// [`loop_cap_keys`]): per tile of [`PREFILL_KEYS_TILE`] keys, the tile loop, the Q K^T loop
/// over the head, the reduction over the 8 lanes and the P V loop over the tile's keys; the q
/// staging and the bounds and store loops are taken off the budget.
pub fn prefill_keys_loop_cap_keys(ctx: &Context, head_dim: usize) -> Option<usize> {
    if ctx.adapter_info().device_type != wgpu::DeviceType::Cpu {
        return None;
    }
    let hd4 = head_dim / 4;
    let per_tile = 1 + hd4 + KEYS_WG as usize + PREFILL_KEYS_TILE;
    Some((50_000 - 2 * hd4 - 64) / per_tile * PREFILL_KEYS_TILE)
}

/// Workgroup memory of [`Kind::PrefillKeys`] at `hd4` (head_dim / 4): the staged q rows of its
/// head_dim class ([`prefill_shader`]), the lanes' row maxima and P^T of a tile.
pub fn prefill_keys_workgroup_bytes(hd4: u32) -> u32 {
    let class_hd4 = match hd4 {
        0..=16 => 16,
        17..=32 => 32,
        _ => 64,
    };
    (PREFILL_KEYS_ROWS as u32 * class_hd4 + 32 + 256) * 16
}

/// Keys one [`Kind::DecodeKeys`] workgroup (all [`KEYS_WG`] lanes) may loop over on this adapter
/// with `kr` rows per workgroup, if limited (see [`loop_cap_keys`]): the key loop is the only loop
/// inside the key-lane step (its head_dim work is written out, `shaders/attention_keys.wgsl`), one
/// trip per step of 2 keys of a lane; the q load and partial store loops (head_dim / 4 trips per
/// row) are taken off the budget.
pub fn keys_loop_cap_keys(ctx: &Context, head_dim: usize, kr: usize) -> Option<usize> {
    if ctx.adapter_info().device_type != wgpu::DeviceType::Cpu {
        return None;
    }
    let hd4 = head_dim / 4;
    Some((50_000 - 2 * kr * (hd4 + 1)) * 2 * KEYS_WG as usize)
}

/// The kernel the dispatcher picks when none is forced: for `q_len > DECODE_MAX_Q_LEN`,
/// [`Kind::PrefillKeys`] on CPU adapters when K and V rows are 16-byte aligned (`kv_aligned`,
/// see [`kv_rows_aligned`]), else [`Kind::Prefill`]; otherwise [`Kind::DecodeKeys`] on CPU
/// adapters with aligned rows, else [`Kind::Decode`]. ([`Attention::plan`] also takes
/// [`Kind::Prefill`] for `f16_arithmetic` and where the device's workgroup memory is too small
/// for [`Kind::PrefillKeys`].)
pub fn default_kind(device_type: wgpu::DeviceType, q_len: usize, kv_aligned: bool) -> Kind {
    if q_len > DECODE_MAX_Q_LEN {
        match device_type == wgpu::DeviceType::Cpu && kv_aligned {
            true => Kind::PrefillKeys,
            false => Kind::Prefill,
        }
    } else if device_type == wgpu::DeviceType::Cpu && kv_aligned {
        Kind::DecodeKeys
    } else {
        Kind::Decode
    }
}

/// Whether every K/V row a kernel reads starts on a 16-byte boundary of its binding window
/// (offset and outer strides in bytes multiples of 16, head_dim times the element size too):
/// what [`Kind::DecodeKeys`] needs for its 16-byte loads.
pub fn kv_rows_aligned(ctx: &Context, k: &Tensor, v: &Tensor) -> bool {
    let align = ctx.limits().min_storage_buffer_offset_alignment.max(4) as usize;
    [k, v].iter().all(|t| {
        let es = t.dtype().size();
        let s = t.strides();
        let n = t.rank();
        let win_start = t.offset() * es / align * align;
        (t.offset() * es - win_start).is_multiple_of(16)
            && (t.shape()[n - 1] * es) % 16 == 0
            && s[..n - 1].iter().all(|&st| (st * es) % 16 == 0)
    })
}

/// What the dispatcher decided for one call (exposed so tests can see the thresholds at work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The code-shaping decisions (the pipeline keys derive from them).
    pub variant: Variant,
    /// Keys per K/V tile.
    pub bk: u32,
    /// Query rows (`q_len * g`) per (batch, kv head).
    pub rows: usize,
    /// Rows per workgroup (a power of two for split-KV) and workgroups per (batch, kv head, split).
    pub rows_per_wg: usize,
    /// Workgroups per (batch, kv head, split) along the rows.
    pub row_blocks: usize,
    /// Key lanes per row (split-KV only): invocations that share a row, each with its own partial.
    pub lanes: usize,
    /// Decode: number of kv chunks and keys per chunk (1 and kv_len for prefill).
    pub splits: usize,
    /// Keys per chunk.
    pub chunk: usize,
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

struct Checked {
    dims: Dims,
    plan: Plan,
    q_offset: i64,
    scale: f32,
    // (left, right) window bounds for the shader (-1 = none).
    bounds: (i32, i32),
    // (offset placeholder, batch stride, token stride, head stride) per tensor.
    strides: [[usize; 3]; 4],
}

/// (batch stride, token stride, head stride) of a rank-3 or rank-4 view.
fn outer_strides(t: &Tensor) -> [usize; 3] {
    let s = t.strides();
    if t.rank() == 4 {
        [if t.shape()[0] == 1 { 0 } else { s[0] }, s[1], s[2]]
    } else {
        [0, s[0], s[1]]
    }
}

impl Attention {
    /// The masking and logit fields of the shaders' parameters (shared by the contiguous and
    /// paged calls); the caller fills in the shapes.
    pub(crate) fn logit_params(
        &self,
        scale: f32,
        bounds: (i32, i32),
        sinks_window: &Option<Window>,
        sinks: Option<&Tensor>,
    ) -> Params {
        Params {
            win_left: bounds.0,
            win_right: bounds.1,
            attn_chunk: self.chunk_size,
            causal: self.causal as u32,
            has_sinks: sinks.is_some() as u32,
            scale,
            softcap: self.softcap,
            s_off: match (sinks_window, sinks) {
                (Some(w), Some(s)) => w.elem_offset(s),
                _ => 0,
            },
            ..Params::default()
        }
    }
}

/// Sinks, when given, are `[n_heads]` f32 (shared by the contiguous and paged calls).
pub(crate) fn check_sinks(op: &'static str, sinks: Option<&Tensor>, n_heads: usize) -> Result<()> {
    if let Some(s) = sinks {
        s.validate(op, "sinks")?;
        s.expect_dtype(op, "sinks", DType::F32)?;
        crate::ensure!(
            s.shape() == [n_heads],
            Shape,
            op,
            "sinks has shape {:?} but must be [{n_heads}] (one per query head)",
            s.shape()
        );
    }
    Ok(())
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
        Ok(Dims {
            batch,
            q_len,
            kv_len,
            n_heads,
            n_kv_heads,
            head_dim,
        })
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

    /// The kernel, tile size and split count this call would use on `ctx`, for K/V rows that
    /// are 16-byte aligned (see [`kv_rows_aligned`]; unaligned rows never get
    /// [`Kind::DecodeKeys`] by default).
    pub fn plan(&self, ctx: &Context, d: Dims, dtype: DType) -> Result<Plan> {
        self.plan_for(ctx, d, dtype, true)
    }

    fn plan_for(&self, ctx: &Context, d: Dims, dtype: DType, kv_aligned: bool) -> Result<Plan> {
        let limit = ctx.limits().max_compute_workgroup_storage_size;
        let hd4 = (d.head_dim / 4) as u32;
        let keys_fit = prefill_keys_workgroup_bytes(hd4) <= limit;
        let kind = self.kind.unwrap_or_else(|| {
            match default_kind(ctx.adapter_info().device_type, d.q_len, kv_aligned) {
                Kind::Decode if subgroup_decode_wanted(ctx) => Kind::DecodeSubgroup,
                Kind::PrefillKeys if self.f16_arithmetic || !keys_fit => Kind::Prefill,
                k => k,
            }
        });
        crate::ensure!(
            kind != Kind::PrefillKeys || keys_fit,
            Limit,
            OP,
            "the PrefillKeys kernel needs {} bytes of workgroup memory at head_dim {}, the device has {limit}",
            prefill_keys_workgroup_bytes(hd4),
            d.head_dim
        );
        crate::ensure!(
            !(kind == Kind::Prefill && self.f16_arithmetic) || ctx.caps().shader_f16,
            Limit,
            OP,
            "f16_arithmetic needs wgpu::Features::SHADER_F16, which this device was created without (adapter {:?})",
            ctx.adapter_info().name
        );
        let tile_v4 = tile_v4_for(limit);
        crate::ensure!(
            tile_v4 >= hd4 && 2 * tile_v4 * 16 <= limit,
            Limit,
            OP,
            "head_dim {} needs {} bytes of workgroup memory for one key of K and V, the device has {limit}",
            d.head_dim,
            2 * hd4 * 16
        );
        let bk = (tile_v4 / hd4).min(MAX_BK as u32);
        let g = d.n_heads / d.n_kv_heads;
        let rows = d.q_len * g;
        let sg_min = ctx.adapter_info().subgroup_min_size.max(4);
        let kr = match kind {
            Kind::DecodeSubgroup => rows
                .next_power_of_two()
                .min(sg_rows_max(hd4, sg_min) as usize),
            _ => rows.next_power_of_two().min(KEYS_MAX_ROWS),
        };
        let mut variant = Variant {
            kind,
            dtype,
            tile_v4,
            hd4,
            split_kv: true,
            kr: match kind {
                Kind::DecodeKeys | Kind::DecodeSubgroup => kr as u32,
                _ => 1,
            },
            sg_min: if kind == Kind::DecodeSubgroup {
                sg_min
            } else {
                0
            },
            f16: kind == Kind::Prefill && self.f16_arithmetic,
            native_f16: kind == Kind::DecodeSubgroup
                && dtype == DType::F16
                && kv_aligned
                && self
                    .native_f16
                    .unwrap_or_else(|| crate::ops::native_f16_wanted(ctx)),
        };
        if self.native_f16 == Some(true) {
            crate::ensure!(
                ctx.caps().shader_f16,
                Limit,
                OP,
                "native f16 reads need wgpu::Features::SHADER_F16, which this device was created without (adapter {:?})",
                ctx.adapter_info().name
            );
            crate::ensure!(
                variant.native_f16,
                Param,
                OP,
                "native f16 reads are for the DecodeSubgroup kernel over f16 K/V with 16-byte aligned rows; this call runs {kind:?} over {dtype} (K/V rows aligned: {kv_aligned})"
            );
        }
        let cap = match kind {
            Kind::DecodeKeys => keys_loop_cap_keys(ctx, d.head_dim, kr),
            Kind::DecodeSubgroup => sg_loop_cap_keys(ctx, &variant),
            Kind::PrefillKeys => prefill_keys_loop_cap_keys(ctx, d.head_dim),
            _ => loop_cap_keys(ctx, d.head_dim),
        };
        let min_splits = cap.map_or(1, |c| d.kv_len.div_ceil(c.max(1)));
        variant.split_kv = match kind {
            Kind::Prefill => min_splits > 1,
            Kind::PrefillKeys => min_splits > 1 || self.splits.is_some_and(|s| s > 1),
            _ => true,
        };
        let wg = variant.wg() as usize;
        let (rows_per_wg, lanes) = match kind {
            Kind::DecodeKeys => (kr, wg),
            Kind::DecodeSubgroup => (kr, variant.sg_shape().1 as usize),
            // Split or not, a prefill workgroup owns PREFILL_WG rows, one key lane each.
            Kind::Prefill => (PREFILL_WG as usize, 1),
            Kind::PrefillKeys => (PREFILL_KEYS_ROWS, 1),
            _ => {
                let rpw = rows.next_power_of_two().min(wg);
                (rpw, wg / rpw)
            }
        };
        let row_blocks = rows.div_ceil(rows_per_wg);
        let (splits, chunk) = match kind {
            Kind::Prefill => {
                let chunk = d.kv_len.div_ceil(min_splits);
                (d.kv_len.div_ceil(chunk), chunk)
            }
            Kind::PrefillKeys => {
                let want = (self.splits.unwrap_or(1) as usize).max(min_splits);
                let chunk = d.kv_len.div_ceil(want).max(1);
                // A forced count is honoured exactly (trailing chunks may be empty).
                match self.splits {
                    Some(_) => (want, chunk),
                    None => (d.kv_len.div_ceil(chunk), chunk),
                }
            }
            Kind::Decode | Kind::DecodeKeys | Kind::DecodeSubgroup => {
                let (target, min_chunk) = match kind {
                    Kind::DecodeKeys => (KEYS_TARGET_WORKGROUPS, KEYS_MIN_CHUNK),
                    _ => (DECODE_TARGET_WORKGROUPS, DECODE_MIN_CHUNK),
                };
                let want = match self.splits {
                    Some(s) => (s as usize).max(min_splits),
                    None => {
                        let base = d.batch * d.n_kv_heads * row_blocks;
                        target
                            .div_ceil(base)
                            .clamp(1, d.kv_len.div_ceil(min_chunk).max(1))
                            .max(min_splits)
                    }
                };
                let chunk = d.kv_len.div_ceil(want.max(1)).max(1);
                // A forced count is honoured exactly (trailing chunks may be empty).
                let splits = if self.splits.is_some() {
                    want
                } else {
                    d.kv_len.div_ceil(chunk)
                };
                (splits, chunk)
            }
        };
        if splits > 1 && !variant.split_kv {
            // Only reachable for prefill: the split-KV passes with prefill's row blocks.
            variant.split_kv = true;
        }
        Ok(Plan {
            variant,
            bk,
            rows,
            rows_per_wg,
            row_blocks,
            lanes,
            splits,
            chunk,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn validate(
        &self,
        ctx: &Context,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<Checked> {
        q.validate(OP, "q")?;
        k.validate(OP, "k")?;
        v.validate(OP, "v")?;
        out.validate_written(OP, "out")?;
        let d = self.dims(q, k, v)?;
        let dtype = q.dtype();
        k.expect_dtype(OP, "k", dtype)?;
        v.expect_dtype(OP, "v", dtype)?;
        out.expect_dtype(OP, "out", dtype)?;
        crate::ensure!(
            out.shape() == q.shape(),
            Shape,
            OP,
            "out has shape {:?} but q has {:?}",
            out.shape(),
            q.shape()
        );
        check_sinks(OP, sinks, d.n_heads)?;
        self.check_options(OP)?;
        if let Some(s) = self.splits {
            crate::ensure!(
                (1..=65535).contains(&s),
                Param,
                OP,
                "splits must be in 1..=65535, got {s}"
            );
        }
        let q_offset = self.q_offset.unwrap_or(d.kv_len as i64 - d.q_len as i64);
        crate::ensure!(
            q_offset + d.q_len as i64 <= d.kv_len as i64,
            Shape,
            OP,
            "q_offset {q_offset} puts the last query at position {} past the last key {} (kv_len {})",
            q_offset + d.q_len as i64 - 1,
            d.kv_len as i64 - 1,
            d.kv_len
        );
        crate::ensure!(
            q_offset >= i32::MIN as i64 / 2 && d.kv_len < i32::MAX as usize / 2,
            Limit,
            OP,
            "q_offset {q_offset} and kv_len {} must fit 31-bit positions",
            d.kv_len
        );
        // Binding rules: out is the only written tensor and must not share a buffer with inputs.
        for (name, t) in [("q", q), ("k", k), ("v", v)]
            .into_iter()
            .chain(sinks.map(|s| ("sinks", s)))
        {
            crate::ensure!(
                t.buffer() != out.buffer(),
                Alias,
                OP,
                "out shares a buffer with {name}; attention cannot run in place"
            );
        }
        let aligned = kv_rows_aligned(ctx, k, v);
        crate::ensure!(
            aligned || !matches!(self.kind, Some(Kind::DecodeKeys | Kind::PrefillKeys)),
            Param,
            OP,
            "the {:?} kernel needs 16-byte aligned K/V rows (offsets, strides and head_dim {} x {} bytes multiples of 16)",
            self.kind.unwrap_or(Kind::DecodeKeys),
            d.head_dim,
            dtype.size()
        );
        crate::ensure!(
            self.kind != Some(Kind::DecodeSubgroup) || ctx.caps().subgroups,
            Param,
            OP,
            "the DecodeSubgroup kernel needs a device with the SUBGROUP feature"
        );
        let plan = self.plan_for(ctx, d, dtype, aligned)?;
        let scale = self.scale.unwrap_or(1.0 / (d.head_dim as f32).sqrt());
        Ok(Checked {
            dims: d,
            plan,
            q_offset,
            scale,
            bounds: self.window_bounds(d.kv_len, q_offset),
            strides: [
                outer_strides(q),
                outer_strides(k),
                outer_strides(v),
                outer_strides(out),
            ],
        })
    }

    /// Record `out = attention(q, k, v)` into `encoder`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let c = self.validate(ctx, q, k, v, sinks, out)?;
        ctx.scoped(OP, || {
            self.record_unscoped(ctx, encoder, &c, q, k, v, sinks, out)
        })?
    }

    /// [`Attention::encode`], submitted and waited for.
    pub fn run(
        &self,
        ctx: &Context,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let c = self.validate(ctx, q, k, v, sinks, out)?;
        ctx.submit_and_wait(OP, |enc| {
            self.record_unscoped(ctx, enc, &c, q, k, v, sinks, out)
        })
    }

    /// Record attention over the rows `0..len` of a KV cache (`q` batched like the cache; a rank-3
    /// `q` needs a cache of batch 1).
    pub fn encode_cached(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        cache: &crate::ops::kv_cache::KvCache,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let (k, v) = cache.views_for(OP, q.rank())?;
        self.encode(ctx, encoder, q, &k, &v, sinks, out)
    }

    /// [`Attention::encode_cached`], submitted and waited for.
    pub fn run_cached(
        &self,
        ctx: &Context,
        q: &Tensor,
        cache: &crate::ops::kv_cache::KvCache,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let (k, v) = cache.views_for(OP, q.rank())?;
        self.run(ctx, q, &k, &v, sinks, out)
    }

    /// Record one call; runs under the caller's one error scope (`encode` opens it; `run`'s submit does).
    #[allow(clippy::too_many_arguments)]
    fn record_unscoped(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        c: &Checked,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        sinks: Option<&Tensor>,
        out: &Tensor,
    ) -> Result<()> {
        let d = c.dims;
        let plan = c.plan;
        let qw = Window::covering(ctx, OP, &[q])?;
        let kw = Window::covering(ctx, OP, &[k])?;
        let vw = Window::covering(ctx, OP, &[v])?;
        let ow = Window::covering(ctx, OP, &[out])?;
        let sw = match sinks {
            Some(s) => Some(Window::covering(ctx, OP, &[s])?),
            None => None,
        };
        let pack = |w: &Window, t: &Tensor, s: [usize; 3]| -> Result<[u32; 4]> {
            let v = [w.elem_offset(t) as usize, s[0], s[1], s[2]];
            let mut o = [0u32; 4];
            for i in 0..4 {
                o[i] = u32::try_from(v[i]).map_err(|_| {
                    Error::limit(OP, format!("stride or offset {} exceeds 32 bits", v[i]))
                })?;
            }
            Ok(o)
        };
        let params = Params {
            batch: d.batch as u32,
            q_len: d.q_len as u32,
            kv_len: d.kv_len as u32,
            n_heads: d.n_heads as u32,
            n_kv_heads: d.n_kv_heads as u32,
            head_dim: d.head_dim as u32,
            group: (d.n_heads / d.n_kv_heads) as u32,
            rows: plan.rows as u32,
            q: pack(&qw, q, c.strides[0])?,
            k: pack(&kw, k, c.strides[1])?,
            v: pack(&vw, v, c.strides[2])?,
            o: pack(&ow, out, c.strides[3])?,
            q_offset: c.q_offset as i32,
            bk: plan.bk,
            row_blocks: plan.row_blocks as u32,
            n_splits: plan.splits as u32,
            chunk: plan.chunk as u32,
            rows_per_wg: plan.rows_per_wg as u32,
            lanes: plan.lanes as u32,
            ..self.logit_params(c.scale, c.bounds, &sw, sinks)
        };
        let keys = plan.variant.keys();
        let mut inputs = vec![
            ("q_buf", qw.resource()),
            ("k_buf", kw.resource()),
            ("v_buf", vw.resource()),
        ];
        if let Some(w) = &sw {
            inputs.push(("sinks", w.resource()));
        }
        let base_wgs = (d.batch * d.n_kv_heads * plan.row_blocks) as u64;
        if plan.variant.kind == Kind::PrefillKeys {
            // The same K/V windows, read through `vec4<u32>` bindings.
            inputs.push(("k4", kw.resource()));
            inputs.push(("v4", vw.resource()));
        }
        if plan.variant.kind != Kind::DecodeKeys && !plan.variant.split_kv {
            inputs.push(("out_buf", ow.resource()));
            return ctx.encode_kernel(OP, enc, &keys[0], &params, &inputs, base_wgs);
        }
        // Split-KV: a partial pass writes (m, l, acc) per (row, split, lane) into the context's
        // scratch buffer, a merge pass combines them in a fixed order.
        let entries = d.batch * d.n_kv_heads * plan.rows * plan.splits * plan.lanes;
        let part_bytes = entries as u64 * (d.head_dim as u64 + 2) * 4;
        crate::ensure!(
            part_bytes <= ctx.limits().max_storage_buffer_binding_size,
            Limit,
            OP,
            "split-KV scratch of {part_bytes} bytes ({} splits x {} lanes) exceeds the device's max_storage_buffer_binding_size",
            plan.splits,
            plan.lanes
        );
        let part = ctx.scratch(OP, part_bytes)?;
        let part_res = || {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &part,
                offset: 0,
                size: std::num::NonZeroU64::new(part_bytes),
            })
        };
        // Compile (and cache) both pipelines before recording either pass, so a failure records
        // nothing.
        ctx.kernel(OP, &keys[0])?;
        ctx.kernel(OP, &keys[1])?;
        inputs.push(("part_out", part_res()));
        if plan.variant.kind == Kind::DecodeKeys {
            // The same K/V windows, read through `vec4<u32>` bindings.
            inputs.push(("k4", kw.resource()));
            inputs.push(("v4", vw.resource()));
        }
        if plan.variant.native_f16 {
            // The same K/V windows, read as `array<vec4<f16>>`.
            inputs.push(("k_h", kw.resource()));
            inputs.push(("v_h", vw.resource()));
        }
        ctx.encode_kernel(
            OP,
            enc,
            &keys[0],
            &params,
            &inputs,
            base_wgs * plan.splits as u64,
        )?;
        let merge_threads = (d.batch * d.n_kv_heads * plan.rows * d.head_dim / 4) as u64;
        let mut merge = vec![("part_in", part_res()), ("out_buf", ow.resource())];
        if let Some(w) = &sw {
            merge.push(("sinks", w.resource()));
        }
        let merge_wg = match plan.variant.kind {
            Kind::Prefill | Kind::PrefillKeys => PREFILL_WG,
            _ => plan.variant.wg(),
        };
        ctx.encode_kernel(
            OP,
            enc,
            &keys[1],
            &params,
            &merge,
            merge_threads.div_ceil(merge_wg as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_is_160_bytes() {
        assert_eq!(std::mem::size_of::<Params>(), 160);
        assert_eq!(std::mem::size_of::<Params>() % 16, 0);
    }

    #[test]
    fn tile_sizes() {
        assert_eq!(tile_v4_for(16384), 512);
        assert_eq!(tile_v4_for(32768), 1024);
        assert_eq!(tile_v4_for(65536), 1024);
        assert_eq!(tile_v4_for(20000), 512);
    }
}
