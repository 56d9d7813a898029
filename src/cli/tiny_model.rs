//! The self-test's last row: one committed tiny model run end to end on the GPU.
//!
//! TODO(lead): wire the model runner here once `examples/tiny_llm` and `models/` land: load one
//! committed model (the smallest), run its fixed prompt in f32, compare the logits with the
//! committed float64 reference (NMSE limit 1e-9, same greedy tokens) and return the row:
//! kernel `tiny_llm`, variant the model name, shape `prompt P + N steps`.

use llama_kernels::Context;

use super::Row;

/// The tiny-model row, or `None` while no model runner is wired (the self-test then says so and
/// does not count it as a failure).
pub fn run_tiny_model(ctx: &Context) -> Option<Row> {
    let _ = ctx;
    None
}
