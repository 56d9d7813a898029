//! The `llama-kernels` command: check kernels against tensors dumped from your own model,
//! benchmark them against the device's ceilings, and describe the adapter.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llama_kernels::cases::{write_outputs, CaseFile};
use llama_kernels::Context;

#[derive(Parser)]
#[command(
    name = "llama-kernels",
    version,
    about = "GPU kernels for RMSNorm, RoPE and GQA attention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run case files (safetensors) on the GPU and the f64 reference and compare with their
    /// expected outputs. Exits non-zero if any case fails or cannot be read.
    Check {
        /// NMSE tolerance (default: per op and dtype).
        #[arg(long)]
        tol: Option<f64>,
        /// Write the GPU outputs of each case to DIR/<case file name>.
        #[arg(long, value_name = "DIR")]
        write_outputs: Option<PathBuf>,
        /// Case files.
        #[arg(required = true)]
        cases: Vec<PathBuf>,
    },
    /// Benchmark every kernel against the device's own copy ceilings, measured in the same run.
    Bench(llama_kernels::bench::BenchArgs),
    /// Print the adapter the kernels would run on.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => match Context::new() {
            Ok(ctx) => {
                println!("{}", ctx.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match llama_kernels::bench::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            tol,
            write_outputs: out_dir,
            cases,
        } => check(tol, out_dir, &cases),
    }
}

fn check(tol: Option<f64>, out_dir: Option<PathBuf>, cases: &[PathBuf]) -> ExitCode {
    if let Some(t) = tol {
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
    println!("adapter: {}", ctx.describe());
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in cases {
        let report = CaseFile::load(path).and_then(|c| c.run(&ctx, tol));
        match report {
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e}", path.display());
            }
            Ok(r) => {
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
                if let Some(dir) = &out_dir {
                    match write_outputs(&r, dir) {
                        Ok(p) => println!("    wrote {}", p.display()),
                        Err(e) => {
                            println!("    could not write outputs: {e}");
                            failed += 1;
                            continue;
                        }
                    }
                }
                if r.pass() {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
    }
    println!("check: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn mismatch_note(c: &llama_kernels::compare::Comparison) -> String {
    let mut s = String::new();
    if c.nan_mismatch > 0 {
        s += &format!(" ({} NaN mismatches)", c.nan_mismatch);
    }
    if c.inf_mismatch > 0 {
        s += &format!(" ({} inf mismatches)", c.inf_mismatch);
    }
    s
}
