//! The examples are part of the documentation, so they run as tests: each checks itself against
//! the f64 reference and exits non-zero on a mismatch, which fails the test here.
#![cfg(feature = "cli")]

use std::process::Command;

/// `cargo run --example NAME -- ARGS` in this package; panics with its output unless it exits 0.
fn run_example(name: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn chain_matches_the_reference() {
    let out = run_example("chain", &[]);
    assert!(out.contains("rope q+k -> attention"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn decode_loop_matches_the_reference_at_every_step() {
    let out = run_example("decode_loop", &["--steps", "4"]);
    // The prefill and each of the 4 decode steps were checked.
    assert_eq!(out.matches(" ok\n").count(), 5, "{out}");
    assert!(out.contains("all steps match the f64 reference"), "{out}");
}

#[test]
fn serve_matches_the_reference_at_every_step() {
    let out = run_example("serve", &["--layout", "hnd"]);
    assert!(out.contains("in 3 buffers"), "{out}");
    assert!(out.contains(" 1 page copies"), "{out}");
    assert_eq!(out.matches(" ok\n").count(), 11, "{out}");
    assert!(out.contains("all steps match the f64 reference"), "{out}");
}

#[test]
fn decode_loop_refuses_a_bad_argument() {
    let out = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--example",
            "decode_loop",
            "--",
            "--dtype",
            "f8",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dtype \"f8\""));
}

#[path = "../examples/tiny_llm/tiny_llm.rs"]
mod tiny_llm;

/// The `tiny_llm` command line on a committed model (Llama-3 RoPE scaling, GQA): the greedy
/// tokens it prints are transformers' float64 ones, and the logits it writes (`--logits`) are
/// within the f32 limit of them.
#[test]
fn tiny_llm_command_line_matches_transformers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/llama3");
    let r = tiny_llm::reference::Reference::load(&dir).expect("reference");
    let prompt: Vec<String> = r.prompt.iter().map(|t| t.to_string()).collect();
    let out_file = std::env::temp_dir().join(format!(
        "tiny_llm_logits_{}.safetensors",
        std::process::id()
    ));
    let steps = r.steps().to_string();
    let out = run_example(
        "tiny_llm",
        &[
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            &prompt.join(","),
            "--steps",
            &steps,
            "--logits",
            out_file.to_str().unwrap(),
        ],
    );
    let want: Vec<String> = r.tokens.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        out.trim_end(),
        format!("tokens: {}", want.join(" ")),
        "{out}"
    );
    let bytes = std::fs::read(&out_file).expect("logits file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor("logits").expect("tensor logits");
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    assert_eq!(t.shape(), [r.prompt.len() + r.steps(), r.vocab]);
    let got: Vec<f64> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        .collect();
    let nmse = tiny_llm::reference::nmse(&got, &r.logits_f64);
    assert!(
        nmse <= tiny_llm::reference::F32_LIMIT,
        "logits NMSE {nmse:e}"
    );
    let _ = std::fs::remove_file(&out_file);
}
