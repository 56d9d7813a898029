//! `llama-kernels info` (and the self-test's header): the adapter, the features and limits the
//! kernels read, and which variant each kernel family will run on representative shapes.

use llama_kernels::ops::attention::{self, Attention, Dims};
use llama_kernels::ops::rms_norm::{self, RmsNorm, Strategy};
use llama_kernels::ops::rope::{qkv_views, Layout, Positions, Rope};
use llama_kernels::{Context, DType, Result};
use serde_json::{json, Value};

use super::selftest::plan_name;

/// One decision of the dispatcher: a kernel family on a shape, the variant per dtype.
pub struct Choice {
    pub kernel: String,
    pub shape: String,
    /// In the order of [`DType::ALL`].
    pub variants: Vec<String>,
}

/// Llama-3-8B head layout, as in the self-test.
const N_HEADS: usize = 32;
const N_KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const HIDDEN: usize = 4096;

fn attention_choice(ctx: &Context, kernel: &str, q_len: usize, kv_len: usize) -> Result<Choice> {
    let d = Dims {
        batch: 1,
        q_len,
        kv_len,
        n_heads: N_HEADS,
        n_kv_heads: N_KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let variants = DType::ALL
        .iter()
        .map(|&dt| Attention::default().plan(ctx, d, dt).map(|p| plan_name(&p)))
        .collect::<Result<_>>()?;
    Ok(Choice {
        kernel: kernel.into(),
        shape: format!("q_len {q_len}, kv_len {kv_len}"),
        variants,
    })
}

/// The variants chosen on `ctx` for the self-test's shapes and for longer sequences where the
/// choice changes (many rows, long prefill, long decode).
pub fn choices(ctx: &Context) -> Result<Vec<Choice>> {
    let mut out = Vec::new();
    for rows in [4, rms_norm::ROWS_PER_INVOCATION_MIN] {
        let mut variants = Vec::new();
        for dt in DType::ALL {
            let x = ctx.empty(&[rows, HIDDEN], dt)?;
            let w = ctx.empty(&[HIDDEN], dt)?;
            let v = RmsNorm::new(1e-5).variant(ctx, &x, &w, &x, None, Strategy::Auto)?;
            variants.push(v.name());
        }
        out.push(Choice {
            kernel: "rms_norm".into(),
            shape: format!("{rows}x{HIDDEN}"),
            variants,
        });
    }
    let rope = Rope::new(500000.0, Layout::Half);
    let tokens = 8;
    let (mut plain, mut fused) = (Vec::new(), Vec::new());
    for dt in DType::ALL {
        let x = ctx.empty(&[tokens, N_HEADS, HEAD_DIM], dt)?;
        let v = rope.variant(ctx, &x, None, None, Positions::Start(0))?;
        plain.push(v.name());
        let buf = ctx.empty(&[tokens, (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM], dt)?;
        let (q, k, _) = qkv_views(buf.buffer(), 0, tokens, N_HEADS, N_KV_HEADS, HEAD_DIM, dt);
        let v = rope.variant(ctx, &q, Some(&k), None, Positions::Start(0))?;
        fused.push(v.name() + ", one dispatch");
    }
    out.push(Choice {
        kernel: "rope in place".into(),
        shape: format!("{tokens}x{N_HEADS}x{HEAD_DIM}"),
        variants: plain,
    });
    out.push(Choice {
        kernel: "rope q+k (fused qkv)".into(),
        shape: format!("{tokens} tokens"),
        variants: fused,
    });
    out.push(attention_choice(ctx, "attention", 16, 16)?);
    out.push(attention_choice(ctx, "attention", 2048, 2048)?);
    out.push(attention_choice(ctx, "attention", 1, 1100)?);
    out.push(attention_choice(ctx, "attention", 1, 32768)?);
    Ok(out)
}

/// What the kernels do on this adapter where it lacks something or is a CPU device.
pub fn fallbacks(ctx: &Context) -> Vec<String> {
    let caps = ctx.caps();
    let mut notes = vec![if llama_kernels::ops::rms_norm::native_f16_wanted(ctx) {
        "f16/bf16: stored packed in u32 and converted with integer code; RMSNorm and the subgroup decode read 16-byte aligned f16 views natively (SHADER_F16)".to_string()
    } else {
        format!(
            "f16/bf16: stored packed in u32 and converted with integer code (native SHADER_F16 {}, not used on this adapter)",
            if caps.shader_f16 { "available" } else { "absent" }
        )
    }];
    notes.push(if caps.timestamps {
        "timing: GPU timestamp queries".into()
    } else {
        "timing: no timestamp queries; wall time of submit + wait instead".into()
    });
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        notes.push(format!(
            "CPU adapter: RMSNorm runs one invocation per row from {} rows on (workgroup {}); \
             decode attention uses decode_keys on 16-byte aligned K/V rows; prefill switches to \
             split-KV passes past {} keys per invocation (llvmpipe's loop cap)",
            rms_norm::ROWS_PER_INVOCATION_MIN,
            rms_norm::rows_workgroup(ctx),
            attention::loop_cap_keys(ctx, HEAD_DIM).unwrap_or(0)
        ));
    }
    notes
}

/// The adapter and its capabilities as JSON.
pub fn adapter_json(ctx: &Context) -> Value {
    let i = ctx.adapter_info();
    let l = ctx.limits();
    let c = ctx.caps();
    json!({
        "name": i.name,
        "backend": format!("{:?}", i.backend),
        "device_type": format!("{:?}", i.device_type),
        "driver": i.driver,
        "driver_info": i.driver_info,
        "features": {
            "shader_f16": c.shader_f16,
            "subgroups": c.subgroups,
            "timestamps": c.timestamps,
        },
        "subgroup_size": [i.subgroup_min_size, i.subgroup_max_size],
        "limits": {
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_buffer_size": l.max_buffer_size,
            "min_storage_buffer_offset_alignment": l.min_storage_buffer_offset_alignment,
            "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        },
        "fallbacks": fallbacks(ctx),
    })
}

/// The adapter and its capabilities as text.
pub fn adapter_text(ctx: &Context) -> String {
    let i = ctx.adapter_info();
    let l = ctx.limits();
    let c = ctx.caps();
    let mut s = format!(
        "adapter: {} ({:?}, {:?}; driver {} {})\n",
        i.name, i.backend, i.device_type, i.driver, i.driver_info
    );
    s += &format!(
        "features: shader_f16 {}, subgroups {} (size {}..{}), timestamps {}\n",
        c.shader_f16, c.subgroups, i.subgroup_min_size, i.subgroup_max_size, c.timestamps
    );
    s += &format!(
        "limits: workgroup memory {} B (attention K/V tiles), storage binding {} MiB (largest view), \
         offset alignment {} B (binding windows), {} workgroups per dimension (2-D grids)\n",
        l.max_compute_workgroup_storage_size,
        l.max_storage_buffer_binding_size >> 20,
        l.min_storage_buffer_offset_alignment,
        l.max_compute_workgroups_per_dimension
    );
    for f in fallbacks(ctx) {
        s += &format!("- {f}\n");
    }
    s
}

/// The choices as text, one line per shape with the variant of each dtype.
pub fn choices_text(choices: &[Choice]) -> String {
    let mut s = String::from("variants chosen (f32 / f16 / bf16):\n");
    for c in choices {
        let same = c.variants.windows(2).all(|w| w[0] == w[1]);
        let v = if same {
            c.variants.first().cloned().unwrap_or_default()
        } else {
            c.variants.join(" / ")
        };
        s += &format!("  {:<22} {:<26} {v}\n", c.kernel, c.shape);
    }
    s
}

/// The choices as JSON.
pub fn choices_json(choices: &[Choice]) -> Value {
    Value::Array(
        choices
            .iter()
            .map(|c| {
                let per_dtype: serde_json::Map<String, Value> = DType::ALL
                    .iter()
                    .zip(&c.variants)
                    .map(|(d, v)| (d.name().to_string(), json!(v)))
                    .collect();
                json!({ "kernel": c.kernel, "shape": c.shape, "variant": per_dtype })
            })
            .collect(),
    )
}

/// The attention planner's choice on real model shapes for `dev` (`attention::choice_table`),
/// after the rule it applies, as text.
pub fn choice_table_text(dev: &llama_kernels::ops::attention::DeviceDesc) -> String {
    use llama_kernels::ops::attention::choice_table;
    let mut s = String::from("\nattention planner (the rule: src/ops/attention/choice.md):\n");
    for row in choice_table(dev) {
        s += &format!("- {row}\n");
    }
    s
}

/// [`choice_table_text`] as JSON.
pub fn choice_table_json(dev: &llama_kernels::ops::attention::DeviceDesc) -> Value {
    use llama_kernels::ops::attention::choice_table;
    Value::Array(
        choice_table(dev)
            .iter()
            .map(|row| {
                let d = row.dims;
                let mut j = json!({
                    "shape": row.shape,
                    "q_len": d.q_len, "kv_len": d.kv_len, "n_heads": d.n_heads,
                    "n_kv_heads": d.n_kv_heads, "head_dim": d.head_dim,
                    "dtype": row.dtype.name(),
                    "pipelines": row.pipelines(),
                });
                match &row.plan {
                    Ok(p) => {
                        j["kind"] = json!(format!("{:?}", p.variant.kind));
                        j["kr"] = json!(p.variant.kr);
                        j["rows_per_wg"] = json!(p.rows_per_wg);
                        j["lanes"] = json!(p.lanes);
                        j["splits"] = json!(p.splits);
                        j["chunk"] = json!(p.chunk);
                        j["bk"] = json!(p.bk);
                        if let Some(g) = row.decode_geometry() {
                            j["geometry"] = json!({
                                "workgroups": g.workgroups,
                                "invocations": g.invocations,
                                "workgroup_bytes": g.workgroup_bytes,
                                "registers_per_lane": g.registers_per_lane,
                                "bytes_per_load": g.bytes_per_load,
                                "lanes_per_row": g.lanes_per_row,
                                "splits": g.splits,
                                "merge_workgroups": g.merge_workgroups,
                                "merge_invocations": g.merge_invocations,
                            });
                        }
                        if let Some(g) = row.prefill_geometry() {
                            j["geometry"] = json!({
                                "workgroups": g.workgroups,
                                "invocations": g.invocations,
                                "workgroup_bytes": g.workgroup_bytes,
                                "registers_per_lane": g.registers_per_lane,
                                "accumulators_per_lane": g.accumulators_per_lane,
                                "bytes_per_load": g.bytes_per_load,
                                "lanes_per_row": g.lanes_per_row,
                                "rows_per_workgroup": g.rows_per_workgroup,
                                "splits": g.splits,
                                "merge_workgroups": g.merge_workgroups,
                                "merge_invocations": g.merge_invocations,
                            });
                        }
                    }
                    Err(e) => j["error"] = json!(e),
                }
                j
            })
            .collect(),
    )
}
