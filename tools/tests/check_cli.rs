//! The `check` command as a user runs it: the binary on case files written here, its exit status
//! (0 passed, 1 a case failed its tolerance, 2 an input could not be used), the diagnosis when
//! the expected tensor is the imprecise side, `--against reference`, fused RoPE on `q` and `k`,
//! attention sinks in bf16, and `--json`; and `info --json` and every subcommand's `--help`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use llama_kernels::cases::write_case;
use llama_kernels::ops::rope::{Layout, Rope};
use llama_kernels::reference;
use llama_kernels::DType;

/// A deterministic value in [-1, 1) for index `i` of stream `seed`.
fn value(seed: u64, i: usize) -> f32 {
    let mut z =
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 31;
    z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 29;
    ((z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
}

fn values(seed: u64, n: usize) -> Vec<f32> {
    (0..n).map(|i| value(seed, i)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

type Tensors = Vec<(String, DType, Vec<usize>, Vec<f32>)>;

/// Write a case file and return its path.
fn case(name: &str, tensors: Tensors, meta: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llama-kernels-check-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.safetensors"));
    let m: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    write_case(&path, &tensors, &m).unwrap();
    path
}

/// Run `llama-kernels check ARGS`; (exit code, stdout).
fn check(args: &[&str], paths: &[&PathBuf]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
        .arg("check")
        .args(args)
        .args(paths)
        .output()
        .expect("run llama-kernels");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("exit code");
    eprintln!("exit {code}\n{stdout}\n{stderr}");
    (code, stdout)
}

/// An f32 rms_norm case whose expected output is the f64 reference times `1 + noise * U(-1,1)`.
fn rms_norm_case(name: &str, noise: f64) -> PathBuf {
    let (rows, n) = (3, 64);
    let x = values(1, rows * n);
    let w: Vec<f32> = values(2, n).iter().map(|v| 1.0 + 0.5 * v).collect();
    let (out, _) = reference::rms_norm::rms_norm(&f64s(&x), &f64s(&w), None, 1e-5, 0.0, DType::F32);
    let expected: Vec<f32> = out
        .iter()
        .enumerate()
        .map(|(i, &v)| (v * (1.0 + noise * value(3, i) as f64)) as f32)
        .collect();
    case(
        name,
        vec![
            ("x".into(), DType::F32, vec![rows, n], x),
            ("weight".into(), DType::F32, vec![n], w),
            ("expected.out".into(), DType::F32, vec![rows, n], expected),
        ],
        &[("op", "rms_norm"), ("eps", "1e-5")],
    )
}

#[test]
fn exit_0_when_every_case_passes() {
    let p = rms_norm_case("exact", 0.0);
    let (code, out) = check(&[], &[&p]);
    assert_eq!(code, 0);
    assert!(out.contains("PASS"), "{out}");
    assert!(
        out.contains("1 passed, 0 failed (0 could not be used)"),
        "{out}"
    );
}

#[test]
fn exit_1_and_a_diagnosis_when_the_expected_tensor_is_imprecise() {
    // Relative noise 1e-4 puts expected ~3e-9 NMSE away: above the f32 limit 1e-10, while the
    // GPU stays within ~1e-14 of the f64 reference.
    let p = rms_norm_case("imprecise", 1e-4);
    let (code, out) = check(&[], &[&p]);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL"), "{out}");
    assert!(
        out.contains("the expected tensor is the imprecise side"),
        "{out}"
    );
    assert!(out.contains("--against reference"), "{out}");
    // Judged against the f64 reference, the same file passes.
    let (code, out) = check(&["--against", "reference"], &[&p]);
    assert_eq!(code, 0);
    assert!(out.contains("judged against the f64 reference"), "{out}");
}

#[test]
fn exit_1_pointing_at_the_parameters_when_expected_is_far_off() {
    // 30% noise is no rounding error: the tool must not call it imprecision. Nor is 16%
    // (NMSE ~8.7e-3): under the cutoff that suits bf16 model outputs (1e-2), but no f32
    // computation is off by that much.
    for (name, noise) in [("far-off", 0.3), ("f32-far-off", 0.16)] {
        let p = rms_norm_case(name, noise);
        let (code, out) = check(&[], &[&p]);
        assert_eq!(code, 1);
        assert!(!out.contains("imprecise side"), "{out}");
        assert!(
            out.contains("more than f32 rounding explains (up to 6e-8)"),
            "{out}"
        );
    }
    // The cutoffs follow the unit roundoff: (2^12 u)^2, at most 1e-2.
    use llama_kernels::cases::imprecise_expected_max_nmse;
    assert_eq!(imprecise_expected_max_nmse(DType::F32), 2f64.powi(-24));
    assert_eq!(imprecise_expected_max_nmse(DType::F16), 1e-2);
    assert_eq!(imprecise_expected_max_nmse(DType::BF16), 1e-2);
}

#[test]
fn exit_2_when_an_input_cannot_be_used() {
    let dir = std::env::temp_dir().join(format!("llama-kernels-check-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file").unwrap();
    let (code, out) = check(&[], &[&garbage]);
    assert_eq!(code, 2);
    assert!(out.contains("ERROR"), "{out}");
    assert!(out.contains("not a valid safetensors file"), "{out}");
    // A usable failing case beside an unusable one: 2 wins, and both are reported.
    let failing = rms_norm_case("failing-beside-garbage", 1e-4);
    let missing = dir.join("does-not-exist.safetensors");
    let (code, out) = check(&[], &[&failing, &missing]);
    assert_eq!(code, 2);
    assert!(
        out.contains("0 passed, 2 failed (1 could not be used)"),
        "{out}"
    );
    // A bad argument is the same kind of failure.
    let ok = rms_norm_case("ok-bad-tol", 0.0);
    let (code, _) = check(&["--tol", "-1"], &[&ok]);
    assert_eq!(code, 2);
}

#[test]
fn rope_case_with_q_and_k_runs_the_fused_encode_qk() {
    // Llama-3-8B-like GQA heads, reduced: 4 q heads over 2 kv heads, head_dim 64, 5 tokens.
    let (seq, hq, hk, d) = (5, 4, 2, 64);
    let q = values(10, seq * hq * d);
    let k = values(11, seq * hk * d);
    let rope = Rope::new(500000.0, Layout::Half);
    let start = 1000;
    let (inv, attn) = rope.inv_freq(d, start + seq).unwrap();
    let pos: Vec<i64> = (start as i64..(start + seq) as i64).collect();
    let rot = |x: &[f32], h: usize| {
        f32s(&reference::rope::rope(
            &f64s(x),
            [1, seq, h, d],
            &pos,
            &inv,
            attn,
            Layout::Half,
            d,
        ))
    };
    let p = case(
        "rope-qk",
        vec![
            ("q".into(), DType::F32, vec![seq, hq, d], q.clone()),
            ("k".into(), DType::F32, vec![seq, hk, d], k.clone()),
            (
                "expected.q".into(),
                DType::F32,
                vec![seq, hq, d],
                rot(&q, hq),
            ),
            (
                "expected.k".into(),
                DType::F32,
                vec![seq, hk, d],
                rot(&k, hk),
            ),
        ],
        &[("op", "rope"), ("theta", "500000"), ("offset", "1000")],
    );
    let (code, out) = check(&[], &[&p]);
    assert_eq!(code, 0);
    assert!(out.contains("encode_qk"), "{out}");
    // A plain `x` case runs in place, on the vec4 path for these aligned heads.
    let px = case(
        "rope-x",
        vec![
            ("x".into(), DType::F32, vec![seq, hq, d], q.clone()),
            (
                "expected.out".into(),
                DType::F32,
                vec![seq, hq, d],
                rot(&q, hq),
            ),
        ],
        &[("op", "rope"), ("theta", "500000"), ("offset", "1000")],
    );
    let (code, out) = check(&[], &[&px]);
    assert_eq!(code, 0);
    assert!(out.contains("rope_vec4 in place"), "{out}");
    // q alone is not a case: it needs k (or use x).
    let bad = case(
        "rope-q-only",
        vec![
            ("q".into(), DType::F32, vec![seq, hq, d], q),
            (
                "expected.q".into(),
                DType::F32,
                vec![seq, hq, d],
                vec![0.0; seq * hq * d],
            ),
        ],
        &[("op", "rope")],
    );
    let (code, out) = check(&[], &[&bad]);
    assert_eq!(code, 2);
    assert!(out.contains("either x, or both q and k"), "{out}");
}

#[test]
fn attention_sinks_may_be_bf16() {
    // gpt-oss stores its sinks in bf16.
    let (q_len, kv_len, h, kvh, d) = (3, 7, 4, 2, 16);
    let q = values(20, q_len * h * d);
    let k = values(21, kv_len * kvh * d);
    let v = values(22, kv_len * kvh * d);
    let sinks: Vec<f32> = values(23, h)
        .iter()
        .map(|&s| half::bf16::from_f32(2.0 * s).to_f32())
        .collect();
    let dims = reference::attention::Dims {
        batch: 1,
        q_len,
        kv_len,
        n_heads: h,
        n_kv_heads: kvh,
        head_dim: d,
    };
    let want = reference::attention::attention(
        &f64s(&q),
        &f64s(&k),
        &f64s(&v),
        Some(&f64s(&sinks)),
        dims,
        &Default::default(),
    );
    let p = case(
        "attention-bf16-sinks",
        vec![
            ("q".into(), DType::F32, vec![q_len, h, d], q),
            ("k".into(), DType::F32, vec![kv_len, kvh, d], k),
            ("v".into(), DType::F32, vec![kv_len, kvh, d], v),
            ("sinks".into(), DType::BF16, vec![h], sinks),
            (
                "expected.out".into(),
                DType::F32,
                vec![q_len, h, d],
                f32s(&want),
            ),
        ],
        &[("op", "attention")],
    );
    let (code, out) = check(&[], &[&p]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn json_output_is_one_object_with_the_verdicts() {
    let good = rms_norm_case("json-good", 0.0);
    let bad = rms_norm_case("json-imprecise", 1e-4);
    let (code, out) = check(&["--json"], &[&good, &bad]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON object");
    assert_eq!(j["passed"], 1);
    assert_eq!(j["failed"], 1);
    assert_eq!(j["cases"][0]["pass"], true);
    assert_eq!(j["cases"][1]["pass"], false);
    let diagnosis = j["cases"][1]["outputs"][0]["diagnosis"].as_str().unwrap();
    assert!(diagnosis.contains("imprecise side"), "{diagnosis}");
    assert!(
        j["cases"][1]["outputs"][0]["gpu_vs_reference"]["nmse"]
            .as_f64()
            .unwrap()
            < 1e-12
    );
}

#[test]
fn info_json_reports_the_adapter_and_the_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
        .args(["info", "--json"])
        .output()
        .expect("run llama-kernels");
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert!(!j["name"].as_str().unwrap_or("").is_empty(), "{j}");
    assert!(
        j["limits"]["max_compute_workgroup_storage_size"]
            .as_u64()
            .unwrap()
            > 0
    );
    let variants = j["variants"].as_array().expect("variants");
    assert!(variants.iter().any(|v| v["kernel"] == "rms_norm"), "{j}");
    assert!(variants.iter().any(|v| v["kernel"] == "attention"), "{j}");
    // Every subcommand has --help.
    for sub in ["selftest", "info", "check", "bench"] {
        let out = Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
            .args([sub, "--help"])
            .output()
            .expect("run llama-kernels");
        assert!(out.status.success(), "{sub} --help: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub}"
        );
    }
}

/// `info --device PRESET` prints the attention planner's choices for a described device without
/// an adapter: the GPU presets get the subgroup decode and prefill, WebGPU's defaults the tile
/// decode and prefill with 16-key tiles, lavapipe the CPU kernels, with the launch geometry of
/// the decode and GPU prefill rows; `--json` gives the same as records.
#[test]
fn info_for_a_described_device() {
    let info = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
            .arg("info")
            .args(args)
            .output()
            .expect("run llama-kernels");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let nvidia = info(&["--device", "nvidia"]);
    assert!(nvidia.contains("Llama-3-8B decode, 32k keys"), "{nvidia}");
    assert!(nvidia.contains("DecodeSubgroup kr 4"), "{nvidia}");
    // The decode launch geometry of Llama-3-8B at 4k keys (pinned in the planner's tests).
    assert!(
        nvidia.contains(
            "geometry: 128 workgroups x 128 invocations, 2080 B workgroup memory, 88 registers/lane, 16 B loads, 16 lanes/row, 16 splits; merge 32 x 128"
        ),
        "{nvidia}"
    );
    // The subgroup prefill, with its launch geometry for Llama-3-8B at 2k.
    assert!(
        nvidia.contains(
            "attention_prefill_subgroup.wgsl:attn_prefill_sg\n    geometry: 1024 workgroups x 128 invocations, 32768 B workgroup memory, 184 registers/lane (64 accumulators), 16 B loads, 8 lanes/row, 64 rows/workgroup, 1 splits; merge 0 x 0"
        ),
        "{nvidia}"
    );
    let web = info(&["--device", "webgpu-default"]);
    assert!(
        web.contains(
            "attention_prefill_hd128.wgsl:attn_prefill\n    geometry: 1024 workgroups x 16 invocations, 16384 B workgroup memory, 1280 registers/lane (512 accumulators), 4 B loads, 1 lanes/row, 64 rows/workgroup, 1 splits; merge 0 x 0"
        ),
        "{web}"
    );
    assert!(
        web.contains("Decode kr 1 rows/wg 4 lanes 8 splits 64 chunk 64 bk 16"),
        "{web}"
    );
    let cpu = info(&["--device", "lavapipe"]);
    assert!(cpu.contains("DecodeKeys kr 4"), "{cpu}");
    assert!(cpu.contains("attn_prefill_keys"), "{cpu}");
    let j: serde_json::Value =
        serde_json::from_str(&info(&["--device", "amd", "--json"])).expect("info --json is JSON");
    let rows = j["attention"].as_array().expect("attention rows");
    assert_eq!(rows[0]["kind"], "DecodeSubgroup");
    assert_eq!(rows[0]["lanes"], 1);
    assert_eq!(rows[1]["geometry"]["splits"], 60);
    assert_eq!(rows[1]["geometry"]["bytes_per_load"], 16);
    assert_eq!(rows[2]["kind"], "PrefillSubgroup");
    assert_eq!(rows[2]["geometry"]["registers_per_lane"], 184);
    assert_eq!(rows[2]["geometry"]["bytes_per_load"], 16);
    assert!(rows
        .iter()
        .all(|r| r["pipelines"].as_array().is_some_and(|p| !p.is_empty())));
}
