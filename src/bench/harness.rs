//! The measuring half of the benchmark: cases and records, GPU-timestamp and wall-clock timing,
//! warm-up and calibration, the copy ceilings re-measured beside every kernel, and the derived
//! figures (fractions of the ceilings, speed-ups over the naive baselines and the peer).

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::context::Context;
use crate::error::Result;
use crate::tensor::DType;

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
    /// Decode over a KV cache of some format (variant `{float variant}_kv_{format}`): time of
    /// the bf16 case of the same problem (`{float variant}_kv_bf16` in the group, else
    /// `{float variant}`) over this record's, each first multiplied by the WGSL copy ceiling
    /// measured beside it; > 1 means this format is faster.
    pub speedup_vs_bf16: Option<f64>,
    /// How the time was taken.
    pub timing: Timing,
    /// The ceilings (GB/s) this record's fractions divide by: for kernels, `buffer_copy` and the
    /// best WGSL copy re-measured with their runs interleaved with the kernel's.
    pub ceiling_copy_gbps: f64,
    /// The best WGSL streaming copy's GB/s measured beside this case.
    pub ceiling_wgsl_copy_gbps: f64,
    /// Records of one problem (the naive baseline, the peer) share it.
    pub(super) group: String,
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

pub(super) const OP: &str = "bench";
pub(super) const MIB: u64 = 1 << 20;
/// Size of the memory-bound benchmark tensors: at least this many bytes each.
pub const TENSOR_BYTES: u64 = 64 * MIB;

pub(super) fn median(v: &mut [f64]) -> f64 {
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
            speedup_vs_bf16: None,
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
    let float: Vec<(String, String, f64)> = records
        .iter()
        .map(|r| (r.group.clone(), r.variant.clone(), work(r)))
        .collect();
    // A `X_kv_{format}` record's base: `X_kv_bf16` (a bf16 cache read by the same path) in its
    // group, else `X` (the bf16 kernel on plain tensors).
    let base_work = |group: &str, variant: &str| {
        float
            .iter()
            .find(|(g, v, _)| g == group && v == variant)
            .map(|f| f.2)
    };
    for r in records.iter_mut() {
        if let Some((base, _)) = r.variant.split_once("_kv_") {
            let w = work(r);
            r.speedup_vs_bf16 = base_work(&r.group, &format!("{base}_kv_bf16"))
                .or_else(|| base_work(&r.group, base))
                .map(|b| b / w);
        }
    }
}
