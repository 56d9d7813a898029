//! The attention variant space, declared once: the axes as data ([`HEAD_DIMS`], the storage
//! formats of q and out [`DType::ALL`], the K/V formats ([`kv_formats`]: the float one of the
//! dtype and [`KvFormat::QUANTIZED`]), [`WORKGROUP_STORAGE`] for the tile sizes, and per kind the values of
//! its own axes in [`KINDS`]), the shader modules that hold the kernels ([`MODULES`]), and
//! [`Variant`], whose [`Variant::keys`] are the pipeline keys. The planner ([`super::plan`])
//! picks one point of this space per call; the portability tests' list ([`all_variant_keys`])
//! and each module's share of it are derived from the same declaration.

pub use super::subgroup_decode::{
    sg_key_constants, sg_reads_rows, sg_rows_max, sg_rows_max_kv, sg_shape, sg_vec4s_per_unit,
    SgShape,
};
use super::subgroup_prefill::{prefill_sg_shape, ATTENTION_PREFILL_SUBGROUP};
use crate::kv_format::KvFormat;
use crate::pipeline::{PipelineKey, Shader};
use crate::tensor::DType;

/// Rows per prefill workgroup.
pub const PREFILL_WG: u32 = 64;
/// Query rows each prefill invocation computes (register tiling): a workgroup has
/// `PREFILL_WG / PREFILL_ROWS_PER_INVOCATION` invocations.
pub const PREFILL_ROWS_PER_INVOCATION: u32 = 4;
/// Rows per decode workgroup (and invocations per merge workgroup).
pub const DECODE_WG: u32 = 32;
/// Invocations per workgroup of [`Kind::DecodeKeys`] and [`Kind::PrefillKeys`]: llvmpipe's SIMD
/// width (8 f32 at 256 bits).
pub const KEYS_WG: u32 = 8;
/// Most query rows one [`Kind::DecodeKeys`] invocation computes (more rows take more row blocks).
pub const KEYS_MAX_ROWS: usize = 4;
/// Trips of one [`Kind::DecodeKeys`] workgroup over its keys, each `4 / kr` keys (`KEYS_TRIPS` in
/// `shaders/attention_keys.wgsl`): its split holds at most this many trips' keys, so the kernel
/// has no loop around its barriers.
pub const KEYS_TRIPS: usize = 64;
/// Query rows per [`Kind::PrefillKeys`] workgroup (its [`KEYS_WG`] invocations share them).
pub const PREFILL_KEYS_ROWS: usize = 8;
/// Keys per [`Kind::PrefillKeys`] tile (8 per invocation).
pub const PREFILL_KEYS_TILE: usize = 64;
/// Largest supported head_dim.
pub const MAX_HEAD_DIM: usize = 256;
/// Most keys per K/V tile.
pub(crate) const MAX_BK: usize = 64;
/// Invocations per [`Kind::DecodeSubgroup`] workgroup ([`SgShape::wg`] halves it where the
/// merge memory would pass WebGPU's default 16 KiB).
pub const SG_WG: u32 = 128;
/// Most query rows per [`Kind::DecodeSubgroup`] workgroup.
pub const SG_MAX_ROWS: usize = 8;
/// Invocations per workgroup of the one-workgroup-per-row merges (`merge_row`).
pub const MERGE_WG: u32 = 128;
/// Workgroup memory every device offers (WebGPU's default `max_compute_workgroup_storage_size`):
/// [`Kind::DecodeSubgroup`]'s merge memory stays within it.
pub const SG_MAX_WORKGROUP_BYTES: u32 = 16384;

/// Which kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Tiled prefill (FlashAttention-2 style), for more than
    /// [`DECODE_MAX_Q_LEN`](super::DECODE_MAX_Q_LEN) query rows.
    Prefill,
    /// Prefill for CPU adapters (`attn_prefill_keys`): 8 invocations per workgroup own 8 query
    /// rows; for Q K^T each invocation owns 8 keys of a 64-key tile, for P V a slice of the head,
    /// every per-invocation value a named register (see [`PREFILL_KEYS_ROWS`]).
    PrefillKeys,
    /// Split-KV decode with a merge pass, a workgroup per (batch, kv head, split).
    Decode,
    /// Decode for CPU adapters (`attn_decode_keys`): the invocations own 16-byte head slices,
    /// read each K/V row once with 16-byte loads and serve all rows of the group with them.
    DecodeKeys,
    /// Decode for GPUs with `SUBGROUP` (`attn_decode_sg`): the lanes of a subgroup split
    /// head_dim, finish each score with `subgroupAdd`, and share every K/V row they load across
    /// the GQA group's query rows.
    DecodeSubgroup,
    /// Prefill for GPUs with `SUBGROUP` (`attn_prefill_sg`, FlashAttention-2 on SIMT lanes):
    /// aligned groups of 4-16 lanes split head_dim for a few query rows each, scores finished
    /// by `subgroupShuffleXor` within the group, q and the accumulators in registers sized by
    /// key constants, K/V tiles staged with 16-byte loads (quantized K/V dequantized while
    /// staging) and shared by 64 or more rows (see [`prefill_sg_shape`]).
    PrefillSubgroup,
}

/// The head_dims of real models (the head-dim classes): every kind, storage format, tile size
/// and row count is declared at these. Every other multiple of 4 up to [`MAX_HEAD_DIM`] is the
/// run-time path: the same code with other loop trip counts, declared at [`RUN_TIME_PATH`] only.
pub const HEAD_DIMS: [u32; 5] = [64, 80, 96, 128, 256];
/// Workgroup memory sizes whose K/V tiles ([`tile_v4_for`]) are declared: WebGPU's default
/// 16 KiB and the 32 KiB the tiles are capped at (what every larger device gets).
pub const WORKGROUP_STORAGE: [u32; 2] = [16384, 32768];
/// The one storage format and workgroup memory size the run-time head_dims are declared at, with
/// the first value of each kind's device axes (`kr`, `sg_min`).
pub const RUN_TIME_PATH: (DType, u32) = (DType::F16, 32768);
/// Smallest subgroup sizes [`Kind::DecodeSubgroup`] is declared for: WARP (4), Intel and
/// lavapipe (8), Mali (16), NVIDIA, Apple and AMD RDNA (32), AMD GCN/CDNA (64).
pub const SUBGROUP_MIN_SIZES: [u32; 5] = [4, 8, 16, 32, 64];

/// The axes one kind adds to the common ones (head_dim, storage format, tile size); every value
/// listed is a point of the space (row counts past what the head's registers hold excepted, see
/// [`Variant::fits`]).
#[derive(Clone, Copy, Debug)]
pub struct Axes {
    /// The kernel.
    pub kind: Kind,
    /// Whether it writes partials for a merge pass.
    pub split_kv: &'static [bool],
    /// Query rows per workgroup (`Variant::kr`).
    pub kr: &'static [u32],
    /// Smallest subgroup sizes (0: the kernel uses no subgroups).
    pub sg_min: &'static [u32],
    /// f16 arithmetic ([`super::Attention::f16_arithmetic`]).
    pub f16: &'static [bool],
    /// Native f16 K/V reads ([`super::Attention::native_f16`]; f16 storage only).
    pub native_f16: &'static [bool],
    /// Packed 8-bit q·k ([`super::Attention::int8_dot`]; q8_0 and q4_0 K only).
    pub int8_dot: &'static [bool],
}

/// The variant space, one entry per kind.
pub const KINDS: [Axes; 6] = [
    Axes {
        kind: Kind::Prefill,
        split_kv: &[false, true],
        kr: &[1],
        sg_min: &[0],
        f16: &[false, true],
        native_f16: &[false],
        int8_dot: &[false],
    },
    Axes {
        kind: Kind::PrefillKeys,
        split_kv: &[false, true],
        kr: &[1],
        sg_min: &[0],
        f16: &[false],
        native_f16: &[false],
        int8_dot: &[false],
    },
    Axes {
        kind: Kind::Decode,
        split_kv: &[true],
        kr: &[1],
        sg_min: &[0],
        f16: &[false],
        native_f16: &[false],
        int8_dot: &[false],
    },
    Axes {
        kind: Kind::DecodeKeys,
        split_kv: &[true],
        kr: &[1, 2, 4],
        sg_min: &[0],
        f16: &[false],
        native_f16: &[false],
        int8_dot: &[false],
    },
    Axes {
        kind: Kind::DecodeSubgroup,
        split_kv: &[true],
        kr: &[1, 2, 4, 8],
        sg_min: &SUBGROUP_MIN_SIZES,
        f16: &[false],
        native_f16: &[false, true],
        int8_dot: &[false, true],
    },
    Axes {
        kind: Kind::PrefillSubgroup,
        split_kv: &[false, true],
        kr: &[1],
        sg_min: &SUBGROUP_MIN_SIZES,
        f16: &[false],
        native_f16: &[false],
        int8_dot: &[false, true],
    },
];

impl Kind {
    /// Every kind, in [`KINDS`] order.
    pub const ALL: [Kind; 6] = [
        KINDS[0].kind,
        KINDS[1].kind,
        KINDS[2].kind,
        KINDS[3].kind,
        KINDS[4].kind,
        KINDS[5].kind,
    ];

    /// This kind's axes in [`KINDS`].
    pub fn axes(self) -> &'static Axes {
        KINDS
            .iter()
            .find(|a| a.kind == self)
            .expect("every kind is declared")
    }
}

/// The code-shaping decisions; the pipeline keys derive from it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Which kernel.
    pub kind: Kind,
    /// Storage dtype of q and out (and of K/V when `kv` is a float format).
    pub dtype: DType,
    /// Storage format of K and V: `dtype`'s float format or a quantized one, read in place
    /// (`KV_FMT`).
    pub kv: KvFormat,
    /// vec4 capacity of each of the K and V workgroup tiles.
    pub tile_v4: u32,
    /// `head_dim / 4` (loops over a head get a fixed trip count).
    pub hd4: u32,
    /// Partial results per kv chunk and a merge pass (always for decode; for prefill only when
    /// one invocation may not loop over all keys, see [`loop_cap_keys`](super::loop_cap_keys)).
    pub split_kv: bool,
    /// [`Kind::DecodeKeys`]: query rows per workgroup (1, 2 or 4); [`Kind::DecodeSubgroup`]:
    /// the same (1, 2, 4 or 8); 1 for the other kinds.
    pub kr: u32,
    /// [`Kind::Prefill`]: f16 arithmetic ([`super::Attention::f16_arithmetic`], the
    /// [`ATTENTION_PREFILL_F16`] module); false for the other kinds.
    pub f16: bool,
    /// [`Kind::DecodeSubgroup`] and [`Kind::PrefillSubgroup`]: the adapter's smallest subgroup
    /// size (lanes per head slice and key lanes derive from it); 0 for the other kinds.
    pub sg_min: u32,
    /// [`Kind::DecodeSubgroup`] over f16 K/V: read them natively
    /// ([`super::Attention::native_f16`], the [`ATTENTION_DECODE_SUBGROUP_F16`] module); false
    /// otherwise.
    pub native_f16: bool,
    /// Mask inputs bound ([`super::Inputs`]: the `MASKS` override; every kind has the axis).
    /// Only the pass that scores keys has it: merges read partials.
    pub masks: bool,
    /// [`Kind::DecodeSubgroup`] and [`Kind::PrefillSubgroup`] over q8_0 or q4_0 K: q·k by packed
    /// 8-bit products, q quantized per block ([`super::Attention::int8_dot`], the `I8` key
    /// constant); false otherwise.
    pub int8_dot: bool,
}

/// One prefill module: `shaders/attention_prefill.wgsl` with its arithmetic type and the size of
/// the per-invocation q and accumulator arrays (4 rows x the head_dim class / 4 vec4s).
macro_rules! prefill_module {
    ($name:literal, [$($enable:literal)?], $ht:literal, $max_q:expr, $this:ident) => {
        &Shader {
            name: $name,
            parts: &[
                $($enable,)?
                crate::pipeline::COMMON_WGSL,
                crate::pipeline::KV_QUANT_WGSL,
                crate::pipeline::ATTENTION_COMMON_WGSL,
                crate::pipeline::ATTENTION_SPLIT_WGSL,
                concat!("// The prefill's arithmetic type.\nalias ht = ", $ht, ";"),
                $max_q,
                include_str!("../../../shaders/attention_prefill.wgsl"),
            ],
            variants: || keys_of($this),
        }
    };
}

/// `shaders/attention_prefill.wgsl` (with `attention_common.wgsl`) for head_dim up to 256;
/// [`prefill_shader`] picks the smaller classes' modules where they fit.
pub const ATTENTION_PREFILL: &Shader = prefill_module!(
    "attention_prefill.wgsl",
    [],
    "f32",
    "// 4 rows x head_dim up to 256.\nconst MAX_Q: u32 = 256u;",
    ATTENTION_PREFILL
);
/// `shaders/attention_prefill.wgsl` with f16 arithmetic: a module of its own, because a module
/// with `enable f16` fails validation on devices without `SHADER_F16` (head_dim up to 256).
pub const ATTENTION_PREFILL_F16: &Shader = prefill_module!(
    "attention_prefill_f16.wgsl",
    ["enable f16;"],
    "f16",
    "const MAX_Q: u32 = 256u;",
    ATTENTION_PREFILL_F16
);
/// The prefill for head_dim up to 64 (private arrays a quarter of the 256 class's). The prefill
/// keeps 4 rows of q and of the accumulator per invocation in private arrays whose size is a
/// constant of the module, and lavapipe's LLVM compile time grows with them (a head_dim-16 test
/// compiled in half the time with arrays sized for 64 instead of 256), so each head_dim class
/// has its own module ([`prefill_shader`]).
pub const ATTENTION_PREFILL_HD64: &Shader = prefill_module!(
    "attention_prefill_hd64.wgsl",
    [""],
    "f32",
    "const MAX_Q: u32 = 64u;",
    ATTENTION_PREFILL_HD64
);
/// The prefill for head_dim up to 128.
pub const ATTENTION_PREFILL_HD128: &Shader = prefill_module!(
    "attention_prefill_hd128.wgsl",
    [""],
    "f32",
    "const MAX_Q: u32 = 128u;",
    ATTENTION_PREFILL_HD128
);
/// The f16-arithmetic prefill for head_dim up to 64.
pub const ATTENTION_PREFILL_F16_HD64: &Shader = prefill_module!(
    "attention_prefill_f16_hd64.wgsl",
    ["enable f16;"],
    "f16",
    "const MAX_Q: u32 = 64u;",
    ATTENTION_PREFILL_F16_HD64
);
/// The f16-arithmetic prefill for head_dim up to 128.
pub const ATTENTION_PREFILL_F16_HD128: &Shader = prefill_module!(
    "attention_prefill_f16_hd128.wgsl",
    ["enable f16;"],
    "f16",
    "const MAX_Q: u32 = 128u;",
    ATTENTION_PREFILL_F16_HD128
);

/// The head_dim classes of the prefill modules (the size of their private arrays).
pub const PREFILL_CLASSES: [u32; 3] = [64, 128, 256];
/// The prefill modules by arithmetic (f32, f16) and [`PREFILL_CLASSES`] entry.
pub const PREFILL_MODULES: [[&Shader; PREFILL_CLASSES.len()]; 2] = [
    [
        ATTENTION_PREFILL_HD64,
        ATTENTION_PREFILL_HD128,
        ATTENTION_PREFILL,
    ],
    [
        ATTENTION_PREFILL_F16_HD64,
        ATTENTION_PREFILL_F16_HD128,
        ATTENTION_PREFILL_F16,
    ],
];

/// The smallest prefill head_dim class ([`PREFILL_CLASSES`]) that holds `hd4` (head_dim / 4).
pub fn prefill_class(hd4: u32) -> u32 {
    PREFILL_CLASSES
        .into_iter()
        .find(|&c| hd4 * 4 <= c)
        .unwrap_or(PREFILL_CLASSES[PREFILL_CLASSES.len() - 1])
}

/// The prefill module for `hd4` (head_dim / 4) with f16 or f32 arithmetic: the smallest head_dim
/// class that holds it.
pub fn prefill_shader(hd4: u32, f16: bool) -> &'static Shader {
    let class = prefill_class(hd4);
    let i = PREFILL_CLASSES
        .iter()
        .position(|&c| c == class)
        .unwrap_or(0);
    PREFILL_MODULES[f16 as usize][i]
}

/// `shaders/attention_decode.wgsl` (with `attention_common.wgsl`): [`Kind::Decode`],
/// [`Kind::DecodeKeys`] and every decode merge.
pub const ATTENTION_DECODE: &Shader = &Shader {
    name: "attention_decode.wgsl",
    parts: &[
        crate::pipeline::COMMON_WGSL,
        crate::pipeline::KV_QUANT_WGSL,
        crate::pipeline::ATTENTION_COMMON_WGSL,
        crate::pipeline::ATTENTION_SPLIT_WGSL,
        crate::pipeline::ATTENTION_KV4_WGSL,
        crate::pipeline::ATTENTION_KEYS_WGSL,
        include_str!("../../../shaders/attention_decode.wgsl"),
    ],
    variants: || keys_of(ATTENTION_DECODE),
};

/// One contiguous subgroup-decode module: `shaders/attention_decode.wgsl` with the subgroup
/// step and entry point, its K/V load seam (`sg_item`) given by `$reads` after the `$enable` lines
/// (`enable subgroups;`, and `enable f16;` where the reads use f16).
macro_rules! subgroup_decode_module {
    ($name:literal, $enable:literal, $reads:expr, $this:ident) => {
        &Shader {
            name: $name,
            parts: &[
                $enable,
                crate::pipeline::COMMON_WGSL,
                crate::pipeline::KV_QUANT_WGSL,
                crate::pipeline::ATTENTION_COMMON_WGSL,
                crate::pipeline::ATTENTION_SPLIT_WGSL,
                crate::pipeline::ATTENTION_KV4_WGSL,
                crate::pipeline::ATTENTION_KEYS_WGSL,
                include_str!("../../../shaders/attention_decode.wgsl"),
                crate::pipeline::ATTENTION_SUBGROUP_WGSL,
                $reads,
                include_str!("../../../shaders/attention_decode_subgroup.wgsl"),
            ],
            variants: || keys_of($this),
        }
    };
}

/// The subgroup decode's K/V load seam over packed 16-byte units (`keys_unit`, which the
/// contiguous and paged modules each define): a module part of the contiguous integer-decode
/// module and of the paged one.
pub const SG_ITEM_PACKED: &str = "fn sg_item(src: u32, i: u32) -> Item {
    return unpack_item(keys_unit(src, i), DTYPE);
}";

/// `shaders/attention_decode.wgsl` with the subgroup decode entry point
/// (`shaders/attention_decode_subgroup.wgsl`, [`Kind::DecodeSubgroup`]): a module of its own,
/// because a module that uses subgroup operations anywhere fails validation on devices without
/// `SUBGROUP`. K/V are read as packed 16-byte units (`k4`, `v4`; the integer decode of
/// common.wgsl, or for quantized K/V kv_quant.wgsl's dequantizers).
pub const ATTENTION_DECODE_SUBGROUP: &Shader = subgroup_decode_module!(
    "attention_decode_subgroup.wgsl",
    "enable subgroups;\ndiagnostic(off, subgroup_uniformity);",
    SG_ITEM_PACKED,
    ATTENTION_DECODE_SUBGROUP
);

/// [`ATTENTION_DECODE_SUBGROUP`] reading f16 K/V natively
/// (`shaders/attention_subgroup_f16.wgsl`, `enable f16`; [`super::Attention::native_f16`]).
pub const ATTENTION_DECODE_SUBGROUP_F16: &Shader = subgroup_decode_module!(
    "attention_decode_subgroup_f16.wgsl",
    "enable f16;\nenable subgroups;\ndiagnostic(off, subgroup_uniformity);",
    include_str!("../../../shaders/attention_subgroup_f16.wgsl"),
    ATTENTION_DECODE_SUBGROUP_F16
);

/// The subgroup decode modules by `native_f16`.
pub const SUBGROUP_MODULES: [&Shader; 2] =
    [ATTENTION_DECODE_SUBGROUP, ATTENTION_DECODE_SUBGROUP_F16];

/// Every attention module ([`crate::pipeline::Shader::ALL`] lists them): the prefill modules,
/// the decode module, the subgroup decode modules and the subgroup prefill module.
pub const MODULES: [&Shader; 2 * PREFILL_CLASSES.len() + 2 + SUBGROUP_MODULES.len()] = {
    let mut out = [ATTENTION_DECODE; 2 * PREFILL_CLASSES.len() + 2 + SUBGROUP_MODULES.len()];
    let n = PREFILL_CLASSES.len();
    let mut i = 0;
    while i < 2 * n {
        out[i] = PREFILL_MODULES[i / n][i % n];
        i += 1;
    }
    // out[2 * n] stays ATTENTION_DECODE.
    let mut j = 0;
    while j < SUBGROUP_MODULES.len() {
        out[2 * n + 1 + j] = SUBGROUP_MODULES[j];
        j += 1;
    }
    out[2 * n + 1 + SUBGROUP_MODULES.len()] = ATTENTION_PREFILL_SUBGROUP;
    out
};

/// vec4s per K (and per V) tile for a device with `limit` bytes of workgroup memory: the largest
/// power of two with both tiles within `min(limit, 32 KiB)`.
pub fn tile_v4_for(limit: u32) -> u32 {
    let per_tile = (limit.min(32768) / 2 / 16).max(1);
    1 << (31 - per_tile.leading_zeros())
}

/// Workgroup memory of [`Kind::PrefillKeys`] at `hd4` (head_dim / 4): the staged q rows of its
/// head_dim class ([`prefill_shader`]), the lanes' row maxima and P^T of a tile (one vec4 per
/// lane or key and group of 4 rows).
pub fn prefill_keys_workgroup_bytes(hd4: u32) -> u32 {
    let (rows, groups) = (PREFILL_KEYS_ROWS as u32, PREFILL_KEYS_ROWS as u32 / 4);
    (rows * prefill_class(hd4) / 4 + (KEYS_WG + PREFILL_KEYS_TILE as u32) * groups) * 16
}

impl Variant {
    pub(crate) fn wg(&self) -> u32 {
        match self.kind {
            Kind::Prefill => PREFILL_WG / PREFILL_ROWS_PER_INVOCATION,
            Kind::PrefillKeys => KEYS_WG,
            Kind::Decode => DECODE_WG,
            Kind::DecodeKeys => KEYS_WG,
            Kind::DecodeSubgroup => self.sg_shape().wg,
            Kind::PrefillSubgroup => prefill_sg_shape(self.hd4, self.sg_min).invocations,
        }
    }
    /// [`Kind::DecodeSubgroup`]'s geometry.
    pub fn sg_shape(&self) -> SgShape {
        sg_shape(self.hd4, self.sg_min, self.kv)
    }
    /// The merge passes' constants: they read partials, never K/V, so every K/V format of a
    /// dtype shares one merge pipeline (the float format's `KV_FMT`).
    fn merge_constants(&self) -> Vec<(&'static str, u32)> {
        Variant {
            kv: KvFormat::from_dtype(self.dtype),
            masks: false,
            int8_dot: false,
            ..*self
        }
        .constants()
    }
    /// The merge of the prefill kinds' partials: `attn_prefill_merge` of the prefill module for
    /// this head_dim and arithmetic, one invocation per 4 output elements, [`PREFILL_WG`] per
    /// workgroup (every prefill kind shares it, so it is one pipeline per shape).
    fn prefill_merge_key(&self) -> PipelineKey {
        let mut m = self.merge_constants();
        m.push(("PR", PREFILL_ROWS_PER_INVOCATION));
        let m = with_wg(m, PREFILL_WG);
        PipelineKey::new(prefill_shader(self.hd4, self.f16), "attn_prefill_merge", m)
    }
    fn constants(&self) -> Vec<(&'static str, u32)> {
        let mut c = vec![
            ("DTYPE", self.dtype.shader_code()),
            ("KV_FMT", self.kv.shader_code()),
            ("WG", self.wg()),
            ("TILE_V4", self.tile_v4),
            ("HD4", self.hd4),
        ];
        // Unset when off (the WGSL default), so unmasked keys are the keys they always were.
        if self.masks {
            c.push(("MASKS", 1));
        }
        c
    }

    /// Whether this variant is a point of the declared space: its kind's axes ([`KINDS`]) hold
    /// each of its values, head_dim is a multiple of 4 up to [`MAX_HEAD_DIM`], the tile is one
    /// [`tile_v4_for`] gives, native f16 reads are over f16 storage, packed 8-bit scoring over
    /// block-quantized K (q8_0, q4_0), and the rows fit the subgroup kernel's registers
    /// ([`sg_rows_max`]); K/V are `dtype`'s float format or a quantized one whose rows head_dim
    /// fits ([`KvFormat::check_head_dim`]).
    pub fn fits(&self) -> bool {
        let a = self.kind.axes();
        kv_formats(self.dtype).contains(&self.kv)
            && self
                .kv
                .check_head_dim("attention", 4 * self.hd4 as usize)
                .is_ok()
            && (1..=MAX_HEAD_DIM as u32 / 4).contains(&self.hd4)
            && self.tile_v4.is_power_of_two()
            && self.tile_v4 <= tile_v4_for(u32::MAX)
            && a.split_kv.contains(&self.split_kv)
            && a.kr.contains(&self.kr)
            && a.sg_min.contains(&self.sg_min)
            && a.f16.contains(&self.f16)
            && a.native_f16.contains(&self.native_f16)
            && (!self.native_f16 || self.kv == KvFormat::F16)
            && a.int8_dot.contains(&self.int8_dot)
            && (!self.int8_dot || self.kv.is_block())
            && (self.kind != Kind::DecodeSubgroup
                || self.kr <= sg_rows_max_kv(self.hd4, self.sg_min, self.kv))
            // The subgroup kernels read 16-byte units of whole rows: float units (halves in
            // pairs) or quantized ones (`sg_reads_rows`).
            && (!matches!(self.kind, Kind::DecodeSubgroup | Kind::PrefillSubgroup)
                || match self.kv.is_quantized() {
                    true => sg_reads_rows(self.kv, 4 * self.hd4 as usize),
                    false => self.dtype == DType::F32 || self.hd4.is_multiple_of(2),
                })
    }

    /// The pipeline keys of this variant: one for prefill, partial and merge for decode.
    pub fn keys(&self) -> Vec<PipelineKey> {
        if self.kind == Kind::DecodeSubgroup {
            let mut c = self.constants();
            c.extend(sg_key_constants(&self.sg_shape(), self.kr));
            let module = SUBGROUP_MODULES[self.native_f16 as usize];
            let m = with_wg(self.merge_constants(), MERGE_WG);
            let main = PipelineKey::new(module, "attn_decode_sg", c);
            return vec![
                if self.int8_dot {
                    with_int8_dot(main)
                } else {
                    main
                },
                PipelineKey::new(ATTENTION_DECODE, "attn_decode_merge_rows", m),
            ];
        }
        if self.kind == Kind::PrefillSubgroup {
            let sh = prefill_sg_shape(self.hd4, self.sg_min);
            let mut c = self.constants();
            c.extend([
                ("R", sh.rows_per_group),
                ("SLOTS", sh.slots),
                ("L", sh.lanes_per_row),
            ]);
            let main = PipelineKey::new(ATTENTION_PREFILL_SUBGROUP, "attn_prefill_sg", c);
            let main = match self.int8_dot {
                true => with_int8_dot(main),
                false => main,
            };
            return match self.split_kv {
                false => vec![main],
                true => vec![main, self.prefill_merge_key()],
            };
        }
        if self.kind == Kind::DecodeKeys {
            let mut c = self.constants();
            c.push(("KR", self.kr));
            return vec![
                PipelineKey::new(ATTENTION_DECODE, "attn_decode_keys", c),
                PipelineKey::new(
                    ATTENTION_DECODE,
                    "attn_decode_merge",
                    self.merge_constants(),
                ),
            ];
        }
        if matches!(self.kind, Kind::Prefill | Kind::PrefillKeys) {
            let shader = prefill_shader(self.hd4, self.f16);
            let mut c = self.constants();
            c.push(("PR", PREFILL_ROWS_PER_INVOCATION));
            let m = self.prefill_merge_key();
            if self.kind == Kind::PrefillKeys {
                // One pipeline writes the output or, split over the keys, the partials (chosen
                // by the split count at run time).
                let main = PipelineKey::new(shader, "attn_prefill_keys", c);
                return match self.split_kv {
                    false => vec![main],
                    true => vec![main, m],
                };
            }
            if !self.split_kv {
                return vec![PipelineKey::new(shader, "attn_prefill", c)];
            }
            return vec![PipelineKey::new(shader, "attn_prefill_partial", c), m];
        }
        // Decode always splits over the keys.
        vec![
            PipelineKey::new(ATTENTION_DECODE, "attn_decode_partial", self.constants()),
            PipelineKey::new(
                ATTENTION_DECODE,
                "attn_decode_merge",
                self.merge_constants(),
            ),
        ]
    }
}

/// `c` with its workgroup size `WG` set to `wg`.
pub fn with_wg(c: Vec<(&'static str, u32)>, wg: u32) -> Vec<(&'static str, u32)> {
    c.into_iter()
        .map(|(n, v)| if n == "WG" { (n, wg) } else { (n, v) })
        .collect()
}

/// The K/V formats attention reads with q and out of `dtype`: its float format, then the
/// quantized ones.
pub fn kv_formats(dtype: DType) -> [KvFormat; 4] {
    [
        KvFormat::from_dtype(dtype),
        KvFormat::QUANTIZED[0],
        KvFormat::QUANTIZED[1],
        KvFormat::QUANTIZED[2],
    ]
}

/// The declared points of `axes` at one head_dim, storage format, K/V format and tile size: the
/// cross product of the kind's axes (all of them, or with `kr` and `sg_min` at their first
/// value), less what does not [`Variant::fits`].
fn points(
    axes: &Axes,
    hd4: u32,
    (dtype, kv): (DType, KvFormat),
    tile_v4: u32,
    every_row_count: bool,
) -> Vec<Variant> {
    let first = |s: &'static [u32]| if every_row_count { s } else { &s[..1] };
    let mut out = Vec::new();
    for &split_kv in axes.split_kv {
        for &f16 in axes.f16 {
            for &sg_min in first(axes.sg_min) {
                for (&native_f16, &int8_dot) in axes
                    .native_f16
                    .iter()
                    .flat_map(|n| axes.int8_dot.iter().map(move |i| (n, i)))
                {
                    for &kr in first(axes.kr) {
                        let v = Variant {
                            kind: axes.kind,
                            dtype,
                            kv,
                            tile_v4,
                            hd4,
                            split_kv,
                            kr,
                            f16,
                            sg_min,
                            native_f16,
                            masks: false,
                            int8_dot,
                        };
                        if v.fits() {
                            out.push(v);
                        }
                    }
                }
            }
        }
    }
    out
}

/// `key` with the masks axis on (`MASKS`, [`Variant::masks`]): the paged kernels' keys.
pub fn with_masks(mut key: PipelineKey) -> PipelineKey {
    key.constants.push(("MASKS", 1));
    key
}

/// `key` (a [`Kind::DecodeSubgroup`] partial pass, contiguous or paged, or the
/// [`Kind::PrefillSubgroup`] pass) with packed 8-bit q·k (the `I8` key constant,
/// [`Variant::int8_dot`]).
pub fn with_int8_dot(mut key: PipelineKey) -> PipelineKey {
    key.constants.push(("I8", 1));
    key
}

/// The head_dim at which [`declared_variants`] declares the masked variants.
pub const MASKED_HEAD_DIM: u32 = 128;

/// The variants the portability tests compile: every point of [`KINDS`] at every head_dim class
/// ([`HEAD_DIMS`]), storage format and tile size ([`WORKGROUP_STORAGE`]) with the float K/V; the
/// quantized K/V formats ([`kv_formats`]) at every head_dim class that holds them, storage
/// format and kind, at the larger tile size and each kind's first row count (their code differs
/// from the float format's only in the K/V reads, which neither changes), with packed 8-bit
/// scoring ([`Variant::int8_dot`]) where the format allows it; and every other
/// head_dim (4 ..= 256 in steps of 4) at [`RUN_TIME_PATH`], where `head_dim` only changes loop
/// trip counts; and the masked variants ([`Variant::masks`]) at [`MASKED_HEAD_DIM`].
pub fn declared_variants() -> Vec<Variant> {
    let mut out = Vec::new();
    let quantized_tile = tile_v4_for(WORKGROUP_STORAGE[WORKGROUP_STORAGE.len() - 1]);
    for axes in &KINDS {
        for hd in HEAD_DIMS {
            for dtype in DType::ALL {
                let [float, quantized @ ..] = kv_formats(dtype);
                for limit in WORKGROUP_STORAGE {
                    out.extend(points(
                        axes,
                        hd / 4,
                        (dtype, float),
                        tile_v4_for(limit),
                        true,
                    ));
                }
                for kv in quantized {
                    out.extend(points(axes, hd / 4, (dtype, kv), quantized_tile, false));
                }
            }
        }
        let (dtype, limit) = RUN_TIME_PATH;
        let kv = KvFormat::from_dtype(dtype);
        for hd4 in 1..=MAX_HEAD_DIM as u32 / 4 {
            if !HEAD_DIMS.contains(&(hd4 * 4)) {
                out.extend(points(axes, hd4, (dtype, kv), tile_v4_for(limit), false));
            }
        }
        // The masks axis at Llama's head_dim, every float format, each kind's first row count
        // (masks change the scoring code only, which neither head_dim nor the tile reshapes).
        for dtype in DType::ALL {
            let kv = KvFormat::from_dtype(dtype);
            let tile = tile_v4_for(WORKGROUP_STORAGE[0]);
            out.extend(
                points(axes, MASKED_HEAD_DIM / 4, (dtype, kv), tile, false)
                    .into_iter()
                    .map(|v| Variant { masks: true, ..v }),
            );
        }
    }
    out
}

/// The pipeline keys of [`declared_variants`], each once.
pub fn all_variant_keys() -> Vec<PipelineKey> {
    dedup(declared_variants().iter().flat_map(Variant::keys))
}

/// The [`Kind::DecodeSubgroup`] share of [`all_variant_keys`].
pub fn subgroup_variant_keys() -> Vec<PipelineKey> {
    dedup(
        declared_variants()
            .iter()
            .filter(|v| v.kind == Kind::DecodeSubgroup)
            .flat_map(Variant::keys),
    )
}

/// The prefill shader's (head_dim class 256) share of [`all_variant_keys`].
pub fn prefill_variant_keys() -> Vec<PipelineKey> {
    keys_of(ATTENTION_PREFILL)
}

/// The decode shader's share of [`all_variant_keys`].
pub fn decode_variant_keys() -> Vec<PipelineKey> {
    keys_of(ATTENTION_DECODE)
}

/// `shader`'s share of [`all_variant_keys`].
pub(super) fn keys_of(shader: &Shader) -> Vec<PipelineKey> {
    all_variant_keys()
        .into_iter()
        .filter(|k| k.shader == shader)
        .collect()
}

fn dedup(keys: impl Iterator<Item = PipelineKey>) -> Vec<PipelineKey> {
    let mut seen = std::collections::HashSet::new();
    keys.filter(|k| seen.insert(k.clone())).collect()
}

#[cfg(test)]
mod tests;
