//! The `llama-kernels` command. With no arguments it runs the self-test: it reports the adapter,
//! runs every kernel family in every dtype against the f64 reference, then one committed tiny
//! model. `info` describes the adapter, `check` runs tensors dumped from your own model, and
//! `bench` measures the kernels against the device's copy ceilings.

mod cli;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use llama_kernels::Context;

use cli::{info, progress, selftest, tiny_model, Row};

#[derive(Parser)]
#[command(
    name = "llama-kernels",
    version,
    about = "GPU kernels for RMSNorm, RoPE and GQA attention (WGSL, wgpu)",
    long_about = "GPU kernels for RMSNorm, RoPE and GQA attention (WGSL, wgpu).\n\n\
        With no subcommand, runs the self-test (`selftest`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Report the adapter, run every kernel family in every dtype on Llama-3-8B's head layout
    /// against the f64 reference, then one committed tiny model. The default. Exits non-zero
    /// if anything fails.
    Selftest {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Describe the adapter: features and limits the kernels use, and the variant each kernel
    /// family will run on representative shapes.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Print the attention planner's choices for a described device instead of this
        /// adapter (no adapter needed): the launch geometry it would get.
        #[arg(long, value_enum)]
        device: Option<Preset>,
    },
    /// Run case files (safetensors with inputs, parameters and expected outputs dumped from
    /// your own model) on the GPU and the f64 reference and judge them.
    Check(cli::check::CheckArgs),
    /// Benchmark every kernel against the device's own copy ceilings, measured in the same run.
    Bench(llama_kernels::bench::BenchArgs),
    /// The Rust side of the Dawn check (scripts/dawn-check.sh, docs/browser.md).
    #[command(subcommand, hide = true)]
    Dawn(cli::dawn::DawnCommand),
}

fn main() -> ExitCode {
    quiet_device_select_on_headless();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Selftest { json: false }) {
        Command::Selftest { json } => run_selftest(json),
        Command::Info { json, device } => match device {
            Some(preset) => run_info_described(json, preset),
            None => run_info(json),
        },
        Command::Check(args) => cli::check::run(&args),
        Command::Dawn(cmd) => cli::dawn::run(&cmd),
        Command::Bench(args) => match llama_kernels::bench::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// On a machine with no display (CI, a server, a container), Mesa's implicit Vulkan layer
/// `VK_LAYER_MESA_device_select` asks Wayland for the compositor's GPU, because wgpu enables
/// `VK_KHR_wayland_surface` on every instance, and libwayland then prints `error: XDG_RUNTIME_DIR
/// is invalid or not set in the environment.` twice, an alarming line for nothing. With no
/// display there is no compositor GPU to find, so the layer is switched off (`NODEVICE_SELECT`,
/// its documented switch) unless the user is choosing a device through it (`MESA_VK_DEVICE_SELECT`,
/// `DRI_PRIME`) or set the switch already. Adapters are still chosen as always (`WGPU_BACKEND`,
/// `WGPU_ADAPTER_NAME`, the power preference); only the layer's display-based ordering is skipped.
/// Called first in `main`, before any thread exists, as `set_var` requires.
fn quiet_device_select_on_headless() {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let runtime_dir_ok =
        std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir());
    let headless = !set("DISPLAY") && !set("WAYLAND_DISPLAY") && !runtime_dir_ok;
    let user_choice = ["NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if headless && !user_choice {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn context() -> Result<Context, ExitCode> {
    Context::new().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// A described device for `info --device`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Preset {
    /// NVIDIA (subgroup 32, 48 KiB+ workgroup memory, SHADER_F16).
    Nvidia,
    /// AMD GCN/CDNA (subgroup 64).
    Amd,
    /// Apple (subgroup 32).
    Apple,
    /// WebGPU's default limits (16 KiB workgroup memory, no subgroups).
    WebgpuDefault,
    /// Mesa's lavapipe (a CPU adapter, subgroup 8).
    Lavapipe,
}

fn run_info_described(json: bool, preset: Preset) -> ExitCode {
    use llama_kernels::ops::attention::DeviceDesc;
    let (name, dev) = match preset {
        Preset::Nvidia => ("nvidia", DeviceDesc::nvidia()),
        Preset::Amd => ("amd", DeviceDesc::amd()),
        Preset::Apple => ("apple", DeviceDesc::apple()),
        Preset::WebgpuDefault => ("webgpu-default", DeviceDesc::webgpu_default()),
        Preset::Lavapipe => ("lavapipe", DeviceDesc::lavapipe()),
    };
    if json {
        let j = serde_json::json!({"device": name, "desc": format!("{dev:?}"), "attention": info::choice_table_json(&dev)});
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    } else {
        println!("described device: {name} {dev:?}");
        print!("{}", info::choice_table_text(&dev));
    }
    ExitCode::SUCCESS
}

fn run_info(json: bool) -> ExitCode {
    let ctx = match context() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let choices = match info::choices(&ctx) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dev = llama_kernels::ops::attention::DeviceDesc::of(&ctx);
    if json {
        let mut j = info::adapter_json(&ctx);
        j["variants"] = info::choices_json(&choices);
        j["attention"] = info::choice_table_json(&dev);
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    } else {
        print!("{}", info::adapter_text(&ctx));
        print!("{}", info::choices_text(&choices));
        print!("{}", info::choice_table_text(&dev));
    }
    ExitCode::SUCCESS
}

fn run_selftest(json: bool) -> ExitCode {
    let ctx = match context() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !json {
        print!("{}", info::adapter_text(&ctx));
        println!();
    }
    let start = Instant::now();
    let bar = progress::bar(selftest::kernel_rows() as u64 + 1);
    let rows = selftest::run(&ctx, |name| {
        bar.set_message(name.to_string());
        bar.inc(1);
    });
    bar.set_message("tiny model");
    let tiny = tiny_model::run_tiny_model(&ctx);
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let timer = selftest::Timer::new(&ctx);
    let all: Vec<&Row> = rows.iter().chain(tiny.iter()).collect();
    let failed = all.iter().filter(|r| !r.pass).count();
    if json {
        let j = serde_json::json!({
            "adapter": info::adapter_json(&ctx),
            "timing": timer.header(),
            "rows": all.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            "tiny_model": tiny.is_some(),
            "failed": failed,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    } else {
        let owned: Vec<Row> = all.iter().map(|r| (*r).clone()).collect();
        print!("{}", cli::table(&owned, timer.header()));
        if tiny.is_none() {
            println!("tiny model: not run (models/llama3 is not next to this binary's sources)");
        }
        println!(
            "selftest: {} of {} passed in {seconds:.1} s{}",
            all.len() - failed,
            all.len(),
            if failed == 0 { "" } else { " -- FAILED" }
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
