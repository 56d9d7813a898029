//! A small HF-format decoder-only model (`config.json` + `model.safetensors`) run on the GPU with
//! the crate's kernels: the self-test's last row, `examples/tiny_llm.rs` and `tests/models.rs`
//! use it.

pub mod config;
pub mod kernels;
pub mod model;
pub mod reference;
pub mod speculative;
pub mod weights;
