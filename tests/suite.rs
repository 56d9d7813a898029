//! The library's tests as one binary (`cargo test --test suite`; one file's tests with a filter,
//! `cargo test --test suite attention::`). One process means one shared GPU `Context`
//! (`common::ctx`), so a pipeline that several files use is compiled once per run: on lavapipe
//! every pipeline's first use is an LLVM compile, and with one binary per file each file paid
//! for the pipelines it shares with the others. Tests that need a `Context` of their own (device
//! loss, pipeline counts, a second device) create one.
//!
//! `fuzz_cases`' counting global allocator serves the whole binary; it counts only on a thread
//! inside `fuzz_cases::measured`, so the other tests see the system allocator behind one
//! thread-local check.

mod common;

mod attention;
mod bench;
mod cast;
mod concurrency;
mod context;
mod determinism;
mod examples;
mod faults;
mod fuzz_cases;
mod kv_cache;
mod kv_quant;
mod limits;
mod masks;
mod paged;
mod portability;
mod prepare;
mod proptest_ops;
mod rms_norm;
mod rope;
mod rope_norm;
