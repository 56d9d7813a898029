//! The `tiny_llm` example is part of the documentation, so it runs as a test: on a committed
//! model its tokens and logits must be transformers' (the library's own examples are run by the
//! repository root's `tests/examples.rs`).

#[path = "../../tests/common/mod.rs"]
mod common;

use common::run_example;

use llama_kernels_tools::tiny_llm;

fn llama3_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llama3")
}

/// `tiny_llm` on the committed Llama-3 model with its reference prompt and steps, plus `extra`
/// arguments: the reference and what the command printed.
fn run_llama3(extra: &[&str]) -> (tiny_llm::reference::Reference, String) {
    let dir = llama3_dir();
    let r = tiny_llm::reference::Reference::load(&dir).expect("reference");
    let prompt: Vec<String> = r.prompt.iter().map(|t| t.to_string()).collect();
    let prompt = prompt.join(",");
    let steps = r.steps().to_string();
    let mut args = vec![
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        &prompt,
        "--steps",
        &steps,
    ];
    args.extend_from_slice(extra);
    let out = run_example("tiny_llm", &args);
    (r, out)
}

/// The `tiny_llm` command line on a committed model (Llama-3 RoPE scaling, GQA): the greedy
/// tokens it prints are transformers' float64 ones, and the logits it writes (`--logits`) are
/// within the f32 limit of them.
#[test]
fn tiny_llm_command_line_matches_transformers() {
    let out_file = std::env::temp_dir().join(format!(
        "tiny_llm_logits_{}.safetensors",
        std::process::id()
    ));
    let (r, out) = run_llama3(&["--logits", out_file.to_str().unwrap()]);
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

/// `tiny_llm --draft DIR --draft-len K` (speculative decoding, the model drafting for itself)
/// prints the same greedy tokens, then `target_passes: N` with every draft accepted:
/// `N <= ceil(steps / (K + 1)) + 1`.
#[test]
fn tiny_llm_speculative_command_line() {
    let dir = llama3_dir();
    let (r, out) = run_llama3(&["--draft", dir.to_str().unwrap(), "--draft-len", "3"]);
    let steps = r.steps();
    let want: Vec<String> = r.tokens.iter().map(|t| t.to_string()).collect();
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("tokens: {}", want.join(" ")).as_str()),
        "{out}"
    );
    let passes: usize = lines
        .next()
        .and_then(|l| l.strip_prefix("target_passes: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no target_passes line in {out:?}"));
    assert!(passes <= steps.div_ceil(4) + 1, "{passes} passes: {out}");
    assert_eq!(lines.next(), None, "{out}");
}

/// `--draft-len` without `--draft`, a zero draft length, `--logits` beside `--draft` and an
/// unknown `--kv` format are usage errors (exit 2) that name the flag, before any GPU work.
/// (`--kv q8_0` itself runs on every committed model in `tests/models.rs`.)
#[test]
fn tiny_llm_usage_errors() {
    for (args, needle) in [
        (
            &["--kv", "q5_1"][..],
            "--kv \"q5_1\": expected q8_0, q4_0 or fp8_e4m3",
        ),
        (&["--draft-len", "2"][..], "--draft-len needs --draft"),
        (
            &["--draft", "models/llama3", "--draft-len", "0"][..],
            "--draft-len \"0\": an integer >= 1",
        ),
        (
            &["--draft", "models/llama3", "--logits", "x.safetensors"][..],
            "--logits is not available with --draft",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO"))
            .args(["run", "--quiet", "--example", "tiny_llm", "--"])
            .args([
                "--model",
                "models/llama3",
                "--prompt",
                "1,2",
                "--steps",
                "2",
            ])
            .args(args)
            .current_dir(common::repo_root())
            .output()
            .expect("run cargo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
