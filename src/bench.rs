//! The benchmark harness behind `llama-kernels bench` and `cargo bench`.
//!
//! Every kernel and variant runs on shapes from real models, beside two bandwidth ceilings
//! measured in the same run on the same device: `copy_buffer_to_buffer` and the best of several
//! WGSL streaming copies ([`copy`]). Memory-bound kernels report the bytes they must
//! move (each input read once, each output written once) and the achieved GB/s as a fraction of
//! both ceilings; unfused baselines (variants containing `naive`) run on the same data, so the
//! gain from fusion shows as `speedup_vs_naive`.
//!
//! Timing: GPU timestamps written by empty compute passes around the recorded work when the
//! device has `TIMESTAMP_QUERY`, submit-and-wait wall time otherwise; every record says which.
//! Each case is warmed up, then timed over several submissions and the median is reported. Small
//! cases repeat their work inside one submission so that each timed run lasts long enough.
//!
//! Adding a kernel: push a [`Case`] whose `prepare` closure allocates the inputs and returns an
//! [`Encode`] closure that records one run into an encoder; give the case the bytes it must move
//! (and `flops` where FLOP/s is the figure of merit), and give its naive baseline the same
//! `group`.

pub mod baseline;
pub mod copy;
pub mod host;
pub mod matmul;
pub mod paged;

pub use crate::ops::rope::sincos::SinCos;

/// Streaming copies, the benchmark's WGSL bandwidth ceiling.
pub const COPY: &Shader = &Shader {
    name: "copy.wgsl",
    parts: &[COMMON_WGSL, include_str!("../shaders/copy.wgsl")],
    variants: copy::all_variant_keys,
};

/// Unfused baselines that only the benchmark runs.
pub const BASELINE: &Shader = &Shader {
    name: "baseline.wgsl",
    parts: &[COMMON_WGSL, include_str!("../shaders/baseline.wgsl")],
    variants: baseline::all_variant_keys,
};

/// The tiled f32 matmul, the benchmark's compute ceiling for prefill attention.
pub const MATMUL: &Shader = &Shader {
    name: "matmul.wgsl",
    parts: &[include_str!("../shaders/matmul.wgsl")],
    variants: matmul::all_variant_keys,
};

/// The benchmark's own shaders (the portability tests compile them beside [`Shader::ALL`]).
pub const SHADERS: &[&Shader] = &[COPY, BASELINE, MATMUL];

/// `rope` computing cos and sin with `method` instead of the exact fixed-point angle: only for
/// measuring what the exact method costs and buys (`examples/rope_sincos.rs`, the accuracy
/// table in `ops::rope`'s docs).
pub fn with_sincos(mut rope: Rope, method: SinCos) -> Rope {
    rope.sincos = method;
    rope
}

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::ops::attention::Attention;
use crate::ops::rms_norm;
use crate::ops::rms_norm::Strategy;
use crate::ops::rope::qkv_views;
use crate::pipeline::{Shader, COMMON_WGSL};
use crate::tensor::{DType, Tensor};
use crate::{Layout, Positions, RmsNorm, Rope};

/// Command-line options shared by `llama-kernels bench` and `cargo bench`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BenchArgs {
    /// Fewer shapes and runs (finishes within 3 minutes on lavapipe).
    #[arg(long)]
    pub quick: bool,
    /// Also write the records as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Run only cases whose `kernel/variant/model/dtype` contains NAME (the copy ceilings always
    /// run).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Write an SVG bar chart of achieved bandwidth per kernel against the two ceilings to FILE.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Time with submit-and-wait wall time even where the adapter has GPU timestamps (the
    /// fallback; the environment variable LLAMA_KERNELS_TIMING=wall does the same).
    #[arg(long)]
    pub wall_time: bool,
    /// Merge the peer records of FILE (written by `benches/peer-burn`: burn's kernels measured
    /// beside ours in one run) into the table, `--json` and `--plot`; our records of the same
    /// kernel, variant, dtype and shape take that run's `speedup_vs_peer`.
    #[arg(long, value_name = "FILE")]
    pub peer: Option<PathBuf>,
}

/// Records one run of a case into an encoder (called once per repetition).
pub type Encode = Box<dyn FnMut(&Context, &mut wgpu::CommandEncoder) -> Result<()>>;
/// Allocates a case's buffers and returns its [`Encode`]; buffers are freed when it is dropped.
pub type Prepare = Box<dyn FnOnce(&Context) -> Result<Encode>>;

/// One benchmark case: a kernel variant on one shape.
pub struct Case {
    /// `rms_norm`, `rope`, `attention` or `copy`.
    pub kernel: &'static str,
    /// Baselines contain `naive`; attention variants contain `prefill` or `decode`.
    pub variant: String,
    /// The model the shape comes from (goes into the record's `shape` object).
    pub model: &'static str,
    /// Storage dtype of the case.
    pub dtype: DType,
    /// Named dimensions of the shape.
    pub shape: Vec<(&'static str, u64)>,
    /// Bytes the kernel must move: every input read once, every output written once.
    pub bytes: u64,
    /// Floating-point operations, where FLOP/s is the figure of merit (prefill attention).
    pub flops: Option<f64>,
    /// Cases with the same group run on the same problem; the `naive` one is the baseline.
    pub group: String,
    /// Builds the buffers and returns the encode closure (called once, outside the timing).
    pub prepare: Prepare,
}

impl Case {
    /// The string `--filter` matches: `kernel/variant/model/dtype`.
    pub fn name(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.kernel, self.variant, self.model, self.dtype
        )
    }
}

/// How a record was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// GPU timestamp queries.
    Timestamp,
    /// Submit-and-wait wall time (the device has no timestamp queries).
    Wall,
}

/// Set to `wall` to time with submit-and-wait wall time even where the adapter has timestamp
/// queries (the fallback path, e.g. to check it on an adapter that has them, or to compare the
/// two).
pub const TIMING_ENV: &str = "LLAMA_KERNELS_TIMING";

impl Timing {
    /// GPU timestamps where `ctx` has them, wall time otherwise or when [`TIMING_ENV`] is
    /// `wall`.
    pub fn of(ctx: &Context) -> Timing {
        Timing::choose(
            ctx.caps().timestamps,
            std::env::var(TIMING_ENV).ok().as_deref(),
        )
    }

    /// The rule behind [`Timing::of`]: timestamps when the adapter has them, unless `env` (the
    /// value of [`TIMING_ENV`]) says `wall`.
    pub fn choose(has_timestamps: bool, env: Option<&str>) -> Timing {
        let forced_wall = env.is_some_and(|v| v.trim().eq_ignore_ascii_case("wall"));
        if has_timestamps && !forced_wall {
            Timing::Timestamp
        } else {
            Timing::Wall
        }
    }

    /// The name written to the JSON records.
    pub fn name(self) -> &'static str {
        match self {
            Timing::Timestamp => "timestamp",
            Timing::Wall => "wall",
        }
    }
}

/// One measured case.
#[derive(Clone, Debug)]
pub struct Record {
    /// Kernel family and form.
    pub kernel: String,
    /// The variant that ran (or the baseline's name).
    pub variant: String,
    /// Storage dtype name.
    pub dtype: String,
    /// `model` plus the named dimensions.
    pub shape: Map<String, Value>,
    /// Median time of one run.
    pub time_ms: f64,
    /// Bytes the kernel must move (reads + writes of the logical tensors).
    pub bytes: u64,
    /// `bytes` per second of the median time, in GB/s.
    pub gbps: f64,
    /// `gbps` as a fraction of `copy_buffer_to_buffer` measured beside it.
    pub fraction_of_copy: f64,
    /// `gbps` as a fraction of the best WGSL streaming copy measured beside it.
    pub fraction_of_wgsl_copy: f64,
    /// GFLOP/s, for prefill attention.
    pub gflops: Option<f64>,
    /// Time of the naive baseline over this record's, each first multiplied by the WGSL copy
    /// ceiling measured beside it (which cancels changes in host load between the two).
    pub speedup_vs_naive: Option<f64>,
    /// Prefill: `gflops` over the best matmul's GFLOP/s in the same run (the `matmul` /
    /// `ceiling` record).
    pub fraction_of_matmul: Option<f64>,
    /// Time of the peer library's case in this record's group (a variant containing `peer`,
    /// e.g. burn's) over this record's, each first multiplied by the WGSL copy ceiling measured
    /// beside it, as for `speedup_vs_naive`; > 1 means we are faster.
    pub speedup_vs_peer: Option<f64>,
    /// How the time was taken.
    pub timing: Timing,
    /// The ceilings (GB/s) this record's fractions divide by: for kernels, `buffer_copy` and the
    /// best WGSL copy re-measured with their runs interleaved with the kernel's.
    pub ceiling_copy_gbps: f64,
    /// The best WGSL streaming copy's GB/s measured beside this case.
    pub ceiling_wgsl_copy_gbps: f64,
    group: String,
}

impl Record {
    /// The record as a JSON object with the documented field names.
    pub fn to_json(&self) -> Value {
        json!({
            "kernel": self.kernel,
            "variant": self.variant,
            "dtype": self.dtype,
            "shape": Value::Object(self.shape.clone()),
            "time_ms": self.time_ms,
            "bytes": self.bytes,
            "gbps": self.gbps,
            "fraction_of_copy": self.fraction_of_copy,
            "fraction_of_wgsl_copy": self.fraction_of_wgsl_copy,
            "gflops": self.gflops,
            "speedup_vs_naive": self.speedup_vs_naive,
            "fraction_of_matmul": self.fraction_of_matmul,
            "speedup_vs_peer": self.speedup_vs_peer,
            "timing": self.timing.name(),
            "ceiling_copy_gbps": self.ceiling_copy_gbps,
            "ceiling_wgsl_copy_gbps": self.ceiling_wgsl_copy_gbps,
        })
    }

    /// A record read back from the JSON [`Record::to_json`] writes, or `None` when a field is
    /// missing or has the wrong type. Its group is its kernel, model, dtype and shape.
    pub fn from_json(v: &Value) -> Option<Record> {
        let text = |k: &str| v.get(k)?.as_str().map(str::to_string);
        let num = |k: &str| v.get(k)?.as_f64();
        let opt = |k: &str| v.get(k).and_then(Value::as_f64);
        let shape = v.get("shape")?.as_object()?.clone();
        let timing = match v.get("timing")?.as_str()? {
            "timestamp" => Timing::Timestamp,
            "wall" => Timing::Wall,
            _ => return None,
        };
        let (kernel, dtype) = (text("kernel")?, text("dtype")?);
        let group = format!("{kernel}/{dtype}/{}", Value::Object(shape.clone()));
        Some(Record {
            variant: text("variant")?,
            time_ms: num("time_ms")?,
            bytes: v.get("bytes")?.as_u64()?,
            gbps: num("gbps")?,
            fraction_of_copy: opt("fraction_of_copy").unwrap_or(f64::NAN),
            fraction_of_wgsl_copy: opt("fraction_of_wgsl_copy").unwrap_or(f64::NAN),
            gflops: opt("gflops"),
            speedup_vs_naive: opt("speedup_vs_naive"),
            fraction_of_matmul: opt("fraction_of_matmul"),
            speedup_vs_peer: opt("speedup_vs_peer"),
            timing,
            ceiling_copy_gbps: opt("ceiling_copy_gbps").unwrap_or(f64::NAN),
            ceiling_wgsl_copy_gbps: opt("ceiling_wgsl_copy_gbps").unwrap_or(f64::NAN),
            kernel,
            dtype,
            shape,
            group,
        })
    }

    fn same_problem(&self, other: &Record) -> bool {
        self.kernel == other.kernel && self.dtype == other.dtype && self.shape == other.shape
    }

    fn shape_text(&self) -> String {
        self.shape
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => s.clone(),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Warm-up and measurement counts.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Untimed runs before calibration.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub runs: usize,
    /// Repeat small cases inside one submission until a run takes about this long.
    pub min_run_ms: f64,
}

impl Settings {
    /// Settings for a full run, or a shorter one with `quick`.
    pub fn new(quick: bool) -> Self {
        if quick {
            Settings {
                warmup: 1,
                runs: 7,
                min_run_ms: 10.0,
            }
        } else {
            Settings {
                warmup: 2,
                runs: 15,
                min_run_ms: 20.0,
            }
        }
    }
}

const OP: &str = "bench";
const MIB: u64 = 1 << 20;
/// Size of the memory-bound benchmark tensors: at least this many bytes each.
pub const TENSOR_BYTES: u64 = 64 * MIB;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// An empty compute pass whose only job is to write a timestamp (works without
/// `TIMESTAMP_QUERY_INSIDE_ENCODERS`); the benchmark and the self-test time with it.
pub fn timestamp_pass(
    enc: &mut wgpu::CommandEncoder,
    set: &wgpu::QuerySet,
    index: u32,
    begin: bool,
) {
    let writes = wgpu::ComputePassTimestampWrites {
        query_set: set,
        beginning_of_pass_write_index: begin.then_some(index),
        end_of_pass_write_index: (!begin).then_some(index),
    };
    let _pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("bench timestamp"),
        timestamp_writes: Some(writes),
    });
}

/// Time `runs` submissions of `reps` repetitions of `encode`; milliseconds per repetition.
fn time_runs(
    ctx: &Context,
    encode: &mut Encode,
    timing: Timing,
    reps: u32,
    runs: usize,
) -> Result<Vec<f64>> {
    Ok(time_runs_wall(ctx, encode, timing, reps, runs)?.0)
}

/// [`time_runs`], also returning each run's submit-and-wait wall time per repetition.
fn time_runs_wall(
    ctx: &Context,
    encode: &mut Encode,
    timing: Timing,
    reps: u32,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let set = match timing {
        Timing::Timestamp => Some(ctx.scoped(OP, || {
            ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * runs as u32,
            })
        })?),
        Timing::Wall => None,
    };
    let mut wall = Vec::with_capacity(runs);
    for r in 0..runs {
        // Wall time covers recording as well as submit-and-wait, so that a closure doing its
        // own submissions (a peer library's case) is timed like ours; with timestamps the GPU
        // time is the figure and `wall` stays submit-and-wait.
        let recorded = Instant::now();
        let cmd = ctx.scoped(OP, || -> Result<wgpu::CommandBuffer> {
            let mut enc = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(OP) });
            if let Some(set) = &set {
                timestamp_pass(&mut enc, set, 2 * r as u32, true);
            }
            for _ in 0..reps {
                encode(ctx, &mut enc)?;
            }
            if let Some(set) = &set {
                timestamp_pass(&mut enc, set, 2 * r as u32 + 1, false);
            }
            Ok(enc.finish())
        })??;
        let t0 = match timing {
            Timing::Wall => recorded,
            Timing::Timestamp => Instant::now(),
        };
        let idx = ctx.scoped(OP, || ctx.queue().submit([cmd]))?;
        ctx.wait(OP, Some(idx))?;
        wall.push(t0.elapsed().as_secs_f64() * 1e3 / reps as f64);
    }
    let Some(set) = set else {
        return Ok((wall.clone(), wall));
    };
    let bytes = 16 * runs as u64;
    let resolve = ctx.scoped(OP, || {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    })?;
    ctx.submit_and_wait(OP, |enc| {
        enc.resolve_query_set(&set, 0..2 * runs as u32, &resolve, 0);
        Ok(())
    })?;
    let raw = ctx.read_bytes(&resolve, 0..bytes)?;
    let ticks: &[u64] = bytemuck::cast_slice(&raw);
    let period_ns = ctx.queue().get_timestamp_period() as f64;
    let gpu = ticks
        .chunks_exact(2)
        .map(|t| t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-6 / reps as f64)
        .collect();
    Ok((gpu, wall))
}

/// Warm up and pick the repetitions per run so that a run lasts about `settings.min_run_ms`.
pub fn calibrate(
    ctx: &Context,
    encode: &mut Encode,
    timing: Timing,
    settings: &Settings,
) -> Result<u32> {
    Ok(calibrate_ms(ctx, encode, timing, settings)?.0)
}

/// [`calibrate`], also returning the milliseconds of one repetition.
fn calibrate_ms(
    ctx: &Context,
    encode: &mut Encode,
    timing: Timing,
    settings: &Settings,
) -> Result<(u32, f64)> {
    let mut warm = time_runs(ctx, encode, timing, 1, settings.warmup.max(1))?;
    let one = median(&mut warm).max(1e-3);
    Ok((
        (settings.min_run_ms / one).ceil().clamp(1.0, 256.0) as u32,
        one,
    ))
}

/// Cases slower than this per run get at most [`SLOW_RUNS`] timed runs.
const SLOW_MS: f64 = 1000.0;
const SLOW_RUNS: usize = 3;

/// Warm up, pick the repetitions per run, and return the median milliseconds per repetition.
pub fn measure(
    ctx: &Context,
    encode: &mut Encode,
    timing: Timing,
    settings: &Settings,
) -> Result<f64> {
    let reps = calibrate(ctx, encode, timing, settings)?;
    let mut times = time_runs(ctx, encode, timing, reps, settings.runs.max(1))?;
    Ok(median(&mut times))
}

/// Median milliseconds per repetition of one closure timed by [`measure_round_robin`].
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// By the run's [`Timing`].
    pub ms: f64,
    /// Submit-and-wait wall time (equal to `ms` under [`Timing::Wall`]).
    pub wall_ms: f64,
}

/// Warm up and calibrate each of `encodes` as [`measure`] does, then time them round-robin, one
/// run of each in turn, `settings.runs` times, so that a host whose load changes while they run
/// slows them alike.
pub fn measure_round_robin(
    ctx: &Context,
    encodes: &mut [Encode],
    timing: Timing,
    settings: &Settings,
) -> Result<Vec<Measured>> {
    let mut calibrated = Vec::with_capacity(encodes.len());
    for encode in encodes.iter_mut() {
        let reps = calibrate(ctx, encode, timing, settings)?;
        calibrated.push((encode, reps));
    }
    let runs = interleave(ctx, &mut calibrated, timing, settings.runs.max(1))?;
    Ok(runs
        .into_iter()
        .map(|(mut t, mut w)| Measured {
            ms: median(&mut t),
            wall_ms: median(&mut w),
        })
        .collect())
}

/// `runs` rounds of one run of each `(encode, reps)` in turn; per closure, the times of its runs
/// by `timing` and by wall clock.
fn interleave(
    ctx: &Context,
    items: &mut [(&mut Encode, u32)],
    timing: Timing,
    runs: usize,
) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    let mut out = vec![(Vec::new(), Vec::new()); items.len()];
    for _ in 0..runs {
        for ((encode, reps), (t, w)) in items.iter_mut().zip(&mut out) {
            let (ti, wi) = time_runs_wall(ctx, encode, timing, *reps, 1)?;
            t.extend(ti);
            w.extend(wi);
        }
    }
    Ok(out)
}

/// A ceiling kept ready to be re-measured beside every kernel.
struct Ceiling {
    encode: Encode,
    reps: u32,
    bytes: u64,
}

/// Median milliseconds of `encode` and the GB/s of each ceiling, their runs interleaved one by
/// one, so that a host whose load changes during the benchmark (lavapipe shares the CPU with
/// everything else) slows the kernel and its ceilings alike.
fn measure_beside(
    ctx: &Context,
    encode: &mut Encode,
    ceilings: &mut [Ceiling],
    timing: Timing,
    settings: &Settings,
) -> Result<(f64, Vec<f64>)> {
    let (reps, one) = calibrate_ms(ctx, encode, timing, settings)?;
    let runs = if one > SLOW_MS {
        settings.runs.clamp(1, SLOW_RUNS)
    } else {
        settings.runs.max(1)
    };
    let bytes: Vec<u64> = ceilings.iter().map(|c| c.bytes).collect();
    let mut items = vec![(encode, reps)];
    items.extend(ceilings.iter_mut().map(|c| (&mut c.encode, c.reps)));
    let mut times = interleave(ctx, &mut items, timing, runs)?.into_iter();
    let mut kernel = times.next().map_or_else(Vec::new, |t| t.0);
    let gbps = bytes
        .iter()
        .zip(times)
        .map(|(b, mut t)| *b as f64 / (median(&mut t.0) * 1e6))
        .collect();
    Ok((median(&mut kernel), gbps))
}

/// Deterministic, cheap test data in [-1, 1): values do not change the speed of these kernels,
/// but denormals, NaN and infinities could, so there are none.
fn pattern(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_right(13);
            (h & 0xffff) as f32 / 32768.0 - 1.0
        })
        .collect()
}

fn upload_pattern(ctx: &Context, shape: &[usize], dtype: DType, seed: u32) -> Result<Tensor> {
    let n = shape.iter().product();
    ctx.upload_as(&pattern(n, seed), shape, dtype)
}

// ---------------------------------------------------------------- the ceilings

fn copy_cases() -> Vec<Case> {
    let bytes = TENSOR_BYTES;
    let words = (bytes / 4) as usize;
    let mut cases = Vec::new();
    let shape = vec![("bytes", bytes)];
    cases.push(Case {
        kernel: "copy",
        variant: "buffer_copy".into(),
        model: "ceiling",
        dtype: DType::F32,
        shape: shape.clone(),
        bytes: 2 * bytes,
        flops: None,
        group: "copy".into(),
        prepare: Box::new(move |ctx| {
            let src = upload_pattern(ctx, &[words], DType::F32, 1)?;
            let dst = ctx.empty(&[words], DType::F32)?;
            Ok(Box::new(move |_ctx, enc| {
                enc.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, bytes);
                Ok(())
            }))
        }),
    });
    for v in copy::bench_variants() {
        cases.push(Case {
            kernel: "copy",
            variant: v.name(),
            model: "ceiling",
            dtype: DType::F32,
            shape: shape.clone(),
            bytes: 2 * bytes,
            flops: None,
            group: "copy".into(),
            prepare: Box::new(move |ctx| {
                let src = upload_pattern(ctx, &[words], DType::F32, 2)?;
                let dst = ctx.empty(&[words], DType::F32)?;
                Ok(Box::new(move |ctx, enc| v.encode(ctx, enc, &src, &dst)))
            }),
        });
    }
    cases
}

// ---------------------------------------------------------------- RMSNorm

/// (model, hidden, Gemma-style `(1 + w)`)
const NORM_MODELS: &[(&str, usize, bool)] = &[
    ("Llama-3-8B", 4096, false),
    ("Llama-3-70B", 8192, false),
    ("Qwen2.5-7B", 3584, false),
    ("Gemma-2-9B", 3584, true),
    ("Mistral-7B", 4096, false),
];

fn rms_norm_variant_name(
    ctx: &Context,
    strategy: Strategy,
    rows: usize,
    dtype: DType,
    n: usize,
    residual: bool,
) -> String {
    let v = rms_norm::Variant::choose_for(
        ctx,
        strategy,
        rows,
        dtype,
        n,
        residual,
        [rms_norm::SRC_OWN; 3],
        true,
    );
    let prefix = if residual {
        "fused_residual_"
    } else {
        "fused_"
    };
    format!("{prefix}{}", v.name())
}

fn rms_norm_cases(ctx: &Context, quick: bool) -> Vec<Case> {
    // (model index, dtype, residual, with naive baseline)
    let mut plan: Vec<(usize, DType, bool, bool)> = Vec::new();
    if quick {
        plan.extend([
            (0, DType::F32, false, true),
            (0, DType::BF16, false, true),
            (1, DType::F32, false, true),
            (2, DType::F32, false, false),
            (3, DType::F16, false, false),
            (0, DType::F16, false, false),
            (0, DType::F32, true, false),
            (0, DType::BF16, true, false),
            (0, DType::F16, true, false),
        ]);
    } else {
        for m in 0..NORM_MODELS.len() {
            for dtype in DType::ALL {
                plan.push((m, dtype, false, true));
                plan.push((m, dtype, true, false));
            }
        }
    }
    let mut cases = Vec::new();
    for (m, dtype, residual, naive) in plan {
        let (model, hidden, gemma) = NORM_MODELS[m];
        let row_bytes = (hidden * dtype.size()) as u64;
        let rows = TENSOR_BYTES.div_ceil(row_bytes) as usize;
        let tensor = rows as u64 * row_bytes;
        let op = if gemma {
            RmsNorm::gemma(1e-6)
        } else {
            RmsNorm::new(1e-5)
        };
        let shape = vec![("rows", rows as u64), ("hidden", hidden as u64)];
        let group = format!("rms_norm/{model}/{dtype}/{rows}x{hidden}/res{residual}");
        let weight_bytes = row_bytes;
        // The dispatcher's choice, plus the other strategy where it differs, so the effect of
        // the per-adapter choice shows.
        let auto = rms_norm::Variant::choose_for(
            ctx,
            Strategy::Auto,
            rows,
            dtype,
            hidden,
            residual,
            [rms_norm::SRC_OWN; 3],
            true,
        );
        let mut strategies = vec![Strategy::Auto];
        // The other strategy beside the dispatcher's choice shows what the choice buys (in
        // --quick only on the first shape: it is slow on lavapipe).
        if auto.per_invocation && (!quick || cases.is_empty()) {
            strategies.push(Strategy::WorkgroupPerRow);
        }
        // f16 read natively (GPUs with SHADER_F16) beside the integer decode of the same
        // kernel and reduction, so one run on such a GPU measures what the native reads buy.
        if auto.native_f16 {
            strategies.push(if auto.subgroup {
                Strategy::WorkgroupSubgroup
            } else {
                Strategy::WorkgroupTree
            });
        }
        if residual {
            for strategy in strategies {
                cases.push(Case {
                    kernel: "rms_norm",
                    variant: rms_norm_variant_name(ctx, strategy, rows, dtype, hidden, true),
                    model,
                    dtype,
                    shape: shape.clone(),
                    // x and residual read, out and residual_out written, weight read
                    bytes: 4 * tensor + weight_bytes,
                    flops: None,
                    group: group.clone(),
                    prepare: Box::new(move |ctx| {
                        let x = upload_pattern(ctx, &[rows, hidden], dtype, 3)?;
                        let r = upload_pattern(ctx, &[rows, hidden], dtype, 4)?;
                        let w = upload_pattern(ctx, &[hidden], dtype, 5)?;
                        let out = ctx.empty(&[rows, hidden], dtype)?;
                        let rout = ctx.empty(&[rows, hidden], dtype)?;
                        Ok(Box::new(move |ctx, enc| {
                            op.encode_with(ctx, enc, &x, &w, &out, Some((&r, &rout)), strategy)
                        }))
                    }),
                });
            }
            continue;
        }
        for strategy in strategies {
            cases.push(Case {
                kernel: "rms_norm",
                variant: rms_norm_variant_name(ctx, strategy, rows, dtype, hidden, false),
                model,
                dtype,
                shape: shape.clone(),
                bytes: 2 * tensor + weight_bytes,
                flops: None,
                group: group.clone(),
                prepare: Box::new(move |ctx| {
                    let x = upload_pattern(ctx, &[rows, hidden], dtype, 3)?;
                    let w = upload_pattern(ctx, &[hidden], dtype, 5)?;
                    let out = ctx.empty(&[rows, hidden], dtype)?;
                    Ok(Box::new(move |ctx, enc| {
                        op.encode_with(ctx, enc, &x, &w, &out, None, strategy)
                    }))
                }),
            });
        }
        if naive {
            cases.push(Case {
                kernel: "rms_norm",
                variant: "naive_reduce_then_scale".into(),
                model,
                dtype,
                shape,
                bytes: 2 * tensor + weight_bytes,
                flops: None,
                group,
                prepare: Box::new(move |ctx| {
                    let x = upload_pattern(ctx, &[rows, hidden], dtype, 3)?;
                    let w = upload_pattern(ctx, &[hidden], dtype, 5)?;
                    let out = ctx.empty(&[rows, hidden], dtype)?;
                    let scratch = ctx.empty(&[rows], DType::F32)?;
                    Ok(Box::new(move |ctx, enc| {
                        baseline::rms_norm_naive(
                            ctx,
                            enc,
                            &x,
                            &w,
                            &out,
                            &scratch,
                            op.eps,
                            op.weight_offset,
                        )
                    }))
                }),
            });
        }
    }
    cases
}

// ---------------------------------------------------------------- RoPE

/// (model, q heads, kv heads, head_dim, rope_theta)
const ROPE_MODELS: &[(&str, usize, usize, usize, f64)] = &[
    ("Llama-3-8B", 32, 8, 128, 500_000.0),
    ("Llama-3-70B", 64, 8, 128, 500_000.0),
    ("Qwen2.5-7B", 28, 4, 128, 1_000_000.0),
    ("Gemma-2-9B", 16, 8, 256, 10_000.0),
    ("Mistral-7B", 32, 8, 128, 1_000_000.0),
];

fn rope_cases(quick: bool) -> Vec<Case> {
    // (model index, dtype, fused-QKV Q+K variant, naive baseline)
    let plan: Vec<(usize, DType, bool, bool)> = if quick {
        vec![
            (0, DType::F32, true, true),
            (0, DType::BF16, false, true),
            (2, DType::F32, false, false),
            (3, DType::F32, false, false),
        ]
    } else {
        (0..ROPE_MODELS.len())
            .flat_map(|m| DType::ALL.into_iter().map(move |d| (m, d, true, true)))
            .collect()
    };
    let mut cases = Vec::new();
    for (m, dtype, qkv, naive) in plan {
        let (model, n_heads, n_kv, head_dim, theta) = ROPE_MODELS[m];
        // Q and K heads of every token, rotated in place: each element read and written once.
        let heads = n_heads + n_kv;
        let token_bytes = (heads * head_dim * dtype.size()) as u64;
        let seq = (TENSOR_BYTES.div_ceil(token_bytes) as usize).div_ceil(256) * 256;
        let bytes = 2 * seq as u64 * token_bytes;
        let shape = vec![
            ("seq", seq as u64),
            ("heads", heads as u64),
            ("head_dim", head_dim as u64),
        ];
        let group = format!("rope/{model}/{dtype}/{seq}");
        let op = Rope::new(theta, Layout::Half);
        let op2 = op.clone();
        cases.push(Case {
            kernel: "rope",
            variant: "exact".into(),
            model,
            dtype,
            shape: shape.clone(),
            bytes,
            flops: None,
            group: group.clone(),
            prepare: Box::new(move |ctx| {
                let x = upload_pattern(ctx, &[seq, heads, head_dim], dtype, 6)?;
                Ok(Box::new(move |ctx, enc| {
                    op2.encode(ctx, enc, &x, Positions::Start(0))
                }))
            }),
        });
        if qkv {
            let op2 = op.clone();
            cases.push(Case {
                kernel: "rope",
                variant: "exact_qk_in_fused_qkv".into(),
                model,
                dtype,
                shape: shape.clone(),
                bytes,
                flops: None,
                group: group.clone(),
                prepare: Box::new(move |ctx| {
                    let row = (n_heads + 2 * n_kv) * head_dim;
                    let buf = upload_pattern(ctx, &[seq * row], dtype, 7)?;
                    let (q, k, _) = qkv_views(buf.buffer(), 0, seq, n_heads, n_kv, head_dim, dtype);
                    Ok(Box::new(move |ctx, enc| {
                        op2.encode_qk(ctx, enc, &q, &k, Positions::Start(0))
                    }))
                }),
            });
        }
        if naive {
            cases.push(Case {
                kernel: "rope",
                variant: "naive_table_then_rotate".into(),
                model,
                dtype,
                shape,
                bytes,
                flops: None,
                group,
                prepare: Box::new(move |ctx| {
                    let x = upload_pattern(ctx, &[seq, heads, head_dim], dtype, 6)?;
                    let (inv, _) = op.inv_freq(head_dim, seq)?;
                    let inv: Vec<f32> = inv.iter().map(|&v| v as f32).collect();
                    let inv = ctx.upload(&inv, &[head_dim / 2])?;
                    let table = ctx.empty(&[seq * head_dim], DType::F32)?;
                    Ok(Box::new(move |ctx, enc| {
                        baseline::rope_naive(ctx, enc, &x, &inv, &table, 0)
                    }))
                }),
            });
        }
    }
    cases
}

// ---------------------------------------------------------------- attention

/// The attention shapes of the benchmark: (model, q heads, kv heads, head_dim, softcap,
/// sliding window); public so that a peer benchmark builds the same problems.
pub const ATTN_MODELS: &[(&str, usize, usize, usize, f32, u32)] = &[
    ("Llama-3-8B", 32, 8, 128, 0.0, 0),
    ("Llama-3-70B", 64, 8, 128, 0.0, 0),
    ("Qwen2.5-7B", 28, 4, 128, 0.0, 0),
    ("Gemma-2-9B", 16, 8, 256, 50.0, 0),
    ("Mistral-7B", 32, 8, 128, 0.0, 4096),
];

#[allow(clippy::too_many_arguments)]
fn attention_case(
    variant: String,
    model: &'static str,
    dtype: DType,
    (q_len, kv_len, n_heads, n_kv, head_dim): (usize, usize, usize, usize, usize),
    softcap: f32,
    window: u32,
    naive: bool,
    native_f16: Option<bool>,
) -> Case {
    let size = dtype.size() as u64;
    // A sliding window reads only the keys it can see (decode: the last `window`).
    let visible = if window > 0 && q_len == 1 {
        kv_len.min(window as usize)
    } else {
        kv_len
    };
    let kv_bytes = 2 * (visible * n_kv * head_dim) as u64 * size;
    let q_bytes = 2 * (q_len * n_heads * head_dim) as u64 * size;
    let prefill = variant.contains("prefill");
    // 4 q_len kv_len head_dim n_heads (two matmuls), halved for causal prefill; decode counts
    // the keys it reads, so its GFLOP/s sits beside the matmul ceiling (GQA decode does g x the
    // arithmetic per K/V byte of MHA).
    let flops = Some(match prefill {
        true => 4.0 * (q_len * kv_len * head_dim * n_heads) as f64 / 2.0,
        false => 4.0 * (q_len * visible * head_dim * n_heads) as f64,
    });
    let mut shape = vec![
        ("q_len", q_len as u64),
        ("kv_len", kv_len as u64),
        ("n_heads", n_heads as u64),
        ("n_kv_heads", n_kv as u64),
        ("head_dim", head_dim as u64),
    ];
    if window > 0 {
        shape.push(("window", window as u64));
    }
    Case {
        kernel: "attention",
        group: format!("attention/{model}/{dtype}/{q_len}x{kv_len}x{n_heads}x{n_kv}"),
        variant,
        model,
        dtype,
        shape,
        // K and V read once (the visible part), q read and out written once.
        bytes: kv_bytes + q_bytes,
        flops,
        prepare: Box::new(move |ctx| {
            let q = upload_pattern(ctx, &[q_len, n_heads, head_dim], dtype, 8)?;
            let k = upload_pattern(ctx, &[kv_len, n_kv, head_dim], dtype, 9)?;
            let v = upload_pattern(ctx, &[kv_len, n_kv, head_dim], dtype, 10)?;
            let out = ctx.empty(&[q_len, n_heads, head_dim], dtype)?;
            if naive {
                let scratch =
                    baseline::AttentionScratch::new(ctx, q_len, kv_len, n_heads, head_dim)?;
                return Ok(Box::new(move |ctx, enc| {
                    baseline::attention_naive(ctx, enc, &q, &k, &v, &out, &scratch, true)
                }));
            }
            let op = Attention {
                softcap,
                window,
                native_f16,
                ..Attention::causal()
            };
            Ok(Box::new(move |ctx, enc| {
                op.encode(ctx, enc, &q, &k, &v, None, &out)
            }))
        }),
    }
}

fn attention_cases(ctx: &Context, quick: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    // f16 decode where the subgroup decode reads f16 natively (GPUs with SHADER_F16), beside the
    // same kernel with the integer decode, so one run measures what the native reads buy.
    if crate::ops::attention::subgroup_decode_wanted(ctx) && crate::ops::native_f16_wanted(ctx) {
        let (model, nh, nkv, hd, softcap, window) = ATTN_MODELS[0];
        for (name, native) in [
            ("decode_gqa4", None),
            ("decode_gqa4_integer_f16", Some(false)),
        ] {
            cases.push(attention_case(
                name.to_string(),
                model,
                DType::F16,
                (1, 4096, nh, nkv, hd),
                softcap,
                window,
                false,
                native,
            ));
        }
    }
    let decode = |m: usize, dtype: DType, kv_len: usize, mha: bool| {
        let (model, nh, nkv, hd, softcap, window) = ATTN_MODELS[m];
        let nkv = if mha { nh } else { nkv };
        let name = if mha {
            "decode_mha".to_string()
        } else {
            format!("decode_gqa{}", nh / nkv)
        };
        attention_case(
            name,
            model,
            dtype,
            (1, kv_len, nh, nkv, hd),
            softcap,
            window,
            false,
            None,
        )
    };
    // Prefill on one GQA group (g query heads over one kv head): the naive baseline's score
    // matrix for all heads would pass the 128 MiB binding limit, and lavapipe would need minutes.
    // `--quick` uses a single query head to stay within its time budget.
    let prefill = |m: usize, dtype: DType, len: usize, naive: bool| {
        let (model, nh, nkv, hd, softcap, window) = ATTN_MODELS[m];
        let g = if quick { 1 } else { nh / nkv };
        let name = if naive {
            "naive_prefill_unfused".to_string()
        } else {
            "prefill".to_string()
        };
        let (softcap, window) = if naive { (0.0, 0) } else { (softcap, window) };
        attention_case(
            name,
            model,
            dtype,
            (len, len, g, 1, hd),
            softcap,
            window,
            naive,
            None,
        )
    };
    if quick {
        // Decode at kv_len 4096: MHA, GQA-4 (Llama-3-8B) and GQA-8 (Llama-3-70B), f32 and bf16.
        for dtype in [DType::F32, DType::BF16] {
            cases.push(decode(0, dtype, 4096, true));
            cases.push(decode(0, dtype, 4096, false));
            cases.push(decode(1, dtype, 4096, false));
        }
        cases.push(prefill(0, DType::F32, 2048, false));
        cases.push(prefill(0, DType::F32, 2048, true));
    } else {
        for m in 0..ATTN_MODELS.len() {
            for (dtype, lens) in [
                (DType::F32, [512, 4096, 16384]),
                (DType::BF16, [512, 4096, 32768]),
            ] {
                for kv_len in lens {
                    cases.push(decode(m, dtype, kv_len, false));
                }
            }
        }
        cases.push(decode(0, DType::F32, 4096, true));
        cases.push(decode(0, DType::BF16, 4096, true));
        for len in [512, 2048] {
            cases.push(prefill(0, DType::F32, len, false));
            cases.push(prefill(0, DType::F32, len, true));
        }
        cases.push(prefill(0, DType::F32, 4096, false));
        cases.push(prefill(0, DType::BF16, 2048, false));
        cases.push(prefill(3, DType::F32, 2048, false));
        cases.push(prefill(4, DType::F32, 2048, false));
    }
    cases
}

// ---------------------------------------------------------------- the matmul ceiling

/// The matmul tilings on the two products of one 2048-token prefill head with head_dim 128:
/// QK^T (`[2048, 128] x [128, 2048]`) and PV (`[2048, 2048] x [2048, 128]`).
fn matmul_cases(quick: bool) -> Vec<Case> {
    let shapes: &[(&str, usize, usize, usize)] = if quick {
        &[("qk", 2048, 2048, 128)]
    } else {
        &[("qk", 2048, 2048, 128), ("pv", 2048, 128, 2048)]
    };
    let mut cases = Vec::new();
    for &(product, m, n, k) in shapes {
        for v in matmul::Variant::BENCH {
            cases.push(Case {
                kernel: "matmul",
                variant: v.name(),
                model: product,
                dtype: DType::F32,
                shape: vec![("m", m as u64), ("n", n as u64), ("k", k as u64)],
                bytes: 4 * (m * k + k * n + m * n) as u64,
                flops: Some(2.0 * (m * n * k) as f64),
                group: format!("matmul/{m}x{n}x{k}"),
                prepare: Box::new(move |ctx| {
                    let a = upload_pattern(ctx, &[m, k], DType::F32, 11)?;
                    let b = upload_pattern(ctx, &[k, n], DType::F32, 12)?;
                    let c = ctx.empty(&[m, n], DType::F32)?;
                    Ok(Box::new(move |ctx, enc| v.encode(ctx, enc, &a, &b, &c)))
                }),
            });
        }
    }
    cases
}

/// Every case of the benchmark, ceilings first; the matmul ceiling runs right before prefill
/// attention, so the two see the same host load as nearly as possible.
pub fn cases(ctx: &Context, quick: bool) -> Vec<Case> {
    let mut c = copy_cases();
    c.extend(rms_norm_cases(ctx, quick));
    c.extend(rope_cases(quick));
    let (prefill, decode): (Vec<Case>, Vec<Case>) = attention_cases(ctx, quick)
        .into_iter()
        .partition(|c| c.variant.contains("prefill"));
    c.extend(decode);
    c.extend(matmul_cases(quick));
    c.extend(prefill);
    c.extend(paged::cases(quick));
    c
}

// ---------------------------------------------------------------- running and reporting

/// Run the cases that pass `filter` (the ceilings always run) and return finished records.
pub fn run_cases(
    ctx: &Context,
    cases: Vec<Case>,
    filter: Option<&str>,
    settings: &Settings,
    progress: impl FnMut(&Record),
) -> Result<Vec<Record>> {
    run_cases_timed(ctx, cases, filter, settings, Timing::of(ctx), progress)
}

/// [`run_cases`] with the timing method given (`Timing::Wall` forces the fallback; `Timestamp`
/// on a device without timestamp queries is refused by wgpu with an error).
pub fn run_cases_timed(
    ctx: &Context,
    cases: Vec<Case>,
    filter: Option<&str>,
    settings: &Settings,
    timing: Timing,
    mut progress: impl FnMut(&Record),
) -> Result<Vec<Record>> {
    let mut records: Vec<Record> = Vec::new();
    // Copy cases come first; the two ceilings among them stay allocated and are re-measured
    // beside every kernel.
    let mut copies: Vec<(usize, Ceiling)> = Vec::new();
    let mut ceilings: Option<Vec<Ceiling>> = None;
    for case in cases {
        let is_copy = case.kernel == "copy";
        if !is_copy {
            if let Some(f) = filter {
                if !case.name().contains(f) {
                    continue;
                }
            }
        }
        let mut encode = (case.prepare)(ctx)?;
        let (time_ms, local) = if is_copy {
            let reps = calibrate(ctx, &mut encode, timing, settings)?;
            let mut times = time_runs(ctx, &mut encode, timing, reps, settings.runs.max(1))?;
            copies.push((
                records.len(),
                Ceiling {
                    encode,
                    reps,
                    bytes: case.bytes,
                },
            ));
            (median(&mut times), None)
        } else {
            if ceilings.is_none() {
                ceilings = Some(pick_ceilings(&records, std::mem::take(&mut copies)));
            }
            let cs = ceilings.as_mut().map_or(&mut [][..], |c| &mut c[..]);
            let (t, gbps) = measure_beside(ctx, &mut encode, cs, timing, settings)?;
            drop(encode);
            (t, Some(gbps))
        };
        let mut shape = Map::new();
        shape.insert("model".into(), Value::String(case.model.into()));
        for (k, v) in &case.shape {
            shape.insert((*k).into(), json!(v));
        }
        let gbps = case.bytes as f64 / (time_ms * 1e6);
        let (ceiling_copy_gbps, ceiling_wgsl_copy_gbps) = match local.as_deref() {
            Some([c, w]) => (*c, *w),
            _ => (f64::NAN, f64::NAN),
        };
        let rec = Record {
            kernel: case.kernel.into(),
            variant: case.variant,
            dtype: case.dtype.name().into(),
            shape,
            time_ms,
            bytes: case.bytes,
            gbps,
            fraction_of_copy: gbps / ceiling_copy_gbps,
            fraction_of_wgsl_copy: gbps / ceiling_wgsl_copy_gbps,
            gflops: case.flops.map(|f| f / (time_ms * 1e6)),
            speedup_vs_naive: None,
            fraction_of_matmul: None,
            speedup_vs_peer: None,
            timing,
            ceiling_copy_gbps,
            ceiling_wgsl_copy_gbps,
            group: case.group,
        };
        progress(&rec);
        records.push(rec);
    }
    finish(&mut records);
    Ok(records)
}

/// Keep `buffer_copy` and the fastest WGSL copy (in that order) out of the measured copies.
fn pick_ceilings(records: &[Record], copies: Vec<(usize, Ceiling)>) -> Vec<Ceiling> {
    let gbps = |i: usize| records.get(i).map_or(f64::NAN, |r| r.gbps);
    let best_wgsl = copies
        .iter()
        .filter(|(i, _)| records[*i].variant.starts_with("wgsl"))
        .max_by(|a, b| gbps(a.0).total_cmp(&gbps(b.0)))
        .map(|(i, _)| *i);
    let buffer = copies
        .iter()
        .find(|(i, _)| records[*i].variant == "buffer_copy")
        .map(|(i, _)| *i);
    let mut keep: Vec<(usize, Ceiling)> = copies
        .into_iter()
        .filter(|(i, _)| Some(*i) == buffer || Some(*i) == best_wgsl)
        .collect();
    keep.sort_by_key(|(i, _)| Some(*i) != buffer);
    if buffer.is_none() || best_wgsl.is_none() {
        // Without both ceilings there is nothing to re-measure beside the kernels.
        return Vec::new();
    }
    keep.into_iter().map(|(_, c)| c).collect()
}

/// The two ceilings (GB/s): `copy_buffer_to_buffer` and the best WGSL copy.
pub fn ceilings(records: &[Record]) -> (f64, f64) {
    let copy = records
        .iter()
        .filter(|r| r.kernel == "copy" && r.variant == "buffer_copy")
        .map(|r| r.gbps)
        .fold(f64::NAN, f64::max);
    let wgsl = records
        .iter()
        .filter(|r| r.kernel == "copy" && r.variant.starts_with("wgsl"))
        .map(|r| r.gbps)
        .fold(f64::NAN, f64::max);
    (copy, wgsl)
}

/// The best matmul record, repeated as the `ceiling` variant (its shape names the tiling), so
/// that the JSON carries the compute ceiling prefill's `fraction_of_matmul` divides by.
fn matmul_ceiling(records: &[Record]) -> Option<Record> {
    let best = records
        .iter()
        .filter(|r| r.kernel == "matmul" && r.gflops.is_some_and(f64::is_finite))
        .max_by(|a, b| a.gflops.unwrap_or(0.0).total_cmp(&b.gflops.unwrap_or(0.0)))?;
    let mut c = best.clone();
    c.variant = "ceiling".into();
    c.shape
        .insert("tiling".into(), Value::String(best.variant.clone()));
    c.group = "matmul/ceiling".into();
    Some(c)
}

/// Fill in the fractions of the ceilings and the speed-ups over the naive baselines.
fn finish(records: &mut Vec<Record>) {
    if let Some(ceiling) = matmul_ceiling(records) {
        let best = ceiling.gflops.unwrap_or(f64::NAN);
        for r in records.iter_mut() {
            if r.kernel == "attention" && r.variant.contains("prefill") {
                r.fraction_of_matmul = r.gflops.map(|g| g / best);
            }
        }
        records.push(ceiling);
    }
    let (copy, wgsl) = ceilings(records);
    for r in records.iter_mut() {
        if !r.ceiling_copy_gbps.is_finite() || !r.ceiling_wgsl_copy_gbps.is_finite() {
            r.ceiling_copy_gbps = copy;
            r.ceiling_wgsl_copy_gbps = wgsl;
        }
        r.fraction_of_copy = r.gbps / r.ceiling_copy_gbps;
        r.fraction_of_wgsl_copy = r.gbps / r.ceiling_wgsl_copy_gbps;
    }
    // Time x the WGSL ceiling measured beside it: a slowdown of the host during one case scales
    // its time up and its ceiling down alike, so the ratio of two cases stays fair.
    let work = |r: &Record| r.time_ms * r.ceiling_wgsl_copy_gbps;
    let of = |pat: &str| -> Vec<(String, f64)> {
        records
            .iter()
            .filter(|r| r.variant.contains(pat))
            .map(|r| (r.group.clone(), work(r)))
            .collect()
    };
    let (naive, peer) = (of("naive"), of("peer"));
    let in_group = |list: &[(String, f64)], g: &str| list.iter().find(|(n, _)| n == g).map(|p| p.1);
    for r in records.iter_mut() {
        if r.kernel == "copy" || r.variant.contains("naive") || r.variant.contains("peer") {
            continue;
        }
        let w = work(r);
        r.speedup_vs_naive = in_group(&naive, &r.group).map(|n| n / w);
        r.speedup_vs_peer = in_group(&peer, &r.group).map(|p| p / w);
    }
}

fn table_header() -> String {
    format!(
        "{:<9} {:<26} {:<5} {:<34} {:>9} {:>8} {:>7} {:>6} {:>6} {:>8} {:>7} {:>5} {:>7}",
        "kernel",
        "variant",
        "dtype",
        "shape",
        "time_ms",
        "MiB",
        "GB/s",
        "%copy",
        "%wgsl",
        "GFLOP/s",
        "speedup",
        "%mm",
        "vs peer"
    )
}

fn table_row(r: &Record) -> String {
    let pct = |f: f64| {
        if f.is_finite() {
            format!("{:.0}%", f * 100.0)
        } else {
            "-".into()
        }
    };
    format!(
        "{:<9} {:<26} {:<5} {:<34} {:>9.3} {:>8.1} {:>7.2} {:>6} {:>6} {:>8} {:>7} {:>5} {:>7}",
        r.kernel,
        r.variant,
        r.dtype,
        r.shape_text(),
        r.time_ms,
        r.bytes as f64 / MIB as f64,
        r.gbps,
        pct(r.fraction_of_copy),
        pct(r.fraction_of_wgsl_copy),
        r.gflops.map_or("-".into(), |g| format!("{g:.1}")),
        r.speedup_vs_naive
            .map_or("-".into(), |s| format!("{s:.2}x")),
        r.fraction_of_matmul.map_or("-".into(), pct),
        r.speedup_vs_peer.map_or("-".into(), |s| format!("{s:.2}x")),
    )
}

/// The results table, one line per record, with the ceilings and the timing method on top.
pub fn table(records: &[Record]) -> String {
    let (copy, wgsl) = ceilings(records);
    let mut s = String::new();
    let timing = records.first().map_or("-", |r| r.timing.name());
    let _ = writeln!(
        s,
        "ceilings: copy_buffer_to_buffer {copy:.2} GB/s, best WGSL copy {wgsl:.2} GB/s; timing: {timing}"
    );
    let _ = writeln!(
        s,
        "(kernel fractions divide by both ceilings re-measured with runs interleaved with the kernel's)"
    );
    let _ = writeln!(s, "{}", table_header());
    for r in records {
        let _ = writeln!(s, "{}", table_row(r));
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart (SVG) of achieved GB/s per record, with both ceilings as lines.
pub fn svg_chart(records: &[Record], title: &str) -> String {
    let (copy, wgsl) = ceilings(records);
    let bars: Vec<&Record> = records.iter().filter(|r| r.gbps.is_finite()).collect();
    let label_w = 430.0;
    let plot_w = 520.0;
    let bar_h = 18.0;
    let gap = 4.0;
    let top = 88.0;
    let height = top + bars.len() as f64 * (bar_h + gap) + 40.0;
    let width = label_w + plot_w + 160.0;
    // `copy_buffer_to_buffer` can be far above every shader (a driver memcpy on CPU adapters);
    // the scale then ends a little past the largest other value and longer bars are clipped.
    let others = bars
        .iter()
        .filter(|r| !(r.kernel == "copy" && r.variant == "buffer_copy"))
        .map(|r| r.gbps)
        .chain([wgsl].into_iter().filter(|v| v.is_finite()))
        .fold(0.0f64, f64::max);
    let all = others.max(if copy.is_finite() { copy } else { 0.0 });
    let max = if all > 2.0 * others && others > 0.0 {
        others * 1.15
    } else {
        all * 1.05
    }
    .max(1e-9);
    let x = |v: f64| label_w + v.min(max) / max * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="40">achieved GB/s (bytes each kernel must move / median time); lines: <tspan fill="#d62728">copy_buffer_to_buffer {copy:.1} GB/s</tspan>, <tspan fill="#2ca02c">best WGSL copy {wgsl:.1} GB/s</tspan> (measured first)</text>"##
    );
    // The compute ceiling has no place on a GB/s axis: it is stated in GFLOP/s with prefill's
    // fraction of it.
    let matmul = records
        .iter()
        .find(|r| r.kernel == "matmul" && r.variant == "ceiling");
    let prefill = records
        .iter()
        .filter(|r| r.variant == "prefill")
        .filter_map(|r| Some((r.gflops?, r.fraction_of_matmul?)))
        .map(|(g, f)| format!("{g:.2} GFLOP/s ({:.0}%)", f * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(m) = matmul {
        let _ = writeln!(
            s,
            r##"<text x="10" y="58" fill="#8c564b">matmul ceiling (best tiling, {}): {:.2} GFLOP/s; prefill attention: {}</text>"##,
            xml_escape(
                m.shape
                    .get("tiling")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
            ),
            m.gflops.unwrap_or(f64::NAN),
            if prefill.is_empty() {
                "-".to_string()
            } else {
                prefill
            }
        );
    }
    if bars.iter().any(|r| r.variant.contains("peer")) {
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}" fill="#e377c2">pink: the peer library on the same problem in its own run on this adapter (wall time, measured beside the same ceilings); ours show their speed-up over it</text>"##,
            top - 10.0
        );
    }
    for (i, r) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let color = match (r.kernel.as_str(), r.variant.contains("naive")) {
            _ if r.variant.contains("peer") => "#e377c2",
            (_, true) => "#bbbbbb",
            ("copy", _) => "#8c8c8c",
            ("rms_norm", _) => "#1f77b4",
            ("rope", _) => "#ff7f0e",
            ("attention", _) => "#9467bd",
            ("matmul", _) => "#8c564b",
            _ => "#17becf",
        };
        let label = format!("{} {} {} {}", r.kernel, r.variant, r.dtype, r.shape_text());
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 6.0,
            y + bar_h * 0.75,
            xml_escape(&label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{label_w}" y="{y:.1}" width="{:.1}" height="{bar_h}" fill="{color}"/>"#,
            (x(r.gbps) - label_w).max(0.5)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{:.1} ({:.0}%){}{}</text>"#,
            x(r.gbps) + 4.0,
            y + bar_h * 0.75,
            r.gbps,
            r.fraction_of_wgsl_copy * 100.0,
            if r.gbps > max { " off scale" } else { "" },
            r.speedup_vs_peer
                .map_or(String::new(), |p| format!(", {p:.2}x the peer"))
        );
    }
    let bottom = top + bars.len() as f64 * (bar_h + gap);
    for (v, color) in [(copy, "#d62728"), (wgsl, "#2ca02c")] {
        if v.is_finite() {
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="6,3"/>"#,
                x(v),
                top - 6.0,
                bottom
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<line x1="{label_w}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="black"/>"#,
        label_w + plot_w
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.1}</text>"#,
            x(v),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">GB/s; % = of the best WGSL copy re-measured beside each kernel</text>"#,
        label_w + plot_w / 2.0,
        bottom + 32.0
    );
    s.push_str("</svg>\n");
    s
}

/// Read a peer run's JSON (an array of records, as `--json` writes them).
pub fn read_records(path: &PathBuf) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bad = |what: String| Error::param(OP, format!("{}: {what}", path.display()));
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let arr = v
        .as_array()
        .ok_or_else(|| bad("expected an array of records".into()))?;
    arr.iter()
        .enumerate()
        // Host records (`kernel: "host"`) have no time or bandwidth; they are not merged.
        .filter(|(_, r)| r.get("kernel").and_then(Value::as_str) != Some("host"))
        .map(|(i, r)| Record::from_json(r).ok_or_else(|| bad(format!("record {i} is malformed"))))
        .collect()
}

/// Merge a peer run into `records`: its peer records (variants containing `peer`) are
/// appended, and each of our records takes the `speedup_vs_peer` the peer run measured for the
/// same kernel, variant, dtype and shape (a ratio from one run, never across runs). Returns how
/// many peer records were added.
pub fn merge_peer(records: &mut Vec<Record>, peer_run: &[Record]) -> usize {
    for r in records.iter_mut() {
        if let Some(p) = peer_run
            .iter()
            .find(|p| p.same_problem(r) && p.variant == r.variant && p.speedup_vs_peer.is_some())
        {
            r.speedup_vs_peer = p.speedup_vs_peer;
        }
    }
    let peers: Vec<Record> = peer_run
        .iter()
        .filter(|p| p.variant.contains("peer"))
        .cloned()
        .collect();
    let n = peers.len();
    records.extend(peers);
    n
}

/// The `--json` array: the kernel records, then the host records.
pub fn write_json(path: &PathBuf, records: &[Record], host: &[host::HostRecord]) -> Result<()> {
    let arr = Value::Array(
        records
            .iter()
            .map(Record::to_json)
            .chain(host.iter().map(host::HostRecord::to_json))
            .collect(),
    );
    let text = serde_json::to_string_pretty(&arr)
        .map_err(|e| Error::gpu(OP, format!("JSON encoding: {e}")))?;
    write_file(path, &(text + "\n"))
}

/// Write `text` to `path`, the error naming the file.
pub fn write_file(path: &PathBuf, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Run the benchmark on the default adapter, print the table, and write `--json` / `--plot`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let ctx = Context::new()?;
    run_with(&ctx, args).map(|_| ())
}

/// [`run`] on a given context; returns the records.
pub fn run_with(ctx: &Context, args: &BenchArgs) -> Result<Vec<Record>> {
    let settings = Settings::new(args.quick);
    let method = if args.wall_time {
        Timing::Wall
    } else {
        Timing::of(ctx)
    };
    let timing = match (method, ctx.caps().timestamps) {
        (Timing::Timestamp, _) => "GPU timestamp queries",
        (Timing::Wall, true) => {
            "submit-and-wait wall time (forced; the adapter has timestamp queries)"
        }
        (Timing::Wall, false) => "submit-and-wait wall time (the adapter has no timestamp queries)",
    };
    println!("adapter: {}", ctx.describe());
    println!(
        "timing: {timing}; {} warm-up + median of {} runs{}",
        settings.warmup,
        settings.runs,
        if args.quick { " (--quick)" } else { "" }
    );
    println!("{}", table_header());
    // A malformed peer file is refused before the run, not after it.
    let peer_run = args.peer.as_ref().map(read_records).transpose()?;
    let started = Instant::now();
    let mut records = run_cases_timed(
        ctx,
        cases(ctx, args.quick),
        args.filter.as_deref(),
        &settings,
        method,
        |r| println!("{}", table_row(r)),
    )?;
    // Host cost of recording: the floor always runs (like the ceilings); `--filter` selects ops
    // by `host/<variant>`.
    let filter = args.filter.as_deref();
    let host = host::measure(ctx, &host::HostSettings::default(), |variant| {
        filter.is_none_or(|f| format!("host/{variant}").contains(f))
    })?;
    if let (Some(run), Some(path)) = (&peer_run, &args.peer) {
        let n = merge_peer(&mut records, run);
        println!("merged {n} peer records from {}", path.display());
    }
    println!(
        "\n{}\n{}finished in {:.1} s",
        table(&records),
        host::table(&host),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        write_json(path, &records, &host)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "llama-kernels bench{} on {}",
            if args.quick { " --quick" } else { "" },
            ctx.adapter_info().name
        );
        write_file(path, &svg_chart(&records, &title))?;
        println!("wrote {}", path.display());
    }
    Ok(records)
}
