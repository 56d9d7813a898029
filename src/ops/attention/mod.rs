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
//! scaling (Gemma 2); ALiBi ([`Attention::alibi`]: BLOOM, MPT) then adds `slope(h) · (j - pos)`
//! per query head; `sinks: [n_heads]` (f32) adds one logit per head that joins only the softmax
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
//!   outside the union of the block's visible ranges are never loaded (nor, with a boolean
//!   mask, tiles it hides from every row of the block), and each row's mask is one interval
//!   computed once. Memory is O(q_len + kv_len): no score matrix exists.
//!   [`Attention::f16_arithmetic`] selects the same kernel with f16 products (its own module,
//!   `SHADER_F16`).
//! - [`Kind::PrefillKeys`] (`attn_prefill_keys` in `shaders/attention_prefill.wgsl`), prefill
//!   for CPU adapters, shaped like the register-tiled matmul that runs fastest on llvmpipe: a
//!   workgroup of [`KEYS_WG`] invocations owns [`PREFILL_KEYS_ROWS`] query rows (q staged once
//!   in workgroup memory, pre-scaled, as f32) and walks [`PREFILL_KEYS_TILE`]-key tiles. For
//!   Q K^T each invocation owns 8 keys (16-byte K loads, 4 4x4 matrix products per 4 head
//!   elements); the softmax is in the log2 domain with the row maxima reduced through
//!   workgroup memory and the accumulators rescaled only when a maximum moves; for P V each
//!   invocation owns a slice of the head (one 16-byte V load per slot and key for 8 rows).
//!   8 rows rather than 16: lavapipe's LLVM compile time follows the written-out code and live
//!   values, and 16 rows, faster warm, compiled past issue 20's first-use budget.
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
//!   order, so results are bitwise repeatable. The split-KV workgroups take their items kv head
//!   fastest and split slowest (`split_item`, as the paged `paged_item`), so workgroups that run
//!   side by side read the same key rows of neighbouring heads. Empty chunks write (-3e38, 0, 0) and add nothing.
//! - [`Kind::DecodeKeys`] (`attn_decode_keys` in `shaders/attention_decode.wgsl`, its step
//!   `keys_partial` in `shaders/attention_keys.wgsl`, shared with the paged kernel's
//!   `attn_paged_keys`), decode for CPU adapters, shaped like [`Kind::PrefillKeys`]: the
//!   [`KEYS_WG`] invocations of a workgroup own 16-byte head slices of its `kr` (<=
//!   [`KEYS_MAX_ROWS`]) query rows; for each trip of keys they load one slice of every key's K
//!   row, then the next slice (4 f32 or 8 halves / quantized values per load, so one slice's
//!   loads reach several rows at once), against every row, so a GQA group shares every load,
//!   and exchange the partial scores through workgroup memory, where each lane owns keys for the
//!   softmax; then each lane adds p times its slices of the V rows. A trip's vec4 holds (row, key)
//!   pairs, `4 / kr` keys, so that one row (MHA) still moves 4 keys per exchange. A workgroup
//!   makes one pass over at most [`KEYS_TRIPS`] trips (the planner's chunks,
//!   [`keys_chunk_keys`]) and writes one partial per (row, split), merged by the same
//!   fixed-order pass as Decode. Why: llvmpipe (Mesa 22.3) runs 8 invocations per SIMD vector,
//!   issues every load as one scalar access per invocation (also for workgroup-uniform
//!   addresses), keeps a private array in registers only for constant indices, and compiles a
//!   loop around a barrier into slow code; its LLVM compile time follows the amount of
//!   written-out code, so the head is split over the lanes rather than written out per lane.
//!   Needs 16-byte aligned K/V rows ([`kv_rows_aligned`]).
//! - [`Kind::DecodeSubgroup`] (`attn_decode_sg` in `shaders/attention_decode_subgroup.wgsl`, a
//!   module of its own: subgroup operations fail validation without `SUBGROUP`), decode for
//!   GPUs, after flash-decoding and FlashInfer's decode kernels: one workgroup of [`SG_WG`]
//!   invocations per (batch, kv head, row block, split), up to [`SG_MAX_ROWS`] rows of the GQA
//!   group per workgroup sharing every K/V row it loads. A row is read as 16-byte units (8
//!   halves or 4 f32) by a lane group of LG lanes (head_dim 128 in halves: 16 units, 16 lanes,
//!   so a subgroup of 32 takes 2 keys per step); the workgroup's lane groups, numbered so that
//!   the numbering does not depend on the subgroup size, take different keys; each lane group
//!   reduces its rows' scores with `subgroupShuffleXor` butterflies after issuing the next key's
//!   K loads, and runs its online softmax. The lane groups' partials merge in a fixed tree
//!   through workgroup memory, so a split writes one partial per row (or, with one split, the
//!   output), and `attn_decode_merge_rows` reduces a row's splits with one workgroup in
//!   parallel. Splits fill the device ([`sg_splits`]), chunks of at least [`SG_MIN_CHUNK`] keys;
//!   [`Plan::decode_geometry`] gives the launch. Needs 16-byte aligned K/V rows
//!   ([`kv_rows_aligned`]). On devices with `SHADER_F16`, f16 K/V are read natively
//!   ([`ATTENTION_DECODE_SUBGROUP_F16`], [`Attention::native_f16`]): widened by the hardware
//!   instead of the integer decode, which at about fourteen integer ops per value would bound
//!   an f16 decode by ALU rather than memory on a GPU; the bits are the same. The paged
//!   subgroup decode (`attn_paged_sg`) runs the same step through its row seam and keeps the
//!   integer decode. Quantized K/V (q8_0, q4_0, fp8) are read in place as whole 16-byte units
//!   of their data plane (16 q8_0 or fp8 values, a q4_0 block) with one scale load per unit,
//!   dequantized in registers ([`sg_shape`] gives their lanes, [`sg_rows_max_kv`] their rows).
//!   With [`Attention::int8_dot`] q8_0 and q4_0 K are scored by packed 8-bit products instead
//!   (`dot4I8Packed`, llama.cpp's DP4A path; [`Variant::int8_dot`], contiguous and paged): the
//!   rows' q quantized once per block of 32 with an f32 scale, K's units kept as int8 words.
//! - [`Kind::PrefillSubgroup`] (`attn_prefill_sg` in `shaders/attention_prefill_subgroup.wgsl`,
//!   a module of its own: [`ATTENTION_PREFILL_SUBGROUP`]), prefill for GPUs: FlashAttention-2
//!   on SIMT lanes. Aligned groups of 4-16 lanes of a subgroup split head_dim, each group owning
//!   1-4 rows, so every lane holds a few vec4 slots of q and of the f32 accumulators of its rows
//!   in registers (arrays sized by key constants, at most [`PREFILL_SG_MAX_ACC`] f32 of
//!   accumulators); per 4 keys each score is finished by a `subgroupShuffleXor` butterfly within
//!   the group; K/V tiles are staged in workgroup memory with 16-byte loads (one per-format read,
//!   `pf_kv`) and read by all 64 or more rows of the workgroup ([`prefill_sg_shape`]). Why: the
//!   tiled `Prefill` gives each of its 16 invocations 4 whole rows (1,024 f32 of q and
//!   accumulators plus a dynamically indexed score array), which a GPU can only hold in local
//!   memory. Needs `SUBGROUP` and 16-byte aligned K/V rows; split over the keys (a forced
//!   [`Attention::splits`], or a CPU adapter's loop cap) it writes partials for
//!   `attn_prefill_merge`. With [`Attention::int8_dot`] over q8_0 and q4_0 K (and pages) its
//!   K tiles are staged as int8 words with their block scales and scored by packed 8-bit
//!   products, each row's q quantized once per block, as the GPU decode does.
//! - Prefill on CPU adapters (llvmpipe) with more keys than one invocation may loop over
//!   ([`loop_cap_keys`]): the same kernel over chunks of the keys (`attn_prefill_partial`),
//!   writing partials that `attn_prefill_merge` combines in a fixed order, as decode's do.
//!
//! Masks ([`Inputs`]: a packed boolean mask, an additive bias, block ids) join these rules per
//! call; `inputs.rs` gives their semantics. They are a pipeline-key axis ([`Variant::masks`]):
//! unmasked calls run the pipelines they always ran.
//!
//! Files: `options.rs` (the call's options and sizes), `inputs.rs` (sinks and masks), [`variants`] (the variant space declared
//! once, the shader modules and the pipeline keys), [`plan`] (the planner, by the rule below),
//! `record.rs` (validation, parameters and recording).
//!
#![doc = include_str!("choice.md")]

mod device;
pub mod geometry;
mod inputs;
mod options;
pub mod plan;
mod prepare;
mod record;
mod subgroup_decode;
mod subgroup_prefill;
pub mod variants;

pub use device::{DeviceDesc, DEFAULT_COMPUTE_UNITS, RESIDENT_INVOCATIONS_PER_CU};
pub use geometry::{DecodeGeometry, PrefillGeometry};
pub use inputs::{pack_mask, segment_pack_mask, BlockIds, Inputs, MaskBits, MaskSet};
pub use options::{Attention, Dims, F16_ARITHMETIC_NMSE, MAX_CHUNK_SIZE};
pub(crate) use plan::sg_cap_keys;
pub use plan::{
    choice_table, default_kind, keys_chunk_keys, kv_rows_aligned, loop_cap_keys, planned_variants,
    prefill_keys_loop_cap_keys, sg_splits, subgroup_decode_wanted, ChoiceRow, Plan, CHOICE_SHAPES,
    DECODE_MAX_Q_LEN, DECODE_MIN_CHUNK, DECODE_TARGET_WORKGROUPS, SG_MIN_CHUNK,
};
pub(crate) use record::check_sinks;
pub use record::Params;
pub use subgroup_prefill::{
    prefill_sg_shape, PrefillSgShape, ATTENTION_PREFILL_SUBGROUP, PREFILL_SG_MAX_ACC,
};
pub(crate) use variants::MAX_BK;
pub use variants::{
    all_variant_keys, declared_variants, decode_variant_keys, prefill_class,
    prefill_keys_workgroup_bytes, prefill_shader, prefill_variant_keys, sg_key_constants,
    sg_reads_rows, sg_rows_max, sg_rows_max_kv, sg_shape, sg_vec4s_per_unit, subgroup_variant_keys,
    tile_v4_for, with_int8_dot, with_masks, with_wg, Axes, Kind, SgShape, Variant,
    ATTENTION_DECODE, ATTENTION_DECODE_SUBGROUP, ATTENTION_DECODE_SUBGROUP_F16, ATTENTION_PREFILL,
    ATTENTION_PREFILL_F16, ATTENTION_PREFILL_F16_HD128, ATTENTION_PREFILL_F16_HD64,
    ATTENTION_PREFILL_HD128, ATTENTION_PREFILL_HD64, DECODE_WG, HEAD_DIMS, KEYS_MAX_ROWS,
    KEYS_TRIPS, KEYS_WG, KINDS, MASKED_HEAD_DIM, MAX_HEAD_DIM, MERGE_WG, MODULES, PREFILL_CLASSES,
    PREFILL_KEYS_ROWS, PREFILL_KEYS_TILE, PREFILL_MODULES, PREFILL_ROWS_PER_INVOCATION, PREFILL_WG,
    RUN_TIME_PATH, SG_ITEM_PACKED, SG_MAX_ROWS, SG_MAX_WORKGROUP_BYTES, SG_WG, SUBGROUP_MIN_SIZES,
    SUBGROUP_MODULES, WORKGROUP_STORAGE,
};

const OP: &str = "attention";

/// The kernel-choice rule of the module doc, as text (`llama-kernels info` prints it).
pub const CHOICE_RULE: &str = include_str!("choice.md");
