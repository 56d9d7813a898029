//! # llama-kernels
//!
//! WGSL compute kernels for the three building blocks Llama made standard — **RMSNorm**,
//! **RoPE** and **GQA attention** — run through `wgpu` on Vulkan, Metal, DX12 and GL, with a plain
//! f64 CPU reference for every kernel.
//!
//! Kernels record into *your* `wgpu::CommandEncoder`, on *your* device, reading and writing views
//! into *your* buffers ([`Tensor`]). Each op also has a `run` form that submits and waits.
//!
//! ## Features
//! The library needs only `wgpu`, `naga`, `bytemuck`, `pollster`, `half` and `thiserror`; with
//! the default features (none) that is all a dependent compiles. Two non-default features add
//! the tools' parts that live here: `cases` (the case-file reader, `llama_kernels::cases`, behind
//! `llama-kernels check`; `safetensors`, `serde_json`) and `bench` (the benchmark harness,
//! `llama_kernels::bench`, with its copy ceilings and unfused baselines; `serde_json`, `clap`). The
//! `llama-kernels` command and the tiny model runner are the workspace's tools crate (`tools/`),
//! which turns both on; `cargo run --release` and `cargo test` at the repository root build it.
//!
//! ## Shape legend (used in every doc comment of the crate)
//! | letter / name | meaning |
//! |---|---|
//! | `n`, `hidden` | length of a normalised row |
//! | `batch` | independent sequences |
//! | `seq`, `q_len` | tokens in this call (queries) |
//! | `kv_len` | keys/values visible to attention |
//! | `n_heads` | query heads |
//! | `n_kv_heads` | key/value heads; `g = n_heads / n_kv_heads` is the GQA group size |
//! | `head_dim` | elements per head |
//! | `rotary_dim` | leading elements of a head that RoPE rotates (even, `<= head_dim`) |
//!
//! Views are row-major with element strides; the last dimension is always contiguous. f16 and bf16
//! tensors are stored packed two per 32-bit word, so they need an even innermost dimension and an
//! even element offset. All arithmetic is f32.
//!
//! ## Example: RMSNorm from your own wgpu code
//! ```no_run
//! use llama_kernels::{Context, DType, RmsNorm, Tensor};
//! # fn main() -> Result<(), llama_kernels::Error> {
//! # let ctx0 = Context::new()?;
//! # let (device, queue) = (ctx0.device().clone(), ctx0.queue().clone());
//! // `device` and `queue` are the application's own.
//! let ctx = Context::from_device(&device, &queue);
//! let hidden = 4096;
//! let x = ctx.upload(&vec![0.5f32; 2 * hidden], &[2, hidden])?;      // or Tensor::new(&your_buffer, ..)
//! let w = ctx.upload(&vec![1.0f32; hidden], &[hidden])?;
//! let out = ctx.empty(&[2, hidden], DType::F32)?;
//! let mut encoder = device.create_command_encoder(&Default::default());
//! RmsNorm::new(1e-5).encode(&ctx, &mut encoder, &x, &w, &out)?;
//! queue.submit([encoder.finish()]);
//! let y = ctx.read_f32(&out)?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "cases")]
pub mod cases;
pub mod compare;
pub mod context;
pub mod error;
pub mod kv_format;
pub mod ops;
pub mod pipeline;
pub mod reference;
pub mod tensor;

pub use context::{Caps, Context};
pub use error::{Error, Result};
pub use kv_format::KvFormat;
pub use ops::attention::Attention;
pub use ops::kv_cache::{Appended, KvCache, KvCacheConfig};
pub use ops::paged::{PageLayout, PageTable, PagedBatch, PagedKvCache, PagedKvConfig};
pub use ops::rms_norm::{Residual, RmsNorm};
pub use ops::rope::{HeadNorm, Layout, PositionIds, Positions, Rope, Scaling};
pub use tensor::{DType, Element, Tensor};

/// The README's Rust examples compile as doctests, so the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The Rust examples in docs/ops.md compile as doctests too.
#[cfg(doctest)]
#[doc = include_str!("../docs/ops.md")]
pub struct OpsDoctests;
