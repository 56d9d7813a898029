//! Typed pipeline keys -> shader source, entry point and override constants; binding windows.
//!
//! An op derives one [`PipelineKey`] from its "decisions" (dtype, vector width, workgroup size,
//! flags). The key *is* the list of override constants handed to wgpu, so what is cached and what
//! is compiled cannot drift apart.
//!
//! Bindings are declared once, in the WGSL (`@group(0) @binding(N) var<...> name`). When a
//! pipeline is built, naga reflects the entry point's bindings ([`Slot`]); host code names the
//! bindings it fills (`("x", window.resource())`) and the launch path
//! ([`Context::encode_kernel`]) finds their numbers, binds the params uniform to `params`, and a
//! dummy buffer to any binding the entry point declares but this call leaves unnamed.

use crate::context::Context;
use crate::error::{Error, Result};

/// Helpers shared by every shader: packed f16/bf16 decode and encode, grid linearisation.
pub const COMMON_WGSL: &str = include_str!("../shaders/common.wgsl");

/// f16 stores through `pack2x16float` (`encode_half4`, `encode_item`), for the modules that
/// store f16 natively: they need the SHADER_F16_IN_F32 downlevel capability ([`F16_IN_F32`]).
pub const F16_STORE_WGSL: &str = include_str!("../shaders/f16_store.wgsl");

/// The same hooks as [`F16_STORE_WGSL`] through common.wgsl's exact integer encoder, for every
/// other module that calls them.
pub const INTEGER_STORE: &str = "fn encode_half4(v: vec4<f32>, dtype: u32) -> vec2<u32> {
    return pack_half4(v, dtype);
}
fn encode_item(v: Item, dtype: u32) -> vec4<u32> {
    return pack_item(v, dtype);
}";

/// The modules that use `pack2x16float`, which naga validates only with the capability
/// `SHADER_FLOAT16_IN_FLOAT32` (wgpu: the downlevel flag `SHADER_F16_IN_F32`,
/// [`crate::context::Caps::f16_in_f32`]); their ops create them only on devices that have it.
/// A unit test checks that exactly these modules need it.
pub const F16_IN_F32: [&Shader; 3] = [
    Shader::ROPE_F16_STORE,
    crate::ops::rms_norm::RMS_NORM_F16,
    crate::ops::rms_norm::RMS_NORM_SUBGROUP_F16,
];

/// The quantized KV formats' encode and decode (cache writers and attention modules).
pub const KV_QUANT_WGSL: &str = include_str!("../shaders/kv_quant.wgsl");
/// Shared by the two KV cache writers: the new rows' bindings and reads.
pub const KV_SOURCE_WGSL: &str = include_str!("../shaders/kv_source.wgsl");
/// Quantizing a head row into a quantized buffer (`quant_store`), shared by the two KV cache
/// writers and RoPE's quantized output, which each supply its `load4` and `kv_put` seams.
pub const KV_QUANT_STORE_WGSL: &str = include_str!("../shaders/kv_quant_store.wgsl");
/// Shared by the two attention shaders: overrides, params, input bindings, load/mask helpers.
pub const ATTENTION_COMMON_WGSL: &str = include_str!("../shaders/attention_common.wgsl");
/// The split-KV partials (bindings, store, merge), shared by the decode and paged kernels.
pub const ATTENTION_SPLIT_WGSL: &str = include_str!("../shaders/attention_split.wgsl");
/// The contiguous K/V windows as 16-byte views and `keys_unit`, shared by the contiguous decode
/// modules and the contiguous subgroup prefill.
pub const ATTENTION_KV4_WGSL: &str = include_str!("../shaders/attention_kv4.wgsl");
/// The CPU-adapter decode kernels' step (`keys_partial`), for the decode and paged
/// modules, which define where a key's rows live.
pub const ATTENTION_KEYS_WGSL: &str = include_str!("../shaders/attention_keys.wgsl");

/// The GPU decode kernels' subgroup step (`sg_partial`), for the contiguous and paged subgroup
/// modules, which define where a key's rows live.
pub const ATTENTION_SUBGROUP_WGSL: &str = include_str!("../shaders/attention_subgroup.wgsl");
/// The GPU prefill step (`pf_run` and its helpers), for the contiguous and paged subgroup
/// prefill modules.
pub const ATTENTION_PREFILL_SG_STEP_WGSL: &str =
    include_str!("../shaders/attention_prefill_sg_step.wgsl");

/// One WGSL module (a kernel family): the files it concatenates, and the variants its op can
/// dispatch. Compared and hashed by name.
#[derive(Debug)]
pub struct Shader {
    /// The kernel file's name under `shaders/`.
    pub name: &'static str,
    /// Source files, concatenated in order (`common.wgsl` first). This concatenation is the only
    /// source transformation in the crate.
    pub parts: &'static [&'static str],
    /// Every pipeline key the op's dispatcher can produce (the portability tests compile each).
    pub variants: fn() -> Vec<PipelineKey>,
}

impl PartialEq for Shader {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Shader {}
impl std::hash::Hash for Shader {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl Shader {
    /// `shaders/rms_norm.wgsl` ([`crate::ops::rms_norm::RMS_NORM`]).
    pub const RMS_NORM: &'static Shader = crate::ops::rms_norm::RMS_NORM;
    /// `shaders/rope.wgsl`.
    pub const ROPE: &'static Shader = &Shader {
        name: "rope.wgsl",
        parts: &[
            COMMON_WGSL,
            INTEGER_STORE,
            include_str!("../shaders/rope.wgsl"),
        ],
        variants: crate::ops::rope::all_variant_keys,
    };
    /// `shaders/rope.wgsl` storing f16 through `pack2x16float` (`shaders/f16_store.wgsl`;
    /// devices with the f16-in-f32 capability only, see [`F16_IN_F32`]).
    pub const ROPE_F16_STORE: &'static Shader = &Shader {
        name: "rope_f16_store.wgsl",
        parts: &[
            COMMON_WGSL,
            F16_STORE_WGSL,
            include_str!("../shaders/rope.wgsl"),
        ],
        variants: crate::ops::rope::f16_store_variant_keys,
    };
    /// `shaders/rope.wgsl` with `shaders/rope_q.wgsl`: RoPE written into quantized KV cache rows
    /// (`rope_q`, the KV caches' `append_rope`).
    pub const ROPE_Q: &'static Shader = &Shader {
        name: "rope_q.wgsl",
        parts: &[
            COMMON_WGSL,
            INTEGER_STORE,
            KV_QUANT_WGSL,
            KV_QUANT_STORE_WGSL,
            include_str!("../shaders/rope.wgsl"),
            include_str!("../shaders/rope_q.wgsl"),
        ],
        variants: crate::ops::rope::quantized_variant_keys,
    };
    /// `shaders/attention_prefill.wgsl` for head_dim up to 256
    /// ([`crate::ops::attention::ATTENTION_PREFILL`]).
    pub const ATTENTION_PREFILL: &'static Shader = crate::ops::attention::ATTENTION_PREFILL;
    /// `shaders/attention_decode.wgsl` ([`crate::ops::attention::ATTENTION_DECODE`]).
    pub const ATTENTION_DECODE: &'static Shader = crate::ops::attention::ATTENTION_DECODE;
    /// `shaders/kv_cache.wgsl`.
    pub const KV_CACHE: &'static Shader = &Shader {
        name: "kv_cache.wgsl",
        parts: &[
            COMMON_WGSL,
            KV_QUANT_WGSL,
            KV_SOURCE_WGSL,
            KV_QUANT_STORE_WGSL,
            include_str!("../shaders/kv_cache.wgsl"),
        ],
        variants: crate::ops::kv_cache::all_variant_keys,
    };
    /// `shaders/attention_paged.wgsl` (with `attention_common.wgsl`).
    pub const ATTENTION_PAGED: &'static Shader = &Shader {
        name: "attention_paged.wgsl",
        parts: &[
            COMMON_WGSL,
            KV_QUANT_WGSL,
            ATTENTION_COMMON_WGSL,
            ATTENTION_SPLIT_WGSL,
            ATTENTION_KEYS_WGSL,
            include_str!("../shaders/attention_paged.wgsl"),
        ],
        variants: crate::ops::paged::attention_variant_keys,
    };
    /// `shaders/paged_kv.wgsl`.
    pub const PAGED_KV: &'static Shader = &Shader {
        name: "paged_kv.wgsl",
        parts: &[
            COMMON_WGSL,
            KV_QUANT_WGSL,
            KV_SOURCE_WGSL,
            KV_QUANT_STORE_WGSL,
            include_str!("../shaders/paged_kv.wgsl"),
        ],
        variants: crate::ops::paged::write_variant_keys,
    };
    /// `shaders/cast.wgsl`.
    pub const CAST: &'static Shader = &Shader {
        name: "cast.wgsl",
        parts: &[COMMON_WGSL, include_str!("../shaders/cast.wgsl")],
        variants: crate::ops::cast::all_variant_keys,
    };

    /// Every kernel shader of the library (tools add their own, e.g. `bench::SHADERS`): the
    /// others, then each op's declared modules ([`crate::ops::attention::MODULES`]).
    pub const ALL: &'static [&'static Shader] = &concat::<
        { OTHERS.len() + crate::ops::attention::MODULES.len() },
    >(&OTHERS, &crate::ops::attention::MODULES);

    /// The full WGSL module as the WGSL spec has it (every `enable` directive it needs), which a
    /// browser's compiler takes as it stands; [`naga_source`] makes naga's text of it.
    pub fn source(&self) -> String {
        self.parts.join("\n")
    }

    /// Where line `line` (1-based) of [`Shader::source`] comes from: the file under `shaders/`
    /// (or, for a short inline part, `<module> part N`) and the line in it, so that a naga error
    /// names a real file and line.
    pub fn locate(&self, line: usize) -> (String, usize) {
        let mut first = 1;
        for (i, part) in self.parts.iter().enumerate() {
            let n = part.matches('\n').count() + 1;
            if line < first + n {
                let name = SHADER_FILES
                    .iter()
                    .find(|(_, text)| text == part)
                    .map_or_else(
                        || format!("{} part {}", self.name, i + 1),
                        |(file, _)| format!("shaders/{file}"),
                    );
                return (name, line - first + 1);
            }
            first += n;
        }
        (self.name.to_string(), line)
    }

    /// Entry points and constant sets that the portability tests compile.
    pub fn variants(&self) -> Vec<PipelineKey> {
        (self.variants)()
    }
}

/// The kernel shaders whose ops do not list their modules (see [`Shader::ALL`]).
const OTHERS: [&Shader; 13] = [
    Shader::RMS_NORM,
    Shader::CAST,
    Shader::ROPE,
    Shader::ROPE_F16_STORE,
    Shader::ROPE_Q,
    Shader::KV_CACHE,
    Shader::ATTENTION_PAGED,
    Shader::PAGED_KV,
    crate::ops::rms_norm::RMS_NORM_SUBGROUP,
    crate::ops::rms_norm::RMS_NORM_F16,
    crate::ops::rms_norm::RMS_NORM_SUBGROUP_F16,
    crate::ops::paged::ATTENTION_PAGED_SUBGROUP,
    crate::ops::paged::ATTENTION_PAGED_PREFILL_SUBGROUP,
];

/// `a` followed by `b` (`N` = their lengths' sum), at compile time.
const fn concat<const N: usize>(
    a: &[&'static Shader],
    b: &[&'static Shader],
) -> [&'static Shader; N] {
    let mut out = [Shader::CAST; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - a.len()];
        i += 1;
    }
    out
}

/// Everything that changes the compiled code of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineKey {
    /// The shader module.
    pub shader: &'static Shader,
    /// The entry point.
    pub entry_point: &'static str,
    /// WGSL `override` constants by name. Every knob that changes code lives here.
    pub constants: Vec<(&'static str, u32)>,
}

/// Hashes the entry point and the constants' values only: every launch looks its key up, and
/// the names (module, constants) are fixed per entry point in practice, so hashing their text
/// would cost more than it separates. Equal keys still hash equally (`Eq` compares everything).
impl std::hash::Hash for PipelineKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.entry_point.hash(state);
        state.write_usize(self.constants.len());
        for &(_, v) in &self.constants {
            state.write_u32(v);
        }
    }
}

/// How a binding is declared in WGSL, which decides what may fill it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// One binding of group 0 that an entry point uses, reflected from the WGSL by naga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The WGSL variable name (API between host and shader).
    pub name: String,
    /// `@binding(N)` in group 0.
    pub binding: u32,
    /// How the shader accesses it.
    pub access: Access,
}

/// A module naga rejects: its message, and the line of the joined source it points at.
#[derive(Debug, Clone)]
pub struct ShaderError {
    /// 1-based line of [`Shader::source`], when naga names one.
    pub line: Option<usize>,
    /// naga's rendered message.
    pub message: String,
}

impl std::fmt::Display for ShaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every file under `shaders/`, by name, so that a line of a joined module maps back to its file
/// ([`Shader::locate`]); a test checks that the folder and this table agree.
pub const SHADER_FILES: &[(&str, &str)] = &[
    (
        "attention_common.wgsl",
        include_str!("../shaders/attention_common.wgsl"),
    ),
    (
        "attention_decode.wgsl",
        include_str!("../shaders/attention_decode.wgsl"),
    ),
    (
        "attention_decode_subgroup.wgsl",
        include_str!("../shaders/attention_decode_subgroup.wgsl"),
    ),
    (
        "attention_kv4.wgsl",
        include_str!("../shaders/attention_kv4.wgsl"),
    ),
    (
        "attention_keys.wgsl",
        include_str!("../shaders/attention_keys.wgsl"),
    ),
    (
        "attention_paged.wgsl",
        include_str!("../shaders/attention_paged.wgsl"),
    ),
    (
        "attention_paged_prefill_subgroup.wgsl",
        include_str!("../shaders/attention_paged_prefill_subgroup.wgsl"),
    ),
    (
        "attention_paged_subgroup.wgsl",
        include_str!("../shaders/attention_paged_subgroup.wgsl"),
    ),
    (
        "attention_prefill.wgsl",
        include_str!("../shaders/attention_prefill.wgsl"),
    ),
    (
        "attention_prefill_sg_step.wgsl",
        include_str!("../shaders/attention_prefill_sg_step.wgsl"),
    ),
    (
        "attention_prefill_subgroup.wgsl",
        include_str!("../shaders/attention_prefill_subgroup.wgsl"),
    ),
    (
        "attention_split.wgsl",
        include_str!("../shaders/attention_split.wgsl"),
    ),
    (
        "attention_subgroup.wgsl",
        include_str!("../shaders/attention_subgroup.wgsl"),
    ),
    (
        "attention_subgroup_f16.wgsl",
        include_str!("../shaders/attention_subgroup_f16.wgsl"),
    ),
    ("baseline.wgsl", include_str!("../shaders/baseline.wgsl")),
    ("cast.wgsl", include_str!("../shaders/cast.wgsl")),
    ("common.wgsl", include_str!("../shaders/common.wgsl")),
    ("copy.wgsl", include_str!("../shaders/copy.wgsl")),
    ("f16_store.wgsl", include_str!("../shaders/f16_store.wgsl")),
    ("kv_cache.wgsl", include_str!("../shaders/kv_cache.wgsl")),
    ("kv_quant.wgsl", include_str!("../shaders/kv_quant.wgsl")),
    (
        "kv_quant_store.wgsl",
        include_str!("../shaders/kv_quant_store.wgsl"),
    ),
    ("kv_source.wgsl", include_str!("../shaders/kv_source.wgsl")),
    ("matmul.wgsl", include_str!("../shaders/matmul.wgsl")),
    ("paged_kv.wgsl", include_str!("../shaders/paged_kv.wgsl")),
    ("rms_norm.wgsl", include_str!("../shaders/rms_norm.wgsl")),
    (
        "rms_norm_f16.wgsl",
        include_str!("../shaders/rms_norm_f16.wgsl"),
    ),
    (
        "rms_norm_subgroup.wgsl",
        include_str!("../shaders/rms_norm_subgroup.wgsl"),
    ),
    ("rope.wgsl", include_str!("../shaders/rope.wgsl")),
    ("rope_q.wgsl", include_str!("../shaders/rope_q.wgsl")),
];

/// The bindings of group 0 that `entry_point` of `source` (spec-correct or naga's text, see
/// [`naga_source`]) uses (statically, before overrides: the same analysis wgpu derives the bind
/// group layout from), and the names of every binding the module declares.
pub fn reflect(
    source: &str,
    entry_point: &str,
) -> std::result::Result<(Vec<Slot>, Vec<String>), ShaderError> {
    let source = &*naga_source(source);
    let module = naga::front::wgsl::parse_str(source).map_err(|e| ShaderError {
        line: e.location(source).map(|l| l.line_number as usize),
        message: e.emit_to_string(source),
    })?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
    validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    let info = validator.validate(&module).map_err(|e| ShaderError {
        line: e.location(source).map(|l| l.line_number as usize),
        message: e.emit_to_string(source),
    })?;
    let index = module
        .entry_points
        .iter()
        .position(|ep| ep.name == entry_point)
        .ok_or_else(|| ShaderError {
            line: None,
            message: format!("no entry point {entry_point}"),
        })?;
    let uses = info.get_entry_point(index);
    let mut slots = Vec::new();
    let mut declared = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let (Some(binding), Some(name)) = (&var.binding, &var.name) else {
            continue;
        };
        if binding.group != 0 {
            continue;
        }
        declared.push(name.clone());
        if uses[handle].is_empty() {
            continue;
        }
        let access = match var.space {
            naga::AddressSpace::Uniform => Access::Uniform,
            naga::AddressSpace::Storage { access }
                if access.contains(naga::StorageAccess::STORE) =>
            {
                Access::ReadWrite
            }
            _ => Access::Read,
        };
        slots.push(Slot {
            name: name.clone(),
            binding: binding.binding,
            access,
        });
    }
    Ok((slots, declared))
}

/// Directives that naga (30) does not take as the spec has them: `enable subgroups;`, which the
/// WGSL spec requires and naga rejects (it takes the feature's functions and builtins without it:
/// "specifies standard functionality which is not yet implemented"); and
/// `diagnostic(off, subgroup_uniformity);`, a rule naga does not know (it has no subgroup
/// uniformity analysis). [`naga_source`] removes them; Tint (Chrome's compiler, Dawn) requires the
/// first, and the subgroup decode needs the second there: its lane groups shuffle within
/// themselves (`subgroupShuffleXor` with masks below the group size) while different groups run
/// different trip counts, which Tint's subgroup-uniformity analysis cannot see is safe.
pub const NAGA_PENDING_DIRECTIVES: &[&str] =
    &["enable subgroups;", "diagnostic(off, subgroup_uniformity);"];

/// The text of a spec-correct module that naga takes: each line that is one of
/// [`NAGA_PENDING_DIRECTIVES`] becomes a comment, so that line numbers (and [`Shader::locate`])
/// still hold. The one place where a module's text differs between naga and the spec: reflection
/// always parses this text, and native wgpu is handed it (`PipelineKey::build`); wgpu's
/// `webgpu` backend on wasm32 hands the browser the spec-correct text instead.
pub fn naga_source(spec: &str) -> std::borrow::Cow<'_, str> {
    let pending = |line: &str| NAGA_PENDING_DIRECTIVES.contains(&line.trim());
    if !spec.lines().any(pending) {
        return std::borrow::Cow::Borrowed(spec);
    }
    let mut out = String::with_capacity(spec.len() + 32);
    for line in spec.split_inclusive('\n') {
        if pending(line) {
            out.push_str("// ");
        }
        out.push_str(line);
    }
    std::borrow::Cow::Owned(out)
}

/// Marks a module constant that each pipeline key sets, written in WGSL as
/// `const NAME: u32 = DEFAULT; // @key`. Where the code needs a constant expression (the size of
/// a function-scope array) an override cannot serve, so [`PipelineKey::source`] rewrites such a
/// line with the key's value of `NAME`: this is the crate's one source substitution beside
/// joining files. The key still lists the value, so it stays part of the cache identity.
pub const KEY_CONSTANT: &str = "// @key";

/// `NAME` of a `const NAME: u32 = ...; // @key` line.
fn key_constant_name(line: &str) -> Option<&str> {
    let line = line.trim();
    if !line.ends_with(KEY_CONSTANT) {
        return None;
    }
    let rest = line.strip_prefix("const ")?;
    let (name, ty) = rest.split_once(':')?;
    ty.trim_start().starts_with("u32").then_some(name.trim())
}

/// Every runtime check but naga's loop bounding (see [`PipelineKey::build`]).
const RUNTIME_CHECKS: wgpu::ShaderRuntimeChecks = wgpu::ShaderRuntimeChecks {
    bounds_checks: true,
    force_loop_bounding: false,
    ray_query_initialization_tracking: true,
    task_shader_dispatch_tracking: true,
    mesh_shader_primitive_indices_clamp: true,
    int_div_checks: true,
};

impl PipelineKey {
    /// A key for `entry_point` of `shader` with these override constants.
    pub fn new(
        shader: &'static Shader,
        entry_point: &'static str,
        constants: Vec<(&'static str, u32)>,
    ) -> Self {
        PipelineKey {
            shader,
            entry_point,
            constants,
        }
    }

    /// The value of constant `name`, if the key sets it.
    pub fn constant(&self, name: &str) -> Option<u32> {
        self.constants
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }

    /// The module's source for this key: [`Shader::source`] with every key constant applied
    /// (see [`KEY_CONSTANT`]). Line numbers are unchanged, so [`Shader::locate`] still holds.
    pub fn source(&self) -> String {
        let src = self.shader.source();
        if !src.contains(KEY_CONSTANT) {
            return src;
        }
        let mut out = String::with_capacity(src.len());
        for line in src.split_inclusive('\n') {
            match key_constant_name(line).and_then(|name| self.constant(name).map(|v| (name, v))) {
                Some((name, value)) => {
                    out.push_str(&format!("const {name}: u32 = {value}u; {KEY_CONSTANT}"));
                    if line.ends_with('\n') {
                        out.push('\n');
                    }
                }
                None => out.push_str(line),
            }
        }
        out
    }

    /// The override constants wgpu specialises the module with: the key's constants less those
    /// the source takes as key constants ([`PipelineKey::source`]).
    pub fn overrides(&self) -> Vec<(&'static str, u32)> {
        let fixed: Vec<&str> = self
            .shader
            .parts
            .iter()
            .flat_map(|part| part.lines())
            .filter_map(key_constant_name)
            .collect();
        self.constants
            .iter()
            .filter(|(n, _)| !fixed.contains(n))
            .copied()
            .collect()
    }

    /// Compile the pipeline (call through [`Context::kernel`], which caches and scopes errors).
    /// A module naga rejects is an `Err` naming the shader file and line (see
    /// [`Shader::locate`]); errors only the device finds (a missing feature) come from wgpu.
    pub(crate) fn build(&self, device: &wgpu::Device) -> std::result::Result<Kernel, String> {
        let src = self.source();
        let (slots, declared) = reflect(&src, self.entry_point).map_err(|e| {
            let at = e.line.map_or_else(String::new, |line| {
                let (file, line) = self.shader.locate(line);
                format!(" at {file}:{line}")
            });
            format!(
                "shader module {} (entry point {}) is invalid{at}:\n{}",
                self.shader.name, self.entry_point, e.message
            )
        })?;
        // Native wgpu parses the module with naga; wgpu's `webgpu` backend (wasm32) hands the
        // text to the browser, whose compiler requires every directive the spec does. A module
        // with `enable subgroups;` is only built on a device with SUBGROUP, which on wasm32 means
        // the `webgpu` backend (WebGL has no subgroups).
        #[cfg(not(target_arch = "wasm32"))]
        let src = naga_source(&src).into_owned();
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(self.shader.name),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // SAFETY: `create_shader_module_trusted` still parses and validates the module; it only
        // drops naga's added loop counters (`force_loop_bounding`), which the caller must make
        // unnecessary by never running an unbounded loop. Every loop of this crate's shaders runs
        // to a bound the host validated before dispatch (each shader file's header says which),
        // and the loop counters double the LLVM time of the attention kernels on CPU adapters
        // (BENCHMARKS.md, cold compile). Bounds checks stay on: block tables, positions and row
        // maps are GPU data that index memory.
        let module = unsafe { device.create_shader_module_trusted(desc, RUNTIME_CHECKS) };
        let constants: Vec<(&str, f64)> = self
            .overrides()
            .iter()
            .map(|&(n, v)| (n, v as f64))
            .collect();
        // The layout is built from the reflected slots rather than derived by wgpu, so that the
        // params uniform can take a dynamic offset: every call's parameters are a slot of one
        // slab (`Context::param_slot`), and a new position in a decode loop changes only the
        // offset, not the bind group. An entry point without bindings keeps the derived layout.
        let explicit = (!slots.is_empty()).then(|| {
            let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
                .iter()
                .map(|slot| wgpu::BindGroupLayoutEntry {
                    binding: slot.binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: match slot.access {
                            Access::Uniform => wgpu::BufferBindingType::Uniform,
                            Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                            Access::ReadWrite => {
                                wgpu::BufferBindingType::Storage { read_only: false }
                            }
                        },
                        has_dynamic_offset: slot.access == Access::Uniform,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let group = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(self.entry_point),
                entries: &entries,
            });
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(self.entry_point),
                bind_group_layouts: &[Some(&group)],
                immediate_size: 0,
            });
            (group, layout)
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(self.entry_point),
            layout: explicit.as_ref().map(|(_, l)| l),
            module: &module,
            entry_point: Some(self.entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // Kernels never read workgroup memory before writing it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let layout = match explicit {
            Some((group, _)) => group,
            None => pipeline.get_bind_group_layout(0),
        };
        let uniforms = slots.iter().filter(|s| s.access == Access::Uniform).count();
        Ok(Kernel {
            key: self.clone(),
            pipeline,
            layout,
            slots,
            declared,
            uniforms,
        })
    }
}

/// A compiled, cached pipeline, its bind group layout and its reflected bindings.
#[derive(Debug)]
pub struct Kernel {
    /// The key it was built for.
    pub key: PipelineKey,
    /// The compiled pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Its bind group layout (group 0).
    pub layout: wgpu::BindGroupLayout,
    /// The group-0 bindings the entry point uses.
    pub slots: Vec<Slot>,
    /// Every group-0 binding name the module declares.
    pub declared: Vec<String>,
    /// Uniform slots (each bound to the params slot, each taking its dynamic offset).
    pub uniforms: usize,
}

impl Kernel {
    /// Bind group entries for `named` bindings plus `params` for the uniform (a window of the
    /// parameter slab, placed by the dynamic offset `Kernel::bind` sets); every other used
    /// slot gets one of the context's dummy buffers. A name the module does not declare is an
    /// error (a typo never leaves a binding silently unfilled).
    pub(crate) fn entries<'a>(
        &'a self,
        ctx: &'a Context,
        op: &'static str,
        params: &'a wgpu::BufferBinding<'a>,
        named: &'a [(&'a str, wgpu::BindingResource<'a>)],
    ) -> Result<Vec<wgpu::BindGroupEntry<'a>>> {
        for (name, _) in named {
            if !self.declared.iter().any(|d| d == name) {
                return Err(Error::gpu(
                    op,
                    format!(
                        "{} declares no binding named {name} (it has {:?})",
                        self.key.shader.name, self.declared
                    ),
                ));
            }
        }
        if self.uniforms > MAX_UNIFORMS {
            return Err(Error::gpu(
                op,
                format!(
                    "{} uses {} uniform bindings; at most {MAX_UNIFORMS} are supported",
                    self.key.entry_point, self.uniforms
                ),
            ));
        }
        let mut rw_dummies = 0;
        let mut entries = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let resource = match named.iter().find(|(n, _)| *n == slot.name) {
                Some((_, r)) => r.clone(),
                None => match slot.access {
                    Access::Uniform => wgpu::BindingResource::Buffer(params.clone()),
                    Access::Read => ctx.dummy_buffer().as_entire_binding(),
                    Access::ReadWrite => {
                        rw_dummies += 1;
                        ctx.dummy_rw_buffer(rw_dummies - 1)?.as_entire_binding()
                    }
                },
            };
            entries.push(wgpu::BindGroupEntry {
                binding: slot.binding,
                resource,
            });
        }
        Ok(entries)
    }
}

/// Uniform slots one entry point may use (each reads the one params slot).
const MAX_UNIFORMS: usize = 4;

impl Kernel {
    /// Set the pipeline and `group` in `pass`, the params slot at `offset` (the dynamic offset
    /// of every uniform slot).
    pub(crate) fn bind(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        group: &wgpu::BindGroup,
        offset: u32,
    ) {
        let offsets = [offset; MAX_UNIFORMS];
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, group, &offsets[..self.uniforms.min(MAX_UNIFORMS)]);
    }
}

mod window;
pub(crate) use window::fits_one_binding;
pub use window::Window;

#[cfg(test)]
mod tests;
