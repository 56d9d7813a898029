//! The self-test's last row: one committed tiny model (`models/llama3`: Llama-3 RoPE scaling,
//! GQA, the older config form) run end to end on the GPU by this package's model code
//! (`llama_kernels_tools::tiny_llm`, which `examples/tiny_llm.rs` runs too), its
//! logits compared with the committed float64 transformers run (NMSE limit 1e-9 in f32, same
//! greedy tokens).

use std::path::Path;

use llama_kernels::{Context, DType};
use llama_kernels_tools::tiny_llm;

use super::Row;

/// The model the self-test runs, in the checkout the binary was built from (this package sits
/// in `tools/`, the models at the repository root).
const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/llama3");

/// The tiny-model row, or `None` when the committed model is not there (a binary installed away
/// from its checkout); the self-test then says so and does not count it as a failure.
pub fn run_tiny_model(ctx: &Context) -> Option<Row> {
    let dir = Path::new(MODEL_DIR);
    if !dir.join("config.json").exists() {
        return None;
    }
    let mut row = Row {
        kernel: "tiny_llm".into(),
        variant: "llama3 (2 layers, GQA 4/2)".into(),
        dtype: "f32".into(),
        shape: String::new(),
        nmse: f64::NAN,
        max_abs: f64::NAN,
        tolerance: tiny_llm::reference::F32_LIMIT,
        prepare: None,
        first_ms: None,
        gpu_ms: None,
        pass: false,
        note: None,
    };
    match tiny_llm::reference::Reference::load(dir).and_then(|r| {
        Ok((
            r.prompt.len(),
            r.steps(),
            tiny_llm::reference::run(ctx, dir, DType::F32)?,
        ))
    }) {
        Ok((prompt, steps, out)) => {
            row.shape = format!("prompt {prompt} + {steps} steps");
            row.nmse = out.nmse;
            row.max_abs = out.max_abs;
            row.first_ms = Some(out.seconds * 1e3);
            row.pass = out.passed();
            if !out.tokens_match {
                row.note = Some(format!("greedy tokens differ: got {:?}", out.tokens));
            }
        }
        Err(e) => row.note = Some(e.to_string()),
    }
    Some(row)
}
