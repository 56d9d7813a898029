//! The tools around `llama-kernels` that are more than a kernel call: the tiny model runner
//! ([`tiny_llm`]) that the `llama-kernels` self-test ends with, that `examples/tiny_llm.rs` puts
//! on the command line and that `tests/models.rs` runs on every committed model. The command
//! itself is this package's binary (`src/main.rs`, `src/cli/`).

pub mod tiny_llm;
