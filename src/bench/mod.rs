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
//!
//! Files: `harness` (cases, timing, ceilings, records), `cases` (what runs, on which models'
//! shapes), `report` (table, SVG chart, JSON), and per family of the benchmark's own kernels
//! `copy` (ceilings), `baseline` (unfused), `matmul` (compute ceiling), `paged`, and `host` (the
//! CPU cost of recording).

pub mod baseline;
mod cases;
pub mod copy;
mod harness;
pub mod host;
pub mod matmul;
pub mod paged;
mod report;

pub use cases::{cases, ATTN_MODELS};
pub use harness::{
    calibrate, ceilings, measure, measure_round_robin, run_cases, run_cases_timed, timestamp_pass,
    Case, Encode, Measured, Prepare, Record, Settings, Timing, TENSOR_BYTES, TIMING_ENV,
};
pub use report::{merge_peer, read_records, svg_chart, table, write_file, write_json};

pub use crate::ops::rope::sincos::SinCos;

use std::path::PathBuf;
use std::time::Instant;

use crate::context::Context;
use crate::error::Result;
use crate::pipeline::{Shader, COMMON_WGSL};
use crate::Rope;
use report::{table_header, table_row};

/// Streaming copies, the benchmark's WGSL bandwidth ceiling.
pub const COPY: &Shader = &Shader {
    name: "copy.wgsl",
    parts: &[COMMON_WGSL, include_str!("../../shaders/copy.wgsl")],
    variants: copy::all_variant_keys,
};

/// Unfused baselines that only the benchmark runs.
pub const BASELINE: &Shader = &Shader {
    name: "baseline.wgsl",
    parts: &[COMMON_WGSL, include_str!("../../shaders/baseline.wgsl")],
    variants: baseline::all_variant_keys,
};

/// The tiled f32 matmul, the benchmark's compute ceiling for prefill attention.
pub const MATMUL: &Shader = &Shader {
    name: "matmul.wgsl",
    parts: &[include_str!("../../shaders/matmul.wgsl")],
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
