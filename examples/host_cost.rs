//! Host cost of recording: CPU microseconds per `encode` call of each op (record only, nothing
//! submitted), on warm pipeline caches, beside the floor: what wgpu alone costs for one bind group
//! plus one dispatch of a trivial cached pipeline, and one 32-layer Llama-3-8B decode step. The
//! measurement is the benchmark's (`llama_kernels::bench::host`, also in `bench`'s output and
//! JSON); this prints it alone.
//!
//! ```sh
//! cargo run --release --example host_cost
//! # one op (variant names as printed; the floor always runs), fewer calls, e.g. under callgrind:
//! cargo run --release --example host_cost -- rms_norm --batches 1 --per-batch 1000
//! ```

#[cfg(feature = "bench")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use llama_kernels::bench::host;
    let mut settings = host::HostSettings::default();
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut count = |name: &str| -> Result<usize, Box<dyn std::error::Error>> {
            let v = args.next().ok_or(format!("{name} needs a number"))?;
            Ok(v.parse().map_err(|e| format!("{name} {v}: {e}"))?)
        };
        match a.as_str() {
            "--batches" => settings.batches = count("--batches")?,
            "--per-batch" => settings.per_batch = count("--per-batch")?,
            "--steps-per-batch" => settings.steps_per_batch = count("--steps-per-batch")?,
            "-h" | "--help" => {
                println!(
                    "usage: host_cost [VARIANT ...] [--batches N] [--per-batch N] [--steps-per-batch N]"
                );
                return Ok(());
            }
            _ => only.push(a),
        }
    }
    let ctx = llama_kernels::Context::new()?;
    println!("adapter: {}", ctx.describe());
    let records = host::measure(&ctx, &settings, |v| {
        only.is_empty() || only.iter().any(|o| o == v)
    })?;
    print!("{}", host::table(&records));
    Ok(())
}

#[cfg(not(feature = "bench"))]
fn main() {
    eprintln!("host_cost needs the `bench` feature (on by default)");
}
