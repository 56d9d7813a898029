//! Tensor views: a `wgpu::Buffer` plus an element offset, a shape, strides and a dtype.
//!
//! A view may start anywhere in a user's buffer (a KV cache, a fused QKV projection). Storage
//! bindings must start on `min_storage_buffer_offset_alignment` (usually 256 bytes), so kernels
//! bind the aligned window around a view and receive the remainder as an element offset.

use crate::error::{Error, Result};

/// Storage dtype of a tensor. Half types are stored packed two per `u32` on the GPU, so every
/// adapter can run them; all kernels compute in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// IEEE half, stored packed two per 32-bit word.
    F16,
    /// bfloat16, stored packed two per 32-bit word.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    /// Lower-case name, as printed in errors and reports.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
    /// The value of the `DTYPE` override constant that the shaders switch on.
    pub fn shader_code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        }
    }
    /// True for f16 and bf16 (packed two per word).
    pub fn is_half(self) -> bool {
        self != DType::F32
    }
    /// All storage dtypes.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Round an f64 to this dtype and back, with one correct round-to-nearest-even (no double
    /// rounding through f32), overflow to infinity, and subnormals.
    pub fn round(self, v: f64) -> f64 {
        match self {
            DType::F32 => v as f32 as f64,
            DType::F16 => round_to_format(v, 11, -14, 65504.0),
            DType::BF16 => round_to_format(v, 8, -126, 3.389_531_389_251_535_5e38),
        }
    }
}

/// Round `v` to a binary format with `precision` significand bits, minimum normal exponent
/// `min_exp` and largest finite value `max`, ties to even.
fn round_to_format(v: f64, precision: i32, min_exp: i32, max: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    let e = (v.abs().log2().floor() as i32).max(min_exp);
    // log2 can be off by one next to powers of two; fix the exponent exactly.
    let e = if v.abs() >= 2f64.powi(e + 1) {
        e + 1
    } else if v.abs() < 2f64.powi(e) && e > min_exp {
        e - 1
    } else {
        e
    };
    let ulp = 2f64.powi(e - (precision - 1));
    let r = (v / ulp).round_ties_even() * ulp;
    if r.abs() > max {
        f64::INFINITY.copysign(v)
    } else {
        r
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Host element types that can be uploaded and read back: `f32`, `half::f16`, `half::bf16`.
pub trait Element: bytemuck::Pod + Copy + Send + Sync + 'static {
    /// The storage dtype of this host type.
    const DTYPE: DType;
    /// Widen to f32 (exact).
    fn to_f32(self) -> f32;
    /// Round from f32 to this type (nearest even).
    fn from_f32(v: f32) -> Self;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}
impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

/// Decode little-endian storage bytes of `dtype` into f32 values.
pub fn decode_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
    }
}

/// Encode f32 values as little-endian storage bytes of `dtype` (round to nearest even).
pub fn encode_f32(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
        }
    }
    out
}

/// A view over a `wgpu::Buffer`: element offset, shape, strides (in elements) and dtype.
///
/// Cloning is cheap (the buffer handle is reference-counted). A view does not own the data; the
/// buffer needs `STORAGE` usage for kernels and `COPY_SRC` / `COPY_DST` for readback and upload.
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
    dtype: DType,
}

/// Row-major strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1]);
    }
    strides
}

impl Tensor {
    /// A contiguous row-major view of `shape` starting `offset` elements into `buffer`.
    pub fn new(buffer: &wgpu::Buffer, offset: usize, shape: &[usize], dtype: DType) -> Self {
        Self::with_strides(buffer, offset, shape, &contiguous_strides(shape), dtype)
    }

    /// A strided view. Strides are in elements; `strides.len()` must equal `shape.len()`
    /// (checked when an op validates the view).
    pub fn with_strides(
        buffer: &wgpu::Buffer,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
        dtype: DType,
    ) -> Self {
        Tensor {
            buffer: buffer.clone(),
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            dtype,
        }
    }

    /// The buffer the view lives in.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// Offset of element `[0, 0, ...]` in elements of `dtype` from the start of the buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// The view's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Element strides, one per dimension (the last is 1).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Storage dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements (product of the shape; 1 for rank 0).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Size of dimension `i` counted from the end (`dim_from_end(0)` is the innermost).
    pub fn dim_from_end(&self, i: usize) -> usize {
        self.shape[self.shape.len() - 1 - i]
    }
    /// True when the strides are row-major for the shape (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let c = contiguous_strides(&self.shape);
        self.shape
            .iter()
            .zip(self.strides.iter().zip(&c))
            .all(|(&n, (&s, &cs))| n == 1 || s == cs)
    }
    /// The same view with a new shape; the view must be contiguous.
    pub fn reshape(&self, op: &'static str, shape: &[usize]) -> Result<Tensor> {
        crate::ensure!(
            self.is_contiguous(),
            Shape,
            op,
            "cannot reshape a strided view of shape {:?} strides {:?}",
            self.shape,
            self.strides
        );
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        crate::ensure!(
            n == self.numel(),
            Shape,
            op,
            "cannot reshape {:?} ({} elements) to {:?} ({} elements)",
            self.shape,
            self.numel(),
            shape,
            n
        );
        Ok(Tensor::new(&self.buffer, self.offset, shape, self.dtype))
    }

    /// Half-open range of elements this view can touch, `[offset, offset + span)`.
    pub fn element_span(&self) -> std::ops::Range<usize> {
        let mut last = self.offset;
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            if n == 0 {
                return self.offset..self.offset;
            }
            last += (n - 1) * s;
        }
        self.offset..last + 1
    }
    /// Byte range this view touches.
    pub fn byte_span(&self) -> std::ops::Range<u64> {
        let r = self.element_span();
        let sz = self.dtype.size() as u64;
        r.start as u64 * sz..r.end as u64 * sz
    }

    /// Whether two views share a buffer and their byte spans overlap.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        if self.buffer != other.buffer {
            return false;
        }
        let (a, b) = (self.byte_span(), other.byte_span());
        a.start < b.end && b.start < a.end
    }
    /// Whether two views are the same elements (same buffer, offset, shape, strides, dtype).
    pub fn same_view(&self, other: &Tensor) -> bool {
        self.buffer == other.buffer
            && self.offset == other.offset
            && self.shape == other.shape
            && self.strides == other.strides
            && self.dtype == other.dtype
    }

    /// Check the view against its buffer and the packing rules; `name` is the argument name used
    /// in messages (`"x"`, `"weight"` ...).
    pub fn validate(&self, op: &'static str, name: &str) -> Result<()> {
        crate::ensure!(
            self.strides.len() == self.shape.len(),
            Shape,
            op,
            "{name} has {} dims but {} strides",
            self.shape.len(),
            self.strides.len()
        );
        crate::ensure!(
            self.shape.iter().all(|&n| n > 0),
            Shape,
            op,
            "{name} has an empty dimension: shape {:?}",
            self.shape
        );
        let count = self
            .shape
            .iter()
            .try_fold(1u64, |a, &n| a.checked_mul(n as u64));
        crate::ensure!(
            count.is_some_and(|c| c < u32::MAX as u64),
            Limit,
            op,
            "{name} has shape {:?}: its element count is past the 32-bit indexing of the kernels",
            self.shape
        );
        // Overflow-safe span: every extent must fit in usize and in the u32 indexing of shaders.
        let mut last: u128 = self.offset as u128;
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            last += (n as u128 - 1) * s as u128;
        }
        let end_bytes = (last + 1) * self.dtype.size() as u128;
        crate::ensure!(
            end_bytes <= self.buffer.size() as u128,
            Bounds,
            op,
            "{name} view (offset {}, shape {:?}, strides {:?}, {}) ends at byte {} but its buffer has {} bytes",
            self.offset,
            self.shape,
            self.strides,
            self.dtype,
            end_bytes,
            self.buffer.size()
        );
        crate::ensure!(
            last < u32::MAX as u128,
            Limit,
            op,
            "{name} reaches element {last}, past the 32-bit element indexing of the kernels"
        );
        if let Some(&inner) = self.strides.last() {
            crate::ensure!(
                inner == 1 || *self.shape.last().unwrap() == 1,
                Bounds,
                op,
                "{name} must be contiguous in its last dimension (stride {inner}, shape {:?})",
                self.shape
            );
        }
        if self.dtype.is_half() {
            crate::ensure!(
                self.offset.is_multiple_of(2),
                Bounds,
                op,
                "{name} is {} and starts at element {}: half-precision views must start at an even element (two per 32-bit word)",
                self.dtype,
                self.offset
            );
            let inner = self.shape.last().copied().unwrap_or(1);
            crate::ensure!(
                inner % 2 == 0,
                Shape,
                op,
                "{name} is {} with innermost dimension {inner}: half-precision tensors need an even innermost dimension",
                self.dtype
            );
            let rank = self.rank();
            for (i, &s) in self.strides.iter().enumerate().take(rank.saturating_sub(1)) {
                crate::ensure!(
                    s % 2 == 0 || self.shape[i] == 1,
                    Bounds,
                    op,
                    "{name} is {} with stride {s} in dim {i}: half-precision strides must be even",
                    self.dtype
                );
            }
        }
        Ok(())
    }

    /// [`Tensor::validate`] for a view a kernel writes: also refuses a view that reaches one
    /// element twice (a zero or overlapping stride), whose writes would race with each other.
    pub fn validate_written(&self, op: &'static str, name: &str) -> Result<()> {
        self.validate(op, name)?;
        // (stride, size) of the dims longer than 1, sorted; on the stack for the usual ranks,
        // since every encode checks its written views.
        let mut stack = [(0usize, 0usize); 8];
        let mut heap = Vec::new();
        let dims: &mut [(usize, usize)] = if self.rank() <= stack.len() {
            let mut k = 0;
            for (&n, &stride) in self.shape.iter().zip(&self.strides) {
                if n > 1 {
                    stack[k] = (stride, n);
                    k += 1;
                }
            }
            &mut stack[..k]
        } else {
            heap.extend(
                self.shape
                    .iter()
                    .zip(&self.strides)
                    .map(|(&n, &stride)| (stride, n))
                    .filter(|&(_, n)| n > 1),
            );
            &mut heap
        };
        dims.sort_unstable();
        let mut extent = 1usize;
        for &mut (stride, n) in dims {
            crate::ensure!(
                stride >= extent,
                Bounds,
                op,
                "{name} (shape {:?}, strides {:?}) reaches some elements twice; written views must not overlap themselves",
                self.shape,
                self.strides
            );
            extent = stride.saturating_mul(n - 1).saturating_add(extent);
        }
        Ok(())
    }

    /// Check the dtype against an expected one.
    pub fn expect_dtype(&self, op: &'static str, name: &str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::dtype(
                op,
                format!("{name} is {} but must be {dtype}", self.dtype),
            ));
        }
        Ok(())
    }
}

/// `t` (`[batch, seq, heads, head_dim]` or `[seq, heads, head_dim]`) restricted to tokens
/// `s0 .. s0 + n` of batch row `b`: `[n, heads, head_dim]`, or `[1, n, heads, head_dim]` for a
/// 4-D view. The ops that split work past one binding window cut their views with it.
pub(crate) fn tokens_of(t: &Tensor, b: usize, s0: usize, n: usize) -> Tensor {
    let (sh, st) = (t.shape(), t.strides());
    if t.rank() == 3 {
        Tensor::with_strides(
            t.buffer(),
            t.offset() + s0 * st[0],
            &[n, sh[1], sh[2]],
            &[st[0], st[1], 1],
            t.dtype(),
        )
    } else {
        Tensor::with_strides(
            t.buffer(),
            t.offset() + b * st[0] + s0 * st[1],
            &[1, n, sh[2], sh[3]],
            &[st[0], st[1], st[2], 1],
            t.dtype(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DType::round` agrees with the `half` crate's f32 conversions (correct RNE) on f32 inputs,
    /// including ties, subnormals and overflow.
    #[test]
    fn round_matches_half_from_f32() {
        let mut s: u64 = 1;
        for i in 0..2_000_000u32 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bits = if i % 2 == 0 {
                (s >> 32) as u32
            } else {
                ((s >> 32) as u32 & 0x807f_ffff) | ((95 + (i % 50)) << 23)
            };
            let f = f32::from_bits(bits);
            if f.is_nan() {
                continue;
            }
            let want16 = half::f16::from_f32(f).to_f64();
            let want_b = half::bf16::from_f32(f).to_f64();
            assert_eq!(
                DType::F16.round(f as f64),
                want16,
                "f16 of {f:e} ({bits:#x})"
            );
            assert_eq!(
                DType::BF16.round(f as f64),
                want_b,
                "bf16 of {f:e} ({bits:#x})"
            );
        }
    }

    /// A value just above a bf16 tie in f64 rounds up, where rounding through f32 first would
    /// land on the tie and round to even (down).
    #[test]
    fn round_has_no_double_rounding() {
        let tie = 1.0 + 2f64.powi(-8); // halfway between bf16 1.0 and 1.0078125
        let above = tie + 2f64.powi(-40);
        assert_eq!(DType::BF16.round(above), 1.0078125);
        assert_eq!(DType::BF16.round(tie), 1.0);
        assert_eq!(DType::F16.round(65519.0), 65504.0);
        assert_eq!(DType::F16.round(65520.0), f64::INFINITY);
        assert_eq!(DType::F16.round(2f64.powi(-25)), 0.0);
        assert_eq!(DType::F16.round(2f64.powi(-25) * 1.5), 2f64.powi(-24));
    }
}
