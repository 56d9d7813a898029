//! The optional inputs of an attention call beyond q, k and v ([`Inputs`]): the sinks and the
//! masks (a packed boolean mask, an additive bias, block ids), their rules, and the one storage
//! binding (`aux`) they are read through.
//!
//! Semantics (transformers' `masking_utils`, FlashInfer's `custom_mask`): for query `t` at
//! position `pos` and key `j`,
//! - the boolean mask hides key `j` when bit `t * kv_len + j` of the sequence's packed mask is 0
//!   (FlashInfer's `packbits(mask.flatten(), bitorder="little")`: bit `i` is bit `i % 8` of byte
//!   `i / 8`);
//! - the bias adds `bias[t, j]` (or `bias[h, t, j]`, per query head) to the logit, after the
//!   softcap and ALiBi; a bias of `-inf` hides the key;
//! - block ids (`[kv_len]` i32, one per position) widen causal masking: a key after the query
//!   stays visible when both positions carry the same id `>= 0` (Gemma 3's image blocks,
//!   transformers' `or_masks(causal, blockwise_overlay)`); windows and chunks still apply on top
//!   (`and_masks(sliding_window, or_masks(causal, blockwise))`).
//!
//! All of them combine with causal, windows and chunks; a row with no visible key outputs 0.
//!
//! Binding: WebGPU's default limit is 8 storage buffers per stage and several kernels use all
//! of them, so the sinks and every mask input are read through one binding: when more than one
//! is given they must be views of one `wgpu::Buffer` ([`Inputs::upload_masks`] puts host masks in
//! one buffer, with the sinks if wanted).

use super::{Dims, OP};
use crate::context::Context;
use crate::error::Result;
use crate::pipeline::Window;
use crate::tensor::{DType, Tensor};

/// `p.masks` bits (mirrors the `MASK_*` constants of `shaders/attention_common.wgsl`).
pub(crate) const MASK_BITS: u32 = 1;
pub(crate) const MASK_BITS_BATCHED: u32 = 2;
pub(crate) const MASK_BIAS: u32 = 4;
pub(crate) const MASK_BIAS_HEADS: u32 = 8;
pub(crate) const MASK_BIAS_BATCHED: u32 = 16;
pub(crate) const MASK_IDS: u32 = 32;
pub(crate) const MASK_IDS_BATCHED: u32 = 64;

/// A bit-packed boolean mask on the GPU: `bytes` bytes starting `byte_offset` bytes into a
/// buffer (a multiple of 4), 1 = visible, bits in FlashInfer's little order ([`pack_mask`]).
#[derive(Clone, Debug)]
pub struct MaskBits {
    // The bytes as 32-bit words (the dtype only sizes them), for the binding window.
    words: Tensor,
    bytes: usize,
}

impl MaskBits {
    /// `bytes` packed bytes at `byte_offset` (a multiple of 4) of `buffer`.
    pub fn new(buffer: &wgpu::Buffer, byte_offset: usize, bytes: usize) -> Result<Self> {
        crate::ensure!(
            byte_offset.is_multiple_of(4),
            Param,
            OP,
            "mask byte_offset {byte_offset} must be a multiple of 4"
        );
        crate::ensure!(
            (byte_offset + bytes) as u64 <= buffer.size(),
            Bounds,
            OP,
            "mask of {bytes} bytes at byte {byte_offset} runs past its buffer of {} bytes",
            buffer.size()
        );
        Ok(MaskBits {
            words: Tensor::new(buffer, byte_offset / 4, &[bytes.div_ceil(4)], DType::F32),
            bytes,
        })
    }
    /// Upload packed bytes ([`pack_mask`], [`segment_pack_mask`]) into a new buffer.
    pub fn upload(ctx: &Context, packed: &[u8]) -> Result<Self> {
        let buffer = upload_words(ctx, &[packed])?;
        Self::new(&buffer, 0, packed.len())
    }
    /// Packed bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The buffer holding them.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.words.buffer()
    }
}

/// Block ids on the GPU: `len` i32 values starting `offset` values into a buffer.
#[derive(Clone, Debug)]
pub struct BlockIds {
    words: Tensor,
}

impl BlockIds {
    /// `len` ids at i32 element `offset` of `buffer`.
    pub fn new(buffer: &wgpu::Buffer, offset: usize, len: usize) -> Result<Self> {
        crate::ensure!(
            ((offset + len) * 4) as u64 <= buffer.size(),
            Bounds,
            OP,
            "block_ids of {len} values at element {offset} run past their buffer of {} bytes",
            buffer.size()
        );
        Ok(BlockIds {
            words: Tensor::new(buffer, offset, &[len], DType::F32),
        })
    }
    /// Upload ids into a new buffer.
    pub fn upload(ctx: &Context, ids: &[i32]) -> Result<Self> {
        let buffer = upload_words(ctx, &[bytemuck::cast_slice(ids)])?;
        Self::new(&buffer, 0, ids.len())
    }
    /// The buffer holding them.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.words.buffer()
    }
    /// Number of ids.
    pub fn len(&self) -> usize {
        self.words.numel()
    }
    /// Whether there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pack a boolean mask (row-major, 1 = visible) as FlashInfer's
/// `packbits(mask.flatten(), bitorder="little")`: bit `i` is bit `i % 8` of byte `i / 8`.
pub fn pack_mask(mask: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; mask.len().div_ceil(8)];
    for (i, &b) in mask.iter().enumerate() {
        out[i / 8] |= (b as u8) << (i % 8);
    }
    out
}

/// Pack one mask per sequence of a paged batch, each from a byte of its own (FlashInfer's
/// `segment_packbits` over `mask_indptr`): what [`Attention::encode_paged`] reads, sequence `s`
/// at byte `sum_{i < s} ceil(q_len_i * kv_len_i / 8)`.
///
/// [`Attention::encode_paged`]: crate::Attention::encode_paged
pub fn segment_pack_mask(masks: &[&[bool]]) -> Vec<u8> {
    masks.iter().flat_map(|m| pack_mask(m)).collect()
}

/// Bytes as a new buffer, each part starting on a 256-byte boundary (WebGPU's binding offset
/// alignment, so each can also be bound alone).
fn upload_words(ctx: &Context, parts: &[&[u8]]) -> Result<wgpu::Buffer> {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.resize(bytes.len().div_ceil(256) * 256, 0);
        bytes.extend_from_slice(p);
    }
    bytes.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
    let buffer = ctx.create_buffer(OP, bytes.len() as u64)?;
    ctx.write_bytes(&buffer, 0, &bytes)?;
    Ok(buffer)
}

/// Host masks and sinks uploaded into one buffer ([`Inputs::upload_masks`]), to be lent to an
/// [`Inputs`] with [`MaskSet::inputs`].
#[derive(Clone, Debug)]
pub struct MaskSet {
    /// Sinks, `[n_heads]` f32.
    pub sinks: Option<Tensor>,
    /// The packed mask.
    pub mask: Option<MaskBits>,
    /// The bias (f32, in the shape given).
    pub bias: Option<Tensor>,
    /// The block ids.
    pub block_ids: Option<BlockIds>,
}

impl MaskSet {
    /// The call inputs that read this set.
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            sinks: self.sinks.as_ref(),
            mask: self.mask.as_ref(),
            bias: self.bias.as_ref(),
            block_ids: self.block_ids.as_ref(),
        }
    }
}

/// The optional inputs of one attention call beyond q, k and v: sinks and masks (see the module
/// docs for their meaning). `Default` is none; an `Option<&Tensor>` converts to sinks alone, so
/// `None` and `Some(&sinks)` remain valid arguments.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inputs<'a> {
    sinks: Option<&'a Tensor>,
    mask: Option<&'a MaskBits>,
    bias: Option<&'a Tensor>,
    block_ids: Option<&'a BlockIds>,
}

impl<'a> From<Option<&'a Tensor>> for Inputs<'a> {
    fn from(sinks: Option<&'a Tensor>) -> Self {
        Inputs {
            sinks,
            ..Inputs::default()
        }
    }
}

impl<'a> Inputs<'a> {
    /// No sinks, no masks.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sinks: `[n_heads]` f32, one logit per query head that joins only the softmax denominator.
    pub fn sinks(self, sinks: &'a Tensor) -> Self {
        Inputs {
            sinks: Some(sinks),
            ..self
        }
    }
    /// A packed boolean mask: contiguous calls `[q_len, kv_len]` (shared by the batch) or
    /// `[batch, q_len, kv_len]`, packed as one bit string; paged calls one `[q_len, kv_len]`
    /// mask per sequence, each from a byte ([`segment_pack_mask`]).
    pub fn mask(self, mask: &'a MaskBits) -> Self {
        Inputs {
            mask: Some(mask),
            ..self
        }
    }
    /// An additive f32 bias: contiguous calls `[q_len, kv_len]`, `[n_heads, q_len, kv_len]`, or
    /// transformers' 4-D `[batch, 1 or n_heads, q_len, kv_len]`; paged calls each sequence's
    /// `[q_len, kv_len]` (or `[n_heads, q_len, kv_len]`) flattened one after the other, as a
    /// 1-D tensor.
    pub fn bias(self, bias: &'a Tensor) -> Self {
        Inputs {
            bias: Some(bias),
            ..self
        }
    }
    /// Block ids, one per key position: contiguous calls `[kv_len]` or `[batch, kv_len]` (flat),
    /// paged calls each sequence's `[kv_len]` one after the other.
    pub fn block_ids(self, ids: &'a BlockIds) -> Self {
        Inputs {
            block_ids: Some(ids),
            ..self
        }
    }
    /// The sinks, if any.
    pub fn sinks_tensor(&self) -> Option<&'a Tensor> {
        self.sinks
    }
    /// Whether a mask, bias or block ids are given (the masked pipelines run).
    pub fn has_masks(&self) -> bool {
        self.mask.is_some() || self.bias.is_some() || self.block_ids.is_some()
    }

    /// Upload host masks (and sinks, if given) into one buffer: `mask` packed bytes, `bias` with
    /// its shape, `block_ids`.
    pub fn upload_masks(
        ctx: &Context,
        sinks: Option<&[f32]>,
        mask: Option<&[u8]>,
        bias: Option<(&[f32], &[usize])>,
        block_ids: Option<&[i32]>,
    ) -> Result<MaskSet> {
        let parts: [Option<&[u8]>; 4] = [
            sinks.map(bytemuck::cast_slice),
            mask,
            bias.map(|b| bytemuck::cast_slice(b.0)),
            block_ids.map(bytemuck::cast_slice),
        ];
        let present: Vec<&[u8]> = parts.iter().flatten().copied().collect();
        let buffer = upload_words(ctx, &present)?;
        // Byte offsets, as upload_words placed them.
        let mut at = 0usize;
        let mut offs = [0usize; 4];
        for (i, p) in parts.iter().enumerate() {
            if let Some(p) = p {
                at = at.div_ceil(256) * 256;
                offs[i] = at;
                at += p.len();
            }
        }
        if let Some((b, shape)) = bias {
            let n: usize = shape.iter().product();
            crate::ensure!(
                n == b.len(),
                Shape,
                OP,
                "bias shape {shape:?} holds {n} values but {} were given",
                b.len()
            );
        }
        Ok(MaskSet {
            sinks: sinks.map(|s| Tensor::new(&buffer, offs[0] / 4, &[s.len()], DType::F32)),
            mask: match mask {
                Some(m) => Some(MaskBits::new(&buffer, offs[1], m.len())?),
                None => None,
            },
            bias: bias.map(|(_, shape)| Tensor::new(&buffer, offs[2] / 4, shape, DType::F32)),
            block_ids: match block_ids {
                Some(ids) => Some(BlockIds::new(&buffer, offs[3] / 4, ids.len())?),
                None => None,
            },
        })
    }

    /// Every view bound through `aux`, by name.
    fn views(&self) -> Vec<(&'static str, &'a Tensor)> {
        let mut v = Vec::new();
        if let Some(s) = self.sinks {
            v.push(("sinks", s));
        }
        if let Some(m) = self.mask {
            v.push(("mask", &m.words));
        }
        if let Some(b) = self.bias {
            v.push(("bias", b));
        }
        if let Some(i) = self.block_ids {
            v.push(("block_ids", &i.words));
        }
        v
    }

    /// The rules every call has: sinks' shape, the bias's dtype and layout, one buffer for all,
    /// none in out's buffer.
    pub(crate) fn check_common(
        &self,
        op: &'static str,
        n_heads: usize,
        out: &Tensor,
    ) -> Result<()> {
        super::check_sinks(op, self.sinks, n_heads)?;
        if let Some(b) = self.bias {
            b.validate(op, "bias")?;
            b.expect_dtype(op, "bias", DType::F32)?;
            crate::ensure!(
                b.is_contiguous(),
                Shape,
                op,
                "bias {:?} must be contiguous (strides {:?})",
                b.shape(),
                b.strides()
            );
        }
        let views = self.views();
        if let Some((first, t)) = views.first() {
            for (name, v) in &views[1..] {
                crate::ensure!(
                    v.buffer() == t.buffer(),
                    Param,
                    op,
                    "{first} and {name} are read through one binding and must be views of one buffer (Inputs::upload_masks puts host inputs in one)"
                );
            }
        }
        for (name, v) in &views {
            crate::ensure!(
                v.buffer() != out.buffer(),
                Alias,
                op,
                "out shares a buffer with {name}"
            );
        }
        Ok(())
    }

    /// The `p.masks` bits of a contiguous call of sizes `d`, after checking each input's size.
    pub(crate) fn contiguous_flags(&self, op: &'static str, d: &Dims) -> Result<u32> {
        let (b, q, kv, nh) = (d.batch, d.q_len, d.kv_len, d.n_heads);
        let mut flags = 0;
        if let Some(m) = self.mask {
            let one = (q * kv).div_ceil(8);
            let all = (b * q * kv).div_ceil(8);
            flags |= if m.bytes == one {
                MASK_BITS
            } else if m.bytes == all {
                MASK_BITS | MASK_BITS_BATCHED
            } else {
                return Err(crate::Error::shape(
                    op,
                    format!(
                        "mask holds {} packed bytes; a [q_len, kv_len] = [{q}, {kv}] mask packs into {one}, a [batch, q_len, kv_len] = [{b}, {q}, {kv}] one into {all}",
                        m.bytes
                    ),
                ));
            };
            crate::ensure!(
                (b * q * kv) as u64 <= u32::MAX as u64 - 31,
                Limit,
                op,
                "mask of {} bits exceeds 2^32 bits",
                b * q * kv
            );
        }
        if let Some(t) = self.bias {
            flags |= match t.shape() {
                [x, y] if [*x, *y] == [q, kv] => MASK_BIAS,
                [h, x, y] if [*h, *x, *y] == [nh, q, kv] => MASK_BIAS | MASK_BIAS_HEADS,
                [bb, 1, x, y] if [*bb, *x, *y] == [b, q, kv] => MASK_BIAS | MASK_BIAS_BATCHED,
                [bb, h, x, y] if [*bb, *h, *x, *y] == [b, nh, q, kv] => {
                    MASK_BIAS | MASK_BIAS_HEADS | MASK_BIAS_BATCHED
                }
                s => {
                    return Err(crate::Error::shape(
                        op,
                        format!(
                            "bias has shape {s:?}; it must be [q_len, kv_len] = [{q}, {kv}], [n_heads, q_len, kv_len] = [{nh}, {q}, {kv}] or [batch, 1 or n_heads, q_len, kv_len] = [{b}, 1 or {nh}, {q}, {kv}]"
                        ),
                    ))
                }
            };
        }
        if let Some(ids) = self.block_ids {
            flags |= if ids.len() == kv {
                MASK_IDS
            } else if ids.len() == b * kv {
                MASK_IDS | MASK_IDS_BATCHED
            } else {
                return Err(crate::Error::shape(
                    op,
                    format!(
                        "block_ids holds {} ids; it must hold kv_len = {kv} (or batch x kv_len = {})",
                        ids.len(),
                        b * kv
                    ),
                ));
            };
        }
        Ok(flags)
    }

    /// The `p.masks` bits of a paged call whose sequences hold `qk` query-key pairs, `kv` keys
    /// and `mask_bytes` segment-packed mask bytes in all.
    pub(crate) fn paged_flags(
        &self,
        op: &'static str,
        n_heads: usize,
        (qk, kv, mask_bytes): (usize, usize, usize),
    ) -> Result<u32> {
        let mut flags = 0;
        if let Some(m) = self.mask {
            crate::ensure!(
                m.bytes == mask_bytes,
                Shape,
                op,
                "mask holds {} packed bytes; the batch's sequences, each [q_len, kv_len] packed from a byte of its own (segment_pack_mask), need {mask_bytes}",
                m.bytes
            );
            crate::ensure!(
                mask_bytes as u64 * 8 <= u32::MAX as u64 - 31,
                Limit,
                op,
                "mask of {mask_bytes} bytes exceeds 2^32 bits"
            );
            flags |= MASK_BITS;
        }
        if let Some(t) = self.bias {
            let n = t.numel();
            flags |= if t.rank() == 1 && n == qk {
                MASK_BIAS
            } else if t.rank() == 1 && n == n_heads * qk {
                MASK_BIAS | MASK_BIAS_HEADS
            } else {
                return Err(crate::Error::shape(
                    op,
                    format!(
                        "bias has shape {:?}; a paged batch takes every sequence's [q_len, kv_len] flattened in turn, [{qk}] (or [n_heads, q_len, kv_len] each, [{}])",
                        t.shape(),
                        n_heads * qk
                    ),
                ));
            };
        }
        if let Some(ids) = self.block_ids {
            crate::ensure!(
                ids.len() == kv,
                Shape,
                op,
                "block_ids holds {} ids; the batch's sequences hold {kv} keys in all (one id per key, sequence after sequence)",
                ids.len()
            );
            flags |= MASK_IDS;
        }
        Ok(flags)
    }

    /// The binding of every input and its offsets in the shaders' parameters.
    pub(crate) fn bind(&self, ctx: &Context, op: &'static str, flags: u32) -> Result<Aux> {
        let views = self.views();
        let window = match views.is_empty() {
            true => None,
            false => {
                let ts: Vec<&Tensor> = views.iter().map(|v| v.1).collect();
                Some(Window::covering(ctx, op, &ts)?)
            }
        };
        let off = |t: Option<&Tensor>| match (&window, t) {
            (Some(w), Some(t)) => w.elem_offset(t),
            _ => 0,
        };
        Ok(Aux {
            has_sinks: self.sinks.is_some(),
            s_off: off(self.sinks),
            masks: flags,
            mask_off: off(self.mask.map(|m| &m.words)),
            bias_off: off(self.bias),
            ids_off: off(self.block_ids.map(|i| &i.words)),
            window,
        })
    }
}

/// What a call binds as `aux`, and where each input starts in it.
pub(crate) struct Aux {
    pub(crate) window: Option<Window>,
    pub(crate) has_sinks: bool,
    pub(crate) s_off: u32,
    pub(crate) masks: u32,
    pub(crate) mask_off: u32,
    pub(crate) bias_off: u32,
    pub(crate) ids_off: u32,
}
