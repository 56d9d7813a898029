//! What the `case_reader` fuzz target does with one input, shared with the stable replay of its
//! corpus in `tests/fuzz_cases.rs`: parse the bytes as a case file, check its metadata keys, and
//! ask for every parameter and input tensor an op runner can ask for. All of it is host-side, so
//! libFuzzer runs thousands of inputs a second; running ops on a device is the stable mutation
//! fuzzer's part.
//!
//! A refusal is an `Err`; a panic is a bug, and so is a refusal that does not name the file or a
//! loaded tensor whose values do not match its shape (the op runners index by shape).

use llama_kernels::cases::CaseFile;

/// Every metadata key an op runner reads, and a few it does not (the stable mutation fuzzer
/// edits these too).
pub const KEYS: &[&str] = &[
    "op",
    "eps",
    "weight_offset",
    "causal",
    "q_offset",
    "scale",
    "window",
    "softcap",
    "window_left",
    "window_right",
    "attention_chunk_size",
    "theta",
    "layout",
    "rotary_dim",
    "rope_type",
    "offset",
    "seq_len",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
    "short_factor",
    "long_factor",
    "inv_freq",
    "mrope_section",
    "mrope_interleaved",
    "alibi",
    "norm_eps",
    "norm_weight_offset",
    "",
    "format",
];

/// Every input tensor an op runner reads, and expected outputs.
const TENSORS: &[&str] = &[
    "x",
    "weight",
    "residual",
    "q",
    "k",
    "v",
    "sinks",
    "mask",
    "bias",
    "block_ids",
    "positions",
    "norm_weight",
    "q_norm_weight",
    "k_norm_weight",
    "k_pages",
    "v_pages",
    "block_table",
    "cu_seqlens_q",
    "kv_lens",
    "expected.out",
    "expected.q",
    "expected.k",
    "expected.residual_out",
];

/// Read `data` as the case file `path`: `Err` with the first refusal, `Ok` when the reader took
/// everything. Panics on a reader bug.
pub fn read(path: &str, data: &[u8]) -> Result<(), String> {
    let named = |e: llama_kernels::Error| {
        let msg = e.to_string();
        assert!(
            msg.contains(path),
            "a refusal does not name the file: {msg}"
        );
        msg
    };
    let case = CaseFile::parse(path, data).map_err(named)?;
    let keys = case.check_metadata().map_err(named);
    for &k in KEYS {
        let _ = case.meta_f64(k, 0.0).map_err(named);
        let _ = case.meta_opt_f64(k).map_err(named);
        let _ = case.meta_i64(k, 0).map_err(named);
        let _ = case.meta_opt_i64(k).map_err(named);
        let _ = case.meta_bool(k, false).map_err(named);
        let _ = case.meta_f64_list(k).map_err(named);
        let _ = case.meta_str(k, "");
    }
    for &name in TENSORS {
        if let Ok(Some(t)) = case.opt_tensor(name) {
            let numel = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            assert_eq!(
                numel,
                Some(t.values.len()),
                "tensor {name:?} of shape {:?} holds {} values",
                t.shape,
                t.values.len()
            );
            let _ = t.to_f32();
        }
        let _ = case.storage_tensor(name).map_err(named);
    }
    keys
}
