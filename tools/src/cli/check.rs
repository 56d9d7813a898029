//! `llama-kernels check`: run case files (tensors dumped from a user's model) on the GPU and the
//! f64 reference, and judge them against the expected tensors in the files (or, with
//! `--against reference`, against the f64 reference computed from the files' inputs).
//!
//! Exit status: 0 when every case passed, 1 when a case ran but failed its tolerance, 2 when
//! the check could not be carried out for some input (unreadable or invalid case file, bad
//! arguments, no adapter, outputs that could not be written); 2 wins over 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use llama_kernels::cases::{write_outputs, Against, CaseFile, CaseReport};
use llama_kernels::compare::Comparison;
use llama_kernels::Context;
use serde_json::{json, Value};

/// The arguments of `check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// NMSE tolerance (default: per op and dtype: f32 1e-10, f16 1e-6, bf16 5e-5).
    #[arg(long)]
    pub tol: Option<f64>,
    /// What the GPU outputs are judged against: the file's expected tensors, or the f64
    /// reference computed from the file's inputs (for expected tensors that were themselves
    /// computed imprecisely, e.g. HF's f32 RoPE angles or a bf16 model).
    #[arg(long, value_enum, default_value = "expected")]
    pub against: AgainstArg,
    /// Write the GPU outputs of each case to `DIR/<case file name>`.
    #[arg(long, value_name = "DIR")]
    pub write_outputs: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Case files (safetensors).
    #[arg(required = true)]
    pub cases: Vec<PathBuf>,
}

/// `--against`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AgainstArg {
    /// The `expected.*` tensors in the file (GPU and f64 reference must both be within tolerance).
    Expected,
    /// The f64 reference computed from the file's inputs.
    Reference,
}

impl From<AgainstArg> for Against {
    fn from(a: AgainstArg) -> Against {
        match a {
            AgainstArg::Expected => Against::Expected,
            AgainstArg::Reference => Against::Reference,
        }
    }
}

/// Exit status when a case ran and failed its tolerance.
const EXIT_FAILED: u8 = 1;
/// Exit status when the check could not be carried out for some input.
const EXIT_UNUSABLE: u8 = 2;

fn against_name(a: Against) -> &'static str {
    match a {
        Against::Expected => "expected",
        Against::Reference => "reference",
    }
}

fn comparison_json(c: &Comparison) -> Value {
    let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    json!({
        "nmse": num(c.nmse),
        "max_abs": num(c.max_abs),
        "nan_mismatch": c.nan_mismatch,
        "inf_mismatch": c.inf_mismatch,
    })
}

fn report_json(r: &CaseReport) -> Value {
    json!({
        "path": r.path,
        "op": r.op,
        "dtype": r.dtype.name(),
        "shape": r.shape,
        "variant": r.variant,
        "against": against_name(r.against),
        "tolerance": r.tolerance,
        "pass": r.pass(),
        "outputs": r.outputs.iter().map(|o| json!({
            "name": o.name,
            "pass": o.pass,
            "gpu_vs_expected": comparison_json(&o.gpu),
            "reference_vs_expected": comparison_json(&o.cpu),
            "gpu_vs_reference": comparison_json(&o.agree),
            "diagnosis": o.diagnosis,
        })).collect::<Vec<_>>(),
    })
}

fn mismatch_note(c: &Comparison) -> String {
    let mut s = String::new();
    if c.nan_mismatch > 0 {
        s += &format!(" ({} NaN mismatches)", c.nan_mismatch);
    }
    if c.inf_mismatch > 0 {
        s += &format!(" ({} inf mismatches)", c.inf_mismatch);
    }
    s
}

fn print_report(r: &CaseReport) {
    let verdict = if r.pass() { "PASS" } else { "FAIL" };
    let judged = match r.against {
        Against::Expected => "expected",
        Against::Reference => "the f64 reference",
    };
    println!(
        "{verdict} {} op={} dtype={} shape={:?} variant={} tol={:.1e} (judged against {judged})",
        r.path, r.op, r.dtype, r.shape, r.variant, r.tolerance
    );
    for o in &r.outputs {
        println!(
            "    {:<12} vs expected: gpu nmse {:.3e} max_abs {:.3e}{}, f64 ref nmse {:.3e} max_abs {:.3e}{}; gpu vs f64 ref: nmse {:.3e} max_abs {:.3e}{}",
            o.name,
            o.gpu.nmse,
            o.gpu.max_abs,
            mismatch_note(&o.gpu),
            o.cpu.nmse,
            o.cpu.max_abs,
            mismatch_note(&o.cpu),
            o.agree.nmse,
            o.agree.max_abs,
            mismatch_note(&o.agree)
        );
        if let Some(d) = &o.diagnosis {
            println!("      {d}");
        }
    }
}

/// More contexts on the default adapter for the case files beyond the first, one per further CPU
/// core, at most 3. On a CPU adapter a pipeline's LLVM compile runs on its device's queue, one at
/// a time, and the compiles are most of a case's first run; each context's worker compiles its
/// own cases in parallel. On a GPU they only overlap host work. Where a context cannot be
/// created, fewer workers run.
fn extra_contexts(cases: usize) -> Vec<Context> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = cores.min(cases).clamp(1, 4) - 1;
    (0..n).map_while(|_| Context::new().ok()).collect()
}

/// Run `check` (see the module docs for the exit status). The cases run on one worker per
/// context ([`extra_contexts`]); their reports are printed in the order the cases were given.
pub fn run(args: &CheckArgs) -> ExitCode {
    if let Some(t) = args.tol {
        if !(t.is_finite() && t >= 0.0) {
            eprintln!("error: check: --tol must be a finite number >= 0, got {t}");
            return ExitCode::from(EXIT_UNUSABLE);
        }
    }
    let ctx = match Context::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_UNUSABLE);
        }
    };
    let against = Against::from(args.against);
    if !args.json {
        println!("adapter: {}", ctx.describe());
    }
    let (mut passed, mut failed, mut unusable) = (0usize, 0usize, 0usize);
    let mut cases_json = Vec::new();
    let extra = extra_contexts(args.cases.len());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for ctx in std::iter::once(&ctx).chain(&extra) {
            let (tx, next, cases, tol) = (tx.clone(), &next, &args.cases, args.tol);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = cases.get(i) else { return };
                let report = CaseFile::load(path).and_then(|c| c.run_against(ctx, tol, against));
                if tx.send((i, report)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        // Reports arrive in any order and are printed in the order the cases were given.
        let mut ready = BTreeMap::new();
        for (i, path) in args.cases.iter().enumerate() {
            let report = loop {
                if let Some(r) = ready.remove(&i) {
                    break r;
                }
                match rx.recv() {
                    Ok((j, r)) => {
                        ready.insert(j, r);
                    }
                    Err(_) => {
                        break Err(llama_kernels::Error::Case {
                            path: path.display().to_string(),
                            msg: "check: the worker running this case stopped".into(),
                        })
                    }
                }
            };
            let r = match report {
                Err(e) => {
                    unusable += 1;
                    if args.json {
                        cases_json.push(
                            json!({"path": path.display().to_string(), "error": e.to_string()}),
                        );
                    } else {
                        println!("ERROR {}: {e}", path.display());
                    }
                    continue;
                }
                Ok(r) => r,
            };
            let mut written = None;
            if let Some(dir) = &args.write_outputs {
                match write_outputs(&r, dir) {
                    Ok(p) => written = Some(p.display().to_string()),
                    Err(e) => {
                        eprintln!("error: could not write outputs of {}: {e}", r.path);
                        unusable += 1;
                    }
                }
            }
            if args.json {
                let mut j = report_json(&r);
                j["written"] = json!(written);
                cases_json.push(j);
            } else {
                print_report(&r);
                if let Some(p) = &written {
                    println!("    wrote {p}");
                }
            }
            if r.pass() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    });
    if args.json {
        let j = json!({
            "adapter": super::info::adapter_json(&ctx),
            "against": against_name(against),
            "cases": cases_json,
            "passed": passed,
            "failed": failed,
            "unusable": unusable,
        });
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    } else {
        println!(
            "check: {passed} passed, {} failed ({unusable} could not be used)",
            failed + unusable
        );
    }
    if unusable > 0 {
        ExitCode::from(EXIT_UNUSABLE)
    } else if failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
