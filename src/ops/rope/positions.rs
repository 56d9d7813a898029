//! Where positions come from ([`PositionIds`], [`Positions`]) and the Q/K/V views of a fused
//! projection ([`qkv_views`]).

use wgpu::util::DeviceExt;

use super::OP;
use crate::context::Context;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// An i32 position per token, `[seq]` (shared by every batch row) or `[batch, seq]`, anywhere in
/// a buffer with `STORAGE` usage. Positions may be arbitrary, non-monotonic and negative. The
/// dtype is i32 by construction (a float tensor cannot be passed); `check` converts I64 case
/// tensors after a range check.
#[derive(Clone, Debug)]
pub struct PositionIds {
    pub(super) buffer: wgpu::Buffer,
    pub(super) offset: usize,
    pub(super) shape: Vec<usize>,
    pub(super) strides: Vec<usize>,
}

impl PositionIds {
    /// Contiguous positions of `shape` starting `offset` i32 elements into `buffer`.
    pub fn new(buffer: &wgpu::Buffer, offset: usize, shape: &[usize]) -> Self {
        Self::with_strides(
            buffer,
            offset,
            shape,
            &crate::tensor::contiguous_strides(shape),
        )
    }
    /// Strided positions (strides in i32 elements).
    pub fn with_strides(
        buffer: &wgpu::Buffer,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> Self {
        PositionIds {
            buffer: buffer.clone(),
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        }
    }
    /// Upload host positions into a new buffer.
    pub fn upload(ctx: &Context, positions: &[i32], shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        crate::ensure!(
            n == positions.len(),
            Shape,
            OP,
            "positions shape {shape:?} holds {n} values but {} were given",
            positions.len()
        );
        let mut bytes = bytemuck::cast_slice::<i32, u8>(positions).to_vec();
        bytes.resize(bytes.len().max(4), 0);
        let buffer = ctx.scoped(OP, || {
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("rope positions"),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                })
        })?;
        Ok(Self::new(&buffer, 0, shape))
    }
    /// The buffer holding the positions.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// `[seq]` or `[batch, seq]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The same elements as a 4-byte [`Tensor`], for span and binding-window arithmetic only.
    pub(super) fn as_words(&self) -> Tensor {
        Tensor::with_strides(
            &self.buffer,
            self.offset,
            &self.shape,
            &self.strides,
            DType::F32,
        )
    }
}

/// Where positions come from.
#[derive(Clone, Copy, Debug)]
pub enum Positions<'a> {
    /// Token `s` of every batch row is at `start + s`. Positions are i32, as transformers'
    /// `position_ids` are used here (negative ones included, as left padding gives); the
    /// positions of rows appended to a [`KvCache`](crate::KvCache) come from the append itself,
    /// [`Appended::positions`](crate::Appended::positions), so no `len() as i32` is needed.
    Start(i32),
    /// One i32 per token.
    Ids(&'a PositionIds),
}

/// Views of Q, K and V inside a fused QKV projection `[tokens, (n_heads + 2 n_kv_heads) head_dim]`
/// that starts `offset` elements into `buffer`: `q [tokens, n_heads, head_dim]`,
/// `k` and `v [tokens, n_kv_heads, head_dim]`, all with token stride `(n_heads + 2 n_kv_heads) head_dim`.
pub fn qkv_views(
    buffer: &wgpu::Buffer,
    offset: usize,
    tokens: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
) -> (Tensor, Tensor, Tensor) {
    let row = (n_heads + 2 * n_kv_heads) * head_dim;
    let view = |off: usize, heads: usize| {
        Tensor::with_strides(
            buffer,
            offset + off,
            &[tokens, heads, head_dim],
            &[row, head_dim, 1],
            dtype,
        )
    };
    (
        view(0, n_heads),
        view(n_heads * head_dim, n_kv_heads),
        view((n_heads + n_kv_heads) * head_dim, n_kv_heads),
    )
}
