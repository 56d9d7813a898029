//! Streaming copy `dst = src`, written in WGSL: the bandwidth ceiling a WGSL kernel can reach.
//!
//! The benchmark runs these beside the model kernels and beside `copy_buffer_to_buffer`, on the
//! same device in the same run, and reports every kernel's bandwidth as a fraction of the best of
//! them. They are ordinary, validated ops, usable on any contiguous views of 4-byte words.
//!
//! Variants, each with its strategy:
//! - scalar: one `u32` per item, `per` items per invocation, each step of an invocation's loop a
//!   contiguous run of `workgroup` items across the workgroup.
//! - vec4: the same over `vec4<u32>` items (16 bytes); needs 16-byte aligned views and a byte
//!   length that is a multiple of 16.

use crate::context::Context;
use crate::error::Result;
use crate::pipeline::{PipelineKey, Window};
use crate::tensor::Tensor;

const OP: &str = "copy";

/// Uniform parameters; mirrors `struct Params` in `shaders/copy.wgsl` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Elements (or vec4s) to copy.
    pub n: u32,
    /// Element offset of the source in its binding.
    pub src_off: u32,
    /// Element offset of the destination in its binding.
    pub dst_off: u32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// One streaming-copy kernel: item width, items per invocation and workgroup size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Copy `vec4<u32>` items instead of `u32`.
    pub vec4: bool,
    /// Items per invocation (>= 1).
    pub per: u32,
    /// Workgroup size (1..=256).
    pub workgroup: u32,
}

impl Variant {
    /// A short name such as `wgsl_vec4_x4_wg256`, used in benchmark records.
    pub fn name(&self) -> String {
        format!(
            "wgsl_{}{}_wg{}",
            if self.vec4 { "vec4" } else { "scalar" },
            if self.per > 1 {
                format!("_x{}", self.per)
            } else {
                String::new()
            },
            self.workgroup
        )
    }

    /// Bytes per item.
    pub fn item_bytes(&self) -> u64 {
        if self.vec4 {
            16
        } else {
            4
        }
    }

    /// The pipeline key of this copy variant.
    pub fn key(&self) -> PipelineKey {
        PipelineKey::new(
            super::COPY,
            if self.vec4 {
                "copy_vec4"
            } else {
                "copy_scalar"
            },
            vec![("WG", self.workgroup), ("PER", self.per)],
        )
    }

    /// Record `dst = src`. Both views must be contiguous, hold the same number of bytes (a
    /// multiple of the item size), start on an item boundary, and not share a buffer.
    pub fn encode(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        src: &Tensor,
        dst: &Tensor,
    ) -> Result<()> {
        src.validate(OP, "src")?;
        dst.validate(OP, "dst")?;
        crate::ensure!(
            self.per >= 1 && (1..=256).contains(&self.workgroup),
            Param,
            OP,
            "per {} must be >= 1 and workgroup {} in 1..=256",
            self.per,
            self.workgroup
        );
        crate::ensure!(
            src.is_contiguous() && dst.is_contiguous(),
            Shape,
            OP,
            "src {:?} and dst {:?} must be contiguous",
            src.shape(),
            dst.shape()
        );
        let (s, d) = (src.byte_span(), dst.byte_span());
        let item = self.item_bytes();
        crate::ensure!(
            s.end - s.start == d.end - d.start,
            Shape,
            OP,
            "src holds {} bytes but dst holds {}",
            s.end - s.start,
            d.end - d.start
        );
        crate::ensure!(
            (s.end - s.start) % item == 0 && s.start % item == 0 && d.start % item == 0,
            Bounds,
            OP,
            "{} items need byte offsets (src {}, dst {}) and a length ({}) that are multiples of {item}",
            if self.vec4 { "vec4" } else { "u32" },
            s.start,
            d.start,
            s.end - s.start
        );
        crate::ensure!(
            src.buffer() != dst.buffer(),
            Alias,
            OP,
            "src and dst must be in different buffers"
        );
        let n = (s.end - s.start) / item;
        crate::ensure!(
            n <= u32::MAX as u64,
            Limit,
            OP,
            "{n} items exceed 32-bit indexing"
        );
        let sw = Window::covering(ctx, OP, &[src])?;
        let dw = Window::covering(ctx, OP, &[dst])?;
        let params = Params {
            n: n as u32,
            src_off: ((s.start - sw.byte_start) / item) as u32,
            dst_off: ((d.start - dw.byte_start) / item) as u32,
            _pad: 0,
        };
        let per_group = self.workgroup as u64 * self.per as u64;
        let (bs, bd) = if self.vec4 {
            ("src4", "dst4")
        } else {
            ("src", "dst")
        };
        ctx.scoped(OP, || {
            ctx.encode_kernel(
                OP,
                enc,
                &self.key(),
                &params,
                &[(bs, sw.resource()), (bd, dw.resource())],
                n.div_ceil(per_group),
            )
        })?
    }
}

/// The variants the benchmark measures; the best of them is the WGSL copy ceiling.
pub fn bench_variants() -> Vec<Variant> {
    // Small workgroups with many items per invocation suit CPU drivers (a workgroup of 8 is one
    // SIMD step of lavapipe); 64 and 256 with few items suit GPUs.
    let mut v = Vec::new();
    for (vec4, per, workgroup) in [
        (false, 1, 256),
        (false, 4, 64),
        (false, 16, 8),
        (true, 1, 64),
        (true, 1, 256),
        (true, 4, 64),
        (true, 4, 256),
        (true, 16, 8),
        (true, 32, 8),
    ] {
        v.push(Variant {
            vec4,
            per,
            workgroup,
        });
    }
    v
}

/// Every pipeline key the copy op can produce (the portability tests compile each).
pub fn all_variant_keys() -> Vec<PipelineKey> {
    bench_variants().iter().map(Variant::key).collect()
}
