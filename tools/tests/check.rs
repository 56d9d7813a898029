//! `llama-kernels check`: the committed case files (rms_norm, attention, paged_attention and
//! rope, written by NumPy in `cases/gen_*.py`) pass through the command and the library, outputs
//! are written, a wrong expected output fails, and malformed or mistyped case files of every op
//! are refused with a clear error and a non-zero exit.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use llama_kernels::cases::{write_case, CaseFile};
use llama_kernels::{DType, Error};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
}

/// A safetensors file by hand: header JSON (with `__metadata__`) + raw data.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn parse_err(bytes: &[u8]) -> String {
    match CaseFile::parse("bad.safetensors", bytes) {
        Ok(_) => panic!("malformed file was accepted"),
        Err(e) => {
            assert!(matches!(e, Error::Case { .. }), "{e:?}");
            e.to_string()
        }
    }
}

/// Every committed case passes through the command in one run (each op's cases are there), and
/// again through the library for rope; outputs are written; the reports come in the order given.
/// The paged cases cover both page layouts and more than one dtype, with the GPU within the
/// tolerance of the f64 reference, and the verdict depends on the block table: the same file with
/// one used entry pointing at another sequence's page (still inside the pool) fails in the same
/// run. One run, so one process compiles each case's pipelines once.
#[test]
fn committed_cases_pass_and_outputs_are_written() {
    let cases = committed_cases("");
    for (prefix, least) in [
        ("rms_norm_", 4),
        ("attention_", 3),
        ("paged_attention_", 2),
        ("rope_", 4),
    ] {
        let n = committed_cases(prefix).len();
        assert!(
            n >= least,
            "expected {least} {prefix}* case files, found {cases:?}"
        );
    }
    let dir = tmpdir("outputs");
    let changed_path = tmpdir("changed").join("changed.safetensors");
    std::fs::write(&changed_path, changed_block_table()).unwrap();
    let out = bin()
        .arg("check")
        .arg("--json")
        .arg("--write-outputs")
        .arg(&dir)
        .args(&cases)
        .arg(&changed_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Exit status 1: a case ran and failed its tolerance (the changed one), none unusable.
    assert_eq!(
        out.status.code(),
        Some(1),
        "check:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(&stdout).expect("check --json is JSON");
    assert_eq!(j["passed"], cases.len(), "{stdout}");
    assert_eq!(
        (j["failed"].as_u64(), j["unusable"].as_u64()),
        (Some(1), Some(0)),
        "{stdout}"
    );
    let reports = j["cases"].as_array().unwrap();
    // The cases run on several workers but are reported in the order given.
    let reported: Vec<&str> = reports
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    let mut given: Vec<String> = cases.iter().map(|c| c.display().to_string()).collect();
    given.push(changed_path.display().to_string());
    assert_eq!(reported, given, "{stdout}");
    let tol = |r: &serde_json::Value| r["tolerance"].as_f64().unwrap();
    let agree = |r: &serde_json::Value| -> Vec<f64> {
        r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["gpu_vs_reference"]["nmse"].as_f64().unwrap())
            .collect()
    };
    let (committed, changed) = reports.split_at(cases.len());
    let mut dtypes = std::collections::BTreeSet::new();
    let mut hnd = false;
    for r in committed {
        assert_eq!(r["pass"], true, "{r}");
        if r["op"] == "paged_attention" {
            assert!(agree(r).iter().all(|&a| a <= tol(r)), "{r}");
            dtypes.insert(r["dtype"].as_str().unwrap().to_string());
            hnd |= r["variant"].as_str().unwrap().contains("Hnd");
        }
    }
    assert!(dtypes.len() >= 2 && hnd, "{dtypes:?}, hnd {hnd}");
    // The changed block table: the kernel and the reference both read the other page, so they
    // agree with each other but no longer with expected.
    let c = &changed[0];
    assert_eq!(c["pass"], false, "a changed block table still passed: {c}");
    assert!(agree(c)[0] <= tol(c), "{c}");

    // The library path too, for rope (cheap to compile again in this process).
    let ctx = ctx();
    for c in &committed_cases("rope_") {
        let r = CaseFile::load(c).unwrap().run(&ctx, None).unwrap();
        assert!(r.pass(), "{c:?}");
        assert_eq!(r.op, "rope");
        for o in &r.outputs {
            assert!(o.gpu.nmse <= r.tolerance, "{c:?} {}", o.gpu);
        }
    }
    // The written outputs carry the expected names without the prefix, in the input dtype, and
    // hold what the GPU computed: they pass against the case's expected tensors.
    for case in &cases {
        let written = dir.join(case.file_name().unwrap());
        let bytes = std::fs::read(&written).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let orig_bytes = std::fs::read(case).unwrap();
        let orig = safetensors::SafeTensors::deserialize(&orig_bytes).unwrap();
        // The main input: `x` for rms_norm, `q` for attention.
        let x_dtype = orig
            .tensor("x")
            .or_else(|_| orig.tensor("q"))
            .unwrap()
            .dtype();
        for (name, exp) in orig.iter().filter(|(n, _)| n.starts_with("expected.")) {
            let o = st.tensor(name.strip_prefix("expected.").unwrap()).unwrap();
            assert_eq!(o.dtype(), x_dtype, "{name} in {written:?}");
            assert_eq!(o.shape(), exp.shape());
        }
    }
}

/// `paged_attention_llama_gqa_f32` with sequence 0's first block-table entry pointing at sequence
/// 1's first page.
fn changed_block_table() -> Vec<u8> {
    // Point sequence 0's first block-table entry at sequence 1's first page (still inside the
    // pool): the kernel and the reference both read that page, so they agree with each other but
    // no longer with expected. (Swapping two of a decode row's own pages would not do: with every
    // key visible, attention does not depend on key order.)
    let path = committed_cases("paged_attention_llama_gqa_f32")[0].clone();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                t.dtype(),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    let bt = owned.iter_mut().find(|t| t.0 == "block_table").unwrap();
    assert_eq!(bt.1, safetensors::Dtype::I32);
    let row = bt.2[1] * 4;
    let other = bt.3[row..row + 4].to_vec();
    assert_ne!(bt.3[0..4], other[..]);
    bt.3[0..4].copy_from_slice(&other);
    let views: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, header.metadata().clone()).unwrap()
}

#[test]
fn a_wrong_expected_output_fails_with_nonzero_exit() {
    let dir = tmpdir("wrong");
    let path = dir.join("wrong.safetensors");
    let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.1 - 1.0).collect();
    let w = vec![1.0f32; 16];
    // expected.out is just x: wrong for RMSNorm.
    write_case(
        &path,
        &[
            ("x".into(), DType::F32, vec![2, 16], x.clone()),
            ("weight".into(), DType::F32, vec![16], w),
            ("expected.out".into(), DType::F32, vec![2, 16], x),
        ],
        &HashMap::from([("op".to_string(), "rms_norm".to_string())]),
    )
    .unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    // A good case that compiles little (the other test runs the attention cases).
    let good = &committed_cases("rms_norm_")[0];
    let out = bin()
        .arg("check")
        .arg(&path)
        .arg(&garbage)
        .arg(good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    // Every case is tried: the good one still passes after two failures.
    assert!(stdout.contains("check: 1 passed, 2 failed"), "{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("wrong.safetensors"),
        "{stdout}"
    );
    assert!(stdout.contains("not a valid safetensors file"), "{stdout}");
    // A tolerance that makes no sense is refused before any case runs.
    let out = bin()
        .args(["check", "--tol=-1"])
        .arg(good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tol must be a finite number >= 0"));
}

#[test]
fn malformed_files_are_refused() {
    let meta = r#""__metadata__":{"op":"rms_norm"}"#;
    // Truncated: header says 8 data bytes, file has 4.
    let h = format!(r#"{{{meta},"x":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
    let mut f = raw_file(&h, &[0u8; 8]);
    f.truncate(f.len() - 4);
    assert!(parse_err(&f).contains("not a valid safetensors file"));
    // Lying header length: claims far more header than the file has.
    let mut lie = raw_file(&h, &[0u8; 8]);
    lie[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse_err(&lie).contains("not a valid safetensors file"));
    // Too small to hold a header at all.
    assert!(parse_err(&[1, 2, 3]).contains("not a valid safetensors file"));
    // Offsets past the end of the data.
    let h = format!(r#"{{{meta},"x":{{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}}}"#);
    assert!(parse_err(&raw_file(&h, &[0u8; 8])).contains("not a valid safetensors file"));
    // Absurd shape: the element count overflows; nothing is allocated for it.
    let h = format!(
        r#"{{{meta},"x":{{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}}}"#
    );
    assert!(parse_err(&raw_file(&h, &[0u8; 8])).contains("not a valid safetensors file"));
    // Shape and byte count disagree.
    let h = format!(r#"{{{meta},"x":{{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}}}"#);
    assert!(parse_err(&raw_file(&h, &[0u8; 8])).contains("not a valid safetensors file"));
    // A dtype cases do not use.
    let h = format!(r#"{{{meta},"x":{{"dtype":"I16","shape":[4],"data_offsets":[0,8]}}}}"#);
    assert!(parse_err(&raw_file(&h, &[0u8; 8])).contains("has dtype I16"));
    // No op.
    let h = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(parse_err(&raw_file(h, &[0u8; 8])).contains("has no `op`"));
}

fn run_err(tensors: &[(&str, DType, Vec<usize>)], meta: &[(&str, &str)]) -> String {
    case_error(tensors, meta, 0.5)
}

#[test]
fn mistyped_cases_are_refused() {
    use DType::*;
    fn good(extra: &[(&'static str, DType, Vec<usize>)]) -> Vec<(&'static str, DType, Vec<usize>)> {
        let mut v = vec![
            ("x", F32, vec![2, 8]),
            ("weight", F32, vec![8]),
            ("expected.out", F32, vec![2, 8]),
        ];
        v.extend_from_slice(extra);
        v
    }
    let op = ("op", "rms_norm");
    let e = run_err(&good(&[]), &[("op", "rms_nrom")]);
    assert!(e.contains("unknown op \"rms_nrom\""), "{e}");
    let e = run_err(&good(&[]), &[op, ("epsilon", "1e-5")]);
    assert!(
        e.contains("unknown metadata key(s) for op rms_norm: [\"epsilon\"]"),
        "{e}"
    );
    let e = run_err(&good(&[]), &[op, ("eps", "tiny")]);
    assert!(e.contains("metadata eps=\"tiny\" is not a number"), "{e}");
    let e = run_err(&good(&[]), &[op, ("eps", "-1")]);
    assert!(
        e.contains("rms_norm: eps must be finite and >= 0, got -1"),
        "{e}"
    );
    let e = run_err(&good(&[("residul", F32, vec![2, 8])]), &[op]);
    assert!(
        e.contains("unknown tensor(s) for op rms_norm: [\"residul\"]"),
        "{e}"
    );
    let e = run_err(&[("x", F32, vec![2, 8]), ("weight", F32, vec![8])], &[op]);
    assert!(
        e.contains("missing expected output tensor \"expected.out\""),
        "{e}"
    );
    let e = run_err(&good(&[("expected.residual_out", F32, vec![2, 8])]), &[op]);
    assert!(e.contains("expected.residual_out names no output"), "{e}");
    let e = run_err(
        &[
            ("x", F32, vec![2, 8]),
            ("weight", F32, vec![8]),
            ("expected.out", F32, vec![2, 9]),
        ],
        &[op],
    );
    assert!(
        e.contains("expected.out has shape [2, 9] but the op produces [2, 8]"),
        "{e}"
    );
    let e = run_err(
        &[
            ("x", F32, vec![2, 8]),
            ("weight", F32, vec![7]),
            ("expected.out", F32, vec![2, 8]),
        ],
        &[op],
    );
    assert!(
        e.contains("rms_norm: weight has shape [7] but must be [8]"),
        "{e}"
    );
    let e = run_err(
        &[
            ("x", F16, vec![2, 8]),
            ("weight", F32, vec![8]),
            ("expected.out", F32, vec![2, 8]),
        ],
        &[op],
    );
    assert!(e.contains("weight is f32 but x is f16"), "{e}");
    let e = run_err(&good(&[("residual", F32, vec![2, 7])]), &[op]);
    assert!(
        e.contains("residual has shape [2, 7] but x has [2, 8]"),
        "{e}"
    );
    let e = run_err(
        &[("weight", F32, vec![8]), ("expected.out", F32, vec![2, 8])],
        &[op],
    );
    assert!(e.contains("op rms_norm needs an input tensor \"x\""), "{e}");
}

/// Mistyped attention cases get clear errors.
#[test]
fn mistyped_attention_cases_are_refused() {
    let run = |tensors: &[(&str, DType, Vec<usize>)], meta: &[(&str, &str)]| -> String {
        case_error(tensors, meta, 0.25)
    };
    use DType::F32;
    let good = |extra: &[(&'static str, DType, Vec<usize>)]| {
        let mut v = vec![
            ("q", F32, vec![2, 4, 8]),
            ("k", F32, vec![3, 2, 8]),
            ("v", F32, vec![3, 2, 8]),
            ("expected.out", F32, vec![2, 4, 8]),
        ];
        v.extend_from_slice(extra);
        v
    };
    let op = ("op", "attention");
    let e = run(&good(&[]), &[op, ("causual", "true")]);
    assert!(
        e.contains("unknown metadata key(s) for op attention: [\"causual\"]"),
        "{e}"
    );
    let e = run(&good(&[]), &[op, ("window", "-2")]);
    assert!(e.contains("metadata window=-2 must be in 0..="), "{e}");
    let e = run(&good(&[]), &[op, ("q_offset", "2")]);
    assert!(
        e.contains("attention: q_offset 2 puts the last query at position 3"),
        "{e}"
    );
    let e = run(&good(&[("sinks", F32, vec![3])]), &[op]);
    assert!(
        e.contains("attention: sinks has shape [3] but must be [4]"),
        "{e}"
    );
    // Masks: the case's dtype rules, then the op's shape rules.
    let e = run(&good(&[("mask", F32, vec![2, 3])]), &[op]);
    assert!(e.contains("mask is F32; it must be U8 or BOOL"), "{e}");
    let e = run(&good(&[("bias", DType::BF16, vec![2, 3])]), &[op]);
    assert!(e.contains("bias is BF16; it must be F32"), "{e}");
    let e = run(&good(&[("block_ids", F32, vec![3])]), &[op]);
    assert!(
        e.contains("block_ids is F32 [3]; it must be I32 [kv_len] = [3]"),
        "{e}"
    );
    let e = run(&good(&[("bias", F32, vec![3, 2])]), &[op]);
    assert!(
        e.contains("attention: bias has shape [3, 2]; it must be [q_len, kv_len] = [2, 3]"),
        "{e}"
    );
    // Sinks in any float dtype are accepted (gpt-oss stores them in bf16): the shape rule above
    // still holds for them.
    let e = run(&good(&[("sinks", DType::BF16, vec![5])]), &[op]);
    assert!(
        e.contains("attention: sinks has shape [5] but must be [4]"),
        "{e}"
    );
    let e = run(
        &[
            ("q", F32, vec![2, 4, 8]),
            ("k", DType::BF16, vec![3, 2, 8]),
            ("v", F32, vec![3, 2, 8]),
            ("expected.out", F32, vec![2, 4, 8]),
        ],
        &[op],
    );
    assert!(e.contains("k is bf16 and v is f32 but q is f32"), "{e}");
    let e = run(&good(&[]), &[op, ("causal", "maybe")]);
    assert!(
        e.contains("metadata causal=\"maybe\" is not true/false"),
        "{e}"
    );
}

/// Tensors as (name, safetensors dtype, shape, raw little-endian bytes).
type Raw = (&'static str, safetensors::Dtype, Vec<usize>, Vec<u8>);
/// Metadata entries of a case.
type Meta = [(&'static str, &'static str)];

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn case_bytes(tensors: &[Raw], meta: &[(&str, &str)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// x [2, 1, 8] of ones, `expected.out` the correct default RoPE at positions 0, 1.
fn good_tensors() -> Vec<Raw> {
    use safetensors::Dtype::F32;
    let x = vec![1.0f32; 16];
    let (inv, _) = llama_kernels::reference::rope::frequencies(
        10000.0,
        8,
        &llama_kernels::Scaling::Default,
        0,
    );
    let want = llama_kernels::reference::rope::rope(
        &[1.0; 16],
        [1, 2, 1, 8],
        &[0, 1],
        &inv,
        1.0,
        llama_kernels::Layout::Half,
        8,
    );
    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    vec![
        ("x", F32, vec![2, 1, 8], f32s(&x)),
        ("expected.out", F32, vec![2, 1, 8], f32s(&want)),
    ]
}

fn rope_run(tensors: &[Raw], meta: &[(&str, &str)]) -> Result<bool, String> {
    let bytes = case_bytes(tensors, meta);
    let case = CaseFile::parse("rope_test.safetensors", &bytes).map_err(|e| e.to_string())?;
    case.run(&ctx(), None)
        .map(|r| r.pass())
        .map_err(|e| e.to_string())
}

fn rope_run_err(tensors: &[Raw], meta: &[(&str, &str)], needle: &str) {
    match rope_run(tensors, meta) {
        Ok(pass) => panic!("expected an error containing {needle:?}, got a report (pass={pass})"),
        Err(e) => assert!(e.contains(needle), "error {e:?} must contain {needle:?}"),
    }
}

#[test]
fn a_good_rope_case_passes_and_a_wrong_one_fails() {
    let op = ("op", "rope");
    assert_eq!(rope_run(&good_tensors(), &[op]), Ok(true));
    // The same data claimed as the interleaved layout is a different rotation.
    assert_eq!(
        rope_run(&good_tensors(), &[op, ("layout", "interleaved")]),
        Ok(false)
    );
    // I32 and I64 positions both work and must give the same result as the offset.
    for (dt, bytes) in [
        (
            safetensors::Dtype::I32,
            [0i32, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            safetensors::Dtype::I64,
            [0i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ] {
        let mut t = good_tensors();
        t.push(("positions", dt, vec![2], bytes));
        assert_eq!(rope_run(&t, &[op]), Ok(true), "{dt:?} positions");
    }
}

#[test]
fn mistyped_rope_cases_are_refused() {
    use safetensors::Dtype::{F32, I32, I64};
    let op = ("op", "rope");
    let with_pos = |d: safetensors::Dtype, shape: Vec<usize>, bytes: Vec<u8>| {
        let mut t = good_tensors();
        t.push(("positions", d, shape, bytes));
        t
    };
    rope_run_err(
        &with_pos(F32, vec![2], f32s(&[0.0, 1.0])),
        &[op],
        "positions is F32; it must be I32 or I64",
    );
    rope_run_err(
        &with_pos(
            I32,
            vec![3],
            [0i32, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        &[op],
        "positions has shape [3]; x [2, 1, 8] needs [2] or [1, 2]",
    );
    rope_run_err(
        &with_pos(
            I64,
            vec![2],
            [0i64, 1 << 40]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        &[op],
        "does not fit the kernel's 32-bit positions",
    );
    rope_run_err(
        &with_pos(
            I32,
            vec![2],
            [0i32, 1].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        &[op, ("offset", "3")],
        "offset and a positions tensor are both given",
    );
    let t = good_tensors();
    rope_run_err(
        &t,
        &[op, ("layout", "rotate_half")],
        "layout=\"rotate_half\"; it must be half or interleaved",
    );
    rope_run_err(&t, &[op, ("rope_type", "ntk")], "unknown rope_type \"ntk\"");
    rope_run_err(
        &t,
        &[op, ("rope_type", "linear")],
        "rope_type linear needs metadata factor",
    );
    rope_run_err(
        &t,
        &[op, ("rope_type", "linear"), ("factor", "0")],
        "rope: factor must be finite and > 0, got 0",
    );
    rope_run_err(
        &t,
        &[
            op,
            ("rope_type", "llama3"),
            ("factor", "8"),
            ("low_freq_factor", "0"),
            ("high_freq_factor", "1"),
            ("original_max_position_embeddings", "8192"),
        ],
        "rope: low_freq_factor must be finite and > 0, got 0",
    );
    rope_run_err(
        &t,
        &[
            op,
            ("rope_type", "longrope"),
            ("original_max_position_embeddings", "4096"),
            ("short_factor", "[1, 1]"),
            ("long_factor", "[1,1,1,1]"),
        ],
        "rope: longrope short_factor has 2 entries but rotary_dim 8 needs 4",
    );
    // A key the chosen rope_type does not use is unknown, not ignored.
    rope_run_err(
        &t,
        &[op, ("factor", "4")],
        "unknown metadata key(s) for op rope: [\"factor\"]",
    );
    rope_run_err(
        &t,
        &[op, ("rotary_dim", "9")],
        "rope: rotary_dim 9 must be even",
    );
    rope_run_err(
        &t,
        &[op, ("offset", "2147483647")],
        "offset=2147483647 does not fit",
    );
    let x2 = vec![("x", F32, vec![2, 8], f32s(&[1.0; 16]))];
    rope_run_err(
        &x2,
        &[op],
        "x has shape [2, 8]; it must be [seq, heads, head_dim]",
    );
}

/// Unknown metadata keys are refused before any GPU work: [`CaseFile::check_metadata`] needs no
/// device, and `run` names the key even where running the op would have refused something else
/// first (a mis-shaped weight, an attention q longer than its keys). `max_position_embeddings`
/// is HF's fallback: beside the key it stands in for, it is unused, so unknown.
#[test]
fn unknown_metadata_is_refused_before_the_op_runs() {
    use safetensors::Dtype::F32;
    let rms: Vec<Raw> = vec![
        ("x", F32, vec![2, 8], f32s(&[1.0; 16])),
        ("weight", F32, vec![7], f32s(&[1.0; 7])),
        ("expected.out", F32, vec![2, 8], f32s(&[0.0; 16])),
    ];
    let attn: Vec<Raw> = vec![
        ("q", F32, vec![4, 2, 8], f32s(&[1.0; 64])),
        ("k", F32, vec![3, 2, 8], f32s(&[1.0; 48])),
        ("v", F32, vec![3, 2, 8], f32s(&[1.0; 48])),
        ("expected.out", F32, vec![4, 2, 8], f32s(&[0.0; 64])),
    ];
    let rope = good_tensors();
    let yarn = [
        ("op", "rope"),
        ("rope_type", "yarn"),
        ("factor", "4"),
        ("original_max_position_embeddings", "16"),
        ("max_position_embeddings", "64"),
    ];
    let longrope = [
        ("op", "rope"),
        ("rope_type", "longrope"),
        ("short_factor", "[1, 1, 1, 1]"),
        ("long_factor", "[1, 1, 1, 1]"),
        ("original_max_position_embeddings", "16"),
        ("factor", "2"),
        ("max_position_embeddings", "64"),
    ];
    let cases: [(&[Raw], &Meta, &str); 5] = [
        (
            &rms,
            &[("op", "rms_norm"), ("epsilon", "1e-5")],
            "rms_norm: [\"epsilon\"]",
        ),
        (
            &attn,
            &[("op", "attention"), ("causual", "true"), ("window", "x")],
            "attention: [\"causual\"]",
        ),
        (
            &rope,
            &[("op", "rope"), ("rope_typ", "linear")],
            "rope: [\"rope_typ\"]",
        ),
        (&rope, &yarn, "rope: [\"max_position_embeddings\"]"),
        (&rope, &longrope, "rope: [\"max_position_embeddings\"]"),
    ];
    let ctx = ctx();
    for (tensors, meta, needle) in cases {
        let needle = format!("unknown metadata key(s) for op {needle}");
        let case = CaseFile::parse("keys.safetensors", &case_bytes(tensors, meta)).unwrap();
        let e = case.check_metadata().unwrap_err().to_string();
        assert!(
            e.starts_with("case keys.safetensors: ") && e.contains(&needle),
            "{meta:?}: {e}"
        );
        let e = case.run(&ctx, None).err().map(|e| e.to_string());
        assert!(
            e.as_ref().is_some_and(|e| e.contains(&needle)),
            "{meta:?}: {e:?}"
        );
    }
    // Without the unknown key the same rms_norm case is refused by the op, for its weight.
    let case =
        CaseFile::parse("keys.safetensors", &case_bytes(&rms, &[("op", "rms_norm")])).unwrap();
    case.check_metadata().unwrap();
    let e = case.run(&ctx, None).err().map(|e| e.to_string());
    assert!(
        e.as_ref()
            .is_some_and(|e| e.contains("weight has shape [7] but must be [8]")),
        "{e:?}"
    );
}

/// The up-front key list and the op runners agree: a case setting every key `check_metadata`
/// allows (for each op and each rope_type, and HF's `max_position_embeddings` fallbacks) runs to
/// a report, so no listed key goes unread and no read key is missing from the list.
#[test]
fn every_allowed_metadata_key_is_read() {
    use safetensors::Dtype::F32;
    let ctx = ctx();
    let rope_common = [
        ("op", "rope"),
        ("theta", "10000"),
        ("layout", "half"),
        ("rotary_dim", "8"),
        ("offset", "0"),
        ("seq_len", "2"),
    ];
    let orig = ("original_max_position_embeddings", "16");
    let max = ("max_position_embeddings", "64");
    let lists = [
        ("short_factor", "[1, 1, 1, 1]"),
        ("long_factor", "[1, 1, 1, 1]"),
    ];
    let yarn_rest = [
        ("beta_fast", "32"),
        ("beta_slow", "1"),
        ("attention_factor", "1"),
        ("mscale", "1"),
        ("mscale_all_dim", "1"),
        ("truncate", "true"),
    ];
    let types: Vec<Vec<(&str, &str)>> = vec![
        vec![("rope_type", "default")],
        vec![("rope_type", "linear"), ("factor", "2")],
        vec![
            ("rope_type", "llama3"),
            ("factor", "8"),
            ("low_freq_factor", "1"),
            ("high_freq_factor", "4"),
            orig,
        ],
        [
            &[("rope_type", "yarn"), ("factor", "4"), orig][..],
            &yarn_rest,
        ]
        .concat(),
        [
            &[("rope_type", "yarn"), ("factor", "4"), max][..],
            &yarn_rest,
        ]
        .concat(),
        vec![("rope_type", "dynamic"), ("factor", "2"), orig],
        vec![("rope_type", "dynamic"), ("factor", "2"), max],
        [
            &[("rope_type", "longrope"), orig, ("factor", "2")][..],
            &[("attention_factor", "1")],
            &lists,
        ]
        .concat(),
        [&[("rope_type", "longrope"), orig, max][..], &lists].concat(),
        vec![
            ("rope_type", "inv_freq"),
            ("inv_freq", "[1, 0.1, 0.01, 0.001]"),
            ("attention_factor", "1"),
        ],
        vec![
            ("mrope_section", "[1, 2, 1]"),
            ("mrope_interleaved", "true"),
        ],
    ];
    for t in &types {
        let meta = [&rope_common[..], t].concat();
        let r = rope_run(&good_tensors(), &meta);
        assert!(r.is_ok(), "{meta:?}: {r:?}");
    }
    let rms: Vec<Raw> = vec![
        ("x", F32, vec![2, 8], f32s(&[1.0; 16])),
        ("weight", F32, vec![8], f32s(&[1.0; 8])),
        ("expected.out", F32, vec![2, 8], f32s(&[1.0; 16])),
    ];
    let attn: Vec<Raw> = vec![
        ("q", F32, vec![2, 2, 16], f32s(&[1.0; 64])),
        ("k", F32, vec![3, 1, 16], f32s(&[1.0; 48])),
        ("v", F32, vec![3, 1, 16], f32s(&[1.0; 48])),
        ("expected.out", F32, vec![2, 2, 16], f32s(&[1.0; 64])),
    ];
    let others: [(&[Raw], &Meta); 3] = [
        (
            &rms,
            &[("op", "rms_norm"), ("eps", "1e-6"), ("weight_offset", "0")],
        ),
        (
            &attn,
            &[
                ("op", "attention"),
                ("causal", "true"),
                ("q_offset", "1"),
                ("scale", "0.25"),
                ("window", "2"),
                ("softcap", "30"),
                ("alibi", "true"),
            ],
        ),
        // The op refuses `window` beside `window_left` (one is the other minus 1).
        (
            &attn,
            &[
                ("op", "attention"),
                ("window_left", "1"),
                ("window_right", "0"),
                ("attention_chunk_size", "2"),
            ],
        ),
    ];
    for (tensors, meta) in others {
        let case = CaseFile::parse("keys.safetensors", &case_bytes(tensors, meta)).unwrap();
        let r = case.run(&ctx, None).map(|r| r.pass());
        assert!(r.is_ok(), "{meta:?}: {:?}", r.err().map(|e| e.to_string()));
    }
}

fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A case file's tensors and metadata, and the message it must be refused with.
type BadCase = (Vec<Raw>, Vec<(&'static str, &'static str)>, &'static str);

/// A paged case that a hostile or careless writer got wrong is refused before any GPU work with
/// an error naming the file and the values, never a panic.
#[test]
fn malformed_paged_attention_cases_are_refused() {
    use safetensors::Dtype::{BF16, F32, I32, I64};
    // Two sequences over 4 pages of 8: one decode query over 5 keys, two queries over 9 keys.
    let floats = |d: safetensors::Dtype, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let bytes = match d {
            BF16 => vec![0u8; 2 * n],
            _ => f32s(&vec![0.5; n]),
        };
        (d, shape, bytes)
    };
    let good = || -> Vec<Raw> {
        let f = |name: &'static str, shape: Vec<usize>| {
            let (d, s, b) = floats(F32, shape);
            (name, d, s, b)
        };
        vec![
            f("q", vec![3, 2, 8]),
            f("k_pages", vec![4, 8, 1, 8]),
            f("v_pages", vec![4, 8, 1, 8]),
            ("block_table", I32, vec![2, 2], i32s(&[2, -1, 0, 3])),
            ("cu_seqlens_q", I32, vec![3], i32s(&[0, 1, 3])),
            ("kv_lens", I32, vec![2], i32s(&[5, 9])),
            f("expected.out", vec![3, 2, 8]),
        ]
    };
    let with = |name: &'static str, d: safetensors::Dtype, shape: Vec<usize>, b: Vec<u8>| {
        let mut t = good();
        match t.iter_mut().find(|x| x.0 == name) {
            Some(x) => *x = (name, d, shape, b),
            None => t.push((name, d, shape, b)),
        }
        t
    };
    let fl = |name: &'static str, d: safetensors::Dtype, shape: Vec<usize>| {
        let (d, s, b) = floats(d, shape);
        with(name, d, s, b)
    };
    // k_pages and v_pages both reshaped (one shape rule at a time).
    let pages = |shape: Vec<usize>| {
        let mut t = fl("k_pages", F32, shape.clone());
        let (d, s, b) = floats(F32, shape);
        *t.iter_mut().find(|x| x.0 == "v_pages").unwrap() = ("v_pages", d, s, b);
        t
    };
    let ints = |name: &'static str, v: &[i32]| with(name, I32, vec![v.len()], i32s(v));
    let op = ("op", "paged_attention");
    let cases: Vec<BadCase> =
        vec![
        (
            ints("cu_seqlens_q", &[1, 1, 3]),
            vec![op],
            "cu_seqlens_q[0] is 1 but must be 0",
        ),
        (
            ints("cu_seqlens_q", &[0, 2, 1]),
            vec![op],
            "cu_seqlens_q must not decrease: cu_seqlens_q[2] = 1 < cu_seqlens_q[1] = 2",
        ),
        (
            ints("cu_seqlens_q", &[0, 1, 2]),
            vec![op],
            "cu_seqlens_q ends at 2 but q holds 3 rows",
        ),
        (
            ints("cu_seqlens_q", &[0, 3]),
            vec![op],
            "cu_seqlens_q has shape [2]; block_table's 2 sequences need [3]",
        ),
        (
            ints("kv_lens", &[-1, 9]),
            vec![op],
            "kv_lens[0] = -1 must be in 0..=16",
        ),
        (
            ints("kv_lens", &[5, 17]),
            vec![op],
            "kv_lens[1] = 17 must be in 0..=16 (max_pages 2 x page_size 8)",
        ),
        (
            with("kv_lens", I64, vec![2], {
                [5i64, 1 << 62].iter().flat_map(|v| v.to_le_bytes()).collect()
            }),
            vec![op],
            "kv_lens[1] = 4611686018427387904 must be in 0..=16",
        ),
        (
            ints("kv_lens", &[5]),
            vec![op],
            "kv_lens has shape [1]; block_table's 2 sequences need [2]",
        ),
        (
            with("block_table", I32, vec![2, 2], i32s(&[2, -1, 0, 4])),
            vec![op],
            "block_table[1][1] = 4 is outside the pool of 4 pages",
        ),
        (
            with("block_table", I32, vec![2, 2], i32s(&[-1, 2, 0, 3])),
            vec![op],
            "block_table[0][0] = -1 is outside the pool of 4 pages",
        ),
        (
            with(
                "block_table",
                I64,
                vec![2, 2],
                [2i64, 0, 1 << 40, 3]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            vec![op],
            "block_table[1][0] = 1099511627776 is outside the pool",
        ),
        (
            with("block_table", I32, vec![4], i32s(&[2, -1, 0, 3])),
            vec![op],
            "block_table has shape [4]; it must be [n_seqs, max_pages]",
        ),
        (
            fl("block_table", F32, vec![2, 2]),
            vec![op],
            "block_table is F32; it must be an integer tensor (I32 or I64)",
        ),
        (
            pages(vec![4, 12, 1, 8]),
            vec![op],
            "page_size 12 (k_pages' dimension 1) must be a power of two from 8 to 128",
        ),
        (
            fl("v_pages", F32, vec![4, 8, 2, 8]),
            vec![op],
            "v_pages has shape [4, 8, 2, 8] but k_pages has [4, 8, 1, 8]",
        ),
        (
            pages(vec![4, 8, 1, 4]),
            vec![op],
            "k_pages has head_dim 4 but q has 8; they must match",
        ),
        (
            pages(vec![4, 8, 3, 8]),
            vec![op],
            "q's n_heads 2 must be a positive multiple of k_pages' n_kv_heads 3",
        ),
        (
            fl("k_pages", F32, vec![4, 8, 8]),
            vec![op],
            "k_pages has shape [4, 8, 8]; it must be [n_pages, page_size, n_kv_heads, head_dim]",
        ),
        (
            fl("k_pages", BF16, vec![4, 8, 1, 8]),
            vec![op],
            "k_pages is bf16 and v_pages is f32 but q is f32; they must match",
        ),
        (
            fl("sinks", F32, vec![3]),
            vec![op],
            "sinks has shape [3] but must be [2] (one per query head)",
        ),
        (
            good(),
            vec![op, ("q_offset", "1")],
            "metadata q_offset=1 does not apply to paged_attention",
        ),
        (
            good(),
            vec![op, ("layout", "nhd2")],
            "metadata layout=\"nhd2\"; it must be nhd or hnd",
        ),
        (
            good(),
            vec![op, ("window", "-3")],
            "metadata window=-3 must be in 0..=",
        ),
    ];
    let ctx = ctx();
    for (tensors, meta, needle) in cases {
        let bytes = case_bytes(&tensors, &meta);
        let res = CaseFile::parse("paged_test.safetensors", &bytes).and_then(|c| c.run(&ctx, None));
        match res {
            Ok(r) => panic!("accepted (pass={}), wanted {needle:?}", r.pass()),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(needle), "error {e:?} must contain {needle:?}");
                assert!(e.contains("paged_test.safetensors"), "{e}");
            }
        }
    }
}
