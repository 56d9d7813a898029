//! `llama-kernels check`: run case files (tensors dumped from a user's model) on the GPU and the
//! f64 reference, and judge them against the expected tensors in the files.

use std::path::PathBuf;
use std::process::ExitCode;

use llama_kernels::cases::{write_outputs, CaseFile, CaseReport};
use llama_kernels::compare::Comparison;
use llama_kernels::Context;
use serde_json::{json, Value};

/// The arguments of `check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// NMSE tolerance (default: per op and dtype: f32 1e-10, f16 1e-6, bf16 5e-5).
    #[arg(long)]
    pub tol: Option<f64>,
    /// Write the GPU outputs of each case to DIR/<case file name>.
    #[arg(long, value_name = "DIR")]
    pub write_outputs: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Case files (safetensors).
    #[arg(required = true)]
    pub cases: Vec<PathBuf>,
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
        "tolerance": r.tolerance,
        "pass": r.pass(),
        "outputs": r.outputs.iter().map(|o| json!({
            "name": o.name,
            "pass": o.pass,
            "gpu_vs_expected": comparison_json(&o.gpu),
            "reference_vs_expected": comparison_json(&o.cpu),
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

/// Run `check`; exit status 0 when every case passed, 1 otherwise.
pub fn run(args: &CheckArgs) -> ExitCode {
    if let Some(t) = args.tol {
        if !(t.is_finite() && t >= 0.0) {
            eprintln!("error: check: --tol must be a finite number >= 0, got {t}");
            return ExitCode::from(2);
        }
    }
    let ctx = match Context::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.json {
        println!("adapter: {}", ctx.describe());
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut cases_json = Vec::new();
    for path in &args.cases {
        let report = CaseFile::load(path).and_then(|c| c.run(&ctx, args.tol));
        let r = match report {
            Err(e) => {
                failed += 1;
                if args.json {
                    cases_json
                        .push(json!({"path": path.display().to_string(), "error": e.to_string()}));
                } else {
                    println!("FAIL {}: {e}", path.display());
                }
                continue;
            }
            Ok(r) => r,
        };
        let mut ok = r.pass();
        let mut written = None;
        if let Some(dir) = &args.write_outputs {
            match write_outputs(&r, dir) {
                Ok(p) => written = Some(p.display().to_string()),
                Err(e) => {
                    eprintln!("error: could not write outputs of {}: {e}", r.path);
                    ok = false;
                }
            }
        }
        if args.json {
            let mut j = report_json(&r);
            j["written"] = json!(written);
            cases_json.push(j);
        } else {
            let verdict = if r.pass() { "PASS" } else { "FAIL" };
            println!(
                "{verdict} {} op={} dtype={} shape={:?} tol={:.1e}",
                r.path, r.op, r.dtype, r.shape, r.tolerance
            );
            for o in &r.outputs {
                println!(
                    "    {:<14} gpu: max_abs {:.3e} nmse {:.3e}{}   cpu ref: max_abs {:.3e} nmse {:.3e}{}",
                    o.name,
                    o.gpu.max_abs,
                    o.gpu.nmse,
                    mismatch_note(&o.gpu),
                    o.cpu.max_abs,
                    o.cpu.nmse,
                    mismatch_note(&o.cpu)
                );
            }
            if let Some(p) = &written {
                println!("    wrote {p}");
            }
        }
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if args.json {
        let j = json!({
            "adapter": super::info::adapter_json(&ctx),
            "cases": cases_json,
            "passed": passed,
            "failed": failed,
        });
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    } else {
        println!("check: {passed} passed, {failed} failed");
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
