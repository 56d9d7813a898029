//! `llama-kernels check` for op `rope`: the committed rope cases (made by NumPy from HF's
//! formulas, `cases/gen_rope.py`) pass, a wrong expected output fails, and mistyped rope cases
//! are refused with a clear error.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use llama_kernels::cases::CaseFile;

fn rope_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "safetensors")
                    && p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("rope_")
            })
            .collect();
    v.sort();
    v
}

#[test]
fn committed_rope_cases_pass() {
    let cases = rope_cases();
    assert!(
        cases.len() >= 4,
        "expected the rope case files, found {cases:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
        .arg("check")
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
    // The library path too, with the reports' numbers.
    let ctx = common::ctx();
    for c in &cases {
        let r = CaseFile::load(c).unwrap().run(&ctx, None).unwrap();
        assert!(r.pass(), "{c:?}");
        assert_eq!(r.op, "rope");
        for o in &r.outputs {
            assert!(o.gpu.nmse <= r.tolerance, "{c:?} {}", o.gpu);
        }
    }
}

/// Tensors as (name, safetensors dtype, shape, raw little-endian bytes).
type Raw = (&'static str, safetensors::Dtype, Vec<usize>, Vec<u8>);

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

fn run(tensors: &[Raw], meta: &[(&str, &str)]) -> Result<bool, String> {
    let bytes = case_bytes(tensors, meta);
    let case = CaseFile::parse("rope_test.safetensors", &bytes).map_err(|e| e.to_string())?;
    case.run(&common::ctx(), None)
        .map(|r| r.pass())
        .map_err(|e| e.to_string())
}

fn run_err(tensors: &[Raw], meta: &[(&str, &str)], needle: &str) {
    match run(tensors, meta) {
        Ok(pass) => panic!("expected an error containing {needle:?}, got a report (pass={pass})"),
        Err(e) => assert!(e.contains(needle), "error {e:?} must contain {needle:?}"),
    }
}

#[test]
fn a_good_case_passes_and_a_wrong_one_fails() {
    let op = ("op", "rope");
    assert_eq!(run(&good_tensors(), &[op]), Ok(true));
    // The same data claimed as the interleaved layout is a different rotation.
    assert_eq!(
        run(&good_tensors(), &[op, ("layout", "interleaved")]),
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
        assert_eq!(run(&t, &[op]), Ok(true), "{dt:?} positions");
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
    run_err(
        &with_pos(F32, vec![2], f32s(&[0.0, 1.0])),
        &[op],
        "positions is F32; it must be I32 or I64",
    );
    run_err(
        &with_pos(
            I32,
            vec![3],
            [0i32, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        &[op],
        "positions has shape [3]; x [2, 1, 8] needs [2] or [1, 2]",
    );
    run_err(
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
    run_err(
        &with_pos(
            I32,
            vec![2],
            [0i32, 1].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        &[op, ("offset", "3")],
        "offset and a positions tensor are both given",
    );
    let t = good_tensors();
    run_err(
        &t,
        &[op, ("layout", "rotate_half")],
        "layout=\"rotate_half\"; it must be half or interleaved",
    );
    run_err(&t, &[op, ("rope_type", "ntk")], "unknown rope_type \"ntk\"");
    run_err(
        &t,
        &[op, ("rope_type", "linear")],
        "rope_type linear needs metadata factor",
    );
    run_err(
        &t,
        &[op, ("rope_type", "linear"), ("factor", "0")],
        "rope: factor must be finite and > 0, got 0",
    );
    run_err(
        &t,
        &[
            op,
            ("rope_type", "llama3"),
            ("factor", "8"),
            ("low_freq_factor", "4"),
            ("high_freq_factor", "1"),
            ("original_max_position_embeddings", "8192"),
        ],
        "rope: llama3 low_freq_factor 4 must be < high_freq_factor 1",
    );
    run_err(
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
    run_err(
        &t,
        &[op, ("factor", "4")],
        "unknown metadata key(s) for op rope: [\"factor\"]",
    );
    run_err(
        &t,
        &[op, ("rotary_dim", "9")],
        "rope: rotary_dim 9 must be even",
    );
    run_err(
        &t,
        &[op, ("offset", "2147483647")],
        "offset=2147483647 does not fit",
    );
    let x2 = vec![("x", F32, vec![2, 8], f32s(&[1.0; 16]))];
    run_err(
        &x2,
        &[op],
        "x has shape [2, 8]; it must be [seq, heads, head_dim]",
    );
}
