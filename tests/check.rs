//! `llama-kernels check`: the committed case files pass, outputs are written, and malformed or
//! mistyped case files are refused with a clear error and a non-zero exit.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use llama_kernels::cases::{write_case, CaseFile};
use llama_kernels::{DType, Error};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
}

fn committed_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
    v.sort();
    v
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama-kernels-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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

#[test]
fn committed_cases_pass_and_outputs_are_written() {
    let cases = committed_cases();
    assert!(
        cases.len() >= 4,
        "expected the committed case files, found {cases:?}"
    );
    let dir = tmpdir("outputs");
    let out = bin()
        .arg("check")
        .arg("--write-outputs")
        .arg(&dir)
        .args(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("check: {} passed, 0 failed", cases.len())),
        "{stdout}"
    );
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
    let good = &committed_cases()[0];
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
    let h = format!(r#"{{{meta},"x":{{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}}}"#);
    assert!(parse_err(&raw_file(&h, &[0u8; 8])).contains("has dtype U8"));
    // No op.
    let h = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(parse_err(&raw_file(h, &[0u8; 8])).contains("has no `op`"));
}

fn run_err(tensors: &[(&str, DType, Vec<usize>)], meta: &[(&str, &str)]) -> String {
    common::case_error(tensors, meta, 0.5)
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
