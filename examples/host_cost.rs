//! Host cost of recording: CPU microseconds per `encode` call of each op (record only, nothing
//! submitted), on warm pipeline caches, beside the floor: what wgpu alone costs for one bind group
//! plus one dispatch of a trivial cached pipeline, and one 32-layer Llama-3-8B decode step. The
//! measurement is the benchmark's (`llama_kernels::bench::host`, also in `bench`'s output and
//! JSON); this prints it alone.
//!
//! ```sh
//! cargo run --release --example host_cost
//! ```

#[cfg(feature = "bench")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use llama_kernels::bench::host;
    let ctx = llama_kernels::Context::new()?;
    println!("adapter: {}", ctx.describe());
    let records = host::measure(&ctx, &host::HostSettings::default(), |_| true)?;
    print!("{}", host::table(&records));
    Ok(())
}

#[cfg(not(feature = "bench"))]
fn main() {
    eprintln!("host_cost needs the `bench` feature (on by default)");
}
