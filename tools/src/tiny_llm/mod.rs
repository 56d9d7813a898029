//! The model runner as a module tree with no dependency on the example's `main.rs`, so other
//! binaries and tests can include it: `#[path = "../examples/tiny_llm/tiny_llm.rs"] mod tiny_llm;`.
// Each includer uses a different part (the example never reads a reference file).
#![allow(dead_code)]

#[path = "config.rs"]
pub mod config;
#[path = "kernels.rs"]
pub mod kernels;
#[path = "model.rs"]
pub mod model;
#[path = "reference.rs"]
pub mod reference;
#[path = "weights.rs"]
pub mod weights;
