//! burn's RMSNorm, RoPE and attention beside llama-kernels' kernels on the same shapes, dtypes
//! and wgpu device, in one benchmark run.
//!
//! burn opens the adapter (its wgpu runtime, cubecl, with fusion and autotune) and hands its
//! device and queue to `llama_kernels::Context::from_device`, so both libraries run on one
//! device. The cases are the benchmark's own (`llama_kernels::bench::cases`): for every kernel
//! case burn can express, a `peer_burn_*` case of the same group follows it, and the harness
//! measures both beside the same copy ceilings, interleaved like every other case. Everything is
//! timed by submit-and-wait wall time (burn has no access to our timestamp queries): a
//! repetition of a burn case is its ops plus one `Device::sync`, with the output kept alive until
//! the next repetition so that fusion cannot drop the work. The library then gives each of our
//! records `speedup_vs_peer` (the peer's time over ours, each scaled by the copy ceiling measured
//! beside it).
//!
//! Usage: `cargo run --release -- [--quick] [--json FILE] [--plot FILE] [--filter NAME]`;
//! `llama-kernels bench --peer FILE` merges the file's peer records into its own output.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::module::Param;
use burn::nn::{RmsNorm, RotaryEncodingConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType as BurnDType, Device, Distribution, Int, Tensor};
use llama_kernels::bench::{self, Case, Encode, Settings, Timing, ATTN_MODELS};
use llama_kernels::{Context, DType, Error, Result};

const OP: &str = "peer-burn";

/// Panics on any thread so far. burn runs its kernels on a server thread of its own, where a
/// failed launch panics without reaching the caller (the caller's `sync` then returns), so the
/// hook counts them and a case whose calls panicked anywhere is refused.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

struct Args {
    quick: bool,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    filter: Option<String>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args {
        quick: false,
        json: None,
        plot: None,
        filter: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = Some(value("--json")?.into()),
            "--plot" => args.plot = Some(value("--plot")?.into()),
            "--filter" => args.filter = Some(value("--filter")?),
            "-h" | "--help" => {
                return Err(
                    "usage: peer-burn [--quick] [--json FILE] [--plot FILE] [--filter NAME]".into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(args)
}

fn burn_dtype(d: DType) -> BurnDType {
    match d {
        DType::F32 => BurnDType::F32,
        DType::F16 => BurnDType::F16,
        DType::BF16 => BurnDType::BF16,
    }
}

fn dim(case: &Case, name: &str) -> usize {
    case.shape
        .iter()
        .find(|(k, _)| *k == name)
        .map_or(0, |(_, v)| *v as usize)
}

/// Run `f` once and wait; a panic inside burn becomes an `Err` naming the case.
fn try_burn<T>(what: &str, dev: &Device, f: impl FnOnce() -> T) -> Result<T> {
    let before = PANICS.load(Ordering::SeqCst);
    let out = catch_unwind(AssertUnwindSafe(|| {
        let out = f();
        dev.sync().map(|_| out)
    }));
    if PANICS.load(Ordering::SeqCst) != before {
        return Err(Error::gpu(
            OP,
            format!("{what}: burn panicked on its server thread"),
        ));
    }
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::gpu(OP, format!("{what}: burn failed: {e:?}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Error::gpu(OP, format!("{what}: burn panicked: {msg}")))
        }
    }
}

/// One repetition: the op, then `Device::sync`, the output kept until the next repetition.
fn timed<T: 'static>(dev: Device, mut op: impl FnMut() -> T + 'static) -> Encode {
    let mut keep: Option<T> = None;
    Box::new(move |_ctx, _enc| {
        let before = PANICS.load(Ordering::SeqCst);
        let out = op();
        dev.sync()
            .map_err(|e| Error::gpu(OP, format!("burn sync: {e:?}")))?;
        if PANICS.load(Ordering::SeqCst) != before {
            return Err(Error::gpu(OP, "burn panicked on its server thread"));
        }
        // The previous repetition's output is dropped only now.
        drop(keep.replace(out));
        Ok(())
    })
}

/// burn's first call of a shape autotunes (minutes on a CPU adapter): one call here, outside
/// the timed runs (the preflight's call tunes, the harness's build then runs tuned).
fn warm<T>(what: &str, dev: &Device, op: impl FnMut() -> T) -> Result<()> {
    let t0 = Instant::now();
    try_burn(what, dev, op)?;
    eprintln!("  {what}: burn warm-up {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn random<const D: usize>(shape: [usize; D], dtype: DType, dev: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Default, (dev, burn_dtype(dtype)))
}

/// The peer of one of our cases, or why burn has none.
fn peer_case(case: &Case, dev: &Device) -> std::result::Result<Case, String> {
    let dtype = case.dtype;
    if !dev.supports_dtype(burn_dtype(dtype)) {
        return Err(format!("burn's wgpu device has no {dtype} tensors"));
    }
    let dev = dev.clone();
    let name = case.name();
    // Each arm gives a builder (tensors, warm-up, the timed closure): called once here as a
    // preflight, so a case burn cannot run is reported and left out instead of ending the run,
    // and again by the harness.
    let (variant, build): (String, Box<dyn Fn() -> Result<Encode>>) = match case.kernel {
        "rms_norm" => {
            let (rows, hidden) = (dim(case, "rows"), dim(case, "hidden"));
            let residual = case.variant.contains("residual");
            let variant = if residual {
                "peer_burn_add_then_rms_norm"
            } else {
                "peer_burn_rms_norm"
            };
            (
                variant.into(),
                Box::new(move || -> Result<Encode> {
                    let norm = RmsNorm {
                        gamma: Param::from_tensor(random([hidden], dtype, &dev)),
                        epsilon: 1e-5,
                    };
                    let x = random([rows, hidden], dtype, &dev);
                    if residual {
                        let r = random([rows, hidden], dtype, &dev);
                        // h = x + residual is the new residual stream, kept like ours.
                        let op = move || {
                            let h = x.clone() + r.clone();
                            (norm.forward(h.clone()), h)
                        };
                        let mut op = op;
                        warm(&name, &dev, &mut op)?;
                        Ok(timed(dev.clone(), op))
                    } else {
                        let mut op = move || norm.forward(x.clone());
                        warm(&name, &dev, &mut op)?;
                        Ok(timed(dev.clone(), op))
                    }
                }),
            )
        }
        "rope" => {
            if case.variant != "exact" {
                return Err("no fused-QKV form in burn".into());
            }
            let (seq, heads, head_dim) =
                (dim(case, "seq"), dim(case, "heads"), dim(case, "head_dim"));
            (
                // burn rotates interleaved pairs (GPT-J), ours here the Llama/NeoX halves: the
                // same bytes and arithmetic per element.
                "peer_burn_rotary_encoding".into(),
                Box::new(move || -> Result<Encode> {
                    let rope = RotaryEncodingConfig::new(seq, head_dim)
                        .with_theta(500_000.0)
                        .init(&dev);
                    // burn's layout puts the sequence second to last: [1, heads, seq, head_dim].
                    // Its rotation is a batched matmul with one batch per (head, position),
                    // and burn launches it as one dispatch whose z count is that product, which
                    // must stay within the 65535 workgroups of a dimension: a burn user splits
                    // the heads into such chunks, as here (the outputs stay separate tensors).
                    let per = (65_535 / seq.max(1)).clamp(1, heads);
                    let chunks: Vec<Tensor<4>> = (0..heads)
                        .step_by(per)
                        .map(|h0| random([1, per.min(heads - h0), seq, head_dim], dtype, &dev))
                        .collect();
                    let mut op = move || {
                        chunks
                            .iter()
                            .map(|x| rope.forward(x.clone()))
                            .collect::<Vec<_>>()
                    };
                    warm(&name, &dev, &mut op)?;
                    Ok(timed(dev.clone(), op))
                }),
            )
        }
        "attention" => {
            if case.variant.contains("naive") {
                return Err("baseline".into());
            }
            if case.variant.contains("paged") {
                return Err("burn has no paged KV cache or variable-length batch".into());
            }
            let (q_len, kv_len) = (dim(case, "q_len"), dim(case, "kv_len"));
            let (nh, nkv, hd) = (
                dim(case, "n_heads"),
                dim(case, "n_kv_heads"),
                dim(case, "head_dim"),
            );
            let window = dim(case, "window");
            let softcap = ATTN_MODELS
                .iter()
                .find(|m| m.0 == case.model)
                .map_or(0.0, |m| m.4);
            let g = nh / nkv.max(1);
            let mut variant = String::from("peer_burn_attention");
            if g > 1 {
                // burn's attention takes as many K/V heads as query heads.
                variant += "_kv_repeated";
            }
            if window > 0 {
                variant += "_bool_mask";
            }
            (
                variant,
                Box::new(move || -> Result<Encode> {
                    let q = random([1, nh, q_len, hd], dtype, &dev);
                    let k = random([1, nkv, kv_len, hd], dtype, &dev);
                    let v = random([1, nkv, kv_len, hd], dtype, &dev);
                    // Repeated once here, outside the timing: the kernel then reads g times
                    // the K/V bytes ours reads.
                    let (k, v) = if g > 1 {
                        (
                            k.unsqueeze_dim::<5>(2)
                                .repeat_dim(2, g)
                                .reshape([1, nh, kv_len, hd]),
                            v.unsqueeze_dim::<5>(2)
                                .repeat_dim(2, g)
                                .reshape([1, nh, kv_len, hd]),
                        )
                    } else {
                        (k, v)
                    };
                    // A sliding window has no option in burn: a boolean mask (true = masked).
                    let mask = (window > 0).then(|| {
                        let offset = (kv_len - q_len) as i64;
                        let pos = Tensor::<1, Int>::arange(offset..offset + q_len as i64, &dev)
                            .reshape([q_len, 1]);
                        let key =
                            Tensor::<1, Int>::arange(0..kv_len as i64, &dev).reshape([1, kv_len]);
                        let m: Tensor<2, Bool> = (pos - key).greater_equal_elem(window as i64);
                        m.unsqueeze::<4>().expand([1, nh, q_len, kv_len])
                    });
                    let options = AttentionModuleOptions {
                        scale: None,
                        softcap: (softcap > 0.0).then_some(softcap as f64),
                        is_causal: true,
                    };
                    let mut op = move || {
                        attention(q.clone(), k.clone(), v.clone(), mask.clone(), None, options)
                    };
                    warm(&name, &dev, &mut op)?;
                    Ok(timed(dev.clone(), op))
                }),
            )
        }
        other => return Err(format!("no {other} in burn")),
    };
    drop(build().map_err(|e| e.to_string())?);
    Ok(Case {
        prepare: Box::new(move |_ctx: &Context| build()),
        kernel: case.kernel,
        variant,
        model: case.model,
        dtype,
        shape: case.shape.clone(),
        bytes: case.bytes,
        flops: case.flops,
        group: case.group.clone(),
    })
}

/// Our cases that get a peer: the dispatcher's own choice (the first case of its group),
/// never a baseline or a forced strategy.
fn wanted(case: &Case, groups: &mut HashSet<String>) -> bool {
    match case.kernel {
        "rms_norm" | "rope" | "attention" => {
            !case.variant.contains("naive") && groups.insert(case.group.clone())
        }
        _ => false,
    }
}

fn run(args: &Args) -> Result<()> {
    count_panics();
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| Error::gpu(OP, format!("burn's wgpu runtime: {e:?}")))?;
    let ctx = Context::from_device(&setup.device, &setup.queue);
    println!(
        "adapter: {} (one wgpu device shared by burn and llama-kernels)",
        ctx.describe()
    );
    let mut groups = HashSet::new();
    let mut cases = Vec::new();
    for case in bench::cases(&ctx, args.quick) {
        if case.kernel == "copy" {
            cases.push(case);
            continue;
        }
        if !wanted(&case, &mut groups) {
            continue;
        }
        if let Some(f) = &args.filter {
            if !case.name().contains(f.as_str()) {
                continue;
            }
        }
        match peer_case(&case, &device) {
            Ok(peer) => {
                cases.push(case);
                cases.push(peer);
            }
            Err(why) => {
                println!("{}: no peer ({why})", case.name());
                cases.push(case);
            }
        }
    }
    let started = Instant::now();
    let settings = Settings::new(args.quick);
    let records = bench::run_cases_timed(&ctx, cases, None, &settings, Timing::Wall, |r| {
        println!(
            "{:<10} {:<34} {:<5} {:>10.3} ms",
            r.kernel, r.variant, r.dtype, r.time_ms
        )
    })?;
    println!(
        "\n{}finished in {:.1} s",
        bench::table(&records),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        bench::write_json(path, &records, &[])?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "llama-kernels and burn {}, {}",
            if args.quick { "--quick" } else { "" },
            ctx.adapter_info().name
        );
        bench::write_file(path, &bench::svg_chart(&records, &title))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
