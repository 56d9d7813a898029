//! The examples are part of the documentation, so they run as tests: each checks itself against
//! the f64 reference and exits non-zero on a mismatch, which fails the test here. (`tiny_llm`,
//! whose model code lives in the tools crate, is run by `tools/tests/examples.rs`.)

use crate::common;

use std::process::Command;

use common::run_example;

// chain and decode_loop run at head_dim 64 here: at their default (Llama-3's 128) each compiles
// its attention pipelines cold in a process of its own, seconds that the suite's attention tests
// already spend on that head size.
#[test]
fn chain_matches_the_reference() {
    let out = run_example("chain", &["--head-dim", "64"]);
    assert!(out.contains("head_dim 64"), "{out}");
    assert!(out.contains("rope q+k -> attention"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn decode_loop_matches_the_reference_at_every_step() {
    let out = run_example("decode_loop", &["--steps", "4", "--head-dim", "64"]);
    assert!(out.contains("head_dim 64"), "{out}");
    // The prefill and each of the 4 decode steps were checked.
    assert_eq!(out.matches(" ok\n").count(), 5, "{out}");
    assert!(out.contains("all steps match the f64 reference"), "{out}");
}

#[test]
fn own_layer_matches_the_cpu_layer_after_a_warm_up() {
    let out = run_example("own_layer", &[]);
    // The prefill and each of the 3 decode steps were checked.
    assert_eq!(out.matches(" ok\n").count(), 4, "{out}");
    assert!(out.contains("warm-up: "), "{out}");
    assert!(out.contains("no pipeline built after the warm-up"), "{out}");
}

#[test]
fn serve_matches_the_reference_at_every_step() {
    let out = run_example("serve", &["--layout", "nhd"]);
    assert!(out.contains("in 3 buffers"), "{out}");
    assert!(out.contains("Nhd"), "{out}");
    assert!(out.contains(" 1 page copies"), "{out}");
    assert_eq!(out.matches(" ok\n").count(), 11, "{out}");
    assert!(out.contains("all steps match the f64 reference"), "{out}");
}

#[test]
fn speculative_tree_keeps_the_greedy_tokens() {
    let out = run_example("speculative", &["--steps", "16"]);
    assert!(
        out.contains("the tokens are plain greedy decoding's"),
        "{out}"
    );
    // Some round kept a path through the draft's second-ranked child of the root (rows moved
    // into place), and the drafts saved passes: fewer target passes than one per token.
    assert!(out.contains("(offsets [0, 2"), "{out}");
    let passes: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("target_passes: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("target_passes line");
    assert!(passes < 1 + 16, "{out}");
}

#[test]
fn examples_refuse_a_bad_argument() {
    for (example, args, says) in [
        ("decode_loop", ["--dtype", "f8"], "--dtype \"f8\""),
        ("decode_loop", ["--head-dim", "12"], "--head-dim \"12\""),
        ("chain", ["--head-dim", "0"], "--head-dim \"0\""),
    ] {
        let out = Command::new(env!("CARGO"))
            .args(["run", "--quiet", "--example", example, "--"])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{example} {args:?}: {err}");
        assert!(err.contains(says), "{example} {args:?}: {err}");
    }
}
