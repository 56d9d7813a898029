//! The planner: which kernel, tile, row block and key split one call gets on a device
//! ([`Attention::plan_for_device`]), by [the rule in the module doc](super#choosing-a-kernel);
//! the loop caps of CPU adapters; and the planner's choices on representative shapes
//! ([`choice_table`]), for `llama-kernels info` and the tests that pin them.

use super::{
    prefill_keys_workgroup_bytes, prefill_sg_shape, sg_reads_rows, sg_rows_max_kv, tile_v4_for,
    DeviceDesc, Dims, Kind, Variant, KEYS_MAX_ROWS, MAX_BK, OP, PREFILL_KEYS_ROWS, PREFILL_WG,
};
use crate::context::Context;
use crate::error::Result;
use crate::kv_format::KvFormat;
use crate::tensor::{DType, Tensor};
use crate::Attention;

/// The dispatcher uses a decode kernel for `q_len <= DECODE_MAX_Q_LEN`.
pub const DECODE_MAX_Q_LEN: usize = 8;
/// Decode aims at this many workgroups (a single token at kv_len 32k over 8 kv heads gets 64
/// splits of 512 keys).
pub const DECODE_TARGET_WORKGROUPS: usize = 512;
/// Decode chunks hold at least this many keys.
pub const DECODE_MIN_CHUNK: usize = 64;

/// True when decode on this adapter takes [`Kind::DecodeSubgroup`] where it would take
/// [`Kind::Decode`]: the device has `SUBGROUP` and is not a CPU adapter (llvmpipe's
/// `subgroupAdd` is slower than its alternatives, BENCHMARKS.md).
pub fn subgroup_decode_wanted(ctx: &Context) -> bool {
    DeviceDesc::of(ctx).subgroup_decode_wanted()
}

/// [`DeviceDesc::sg_cap_keys`] on `ctx`'s device: keys one [`Kind::DecodeSubgroup`] split with
/// `rs` rows per workgroup at `hd4`, subgroups of at least `sg_min`, may hold.
pub(crate) fn sg_cap_keys(ctx: &Context, hd4: u32, sg_min: u32, rs: u32) -> Option<usize> {
    DeviceDesc::of(ctx).sg_cap_keys(hd4, sg_min, rs)
}

/// [`Kind::DecodeSubgroup`] chunks hold at least this many keys (a workgroup's fixed costs, the
/// q load and the in-workgroup merge, stay small beside its keys).
pub const SG_MIN_CHUNK: usize = 256;

/// [`Kind::DecodeSubgroup`]'s split count for `kv_len` keys on `dev` with `base` workgroups per
/// split (batch x kv heads x row blocks) of `wg` invocations: enough splits to fill the device
/// ([`DeviceDesc::resident_workgroups`]), at most one per [`SG_MIN_CHUNK`] keys, at least
/// `min_splits` (the loop cap's).
pub fn sg_splits(
    dev: &DeviceDesc,
    wg: u32,
    base: usize,
    kv_len: usize,
    min_splits: usize,
) -> usize {
    dev.resident_workgroups(wg)
        .div_ceil(base.max(1))
        .clamp(1, (kv_len / SG_MIN_CHUNK).max(1))
        .max(min_splits)
}

/// Keys one invocation may loop over on this adapter, if limited. llvmpipe (lavapipe) stops
/// every loop of an invocation once all its loops together have iterated 65535 times, so on CPU
/// adapters chunks are kept below that, counting the loop trips per key as if the compiler
/// unrolled none of the head_dim loops; other adapters have no such cap.
pub fn loop_cap_keys(ctx: &Context, head_dim: usize) -> Option<usize> {
    DeviceDesc::of(ctx).loop_cap_keys(head_dim)
}

/// Keys one [`Kind::PrefillKeys`] workgroup may loop over on this adapter, if limited (see
/// [`loop_cap_keys`]): per tile of [`PREFILL_KEYS_TILE`](super::PREFILL_KEYS_TILE) keys, the tile loop, the Q K^T loop
/// over the head, the reduction over the 8 lanes, the P V loop over the tile's keys and, since a
/// boolean mask may be bound to any call, the masked path's loops (the tile vote over the mask
/// words, the mask step over each lane's logits); the q staging and the bounds and store loops
/// are taken off the budget.
pub fn prefill_keys_loop_cap_keys(ctx: &Context, head_dim: usize) -> Option<usize> {
    DeviceDesc::of(ctx).prefill_keys_loop_cap_keys(head_dim)
}

/// Keys one [`Kind::DecodeKeys`] workgroup takes with `kr` rows per workgroup, on any adapter:
/// [`KEYS_TRIPS`](super::KEYS_TRIPS) trips of `4 / kr` keys, one pass without a loop around the
/// kernel's barriers (`shaders/attention_keys.wgsl`). The planners split the keys into chunks of
/// at most this size.
pub fn keys_chunk_keys(kr: usize) -> usize {
    super::KEYS_TRIPS * (4 / kr.clamp(1, 4))
}

/// The kernel family by shape and device type alone: the first steps of
/// [the rule](super#choosing-a-kernel), before [`Attention::plan_for_device`] turns
/// [`Kind::Decode`] into [`Kind::DecodeSubgroup`] on GPUs with subgroups and
/// [`Kind::PrefillKeys`] into [`Kind::Prefill`] for `f16_arithmetic` or a small workgroup memory.
pub fn default_kind(device_type: wgpu::DeviceType, q_len: usize, kv_aligned: bool) -> Kind {
    let cpu_aligned = device_type == wgpu::DeviceType::Cpu && kv_aligned;
    match (q_len > DECODE_MAX_Q_LEN, cpu_aligned) {
        (true, true) => Kind::PrefillKeys,
        (true, false) => Kind::Prefill,
        (false, true) => Kind::DecodeKeys,
        (false, false) => Kind::Decode,
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

impl Attention {
    /// The kernel, tile size and split count this call would use on `ctx`, for K/V rows that
    /// are 16-byte aligned (see [`kv_rows_aligned`]; unaligned rows never get
    /// [`Kind::DecodeKeys`] by default).
    pub fn plan(&self, ctx: &Context, d: Dims, dtype: DType) -> Result<Plan> {
        self.plan_for(ctx, d, dtype, KvFormat::from_dtype(dtype), true)
    }

    /// [`Attention::plan`] for K/V stored in `kv` (e.g. a quantized [`crate::KvCache`]).
    pub fn plan_kv(&self, ctx: &Context, d: Dims, dtype: DType, kv: KvFormat) -> Result<Plan> {
        self.plan_for(ctx, d, dtype, kv, true)
    }

    pub(super) fn plan_for(
        &self,
        ctx: &Context,
        d: Dims,
        dtype: DType,
        kv: KvFormat,
        kv_aligned: bool,
    ) -> Result<Plan> {
        let adapter = format!("adapter {:?}", ctx.adapter_info().name);
        self.plan_on(&DeviceDesc::of(ctx), &adapter, d, (dtype, kv), kv_aligned)
    }

    /// The plan for a call on a described device, by [the rule](super#choosing-a-kernel)
    /// (`kv_aligned`: whether the K/V rows are 16-byte aligned, see [`kv_rows_aligned`]).
    pub fn plan_for_device(
        &self,
        dev: &DeviceDesc,
        d: Dims,
        dtype: DType,
        kv_aligned: bool,
    ) -> Result<Plan> {
        let kv = KvFormat::from_dtype(dtype);
        self.plan_on(dev, "a described device", d, (dtype, kv), kv_aligned)
    }

    fn plan_on(
        &self,
        dev: &DeviceDesc,
        adapter: &str,
        d: Dims,
        (dtype, kv): (DType, KvFormat),
        kv_aligned: bool,
    ) -> Result<Plan> {
        // Rows of 16-byte units need head_dim x the element size a multiple of 16 too (what
        // `kv_rows_aligned` checks of a live call's views).
        let kv_aligned = kv_aligned && (d.head_dim * dtype.size()).is_multiple_of(16);
        kv.check_head_dim(OP, d.head_dim)?;
        let reported = dev.subgroup_min_size.max(4);
        let dev = &DeviceDesc {
            subgroup_min_size: match self.subgroup_min_size {
                None => dev.subgroup_min_size,
                Some(n) if n.is_power_of_two() && (4..=reported).contains(&n) => n,
                Some(n) => {
                    return Err(crate::error::Error::param(
                        OP,
                        format!("subgroup_min_size {n} must be a power of two from 4 to the smallest subgroup size of {adapter}, {reported}"),
                    ))
                }
            },
            ..*dev
        };
        let limit = dev.max_workgroup_storage;
        let hd4 = (d.head_dim / 4) as u32;
        let keys_fit = prefill_keys_workgroup_bytes(hd4) <= limit;
        let kind = self
            .kind
            .unwrap_or_else(|| match dev.default_kind(d.q_len, kv_aligned) {
                Kind::PrefillKeys if self.f16_arithmetic || !keys_fit => Kind::Prefill,
                // The subgroup kernels read whole 16-byte units of a row (choice.md, step 4).
                Kind::DecodeSubgroup if !sg_reads_rows(kv, d.head_dim) => Kind::Decode,
                Kind::PrefillSubgroup if self.f16_arithmetic || !sg_reads_rows(kv, d.head_dim) => {
                    Kind::Prefill
                }
                k => k,
            });
        crate::ensure!(
            !matches!(kind, Kind::DecodeSubgroup | Kind::PrefillSubgroup)
                || sg_reads_rows(kv, d.head_dim),
            Param,
            OP,
            "the {kind:?} kernel reads whole 16-byte units of a K/V row: {kv} rows of head_dim {} are not (fp8 needs a multiple of 16); run it with Kind::{}",
            d.head_dim,
            if kind == Kind::DecodeSubgroup { "Decode" } else { "Prefill" }
        );
        crate::ensure!(
            kind != Kind::PrefillSubgroup || dev.subgroups,
            Param,
            OP,
            "the PrefillSubgroup kernel needs a device with the SUBGROUP feature ({adapter})"
        );
        crate::ensure!(
            kind != Kind::PrefillKeys || keys_fit,
            Limit,
            OP,
            "the PrefillKeys kernel needs {} bytes of workgroup memory at head_dim {}, the device has {limit}",
            prefill_keys_workgroup_bytes(hd4),
            d.head_dim
        );
        crate::ensure!(
            !(kind == Kind::Prefill && self.f16_arithmetic) || dev.shader_f16,
            Limit,
            OP,
            "f16_arithmetic needs wgpu::Features::SHADER_F16, which this device was created without ({adapter})"
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
        let sg_min = dev.subgroup_min_size.max(4);
        crate::ensure!(
            !matches!(kind, Kind::DecodeSubgroup | Kind::PrefillSubgroup) || kv_aligned,
            Param,
            OP,
            "the {kind:?} kernel reads 16-byte units: it needs 16-byte aligned K/V rows (offsets, strides and head_dim {} x {} bytes multiples of 16)",
            d.head_dim,
            dtype.size()
        );
        let kr = match kind {
            Kind::DecodeSubgroup => rows
                .next_power_of_two()
                .min(sg_rows_max_kv(hd4, sg_min, kv) as usize),
            _ => rows.next_power_of_two().min(KEYS_MAX_ROWS),
        };
        let mut variant = Variant {
            kind,
            dtype,
            kv,
            tile_v4,
            hd4,
            split_kv: true,
            kr: match kind {
                Kind::DecodeKeys | Kind::DecodeSubgroup => kr as u32,
                _ => 1,
            },
            sg_min: match kind {
                Kind::DecodeSubgroup | Kind::PrefillSubgroup => sg_min,
                _ => 0,
            },
            f16: kind == Kind::Prefill && self.f16_arithmetic,
            native_f16: kind == Kind::DecodeSubgroup
                && kv == KvFormat::F16
                && kv_aligned
                && self.native_f16.unwrap_or_else(|| dev.native_f16_wanted()),
            masks: false,
            int8_dot: self.int8_dot,
        };
        if self.int8_dot {
            crate::ensure!(
                kv.is_block(),
                Param,
                OP,
                "int8_dot (packed 8-bit q·k) needs q8_0 or q4_0 K, whose values are int8 (q4_0: q - 8); K is {kv}"
            );
            crate::ensure!(
                matches!(kind, Kind::DecodeSubgroup | Kind::PrefillSubgroup),
                Param,
                OP,
                "int8_dot (packed 8-bit q·k) is implemented by the DecodeSubgroup and PrefillSubgroup kernels only; this call runs {kind:?} (force Kind::DecodeSubgroup, q_len <= {DECODE_MAX_Q_LEN}, or Kind::PrefillSubgroup on a device with SUBGROUP)"
            );
        }
        if self.native_f16 == Some(true) {
            crate::ensure!(
                dev.shader_f16,
                Limit,
                OP,
                "native f16 reads need wgpu::Features::SHADER_F16, which this device was created without ({adapter})"
            );
            crate::ensure!(
                variant.native_f16,
                Param,
                OP,
                "native f16 reads are for the DecodeSubgroup kernel over f16 K/V with 16-byte aligned rows; this call runs {kind:?} over {dtype} (K/V rows aligned: {kv_aligned})"
            );
        }
        let cap = match kind {
            Kind::DecodeKeys => Some(keys_chunk_keys(kr)),
            Kind::DecodeSubgroup => dev.sg_cap_keys(variant.hd4, variant.sg_min, variant.kr),
            Kind::PrefillKeys => dev.prefill_keys_loop_cap_keys(d.head_dim),
            Kind::PrefillSubgroup => dev.prefill_sg_cap_keys(hd4, sg_min),
            _ => dev.loop_cap_keys(d.head_dim),
        };
        let min_splits = cap.map_or(1, |c| d.kv_len.div_ceil(c.max(1)));
        variant.split_kv = match kind {
            Kind::Prefill => min_splits > 1,
            Kind::PrefillKeys | Kind::PrefillSubgroup => {
                min_splits > 1 || self.splits.is_some_and(|s| s > 1)
            }
            _ => true,
        };
        let wg = variant.wg() as usize;
        let (rows_per_wg, lanes) = match kind {
            // One partial per (row, split): the lanes own head slices, not keys.
            Kind::DecodeKeys => (kr, 1),
            // One partial per (row, split): the lane groups merge inside the workgroup.
            Kind::DecodeSubgroup => (kr, 1),
            // Split or not, a prefill workgroup owns PREFILL_WG rows, one key lane each.
            Kind::Prefill => (PREFILL_WG as usize, 1),
            Kind::PrefillKeys => (PREFILL_KEYS_ROWS, 1),
            Kind::PrefillSubgroup => (prefill_sg_shape(hd4, sg_min).rows_per_wg() as usize, 1),
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
            Kind::PrefillKeys | Kind::PrefillSubgroup => {
                let want = (self.splits.unwrap_or(1) as usize).max(min_splits);
                let chunk = d.kv_len.div_ceil(want).max(1);
                // A forced count is honoured exactly (trailing chunks may be empty).
                match self.splits {
                    Some(_) => (want, chunk),
                    None => (d.kv_len.div_ceil(chunk), chunk),
                }
            }
            Kind::Decode | Kind::DecodeKeys | Kind::DecodeSubgroup => {
                let want = match self.splits {
                    Some(s) => (s as usize).max(min_splits),
                    // Chunks of the kernel's cap: each workgroup one pass without a loop.
                    None if kind == Kind::DecodeKeys => min_splits,
                    None if kind == Kind::DecodeSubgroup => sg_splits(
                        dev,
                        wg as u32,
                        d.batch * d.n_kv_heads * row_blocks,
                        d.kv_len,
                        min_splits,
                    ),
                    None => {
                        let base = d.batch * d.n_kv_heads * row_blocks;
                        DECODE_TARGET_WORKGROUPS
                            .div_ceil(base)
                            .clamp(1, d.kv_len.div_ceil(DECODE_MIN_CHUNK).max(1))
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
}

/// One row of [`choice_table`]: a named shape and what the planner picks for it.
#[derive(Clone, Debug)]
pub struct ChoiceRow {
    /// The model and call, e.g. `Llama-3-8B decode, 32k keys`.
    pub shape: &'static str,
    /// Its sizes.
    pub dims: Dims,
    /// Storage format of q, k, v and out.
    pub dtype: DType,
    /// The plan for 16-byte aligned K/V rows, or why the device cannot run the shape.
    pub plan: std::result::Result<Plan, String>,
}

impl ChoiceRow {
    /// The launch geometry of a decode row ([`Plan::decode_geometry`]).
    pub fn decode_geometry(&self) -> Option<super::DecodeGeometry> {
        self.plan.as_ref().ok()?.decode_geometry(&self.dims)
    }

    /// The launch geometry of a prefill row ([`Plan::prefill_geometry`]).
    pub fn prefill_geometry(&self) -> Option<super::PrefillGeometry> {
        self.plan.as_ref().ok()?.prefill_geometry(&self.dims)
    }

    /// The pipelines the call records, in order, as `module:entry_point`.
    pub fn pipelines(&self) -> Vec<String> {
        match &self.plan {
            Ok(p) => p
                .variant
                .keys()
                .iter()
                .map(|k| format!("{}:{}", k.shader.name, k.entry_point))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl std::fmt::Display for ChoiceRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.dims;
        write!(
            f,
            "{} (q_len {}, kv_len {}, heads {}/{}, head_dim {}, {}): ",
            self.shape, d.q_len, d.kv_len, d.n_heads, d.n_kv_heads, d.head_dim, self.dtype
        )?;
        match &self.plan {
            Ok(p) => write!(
                f,
                "{:?} kr {} rows/wg {} lanes {} splits {} chunk {} bk {} -> {}",
                p.variant.kind,
                p.variant.kr,
                p.rows_per_wg,
                p.lanes,
                p.splits,
                p.chunk,
                p.bk,
                self.pipelines().join(", ")
            )?,
            Err(e) => return write!(f, "not supported: {e}"),
        }
        if let Some(g) = self.decode_geometry() {
            return write!(f, "\n    geometry: {g}");
        }
        match self.prefill_geometry() {
            Some(g) => write!(f, "\n    geometry: {g}"),
            None => Ok(()),
        }
    }
}

/// The representative shapes of [`choice_table`] (batch 1, f16 storage).
pub const CHOICE_SHAPES: [(&str, Dims); 9] = {
    const fn dims(q_len: usize, kv_len: usize, n_heads: usize, n_kv: usize, hd: usize) -> Dims {
        Dims {
            batch: 1,
            q_len,
            kv_len,
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
        }
    }
    [
        // Llama-3-8B: 32 q heads, 8 kv heads, head_dim 128.
        ("Llama-3-8B decode, 4k keys", dims(1, 4096, 32, 8, 128)),
        ("Llama-3-8B decode, 32k keys", dims(1, 32768, 32, 8, 128)),
        ("Llama-3-8B prefill, 2k", dims(2048, 2048, 32, 8, 128)),
        // Llama-2-7B: MHA, 32 heads, head_dim 128.
        (
            "Llama-2-7B decode (MHA), 4k keys",
            dims(1, 4096, 32, 32, 128),
        ),
        // Llama-3-70B: 64 q heads over 8 kv heads (GQA-8), head_dim 128.
        (
            "Llama-3-70B decode (GQA-8), 4k keys",
            dims(1, 4096, 64, 8, 128),
        ),
        // Llama-3.2-1B: 32 q heads, 8 kv heads, head_dim 64.
        (
            "Llama-3.2-1B decode (head_dim 64), 4k keys",
            dims(1, 4096, 32, 8, 64),
        ),
        (
            "Llama-3.2-1B prefill (head_dim 64), 2k",
            dims(2048, 2048, 32, 8, 64),
        ),
        // Gemma-2-9B: 16 q heads, 8 kv heads, head_dim 256.
        (
            "Gemma-2-9B decode (head_dim 256), 4k keys",
            dims(1, 4096, 16, 8, 256),
        ),
        (
            "Gemma-2-9B prefill (head_dim 256), 2k",
            dims(2048, 2048, 16, 8, 256),
        ),
    ]
};

/// What the planner picks on `dev` for [`CHOICE_SHAPES`] with the default options, f16
/// storage and aligned K/V rows (`llama-kernels info` prints it).
pub fn choice_table(dev: &DeviceDesc) -> Vec<ChoiceRow> {
    CHOICE_SHAPES
        .iter()
        .map(|&(shape, dims)| ChoiceRow {
            shape,
            dims,
            dtype: DType::F16,
            plan: Attention::default()
                .plan_for_device(dev, dims, DType::F16, true)
                .map_err(|e| e.to_string()),
        })
        .collect()
}

/// The shapes of the sweep: decode and prefill on both sides of the decode threshold and
/// of the loop caps, MHA to MQA.
fn sweep_dims(head_dim: usize) -> Vec<Dims> {
    let mut out = Vec::new();
    for q_len in [1, 2, 8, 9, 100] {
        for kv_len in [q_len, 4096, 70_000] {
            for (n_heads, n_kv_heads) in [(8, 8), (32, 8), (16, 2), (8, 1)] {
                out.push(Dims {
                    batch: 1,
                    q_len,
                    kv_len,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                });
            }
        }
    }
    out
}

/// Options of the sweep: the default, f16 arithmetic, native f16 reads either way, a forced
/// split count, and every kind forced where the device can run it.
fn sweep_options(dev: &DeviceDesc) -> Vec<Attention> {
    let mut out = vec![
        Attention::default(),
        Attention {
            splits: Some(3),
            ..Attention::default()
        },
        Attention {
            native_f16: Some(false),
            ..Attention::default()
        },
    ];
    if dev.shader_f16 {
        out.push(Attention {
            f16_arithmetic: true,
            ..Attention::default()
        });
    }
    for kind in Kind::ALL {
        if kind != Kind::DecodeSubgroup || dev.subgroups {
            out.push(Attention {
                kind: Some(kind),
                ..Attention::default()
            });
        }
    }
    out
}

/// Every variant the planner picks on `dev` over a sweep of calls at the given head_dims: the
/// shapes of `sweep_dims` in every dtype, K/V rows aligned or not, with the options of
/// `sweep_options`. A unit test checks that the declared space covers it on every preset; the
/// Dawn check (docs/browser.md) creates these pipelines at WebGPU's default limits.
pub fn planned_variants(
    dev: &DeviceDesc,
    head_dims: impl Iterator<Item = usize> + Clone,
) -> Vec<Variant> {
    let mut out = Vec::new();
    for hd in head_dims {
        for d in sweep_dims(hd) {
            for opts in sweep_options(dev) {
                for dtype in DType::ALL {
                    for aligned in [true, false] {
                        if let Ok(p) = opts.plan_for_device(dev, d, dtype, aligned) {
                            out.push(p.variant);
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
