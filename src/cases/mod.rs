//! Case files behind `llama-kernels check`: tensors dumped from a user's own model, run on the GPU
//! and on the f64 reference, and compared with the expected outputs stored in the file.
//!
//! A case file is a safetensors file:
//! - `__metadata__` holds `op` and the op's parameters, as strings (`format`, which PyTorch's
//!   writer adds, is accepted and ignored). An unknown op or an unknown key is an error, so a typo
//!   is never silently ignored; both are refused before any GPU work.
//! - inputs are named tensors (`x`, `weight` ...); expected outputs are `expected.<output>` in any
//!   float dtype. Every tensor must be used by the op.
//!
//! Malformed files (truncated, lying headers, offsets past the end, absurd shapes, wrong dtypes)
//! are refused by the safetensors parser or by the op's checks with a clear error; nothing is
//! allocated beyond the file's own size.

pub mod attention;
pub mod paged_attention;
pub mod rms_norm;
pub mod rope;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::compare::{compare, Comparison};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Element types a case tensor may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostDType {
    /// 64-bit float.
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed integer (positions).
    I64,
    /// 32-bit signed integer (positions, block ids).
    I32,
    /// Unsigned byte (boolean masks, 0 = hidden).
    U8,
    /// Boolean (masks).
    Bool,
}

impl HostDType {
    /// The GPU storage dtype for float types.
    pub fn storage(self) -> Option<DType> {
        match self {
            HostDType::F32 => Some(DType::F32),
            HostDType::F16 => Some(DType::F16),
            HostDType::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
    /// True for the four float types.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            HostDType::F64 | HostDType::F32 | HostDType::F16 | HostDType::BF16
        )
    }
}

/// A tensor read from a case file, with its values widened to f64 (integers are exact up to 2^53).
#[derive(Clone, Debug)]
pub struct HostTensor {
    /// Element type in the file.
    pub dtype: HostDType,
    /// Shape in the file.
    pub shape: Vec<usize>,
    /// Values widened to f64, row-major.
    pub values: Vec<f64>,
}

impl HostTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.values.len()
    }
    /// Values as f32 (exact for f32/f16/bf16 inputs).
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}

/// One loaded case file.
pub struct CaseFile {
    /// The file's path, for messages.
    pub path: String,
    /// `__metadata__["op"]`.
    pub op: String,
    meta: HashMap<String, String>,
    tensors: BTreeMap<String, HostTensor>,
    used_meta: RefCell<BTreeSet<String>>,
    used_tensors: RefCell<BTreeSet<String>>,
}

/// One output an op produced for a case: its GPU values and the f64 reference.
pub struct OpOutput {
    /// Output name (`expected.<name>` in the file).
    pub name: String,
    /// Output shape.
    pub shape: Vec<usize>,
    /// The GPU result, read back as f32.
    pub gpu: Vec<f32>,
    /// The f64 reference computed from the same inputs.
    pub cpu: Vec<f64>,
}

/// What an op's case runner returns.
pub struct OpResult {
    /// Storage dtype the case ran in.
    pub dtype: DType,
    /// The kernel variant (or path) that ran, as the op reports it (e.g. `rope_vec4 in place`).
    pub variant: String,
    /// The main input's shape, for the report.
    pub shape: Vec<usize>,
    /// Default NMSE tolerance for this op and dtype.
    pub tolerance: f64,
    /// The outputs, in the op's order.
    pub outputs: Vec<OpOutput>,
}

/// What a case's outputs are judged against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Against {
    /// The `expected.*` tensors of the file: both the GPU result and the f64 reference must be
    /// within the tolerance of them (the default).
    #[default]
    Expected,
    /// The f64 reference computed from the file's inputs: for an expected tensor that was itself
    /// computed imprecisely (HF computes RoPE angles in f32, bf16 models round every step).
    Reference,
}

/// How much closer the GPU and the f64 reference must be to each other than to the expected
/// tensor before `check` says the expected tensor is the imprecise side.
pub const IMPRECISE_EXPECTED_RATIO: f64 = 100.0;

/// The largest NMSE between expected and the f64 reference that rounding in `dtype` can
/// explain; past it `check` points at the case's parameters instead of calling expected
/// imprecise. A computation in `dtype` whose intermediate values run up to 2^12 times its
/// outputs (RoPE angles in f32 at positions in the thousands, a chain of bf16 model steps) has
/// relative errors up to 2^12 units of rounding, so NMSE up to `(2^12 u)^2`: 6e-8 for f32 (an
/// f32 case at 1e-3 is not rounding), capped at 1e-2 for f16 and bf16, where a model's steps
/// stay near 1e-5..1e-4.
pub fn imprecise_expected_max_nmse(dtype: DType) -> f64 {
    let unit_roundoff = match dtype {
        DType::F32 => f64::from(f32::EPSILON) / 2.0,
        DType::F16 => f64::from(half::f16::EPSILON) / 2.0,
        DType::BF16 => f64::from(half::bf16::EPSILON) / 2.0,
    };
    (4096.0 * unit_roundoff).powi(2).min(1e-2)
}

/// The verdict on one output.
pub struct OutputReport {
    /// Output name.
    pub name: String,
    /// GPU result against the expected tensor.
    pub gpu: Comparison,
    /// f64 reference against the expected tensor.
    pub cpu: Comparison,
    /// GPU result against the f64 reference.
    pub agree: Comparison,
    /// The verdict under the chosen [`Against`].
    pub pass: bool,
    /// When the output failed: which side is off, and by how much.
    pub diagnosis: Option<String>,
}

/// Say which of GPU, f64 reference and expected tensor is off when an output failed.
fn diagnose(o: &OutputReport, tol: f64, dtype: DType, against: Against) -> Option<String> {
    if o.pass {
        return None;
    }
    let (gpu, cpu, agree) = (&o.gpu, &o.cpu, &o.agree);
    if against == Against::Reference || (!agree.passes(tol) && cpu.passes(tol)) {
        return Some(format!(
            "the GPU is the imprecise side: it misses the f64 reference by {agree} (limit {tol:.0e}) \
             while the reference is within {} of expected; this is a kernel bug, please report it \
             with this case file",
            fmt_nmse(cpu.nmse)
        ));
    }
    let worst_expected = gpu.nmse.min(cpu.nmse);
    if agree.passes(tol)
        && agree.nmse * IMPRECISE_EXPECTED_RATIO <= worst_expected
        && worst_expected > imprecise_expected_max_nmse(dtype)
    {
        return Some(format!(
            "expected differs from the f64 reference by NMSE {} while the GPU agrees with the \
             reference to NMSE {}: more than {dtype} rounding explains (up to {:.0e}), so the \
             case's parameters (eps, weight_offset, theta, rope_type, scale, positions ...) \
             probably differ from what produced expected",
            fmt_nmse(cpu.nmse),
            fmt_nmse(agree.nmse),
            imprecise_expected_max_nmse(dtype)
        ));
    }
    if agree.passes(tol) && agree.nmse * IMPRECISE_EXPECTED_RATIO <= worst_expected {
        let factor = if agree.nmse > 0.0 {
            format!("{:.0e} times", worst_expected / agree.nmse)
        } else {
            "infinitely".to_string()
        };
        return Some(format!(
            "the expected tensor is the imprecise side: the GPU and the f64 reference agree to \
             NMSE {} (max abs {:.2e}), while expected misses the f64 reference by NMSE {} (max \
             abs {:.2e}), {factor} more. The kernel is right on these inputs; expected was \
             computed with less precision (e.g. angles or softmax in f32, or a bf16 model). \
             Judge the GPU against the f64 reference with --against reference",
            fmt_nmse(agree.nmse),
            agree.max_abs,
            fmt_nmse(cpu.nmse),
            cpu.max_abs
        ));
    }
    Some(format!(
        "GPU, f64 reference and expected disagree (GPU vs reference NMSE {}, reference vs \
         expected NMSE {}): check the case's parameters (eps, theta, rope_type, scale, \
         positions ...) against the model's config",
        fmt_nmse(agree.nmse),
        fmt_nmse(cpu.nmse)
    ))
}

fn fmt_nmse(v: f64) -> String {
    format!("{v:.2e}")
}

/// The verdict on one case.
pub struct CaseReport {
    /// The case file's path.
    pub path: String,
    /// The op.
    pub op: String,
    /// Storage dtype the case ran in.
    pub dtype: DType,
    /// The kernel variant that ran.
    pub variant: String,
    /// What the outputs were judged against.
    pub against: Against,
    /// The main input's shape.
    pub shape: Vec<usize>,
    /// NMSE tolerance the outputs were judged by.
    pub tolerance: f64,
    /// One verdict per output.
    pub outputs: Vec<OutputReport>,
    /// GPU outputs converted to the case's storage dtype, named without `expected.`.
    pub gpu_outputs: Vec<OpOutput>,
}

impl CaseReport {
    /// True when there is at least one output and every output passed.
    pub fn pass(&self) -> bool {
        !self.outputs.is_empty() && self.outputs.iter().all(|o| o.pass)
    }
}

/// Metadata keys every case may carry.
const FRAMEWORK_KEYS: &[&str] = &["op", "format"];

impl CaseFile {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Case {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// Read and parse a case file.
    pub fn load(path: &Path) -> Result<CaseFile> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        Self::parse(&p, &bytes)
    }

    /// Parse case-file bytes; `path` is only used in messages.
    pub fn parse(path: &str, bytes: &[u8]) -> Result<CaseFile> {
        let err = |msg: String| Error::Case {
            path: path.to_string(),
            msg,
        };
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let op = meta
            .get("op")
            .cloned()
            .ok_or_else(|| err("__metadata__ has no `op` (e.g. \"rms_norm\")".into()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F64 => HostDType::F64,
                safetensors::Dtype::F32 => HostDType::F32,
                safetensors::Dtype::F16 => HostDType::F16,
                safetensors::Dtype::BF16 => HostDType::BF16,
                safetensors::Dtype::I64 => HostDType::I64,
                safetensors::Dtype::I32 => HostDType::I32,
                safetensors::Dtype::U8 => HostDType::U8,
                safetensors::Dtype::BOOL => HostDType::Bool,
                other => return Err(err(format!("tensor {name:?} has dtype {other:?}; cases use F32, F16, BF16, F64, I32, I64, U8 or BOOL"))),
            };
            let d = view.data();
            let values: Vec<f64> = match dtype {
                HostDType::F64 => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
                HostDType::I64 => d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                    .collect(),
                HostDType::I32 => d
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64)
                    .collect(),
                HostDType::U8 | HostDType::Bool => d.iter().map(|&b| b as f64).collect(),
                _ => crate::tensor::decode_f32(d, dtype.storage().unwrap_or(DType::F32))
                    .into_iter()
                    .map(|v| v as f64)
                    .collect(),
            };
            tensors.insert(
                name.to_string(),
                HostTensor {
                    dtype,
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(CaseFile {
            path: path.to_string(),
            op,
            meta,
            tensors,
            used_meta: RefCell::new(FRAMEWORK_KEYS.iter().map(|s| s.to_string()).collect()),
            used_tensors: RefCell::new(BTreeSet::new()),
        })
    }

    /// A required input tensor.
    pub fn tensor(&self, name: &str) -> Result<&HostTensor> {
        self.opt_tensor(name)?
            .ok_or_else(|| self.err(format!("op {} needs an input tensor {name:?}", self.op)))
    }

    /// An optional input tensor.
    pub fn opt_tensor(&self, name: &str) -> Result<Option<&HostTensor>> {
        self.used_tensors.borrow_mut().insert(name.to_string());
        Ok(self.tensors.get(name))
    }

    /// A float input whose dtype is the GPU storage dtype (F32, F16 or BF16).
    pub fn storage_tensor(&self, name: &str) -> Result<(&HostTensor, DType)> {
        let t = self.tensor(name)?;
        let d = t.dtype.storage().ok_or_else(|| {
            self.err(format!(
                "tensor {name:?} is {:?}; inputs must be F32, F16 or BF16",
                t.dtype
            ))
        })?;
        Ok((t, d))
    }

    fn raw_meta(&self, key: &str) -> Option<&str> {
        self.used_meta.borrow_mut().insert(key.to_string());
        self.meta.get(key).map(|s| s.trim())
    }

    /// A float parameter (`default` when absent).
    pub fn meta_f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.raw_meta(key) {
            None => Ok(default),
            Some(s) => s
                .parse::<f64>()
                .map_err(|_| self.err(format!("metadata {key}={s:?} is not a number"))),
        }
    }

    /// An optional float parameter.
    pub fn meta_opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.raw_meta(key) {
            None => Ok(None),
            Some(_) => self.meta_f64(key, 0.0).map(Some),
        }
    }

    /// An integer parameter.
    pub fn meta_i64(&self, key: &str, default: i64) -> Result<i64> {
        match self.raw_meta(key) {
            None => Ok(default),
            Some(s) => s
                .parse::<i64>()
                .map_err(|_| self.err(format!("metadata {key}={s:?} is not an integer"))),
        }
    }

    /// An optional integer parameter.
    pub fn meta_opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.raw_meta(key) {
            None => Ok(None),
            Some(_) => self.meta_i64(key, 0).map(Some),
        }
    }

    /// A boolean parameter: `true`/`false`/`1`/`0`.
    pub fn meta_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw_meta(key) {
            None => Ok(default),
            Some(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(self.err(format!("metadata {key}={s:?} is not true/false"))),
            },
        }
    }

    /// A string parameter.
    pub fn meta_str(&self, key: &str, default: &str) -> String {
        self.raw_meta(key).unwrap_or(default).to_string()
    }

    /// A list of floats, written as `[1.0, 2.5]` or `1.0,2.5`.
    pub fn meta_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(s) = self.raw_meta(key) else {
            return Ok(None);
        };
        let inner = s.trim_start_matches('[').trim_end_matches(']');
        if inner.trim().is_empty() {
            return Ok(Some(Vec::new()));
        }
        inner
            .split(',')
            .map(|v| {
                v.trim().parse::<f64>().map_err(|_| {
                    self.err(format!("metadata {key}: {v:?} in {s:?} is not a number"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An error about this case (for op runners).
    pub fn error(&self, msg: impl Into<String>) -> Error {
        self.err(msg)
    }

    fn check_all_used(&self) -> Result<()> {
        let used = self.used_meta.borrow();
        let mut unknown: Vec<&String> = self.meta.keys().filter(|k| !used.contains(*k)).collect();
        unknown.sort();
        if !unknown.is_empty() {
            return Err(self.err(format!(
                "unknown metadata key(s) for op {}: {unknown:?}",
                self.op
            )));
        }
        let used_t = self.used_tensors.borrow();
        let extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !used_t.contains(*k) && !k.starts_with("expected."))
            .collect();
        if !extra.is_empty() {
            return Err(self.err(format!("unknown tensor(s) for op {}: {extra:?}", self.op)));
        }
        Ok(())
    }

    /// The metadata keys this case's op (and, for `rope`, its `rope_type`) reads, beyond `op`
    /// and `format`. The op runners read their keys as they go, some after uploading inputs, so
    /// this list lets [`CaseFile::check_metadata`] refuse a typo before any GPU work; a key read
    /// by a runner but missing here is refused up front, and one listed here but not read is
    /// still refused after the run, so the two cannot drift apart silently.
    fn op_keys(&self) -> Vec<&'static str> {
        let has = |k: &str| self.meta.contains_key(k);
        match self.op.as_str() {
            "rms_norm" => vec!["eps", "weight_offset"],
            // paged_attention refuses q_offset itself, with the reason.
            "attention" | "paged_attention" => {
                let mut keys = vec![
                    "causal",
                    "q_offset",
                    "scale",
                    "window",
                    "softcap",
                    "window_left",
                    "window_right",
                    "attention_chunk_size",
                    "alibi",
                ];
                keys.push("kv_format");
                if self.op == "paged_attention" {
                    keys.push("layout");
                }
                keys
            }
            "rope" => {
                let mut keys = vec![
                    "theta",
                    "layout",
                    "rotary_dim",
                    "rope_type",
                    "offset",
                    "seq_len",
                    "mrope_section",
                ];
                if has("mrope_section") {
                    keys.push("mrope_interleaved");
                }
                let orig = "original_max_position_embeddings";
                let max = "max_position_embeddings";
                // `max_position_embeddings` is HF's fallback: read only when the key it stands
                // in for is absent, so beside it it is an unused (unknown) key.
                let rope_type = self.meta.get("rope_type").map_or("default", |s| s.trim());
                match rope_type {
                    "linear" => keys.push("factor"),
                    "llama3" => {
                        keys.extend(["factor", "low_freq_factor", "high_freq_factor", orig])
                    }
                    "yarn" | "dynamic" => {
                        keys.extend(["factor", orig]);
                        if !has(orig) {
                            keys.push(max);
                        }
                        if rope_type == "yarn" {
                            keys.extend([
                                "beta_fast",
                                "beta_slow",
                                "attention_factor",
                                "mscale",
                                "mscale_all_dim",
                                "truncate",
                            ]);
                        }
                    }
                    "longrope" => {
                        keys.extend(["short_factor", "long_factor", orig, "factor"]);
                        keys.push("attention_factor");
                        if !has("factor") {
                            keys.push(max);
                        }
                    }
                    "inv_freq" => keys.extend(["inv_freq", "attention_factor"]),
                    // `default`, and unknown types, which the runner refuses by name.
                    _ => {}
                }
                // QK-norm parameters, read with a norm weight.
                if ["norm_weight", "q_norm_weight", "k_norm_weight"]
                    .iter()
                    .any(|t| self.tensors.contains_key(*t))
                {
                    keys.extend(["norm_eps", "norm_weight_offset"]);
                }
                keys
            }
            _ => Vec::new(),
        }
    }

    /// Refuse an unknown op or a metadata key the op does not read, without touching a GPU
    /// ([`CaseFile::run`] calls it before anything else).
    pub fn check_metadata(&self) -> Result<()> {
        if !KNOWN_OPS.contains(&self.op.as_str()) {
            return Err(self.err(format!(
                "unknown op {:?}; known ops: {:?}",
                self.op, KNOWN_OPS
            )));
        }
        let known = self.op_keys();
        let mut unknown: Vec<&String> = self
            .meta
            .keys()
            .filter(|k| !FRAMEWORK_KEYS.contains(&k.as_str()) && !known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        if !unknown.is_empty() {
            let rope_type = match self.op.as_str() {
                "rope" => format!(
                    " with rope_type {}",
                    self.meta.get("rope_type").map_or("default", |s| s.trim())
                ),
                _ => String::new(),
            };
            return Err(self.err(format!(
                "unknown metadata key(s) for op {}: {unknown:?}; it reads {known:?}{rope_type}",
                self.op
            )));
        }
        Ok(())
    }

    /// Run the case on `ctx` and on the reference, and compare both with the expected outputs.
    /// `tol` overrides the op's default NMSE tolerance.
    pub fn run(&self, ctx: &Context, tol: Option<f64>) -> Result<CaseReport> {
        self.run_against(ctx, tol, Against::Expected)
    }

    /// [`CaseFile::run`], judging the GPU outputs `against` the expected tensors or the f64
    /// reference. Every comparison is made either way; only the verdict changes.
    pub fn run_against(
        &self,
        ctx: &Context,
        tol: Option<f64>,
        against: Against,
    ) -> Result<CaseReport> {
        self.check_metadata()?;
        let res = match self.op.as_str() {
            "rms_norm" => rms_norm::run(ctx, self)?,
            "attention" => attention::run(ctx, self)?,
            "paged_attention" => paged_attention::run(ctx, self)?,
            "rope" => rope::run(ctx, self)?,
            other => {
                return Err(self.err(format!("unknown op {other:?}; known ops: {:?}", KNOWN_OPS)))
            }
        };
        self.check_all_used()?;
        let tolerance = tol.unwrap_or(res.tolerance);
        let mut outputs = Vec::new();
        let produced: BTreeSet<&str> = res.outputs.iter().map(|o| o.name.as_str()).collect();
        for name in self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("expected."))
        {
            if !produced.contains(name) {
                return Err(self.err(format!(
                    "expected.{name} names no output of op {}; it produces {produced:?}",
                    self.op
                )));
            }
        }
        for o in &res.outputs {
            let key = format!("expected.{}", o.name);
            let exp = self
                .tensors
                .get(&key)
                .ok_or_else(|| self.err(format!("missing expected output tensor {key:?}")))?;
            if !exp.dtype.is_float() {
                return Err(self.err(format!(
                    "{key} is {:?}; expected outputs must be float",
                    exp.dtype
                )));
            }
            if exp.shape != o.shape {
                return Err(self.err(format!(
                    "{key} has shape {:?} but the op produces {:?}",
                    exp.shape, o.shape
                )));
            }
            let gpu = compare(&o.gpu, &exp.values);
            let cpu_f32: Vec<f32> = o.cpu.iter().map(|&v| v as f32).collect();
            let cpu = compare(&cpu_f32, &exp.values);
            let agree = compare(&o.gpu, &o.cpu);
            let pass = match against {
                Against::Expected => gpu.passes(tolerance) && cpu.passes(tolerance),
                Against::Reference => agree.passes(tolerance),
            };
            let mut report = OutputReport {
                name: o.name.clone(),
                gpu,
                cpu,
                agree,
                pass,
                diagnosis: None,
            };
            report.diagnosis = diagnose(&report, tolerance, res.dtype, against);
            outputs.push(report);
        }
        Ok(CaseReport {
            path: self.path.clone(),
            op: self.op.clone(),
            dtype: res.dtype,
            variant: res.variant,
            against,
            shape: res.shape,
            tolerance,
            outputs,
            gpu_outputs: res.outputs,
        })
    }
}

/// Ops that `check` knows.
pub const KNOWN_OPS: &[&str] = &["rms_norm", "rope", "attention", "paged_attention"];

/// Write a safetensors file holding `tensors` (name, dtype, shape, values) and `metadata`.
pub fn write_case(
    path: &Path,
    tensors: &[(String, DType, Vec<usize>, Vec<f32>)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let p = path.display().to_string();
    let encoded: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, v)| {
            let st = match d {
                DType::F32 => safetensors::Dtype::F32,
                DType::F16 => safetensors::Dtype::F16,
                DType::BF16 => safetensors::Dtype::BF16,
            };
            (n.clone(), st, s.clone(), crate::tensor::encode_f32(v, *d))
        })
        .collect();
    let mut views = Vec::new();
    for (n, d, s, b) in &encoded {
        let v =
            safetensors::tensor::TensorView::new(*d, s.clone(), b).map_err(|e| Error::Case {
                path: p.clone(),
                msg: format!("tensor {n}: {e}"),
            })?;
        views.push((n.clone(), v));
    }
    let bytes = safetensors::serialize(views, Some(metadata.clone())).map_err(|e| Error::Case {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    std::fs::write(path, bytes).map_err(|source| Error::Io { path: p, source })
}

/// Write the GPU outputs of `report` to `dir/<file name of the case>`, in the case's dtype.
pub fn write_outputs(report: &CaseReport, dir: &Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let name = Path::new(&report.path)
        .file_name()
        .ok_or_else(|| Error::Case {
            path: report.path.clone(),
            msg: "case path has no file name".into(),
        })?
        .to_owned();
    let out = dir.join(name);
    let tensors: Vec<_> = report
        .gpu_outputs
        .iter()
        .map(|o| (o.name.clone(), report.dtype, o.shape.clone(), o.gpu.clone()))
        .collect();
    let meta = HashMap::from([("op".to_string(), report.op.clone())]);
    write_case(&out, &tensors, &meta)?;
    Ok(out)
}
