//! Every committed tiny model (`models/`, written by `scripts/gen_tiny_models.py` with
//! transformers) run end to end through `examples/tiny_llm`'s model code on the GPU, against
//! transformers' own logits for the same prompt and greedy continuation:
//! - f32: logits NMSE against the float64 run <= 1e-9, and the same greedy tokens;
//! - bf16: NMSE no more than 2x what transformers' own bf16 run shows against float64
//!   (FlashAttention's rule for low-precision kernels), and the same greedy tokens (the generator
//!   only keeps seeds whose every step is decided by far more than bf16 rounding).
//!
//! Also: bad model directories give clear errors, and a tiny config change fails the f32 limit
//! (the comparison can fail).

mod common;

#[path = "../examples/tiny_llm/tiny_llm.rs"]
mod tiny_llm;

use std::path::{Path, PathBuf};

use llama_kernels::tensor::decode_f32;
use llama_kernels::DType;
use safetensors::SafeTensors;
use tiny_llm::model::{Generation, Model};

const F32_LIMIT: f64 = 1e-9;
const BF16_FACTOR: f64 = 2.0;

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

struct Reference {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    f64: Vec<f64>,
    bf16: Vec<f64>,
    vocab: usize,
}

fn reference(name: &str) -> Reference {
    let path = model_dir(name).join("reference.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("reference.safetensors");
    let ints = |n: &str| -> Vec<u32> {
        let t = st.tensor(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{n}");
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let f64s = st.tensor("logits_f64").expect("logits_f64");
    assert_eq!(f64s.dtype(), safetensors::Dtype::F64);
    let vocab = f64s.shape()[1];
    let f64v: Vec<f64> = f64s
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let b = st.tensor("logits_bf16").expect("logits_bf16");
    assert_eq!(b.dtype(), safetensors::Dtype::BF16);
    let bf16 = decode_f32(b.data(), DType::BF16)
        .into_iter()
        .map(f64::from)
        .collect();
    Reference {
        prompt: ints("prompt"),
        tokens: ints("tokens"),
        f64: f64v,
        bf16,
        vocab,
    }
}

fn nmse(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    num / den
}

fn generate(dir: &Path, dtype: DType, r: &Reference) -> Generation {
    let ctx = common::ctx();
    let model = Model::load(&ctx, dir, dtype).unwrap_or_else(|e| panic!("{e}"));
    let steps = r.tokens.len() - 1;
    let g = model
        .generate(&ctx, &r.prompt, steps)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.logits.len(), (r.prompt.len() + steps) * r.vocab);
    assert!(g.logits.iter().all(|v| v.is_finite()), "non-finite logits");
    g
}

/// Runs `name` in f32 and bf16; returns (f32 NMSE, bf16 NMSE, transformers' bf16 NMSE).
fn check(name: &str) -> (f64, f64, f64, Option<usize>) {
    let r = reference(name);
    let dir = model_dir(name);
    let hf_bf16 = nmse(&r.bf16, &r.f64);

    let g = generate(&dir, DType::F32, &r);
    let got: Vec<f64> = g.logits.iter().map(|&v| f64::from(v)).collect();
    let n32 = nmse(&got, &r.f64);
    eprintln!(
        "{name} f32: NMSE {n32:.3e} (limit {F32_LIMIT:.0e}), tokens {:?}",
        g.tokens
    );
    assert_eq!(
        g.tokens, r.tokens,
        "{name} f32: greedy tokens differ from transformers' float64 run"
    );
    assert!(
        n32 <= F32_LIMIT,
        "{name} f32: logits NMSE {n32:.3e} > {F32_LIMIT:.0e}"
    );
    let reprefill = g.reprefilled_at;

    let g = generate(&dir, DType::BF16, &r);
    let got: Vec<f64> = g.logits.iter().map(|&v| f64::from(v)).collect();
    let n16 = nmse(&got, &r.f64);
    eprintln!(
        "{name} bf16: NMSE {n16:.3e}, transformers' bf16 {hf_bf16:.3e} (limit {:.3e})",
        BF16_FACTOR * hf_bf16
    );
    assert_eq!(
        g.tokens, r.tokens,
        "{name} bf16: greedy tokens differ from transformers' float64 run"
    );
    assert!(
        n16 <= BF16_FACTOR * hf_bf16,
        "{name} bf16: logits NMSE {n16:.3e} > {BF16_FACTOR} x transformers' bf16 NMSE {hf_bf16:.3e}"
    );
    (n32, n16, hf_bf16, reprefill)
}

#[test]
fn llama3_scaling_old_config_form() {
    check("llama3");
}

#[test]
fn llama_yarn_tied_biases_f32_storage() {
    check("llama_yarn");
}

#[test]
fn llama_linear_mha() {
    check("llama_linear");
}

#[test]
fn llama_dynamic_ntk_past_max_position() {
    let r = reference("llama_dynamic");
    let cfg = tiny_llm::config::Config::load(&model_dir("llama_dynamic")).unwrap();
    let max_pos = match cfg.rope.scaling {
        llama_kernels::Scaling::Dynamic {
            original_max_position_embeddings,
            ..
        } => original_max_position_embeddings as usize,
        ref s => panic!("expected dynamic scaling, got {s:?}"),
    };
    assert!(
        r.prompt.len() + r.tokens.len() - 1 > max_pos,
        "the decode must grow past {max_pos}"
    );
    check("llama_dynamic");
}

#[test]
fn qwen2_qkv_bias_f16_storage() {
    check("qwen2");
}

#[test]
fn mistral_sliding_window_crossed_by_prompt() {
    let cfg = tiny_llm::config::Config::load(&model_dir("mistral")).unwrap();
    let r = reference("mistral");
    assert!(cfg
        .windows
        .iter()
        .all(|&w| w > 0 && (w as usize) < r.prompt.len()));
    check("mistral");
}

#[test]
fn qwen3_qk_norm() {
    check("qwen3");
}

#[test]
fn gemma2_softcaps_sandwich_norms_alternating_window() {
    let cfg = tiny_llm::config::Config::load(&model_dir("gemma2")).unwrap();
    let r = reference("gemma2");
    assert!(
        cfg.windows[0] > 0 && (cfg.windows[0] as usize) < r.prompt.len() && cfg.windows[1] == 0
    );
    assert!(cfg.attn_softcap > 0.0 && cfg.final_softcap > 0.0);
    check("gemma2");
}

#[test]
fn phi3_longrope_reprefill_at_switch() {
    let cfg = tiny_llm::config::Config::load(&model_dir("phi3")).unwrap();
    let switch = cfg.longrope_switch.expect("phi3 model uses longrope");
    let (_, _, _, reprefill) = check("phi3");
    assert_eq!(
        reprefill,
        Some(switch + 1),
        "decode must cross the LongRoPE switch once"
    );
}

/// A copy of a committed model whose config.json is changed by `edit`.
fn edited_copy(name: &str, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = model_dir(name);
    let dst = std::env::temp_dir().join(format!("tiny_llm_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "reference.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

fn load_error(dir: &Path) -> String {
    match Model::load(&common::ctx(), dir, DType::F32) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let d = edited_copy("qwen3", "unknown_type", |c| c["model_type"] = "gpt2".into());
    let e = load_error(&d);
    assert!(
        e.contains("config.json") && e.contains("unknown model_type \"gpt2\""),
        "{e}"
    );

    let d = edited_copy("qwen3", "missing", |c| {
        c["num_hidden_layers"] = 3.into();
        c.as_object_mut().unwrap().remove("layer_types");
    });
    let e = load_error(&d);
    assert!(
        e.contains("model.safetensors")
            && e.contains("missing tensor `model.layers.2.self_attn.q_proj.weight`"),
        "{e}"
    );

    let d = edited_copy("qwen3", "shape", |c| c["intermediate_size"] = 96.into());
    let e = load_error(&d);
    assert!(
        e.contains("model.safetensors")
            && e.contains("`model.layers.0.mlp.gate_proj.weight` has shape [128, 64]")
            && e.contains("[96, 64]"),
        "{e}"
    );

    let e = load_error(Path::new("/nonexistent/tiny_llm_model"));
    assert!(e.contains("/nonexistent/tiny_llm_model/config.json"), "{e}");
}

/// The f32 limit catches a RoPE base off by 1%.
#[test]
fn f32_limit_catches_a_small_rope_change() {
    let d = edited_copy("qwen3", "theta", |c| {
        let t = c["rope_parameters"]["rope_theta"].as_f64().unwrap();
        c["rope_parameters"]["rope_theta"] = (t * 1.01).into();
    });
    let r = reference("qwen3");
    let g = generate(&d, DType::F32, &r);
    let got: Vec<f64> = g.logits.iter().map(|&v| f64::from(v)).collect();
    let n = nmse(&got, &r.f64);
    eprintln!("rope_theta x 1.01: NMSE {n:.3e}");
    assert!(n > F32_LIMIT, "NMSE {n:.3e} should exceed {F32_LIMIT:.0e}");
}
