//! The `tiny_llm` example is part of the documentation, so it runs as a test: on a committed
//! model its tokens and logits must be transformers' (the library's own examples are run by the
//! repository root's `tests/examples.rs`).

#[path = "../../tests/common/mod.rs"]
mod common;

use common::run_example;

use llama_kernels_tools::tiny_llm;

/// The `tiny_llm` command line on a committed model (Llama-3 RoPE scaling, GQA): the greedy
/// tokens it prints are transformers' float64 ones, and the logits it writes (`--logits`) are
/// within the f32 limit of them.
#[test]
fn tiny_llm_command_line_matches_transformers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llama3");
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
