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
//! (`cargo run --release --example rope_sincos`). [`SinCos`] keeps the other methods for such measurements.
//!
//! ## Strategy
//! Two entry points; the dispatcher picks by alignment ([`Rope::variant`] reports the choice):
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
//! Both split heads into more groups when tokens x columns alone would not fill the device
//! (`TARGET_INVOCATIONS`).
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

use wgpu::util::DeviceExt;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{whole, PipelineKey, Shader, Window};
use crate::tensor::{DType, Tensor};

pub use crate::reference::rope::{Layout, Scaling};

const OP: &str = "rope";
const WG: u32 = 64;
/// Invocations a dispatch aims for before it splits heads into more groups.
const TARGET_INVOCATIONS: usize = 1 << 16;
/// Bytes of a token that one `rope_vec4` invocation walks over (its group of heads).
const VEC4_GROUP_BYTES: usize = 4096;

/// How the kernel evaluates cos and sin. Only [`SinCos::Exact`] meets the accuracy target; the
/// others exist to measure what it buys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SinCos {
    /// Fixed-point angle, own polynomials (the default).
    #[default]
    Exact,
    /// Fixed-point angle reduced to [-pi, pi], then WGSL's `cos` / `sin`.
    BuiltinReduced,
    /// `f32(pos) * f32(inv_freq)`, then WGSL's `cos` / `sin` (what most frameworks do).
    NaiveF32,
    /// A `[seq_len, rotary_dim/2]` cos/sin table built in f64 on the host at every call and
    /// indexed by position (positions must lie in `0..seq_len`, and are not checked on the
    /// GPU): the table alternative, kept to measure it.
    HostTable,
}

impl SinCos {
    fn code(self) -> u32 {
        match self {
            SinCos::Exact => 0,
            SinCos::BuiltinReduced => 1,
            SinCos::NaiveF32 => 2,
            SinCos::HostTable => 3,
        }
    }
}

/// One RoPE configuration: copy `theta`, `rotary_dim` and `rope_scaling` from a model's config.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub layout: Layout,
    /// Leading elements of each head that are rotated (even, `<= head_dim`); `None` = `head_dim`.
    pub rotary_dim: Option<usize>,
    /// `rope_theta` (the base), finite and > 0.
    pub theta: f64,
    pub scaling: Scaling,
    /// Sequence length that dynamic NTK and LongRoPE see (HF: `max(position_ids) + 1`). `None`:
    /// `start + seq` with a start offset; a positions buffer needs it set (the host cannot read
    /// GPU positions without a stall).
    pub seq_len: Option<usize>,
    pub sincos: SinCos,
}

impl Default for Rope {
    fn default() -> Self {
        Rope {
            layout: Layout::Half,
            rotary_dim: None,
            theta: 10000.0,
            scaling: Scaling::Default,
            seq_len: None,
            sincos: SinCos::Exact,
        }
    }
}

/// An i32 position per token, `[seq]` (shared by every batch row) or `[batch, seq]`, anywhere in
/// a buffer with `STORAGE` usage. Positions may be arbitrary, non-monotonic and negative. The
/// dtype is i32 by construction (a float tensor cannot be passed); `check` converts I64 case
/// tensors after a range check.
#[derive(Clone, Debug)]
pub struct PositionIds {
    buffer: wgpu::Buffer,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
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
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The same elements as a 4-byte [`Tensor`], for span and binding-window arithmetic only.
    fn as_words(&self) -> Tensor {
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
    /// Token `s` of every batch row is at `start + s`.
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

/// Uniform parameters; mirrors `struct Params` in `shaders/rope.wgsl` (128 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n_tokens: u32,
    pub seq: u32,
    pub n_cols: u32,
    pub n_quads: u32,
    pub n_hgroups: u32,
    pub heads_per_group: u32,
    pub half_rot: u32,
    pub head_dim: u32,
    pub a_off: u32,
    pub a_bstride: u32,
    pub a_sstride: u32,
    pub a_hstride: u32,
    pub a_heads: u32,
    pub b_heads: u32,
    pub b_off: u32,
    pub b_bstride: u32,
    pub b_sstride: u32,
    pub b_hstride: u32,
    pub o_off: u32,
    pub o_bstride: u32,
    pub o_sstride: u32,
    pub o_hstride: u32,
    pub pos_off: u32,
    pub pos_bstride: u32,
    pub pos_sstride: u32,
    pub pos_start: i32,
    pub scale: f32,
    pub _pad0: u32,
    /// `rope_vec4` only: vec4 distance between the halves of a head (`half_rot / lanes`).
    pub v_half: u32,
    pub _pad1: u32,
    pub _pad2: u32,
    pub _pad3: u32,
}

/// The per-pair entry of the frequency table; mirrors `struct Freq` in `shaders/rope.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Freq {
    /// `frac(inv_freq / 2pi) * 2^64`, high word.
    pub turn_hi: u32,
    /// Low word.
    pub turn_lo: u32,
    /// `inv_freq` rounded to f32 ([`SinCos::NaiveF32`] only).
    pub inv_freq: f32,
    pub _pad: u32,
}

/// `frac(inv_freq / 2pi)` as a 64-bit fixed-point fraction of a turn, (high, low) words.
///
/// The division is done in double-double (2pi = `TAU + TAU_LO`), so the turn is right to about
/// 2^-60 for any finite `inv_freq`; the kernel multiplies it by the integer position.
pub fn fixed_point_turn(inv_freq: f64) -> (u32, u32) {
    const TAU_LO: f64 = 2.449_293_598_294_706_4e-16;
    let t = inv_freq / std::f64::consts::TAU;
    // inv_freq = t * (TAU + TAU_LO) + r exactly enough: the residual r is exact by fma.
    let r = (-t).mul_add(std::f64::consts::TAU, inv_freq) - t * TAU_LO;
    let t_lo = r / std::f64::consts::TAU;
    let frac = t - t.floor(); // exact
    let x = frac * 4294967296.0; // exact (power of two)
    let mut hi = x.floor();
    let mut rem = (x - hi) + t_lo * 4294967296.0;
    // `rem` is within a unit or two of [0, 1) for real frequencies, but once ulp(inv_freq) is
    // far above 1 (theta near 0) it is huge: carry with a floor, never a loop of +-1 steps,
    // which would not terminate there. The second step catches -tiny + 1 rounding to 1.
    let carry = rem.floor();
    rem -= carry;
    hi += carry;
    if rem >= 1.0 {
        rem -= 1.0;
        hi += 1.0;
    }
    let mut lo = (rem * 4294967296.0).round();
    if lo >= 4294967296.0 {
        lo = 0.0;
        hi += 1.0;
    }
    let hi = hi.rem_euclid(4294967296.0);
    (hi as u32, lo as u32)
}

/// [`Freq`] entries for an f64 `inv_freq` table.
fn turns(inv: &[f64]) -> Vec<Freq> {
    inv.iter()
        .map(|&f| {
            let (turn_hi, turn_lo) = fixed_point_turn(f);
            Freq {
                turn_hi,
                turn_lo,
                inv_freq: f as f32,
                _pad: 0,
            }
        })
        .collect()
}

/// The code-shaping decisions for one dispatch; the pipeline key is derived from it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub dtype: DType,
    pub layout: Layout,
    pub pos_buf: bool,
    pub in_place: bool,
    pub x_in_dst: bool,
    pub sincos: SinCos,
    /// The `rope_vec4` entry point (in place, 16-byte aligned heads; see [`Rope::variant`]).
    pub vec4: bool,
}

impl Variant {
    pub fn key(&self) -> PipelineKey {
        PipelineKey::new(
            Shader::Rope,
            if self.vec4 { "rope_vec4" } else { "rope" },
            vec![
                ("DTYPE", self.dtype.shader_code()),
                ("LAYOUT", (self.layout == Layout::Interleaved) as u32),
                ("POS_BUF", self.pos_buf as u32),
                ("IN_PLACE", self.in_place as u32),
                ("X_IN_DST", self.x_in_dst as u32),
                ("SINCOS", self.sincos.code()),
                ("WG", WG),
            ],
        )
    }
}

/// Every pipeline key the dispatcher can produce (the portability tests compile each).
pub fn all_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for dtype in DType::ALL {
        for layout in [Layout::Half, Layout::Interleaved] {
            for pos_buf in [false, true] {
                for (in_place, x_in_dst) in [(true, false), (false, false), (false, true)] {
                    for sincos in [
                        SinCos::Exact,
                        SinCos::BuiltinReduced,
                        SinCos::NaiveF32,
                        SinCos::HostTable,
                    ] {
                        keys.push(
                            Variant {
                                dtype,
                                layout,
                                pos_buf,
                                in_place,
                                x_in_dst,
                                sincos,
                                vec4: false,
                            }
                            .key(),
                        );
                        if in_place {
                            keys.push(
                                Variant {
                                    dtype,
                                    layout,
                                    pos_buf,
                                    in_place,
                                    x_in_dst,
                                    sincos,
                                    vec4: true,
                                }
                                .key(),
                            );
                        }
                    }
                }
            }
        }
    }
    keys
}

/// A validated 3- or 4-D view as `[batch, seq, heads, head_dim]` with element strides.
#[derive(Clone, Copy, Debug)]
struct View4 {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    bstride: usize,
    sstride: usize,
    hstride: usize,
}

/// Whether a view can take the `rope_vec4` path: its first element and every stride that
/// matters are 16-byte aligned, and rotary_dim spans whole pairs of vec4s (8 f32 or 16 halves),
/// so every access is a whole, aligned vec4 inside the view.
fn vec4_aligned(ctx: &Context, rd: usize, v: &View4, offset: usize, dtype: DType) -> bool {
    let lanes = 16 / dtype.size();
    let ok = |dim: usize, stride: usize| dim <= 1 || stride % lanes == 0;
    ctx.limits().min_storage_buffer_offset_alignment % 16 == 0
        && rd % (2 * lanes) == 0
        && offset % lanes == 0
        && ok(v.batch, v.bstride)
        && ok(v.seq, v.sstride)
        && ok(v.heads, v.hstride)
}

fn view4(t: &Tensor, name: &str) -> Result<View4> {
    t.validate(OP, name)?;
    let (s, st) = (t.shape(), t.strides());
    let v = match t.rank() {
        3 => View4 {
            batch: 1,
            seq: s[0],
            heads: s[1],
            head_dim: s[2],
            bstride: 0,
            sstride: st[0],
            hstride: st[1],
        },
        4 => View4 {
            batch: s[0],
            seq: s[1],
            heads: s[2],
            head_dim: s[3],
            bstride: st[0],
            sstride: st[1],
            hstride: st[2],
        },
        r => {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} must be [seq, heads, head_dim] or [batch, seq, heads, head_dim], got {r} dims {s:?}"
                ),
            ))
        }
    };
    // A written view must not reach one element twice (the rotation would race with itself).
    let mut dims: Vec<(usize, usize)> = s
        .iter()
        .zip(st)
        .map(|(&n, &stride)| (stride, n))
        .filter(|&(_, n)| n > 1)
        .collect();
    dims.sort();
    let mut extent = 1usize;
    for (stride, n) in dims {
        crate::ensure!(
            stride >= extent,
            Bounds,
            OP,
            "{name} (shape {s:?}, strides {st:?}) reaches some elements twice; rotated views must not overlap themselves"
        );
        extent = stride.saturating_mul(n - 1).saturating_add(extent);
    }
    Ok(v)
}

/// Everything `record` needs, decided before any GPU work.
struct Plan {
    variant: Variant,
    params: Params,
    freqs: Vec<Freq>,
    threads: u64,
}

fn check_f(name: &str, v: f64, positive: bool) -> Result<()> {
    crate::ensure!(
        v.is_finite() && (!positive || v > 0.0),
        Param,
        OP,
        "{name} must be finite{}, got {v}",
        if positive { " and > 0" } else { "" }
    );
    Ok(())
}

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
    /// The same op with the sequence length that dynamic NTK and LongRoPE see.
    pub fn with_seq_len(mut self, seq_len: usize) -> Self {
        self.seq_len = Some(seq_len);
        self
    }

    /// Check `theta`, `rotary_dim` and the scaling parameters for heads of `head_dim` elements.
    pub fn validate_params(&self, head_dim: usize) -> Result<usize> {
        check_f("theta", self.theta, true)?;
        let rd = self.rotary_dim.unwrap_or(head_dim);
        crate::ensure!(
            rd % 2 == 0 && rd > 0 && rd <= head_dim,
            Param,
            OP,
            "rotary_dim {rd} must be even, > 0 and <= head_dim {head_dim}"
        );
        let pairs = rd / 2;
        let orig_ok = |v: f64| check_f("original_max_position_embeddings", v, true);
        match &self.scaling {
            Scaling::Default => {}
            Scaling::Linear { factor } => check_f("factor", *factor, true)?,
            Scaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                check_f("factor", *factor, true)?;
                check_f("low_freq_factor", *low_freq_factor, true)?;
                check_f("high_freq_factor", *high_freq_factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                crate::ensure!(
                    low_freq_factor < high_freq_factor,
                    Param,
                    OP,
                    "llama3 low_freq_factor {low_freq_factor} must be < high_freq_factor {high_freq_factor}"
                );
            }
            Scaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                ..
            } => {
                check_f("factor", *factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                check_f("beta_fast", *beta_fast, true)?;
                check_f("beta_slow", *beta_slow, true)?;
                crate::ensure!(
                    self.theta != 1.0,
                    Param,
                    OP,
                    "yarn needs theta != 1 (its correction range divides by ln(theta))"
                );
                if let Some(a) = attention_factor {
                    check_f("attention_factor", *a, true)?;
                }
                for (n, m) in [("mscale", mscale), ("mscale_all_dim", mscale_all_dim)] {
                    if let Some(m) = m {
                        check_f(n, *m, false)?;
                    }
                }
            }
            Scaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => {
                check_f("factor", *factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                crate::ensure!(
                    rd > 2,
                    Param,
                    OP,
                    "dynamic NTK needs rotary_dim > 2 (its exponent is dim / (dim - 2)), got {rd}"
                );
            }
            Scaling::LongRope {
                short_factor,
                long_factor,
                factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                check_f("factor", *factor, true)?;
                orig_ok(*original_max_position_embeddings)?;
                if let Some(a) = attention_factor {
                    check_f("attention_factor", *a, true)?;
                }
                for (n, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    crate::ensure!(
                        f.len() == pairs,
                        Param,
                        OP,
                        "longrope {n} has {} entries but rotary_dim {rd} needs {pairs}",
                        f.len()
                    );
                    if let Some(bad) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                        return Err(Error::param(
                            OP,
                            format!("longrope {n} entries must be finite and > 0, got {bad}"),
                        ));
                    }
                }
            }
            Scaling::InvFreq {
                inv_freq,
                attention_factor,
            } => {
                crate::ensure!(
                    inv_freq.len() == pairs,
                    Param,
                    OP,
                    "inv_freq table has {} entries but rotary_dim {rd} needs {pairs}",
                    inv_freq.len()
                );
                if let Some(bad) = inv_freq.iter().find(|v| !v.is_finite()) {
                    return Err(Error::param(
                        OP,
                        format!("inv_freq entries must be finite, got {bad}"),
                    ));
                }
                check_f("attention_factor", *attention_factor, false)?;
            }
        }
        Ok(rd)
    }

    /// The f64 `inv_freq` table (`rotary_dim / 2` entries) and the cos/sin multiplier for heads
    /// of `head_dim` elements, after validation. `seq_len` is what dynamic NTK and LongRoPE see.
    pub fn inv_freq(&self, head_dim: usize, seq_len: usize) -> Result<(Vec<f64>, f64)> {
        let rd = self.validate_params(head_dim)?;
        let (inv, attn) =
            crate::reference::rope::frequencies(self.theta, rd, &self.scaling, seq_len);
        if let Some(bad) = inv.iter().find(|v| !v.is_finite()) {
            return Err(Error::param(
                OP,
                format!(
                    "{} scaling gives a non-finite inv_freq {bad}",
                    self.scaling.rope_type()
                ),
            ));
        }
        crate::ensure!(
            attn.is_finite(),
            Param,
            OP,
            "{} scaling gives a non-finite attention_factor {attn}",
            self.scaling.rope_type()
        );
        Ok((inv, attn))
    }

    /// The per-pair table the kernel reads (fixed-point turns of [`Rope::inv_freq`]) and the
    /// cos/sin multiplier, for kernels that fuse RoPE (the angle code is `turn_of` and
    /// `cos_sin` in `shaders/rope.wgsl`).
    pub fn turn_table(&self, head_dim: usize, seq_len: usize) -> Result<(Vec<Freq>, f32)> {
        let (inv, attn) = self.inv_freq(head_dim, seq_len)?;
        Ok((turns(&inv), attn as f32))
    }

    fn plan(
        &self,
        ctx: &Context,
        a: &Tensor,
        b: Option<&Tensor>,
        out: Option<&Tensor>,
        positions: Positions<'_>,
    ) -> Result<Plan> {
        let va = view4(a, "x")?;
        let dtype = a.dtype();
        let rd = self.validate_params(va.head_dim)?;
        if dtype.is_half() && self.layout == Layout::Half {
            crate::ensure!(
                rd % 4 == 0,
                Param,
                OP,
                "rotary_dim {rd} with {dtype} storage and the half layout must be a multiple of 4 (pairs (i, i + rotary_dim/2) must share 32-bit words)"
            );
        }
        let mut params = Params {
            n_tokens: 0,
            seq: va.seq as u32,
            half_rot: (rd / 2) as u32,
            head_dim: va.head_dim as u32,
            a_heads: va.heads as u32,
            a_bstride: va.bstride as u32,
            a_sstride: va.sstride as u32,
            a_hstride: va.hstride as u32,
            ..Default::default()
        };
        if let Some(b) = b {
            let vb = view4(b, "k")?;
            b.expect_dtype(OP, "k", dtype)?;
            crate::ensure!(
                vb.batch == va.batch && vb.seq == va.seq && vb.head_dim == va.head_dim,
                Shape,
                OP,
                "k has shape {:?} but q has {:?}: batch, seq and head_dim must match",
                b.shape(),
                a.shape()
            );
            crate::ensure!(
                a.buffer() == b.buffer(),
                Alias,
                OP,
                "q and k must share a buffer to be rotated in one dispatch"
            );
            // Disjoint per token, with the same token strides, and both inside one token stride.
            let ext = |v: &View4, off: usize| (off, off + (v.heads - 1) * v.hstride + v.head_dim);
            let (qa, qe) = ext(&va, a.offset());
            let (ka, ke) = ext(&vb, b.offset());
            let lo = qa.min(ka);
            let span = qe.max(ke) - lo;
            let same_strides = (va.seq == 1 || va.sstride == vb.sstride)
                && (va.batch == 1 || va.bstride == vb.bstride);
            let fits = (va.seq == 1 || span <= va.sstride)
                && (va.batch == 1 || span + (va.seq - 1) * va.sstride <= va.bstride);
            crate::ensure!(
                same_strides && fits && (qe <= ka || ke <= qa),
                Alias,
                OP,
                "q (offset {}, strides {:?}) and k (offset {}, strides {:?}) overlap or are not laid out token by token with the same strides",
                a.offset(),
                a.strides(),
                b.offset(),
                b.strides()
            );
            params.b_heads = vb.heads as u32;
            params.b_bstride = vb.bstride as u32;
            params.b_sstride = vb.sstride as u32;
            params.b_hstride = vb.hstride as u32;
        }
        let (mut in_place, mut x_in_dst) = (true, false);
        if let Some(o) = out {
            o.expect_dtype(OP, "out", dtype)?;
            crate::ensure!(
                o.shape() == a.shape(),
                Shape,
                OP,
                "out has shape {:?} but x has {:?}",
                o.shape(),
                a.shape()
            );
            let vo = view4(o, "out")?;
            if !o.same_view(a) {
                in_place = false;
                crate::ensure!(
                    !o.overlaps(a),
                    Alias,
                    OP,
                    "out overlaps x: it must be exactly x (in place) or disjoint"
                );
                x_in_dst = o.buffer() == a.buffer();
                params.o_bstride = vo.bstride as u32;
                params.o_sstride = vo.sstride as u32;
                params.o_hstride = vo.hstride as u32;
            }
        }
        let tokens = va.batch * va.seq;
        params.n_tokens = tokens as u32;
        let pos_buf = match positions {
            Positions::Start(start) => {
                crate::ensure!(
                    start as i64 + va.seq as i64 - 1 <= i32::MAX as i64,
                    Param,
                    OP,
                    "start {start} + seq {} passes the i32 position range",
                    va.seq
                );
                params.pos_start = start;
                false
            }
            Positions::Ids(ids) => {
                let shape = ids.shape.clone();
                let ok = shape == [va.seq] || shape == [va.batch, va.seq];
                crate::ensure!(
                    ok,
                    Shape,
                    OP,
                    "positions has shape {shape:?} but x has batch {} and seq {}: it must be [{}] or [{}, {}]",
                    va.batch,
                    va.seq,
                    va.seq,
                    va.batch,
                    va.seq
                );
                let words = ids.as_words();
                crate::ensure!(
                    ids.strides.len() == shape.len(),
                    Shape,
                    OP,
                    "positions has {} dims but {} strides",
                    shape.len(),
                    ids.strides.len()
                );
                let span = words.byte_span();
                crate::ensure!(
                    span.end <= ids.buffer.size(),
                    Bounds,
                    OP,
                    "positions view (offset {}, shape {shape:?}, strides {:?}) ends at byte {} but its buffer has {} bytes",
                    ids.offset,
                    ids.strides,
                    span.end,
                    ids.buffer.size()
                );
                crate::ensure!(
                    ids.buffer != *a.buffer() && out.is_none_or(|o| ids.buffer != *o.buffer()),
                    Alias,
                    OP,
                    "positions share a buffer with a rotated view; they must be separate"
                );
                if shape.len() == 2 {
                    params.pos_bstride = ids.strides[0] as u32;
                    params.pos_sstride = ids.strides[1] as u32;
                } else {
                    params.pos_sstride = ids.strides[0] as u32;
                }
                true
            }
        };
        let seq_len = match (self.seq_len, positions) {
            (Some(n), _) => n,
            (None, Positions::Start(start)) => (start.max(0) as usize) + va.seq,
            (None, Positions::Ids(_)) => {
                crate::ensure!(
                    !self.scaling.needs_seq_len(),
                    Param,
                    OP,
                    "{} scaling with a positions buffer needs seq_len (HF uses max(position_ids) + 1)",
                    self.scaling.rope_type()
                );
                0
            }
        };
        let (inv, attn) = self.inv_freq(va.head_dim, seq_len)?;
        params.scale = attn as f32;
        let freqs = if self.sincos == SinCos::HostTable {
            crate::ensure!(
                seq_len > 0
                    && (seq_len as u64) * (inv.len() as u64) * 16
                        <= ctx.limits().max_storage_buffer_binding_size,
                Limit,
                OP,
                "a host cos/sin table for seq_len {seq_len} x {} pairs does not fit one binding (set seq_len; positions must lie in 0..seq_len)",
                inv.len()
            );
            (0..seq_len)
                .flat_map(|p| inv.iter().map(move |&f| (p as f64 * f).sin_cos()))
                .map(|(s, c)| Freq {
                    turn_hi: (c as f32).to_bits(),
                    turn_lo: (s as f32).to_bits(),
                    inv_freq: 0.0,
                    _pad: 0,
                })
                .collect()
        } else {
            turns(&inv)
        };

        let n_quads = (rd / 2).div_ceil(2);
        let n_tail = if in_place {
            0
        } else {
            (va.head_dim - rd).div_ceil(2)
        };
        let mut n_cols = n_quads + n_tail;
        let vb = b.map(|b| view4(b, "k")).transpose()?;
        let vec4 = in_place
            && vec4_aligned(ctx, rd, &va, a.offset(), dtype)
            && vb.is_none_or(|vb| vec4_aligned(ctx, rd, &vb, b.map_or(0, |b| b.offset()), dtype));
        if vec4 {
            // Offsets and strides in vec4 units from here on (record converts the offsets).
            let lanes = (16 / dtype.size()) as u32;
            for v in [
                &mut params.a_bstride,
                &mut params.a_sstride,
                &mut params.a_hstride,
                &mut params.b_bstride,
                &mut params.b_sstride,
                &mut params.b_hstride,
            ] {
                *v /= lanes;
            }
            params.v_half = params.half_rot / lanes;
            n_cols = rd / 2 / lanes as usize;
        }
        let heads = va.heads + params.b_heads as usize;
        let want = TARGET_INVOCATIONS.div_ceil(tokens * n_cols);
        let mut groups = want.clamp(1, heads);
        if vec4 {
            // Keep the heads one invocation walks within VEC4_GROUP_BYTES of a token, so that
            // consecutive SIMD batches stream through memory instead of striding across the
            // whole token (fused QKV f32 on lavapipe: 40 heads per invocation 50% of the vec4
            // copy, 8 heads 70-80%).
            let max_heads = (VEC4_GROUP_BYTES / (va.head_dim * dtype.size())).max(1);
            groups = groups.max(heads.div_ceil(max_heads));
        }
        let per_group = heads.div_ceil(groups);
        let groups = heads.div_ceil(per_group);
        let threads = tokens as u64 * groups as u64 * n_cols as u64;
        crate::ensure!(
            threads < u32::MAX as u64 - WG as u64,
            Limit,
            OP,
            "{tokens} tokens x {n_cols} columns x {groups} head groups exceed 32-bit invocation indexing"
        );
        params.n_cols = n_cols as u32;
        params.n_quads = n_quads as u32;
        params.n_hgroups = groups as u32;
        params.heads_per_group = per_group as u32;
        Ok(Plan {
            variant: Variant {
                dtype,
                layout: self.layout,
                pos_buf,
                in_place,
                x_in_dst,
                sincos: self.sincos,
                vec4,
            },
            params,
            freqs,
            threads,
        })
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

    /// Record an in-place rotation of `x` (`[seq, heads, head_dim]` or
    /// `[batch, seq, heads, head_dim]`, any strides) into `encoder`.
    pub fn encode(
        &self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        positions: Positions<'_>,
    ) -> Result<()> {
        let plan = self.plan(ctx, x, None, None, positions)?;
        self.record(ctx, encoder, plan, x, None, None, positions)
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
        let plan = self.plan(ctx, x, None, Some(out), positions)?;
        self.record(ctx, encoder, plan, x, None, Some(out), positions)
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
        if q.buffer() != k.buffer() {
            let pq = self.plan(ctx, q, None, None, positions)?;
            let pk = self.plan(ctx, k, None, None, positions)?;
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
            self.record(ctx, encoder, pq, q, None, None, positions)?;
            return self.record(ctx, encoder, pk, k, None, None, positions);
        }
        let plan = self.plan(ctx, q, Some(k), None, positions)?;
        self.record(ctx, encoder, plan, q, Some(k), None, positions)
    }

    /// [`Rope::encode`], submitted and waited for.
    pub fn run(&self, ctx: &Context, x: &Tensor, positions: Positions<'_>) -> Result<()> {
        let plan = self.plan(ctx, x, None, None, positions)?;
        ctx.submit_and_wait(OP, |enc| {
            self.record(ctx, enc, plan, x, None, None, positions)
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
        let plan = self.plan(ctx, x, None, Some(out), positions)?;
        ctx.submit_and_wait(OP, |enc| {
            self.record(ctx, enc, plan, x, None, Some(out), positions)
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

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        plan: Plan,
        a: &Tensor,
        b: Option<&Tensor>,
        out: Option<&Tensor>,
        positions: Positions<'_>,
    ) -> Result<()> {
        let Plan {
            variant: v,
            mut params,
            freqs,
            threads,
        } = plan;
        let out = out.filter(|_| !v.in_place);
        // dst holds every written view, and x too when they share a buffer.
        let mut dst_views: Vec<&Tensor> = Vec::new();
        match out {
            Some(o) => {
                dst_views.push(o);
                if v.x_in_dst {
                    dst_views.push(a);
                }
            }
            None => {
                dst_views.push(a);
                if let Some(b) = b {
                    dst_views.push(b);
                }
            }
        }
        let dst = Window::covering(ctx, OP, &dst_views)?;
        let src = if out.is_some() && !v.x_in_dst {
            Some(Window::covering(ctx, OP, &[a])?)
        } else {
            None
        };
        params.a_off = src.as_ref().unwrap_or(&dst).elem_offset(a);
        if let Some(b) = b {
            params.b_off = dst.elem_offset(b);
        }
        if v.vec4 {
            // plan checked that both offsets and the window start are 16-byte aligned.
            let lanes = 16 / a.dtype().size() as u32;
            params.a_off /= lanes;
            params.b_off /= lanes;
        }
        if let Some(o) = out {
            params.o_off = dst.elem_offset(o);
        }
        let pos_win = match positions {
            Positions::Ids(ids) => {
                let w = ids.as_words();
                let win = Window::covering(ctx, OP, &[&w])?;
                params.pos_off = win.elem_offset(&w);
                Some(win)
            }
            Positions::Start(_) => None,
        };
        let kernel = ctx.kernel(OP, &v.key())?;
        let grid = ctx.grid(OP, threads.div_ceil(WG as u64))?;
        let uniform = ctx.uniform(OP, &params)?;
        let freq_buf = ctx.scoped(OP, || {
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("rope inv_freq turns"),
                    contents: bytemuck::cast_slice(&freqs),
                    usage: wgpu::BufferUsages::STORAGE,
                })
        })?;
        let dummy = ctx.dummy_buffer();
        let pos_res = || {
            pos_win
                .as_ref()
                .map_or_else(|| whole(dummy), |w| w.resource())
        };
        if v.vec4 {
            let bg = kernel.bind_group(
                ctx,
                OP,
                &[
                    (0, whole(&uniform)),
                    (3, pos_res()),
                    (4, whole(&freq_buf)),
                    (5, dst.resource()),
                ],
            )?;
            kernel.dispatch(enc, &bg, grid);
            return Ok(());
        }
        let bg = kernel.bind_group(
            ctx,
            OP,
            &[
                (0, whole(&uniform)),
                (1, dst.resource()),
                (
                    2,
                    src.as_ref().map_or_else(|| whole(dummy), |w| w.resource()),
                ),
                (
                    3,
                    pos_win
                        .as_ref()
                        .map_or_else(|| whole(dummy), |w| w.resource()),
                ),
                (4, whole(&freq_buf)),
            ],
        )?;
        kernel.dispatch(enc, &bg, grid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_turn_matches_f64() {
        for &f in &[
            1.0,
            0.5,
            1e-4,
            3.7e-7,
            2.0 * std::f64::consts::PI,
            10.0,
            0.0,
        ] {
            let (hi, lo) = fixed_point_turn(f);
            let t = (hi as f64 + lo as f64 / 4294967296.0) / 4294967296.0;
            let want = (f / std::f64::consts::TAU).fract();
            let d = (t - want).abs().min(1.0 - (t - want).abs());
            assert!(d < 1e-15, "inv_freq {f}: turn {t} vs {want}");
        }
    }

    /// Member offsets and sizes of the WGSL structs, as naga lays them out.
    fn wgsl_struct(name: &str) -> (Vec<(String, u32)>, u32) {
        let module = naga::front::wgsl::parse_str(&Shader::Rope.source()).unwrap();
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
        ];
        for (name, off) in [
            "n_tokens",
            "a_off",
            "b_heads",
            "o_off",
            "pos_start",
            "scale",
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
    fn turn_table_is_the_fixed_point_inv_freq() {
        let (t, scale) = Rope::default().turn_table(128, 0).unwrap();
        assert_eq!((t.len(), scale), (64, 1.0));
        // inv_freq[0] = 1: 2^32 / 2pi = 683565275.57...
        assert_eq!(t[0].turn_hi, 683_565_275);
        assert!(Rope::default()
            .with_rotary_dim(7)
            .turn_table(128, 0)
            .is_err());
    }

    #[test]
    fn params_layout_is_16_byte_padded() {
        assert_eq!(std::mem::size_of::<Params>() % 16, 0);
        assert_eq!(std::mem::size_of::<Params>(), 128);
        assert_eq!(std::mem::size_of::<Freq>(), 16);
    }
}
