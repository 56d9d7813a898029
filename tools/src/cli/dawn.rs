//! `llama-kernels dawn` (hidden): the Rust side of the check that runs the kernels in a second
//! WebGPU implementation, Dawn (`scripts/dawn-check.sh`, docs/browser.md).
//!
//! - `variants DIR`: every variant of [`Shader::ALL`] as Dawn needs it to create the pipeline:
//!   the spec-correct module text ([`PipelineKey::source`]), entry point, override constants,
//!   bindings, the features it needs, and whether the attention planner picks it for a device
//!   with WebGPU's default limits ([`DeviceDesc::webgpu_default`]) or for any described device
//!   ([`DeviceDesc::presets`]).
//! - `capture DIR [--only FAMILIES]`: the self-test's kernel rows, on Llama-3.2-1B's layout
//!   ([`MODEL`]), with a [`Capture`] set: every launch, read and write recorded to `DIR`, nothing
//!   run.
//! - `judge DIR`: the same rows again, each read answered by what Dawn read at the same point
//!   (`DIR/read-N.bin`, written by `scripts/dawn/check.mjs replay DIR`), judged against the f64
//!   reference at the self-test's tolerances.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use llama_kernels::context::Capture;
use llama_kernels::ops::attention::{planned_variants, tile_v4_for, DeviceDesc, HEAD_DIMS};
use llama_kernels::pipeline::{reflect, Access, PipelineKey, Shader, Slot};
use llama_kernels::Context;
use serde_json::{json, Value};

use super::selftest::{self, Model, LLAMA32_1B};
use super::Row;

/// The layout the rows take: head_dim 64, whose attention specialisations compile in a fraction
/// of head_dim 128's time on lavapipe under Dawn (the self-test itself runs Llama-3-8B's).
const MODEL: Model = LLAMA32_1B;

#[derive(clap::Subcommand)]
pub enum DawnCommand {
    /// Write every variant's module text, entry point, constants and bindings to DIR.
    Variants { dir: PathBuf },
    /// Record the self-test's kernel launches to DIR instead of running them.
    Capture {
        dir: PathBuf,
        #[command(flatten)]
        rows: RowFilter,
    },
    /// Judge Dawn's replies in DIR against the f64 reference.
    Judge {
        dir: PathBuf,
        #[command(flatten)]
        rows: RowFilter,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Which self-test rows to capture (the judge must be given the same).
#[derive(clap::Args)]
pub struct RowFilter {
    /// Only the rows whose name (family, then dtype: `attention decode f16`, `attention decode,
    /// q4_0 KV cache f32`) starts with one of these (`;`-separated), e.g. `rms_norm;rope f32`;
    /// all by default.
    #[arg(long, value_delimiter = ';')]
    only: Vec<String>,
}

impl RowFilter {
    fn keeps(&self, row: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| row.starts_with(p.as_str()))
    }
}

pub fn run(cmd: &DawnCommand) -> ExitCode {
    let result = match cmd {
        DawnCommand::Variants { dir } => variants(dir).map(|n| {
            println!("dawn: {n} variants written to {}", dir.display());
            ExitCode::SUCCESS
        }),
        DawnCommand::Capture { dir, rows } => capture(dir, None, rows).map(|(_, n)| {
            println!("dawn: {n} events captured to {}", dir.display());
            ExitCode::SUCCESS
        }),
        DawnCommand::Judge { dir, rows, json } => judge(dir, rows, *json),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// The features a module's `enable` directives ask for, by WebGPU's names.
fn features(source: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for line in source.lines().map(str::trim) {
        match line {
            "enable f16;" => out.push("shader-f16"),
            "enable subgroups;" => out.push("subgroups"),
            _ => {}
        }
    }
    out
}

fn variants(dir: &Path) -> Result<usize, String> {
    let modules_dir = dir.join("modules");
    std::fs::create_dir_all(&modules_dir).map_err(|e| e.to_string())?;
    let planned_on = |dev: &DeviceDesc| -> HashSet<PipelineKey> {
        planned_variants(dev, HEAD_DIMS.iter().map(|&h| h as usize))
            .iter()
            .flat_map(|v| v.keys())
            .collect()
    };
    let planned = planned_on(&DeviceDesc::webgpu_default());
    let planned_somewhere: HashSet<PipelineKey> = DeviceDesc::presets()
        .iter()
        .flat_map(|(_, dev)| planned_on(dev))
        .collect();
    let attention: HashSet<&str> = llama_kernels::ops::attention::MODULES
        .iter()
        .map(|s| s.name)
        .collect();
    let default_tile = tile_v4_for(DeviceDesc::webgpu_default().max_workgroup_storage);
    let mut modules: HashMap<String, usize> = HashMap::new();
    let mut reflected: HashMap<(usize, &str), Vec<Slot>> = HashMap::new();
    let mut out = Vec::new();
    for shader in Shader::ALL {
        for key in shader.variants() {
            let source = key.source();
            let next = modules.len();
            let index = *modules.entry(source.clone()).or_insert(next);
            if index == next {
                let path = modules_dir.join(format!("{index}-{}", shader.name));
                std::fs::write(&path, &source).map_err(|e| format!("{path:?}: {e}"))?;
            }
            // naga parses a module in milliseconds, thousands of variants in a minute: once per
            // module and entry point.
            let slots = match reflected.get(&(index, key.entry_point)) {
                Some(s) => s,
                None => {
                    let (slots, _) = reflect(&source, key.entry_point)
                        .map_err(|e| format!("{} {}: {e}", shader.name, key.entry_point))?;
                    reflected.entry((index, key.entry_point)).or_insert(slots)
                }
            };
            let needs = features(&source);
            // On a device with WebGPU's defaults and no feature: the attention planner's picks;
            // of every other op, the variants that need no feature, with the K/V tile the paged
            // planner sizes for the device's workgroup memory.
            let default_device = if attention.contains(shader.name) {
                planned.contains(&key)
            } else {
                needs.is_empty() && key.constant("TILE_V4").is_none_or(|t| t == default_tile)
            };
            // Picked by the attention planner on some described device (DeviceDesc::presets).
            let picked = !attention.contains(shader.name) || planned_somewhere.contains(&key);
            out.push(json!({
                "shader": shader.name,
                "module": format!("modules/{index}-{}", shader.name),
                "entry_point": key.entry_point,
                "constants": key.overrides().into_iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "key": format!("{:?}", key.constants),
                "bindings": slots.iter().map(|s| json!({"binding": s.binding, "access": match s.access {
                    Access::Uniform => "uniform", Access::Read => "read", Access::ReadWrite => "read_write",
                }})).collect::<Vec<_>>(),
                "features": needs,
                "default_device": default_device,
                "picked": picked,
            }));
        }
    }
    let n = out.len();
    let path = dir.join("variants.json");
    let text = serde_json::to_string(&Value::Array(out)).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{path:?}: {e}"))?;
    Ok(n)
}

/// The self-test's kernel rows on a context whose capture records to `dir`, answered from
/// `replies` when given; the rows, and the number of events.
fn capture(
    dir: &Path,
    replies: Option<&Path>,
    rows: &RowFilter,
) -> Result<(Vec<Row>, usize), String> {
    let ctx = Context::new().map_err(|e| e.to_string())?;
    let capture = Capture::new(dir, replies).map_err(|e| e.to_string())?;
    ctx.set_capture(capture).map_err(|e| e.to_string())?;
    let rows = selftest::run_some(&ctx, &MODEL, |row| rows.keeps(row), |_| {});
    let n = ctx
        .capture()
        .ok_or("the capture is gone")?
        .finish()
        .map_err(|e| e.to_string())?;
    Ok((rows, n))
}

fn judge(dir: &Path, filter: &RowFilter, json: bool) -> Result<ExitCode, String> {
    let (mut rows, _) = capture(&dir.join("judge"), Some(dir), filter)?;
    // Nothing ran in this process: its timings are no one's.
    for r in &mut rows {
        (r.prepare, r.first_ms, r.gpu_ms) = (None, None, None);
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    if json {
        let j =
            json!({"rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(), "failed": failed});
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
    } else {
        println!("dawn: the self-test's rows on {}'s layout", MODEL.name);
        print!("{}", super::table(&rows, "ms"));
        println!(
            "dawn: {} of {} self-test rows passed in Dawn{}",
            rows.len() - failed,
            rows.len(),
            if failed == 0 { "" } else { " -- FAILED" }
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
