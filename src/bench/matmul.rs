//! A bench-only tiled f32 matmul (`shaders/matmul.wgsl`): the compute ceiling that prefill
//! attention's GFLOP/s is compared with (`fraction_of_matmul`). The benchmark runs a few tilings
//! on the QK^T and PV shapes of one 2048-token prefill head and takes the best as the `ceiling`.
//!
//! `c[m, n] = a[m, k] · b[k, n]`, every tensor f32, contiguous and row-major. Variants:
//! - register tiling (`matmul_reg`): each invocation owns `tm` rows x 4 columns, no workgroup
//!   memory; what CPU adapters run fastest.
//! - named 4x4 register tiles (`matmul_mat4`): 8 invocations, each 16 rows x 8 columns in
//!   mat4x4 registers, vec4 loads of both operands; written for llvmpipe the way the CPU-adapter
//!   prefill (`Kind::PrefillKeys`) is, so that the ceiling is not below what prefill reaches.
//! - workgroup-memory tiling (`matmul_tiled`): 64 x 64 output tiles from 64 x 16 / 16 x 64 tiles
//!   of A / B staged per K step; the usual GPU kernel.

use crate::context::Context;
use crate::error::Result;
use crate::pipeline::{PipelineKey, Window};
use crate::tensor::{DType, Tensor};

const OP: &str = "matmul";

/// Uniform parameters; mirrors `struct MatmulParams` in `shaders/matmul.wgsl` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    /// Rows of a and c.
    pub m: u32,
    /// Columns of b and c.
    pub n: u32,
    /// Columns of a, rows of b.
    pub k: u32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// One tiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `matmul_reg`: `tm` rows x one vec4 of columns per invocation, `wgx` x `wgy` workgroups.
    Reg {
        /// Rows per invocation (1..=8).
        tm: u32,
        /// Invocations along n (vec4 columns).
        wgx: u32,
        /// Invocations along m.
        wgy: u32,
    },
    /// `matmul_tiled`: 64 x 64 output tiles, 16 x 16 invocations, K steps of 16.
    Tiled,
    /// `matmul_mat4`: 16 x 64 output tiles, 8 invocations of 16 x 8 in mat4x4 registers, K
    /// steps of 4.
    Mat4,
}

impl Variant {
    /// The tilings the benchmark tries (few, to keep the cold compile short).
    pub const BENCH: [Variant; 4] = [
        Variant::Mat4,
        Variant::Reg {
            tm: 4,
            wgx: 8,
            wgy: 8,
        },
        Variant::Reg {
            tm: 8,
            wgx: 8,
            wgy: 4,
        },
        Variant::Tiled,
    ];

    /// A short name such as `reg_tm8_wg8x4` or `tiled_64x64`.
    pub fn name(&self) -> String {
        match self {
            Variant::Reg { tm, wgx, wgy } => format!("reg_tm{tm}_wg{wgx}x{wgy}"),
            Variant::Tiled => "tiled_64x64".into(),
            Variant::Mat4 => "mat4_16x8_wg8".into(),
        }
    }

    /// The pipeline key of this variant.
    pub fn key(&self) -> PipelineKey {
        match *self {
            Variant::Reg { tm, wgx, wgy } => PipelineKey::new(
                super::MATMUL,
                "matmul_reg",
                vec![("TM", tm), ("WGX", wgx), ("WGY", wgy)],
            ),
            Variant::Tiled => PipelineKey::new(super::MATMUL, "matmul_tiled", vec![]),
            Variant::Mat4 => PipelineKey::new(super::MATMUL, "matmul_mat4", vec![]),
        }
    }

    /// Output rows and vec4 columns one workgroup covers.
    fn block(&self) -> (usize, usize) {
        match *self {
            Variant::Reg { tm, wgx, wgy } => ((tm * wgy) as usize, wgx as usize),
            Variant::Tiled => (64, 16),
            Variant::Mat4 => (16, 16),
        }
    }

    /// Record `c = a · b` (`a: [m, k]`, `b: [k, n]`, `c: [m, n]`, f32, contiguous).
    pub fn encode(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
    ) -> Result<()> {
        for (name, t) in [("a", a), ("b", b), ("c", c)] {
            t.validate(OP, name)?;
            t.expect_dtype(OP, name, DType::F32)?;
            crate::ensure!(
                t.rank() == 2 && t.is_contiguous() && t.offset() == 0,
                Shape,
                OP,
                "{name} {:?} must be a contiguous [rows, cols] view at the start of its buffer",
                t.shape()
            );
        }
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        crate::ensure!(
            b.shape()[0] == k && c.shape() == [m, n],
            Shape,
            OP,
            "a {:?} x b {:?} does not give c {:?}",
            a.shape(),
            b.shape(),
            c.shape()
        );
        let (bm, bn4) = self.block();
        let k_step = match self {
            Variant::Tiled => 16,
            Variant::Mat4 => 4,
            Variant::Reg { .. } => 1,
        };
        crate::ensure!(
            m.is_multiple_of(bm) && n.is_multiple_of(4 * bn4) && k.is_multiple_of(k_step),
            Shape,
            OP,
            "{}: m {m} must be a multiple of {bm}, n {n} of {}, k {k} of {k_step}",
            self.name(),
            4 * bn4
        );
        let params = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            _pad: 0,
        };
        let (aw, bw, cw) = (
            Window::covering(ctx, OP, &[a])?,
            Window::covering(ctx, OP, &[b])?,
            Window::covering(ctx, OP, &[c])?,
        );
        let (gx, gy) = ((n / 4 / bn4) as u32, (m / bm) as u32);
        // A 2-D grid: the launch path's linear grid would mix up rows and columns.
        let kernel = ctx.kernel(OP, &self.key())?;
        let named = [
            ("a", aw.resource()),
            ("a4", aw.resource()),
            ("b", bw.resource()),
            ("c", cw.resource()),
        ];
        let (bind_group, offset) =
            ctx.bind_params(OP, &kernel, bytemuck::bytes_of(&params), &named)?;
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(OP),
            timestamp_writes: None,
        });
        kernel.bind(&mut pass, &bind_group, offset);
        pass.dispatch_workgroups(gx, gy, 1);
        Ok(())
    }
}

/// Every pipeline key the benchmark's matmul uses (the portability tests compile each).
pub fn all_variant_keys() -> Vec<PipelineKey> {
    Variant::BENCH.iter().map(Variant::key).collect()
}
