//! `cargo bench`: the same harness as `llama-kernels bench`.
//!
//! ```text
//! cargo bench --bench kernels -- --quick --json bench.json --plot bench.svg
//! cargo bench --bench kernels -- rms_norm        # a positional NAME works like --filter
//! ```

use clap::Parser;
use llama_kernels::bench::{run, BenchArgs};

#[derive(Parser)]
#[command(about = "Benchmark every kernel against the device's copy ceilings")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Same as --filter.
    name: Option<String>,
}

fn main() {
    let mut cli = Cli::parse();
    if cli.args.filter.is_none() {
        cli.args.filter = cli.name.take();
    }
    if let Err(e) = run(&cli.args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
