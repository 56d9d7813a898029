//! Run a small HF-format model (`config.json` + `model.safetensors`) on the GPU with the
//! `llama-kernels` kernels (the model code is `llama_kernels_tools::tiny_llm`, in
//! `tools/src/tiny_llm/`):
//!
//! ```text
//! cargo run --release --example tiny_llm -- --model DIR --prompt 1,2,3 --steps N \
//!     [--dtype f32|bf16|f16] [--kv q8_0|q4_0|fp8_e4m3] [--logits OUT.safetensors] [--draft DIR [--draft-len K]]
//! ```
//!
//! Prefills the prompt (P tokens) in one call, then runs N greedy decode steps. Prints one line
//! `tokens: a b c ...` with the N + 1 argmaxes of logits rows P-1 ..= P+N-1. `--logits` writes
//! tensor `logits`, F32 `[P + N, vocab]`. `--draft DIR` decodes speculatively
//! (`llama_kernels_tools::tiny_llm::speculative`): the model in DIR (same vocabulary; the
//! target itself works) drafts K tokens (`--draft-len`, default 4) greedily, the target verifies
//! them in one pass and keeps the longest agreeing prefix plus its own next token; the tokens
//! printed are the same, then a line `target_passes: N` with the target's forward calls. Architectures: llama, mistral, qwen2, qwen3, gemma2,
//! phi3 (`models/` holds tiny ones, `scripts/gen_tiny_models.py` makes them).

use std::path::PathBuf;
use std::process::ExitCode;

use llama_kernels::{Context, DType, KvFormat};
use llama_kernels_tools::tiny_llm;

const USAGE: &str = "usage: tiny_llm --model DIR --prompt 1,2,3 --steps N [--dtype f32|bf16|f16] [--kv q8_0|q4_0|fp8_e4m3] [--logits OUT.safetensors] [--draft DIR [--draft-len K]]";

struct Args {
    model: PathBuf,
    prompt: Vec<u32>,
    steps: usize,
    dtype: DType,
    /// KV cache format; `None`: the compute dtype.
    kv: Option<KvFormat>,
    logits: Option<PathBuf>,
    draft: Option<PathBuf>,
    draft_len: usize,
}

/// `Ok(None)`: help was asked for.
fn parse_args() -> Result<Option<Args>, String> {
    let mut it = std::env::args().skip(1);
    let (mut model, mut prompt, mut steps, mut dtype, mut kv, mut logits) =
        (None, None, None, DType::F32, None, None);
    let (mut draft, mut draft_len) = (None, None);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--prompt" => {
                let ids = value
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        format!("--prompt {value:?}: comma-separated token ids expected ({e})")
                    })?;
                prompt = Some(ids);
            }
            "--steps" => {
                steps = Some(
                    value
                        .parse::<usize>()
                        .map_err(|e| format!("--steps {value:?}: {e}"))?,
                )
            }
            "--dtype" => {
                dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype {other:?}: expected f32, bf16 or f16")),
                }
            }
            "--kv" => {
                kv = Some(
                    KvFormat::parse(&value)
                        .filter(|f| f.is_quantized())
                        .ok_or_else(|| {
                            format!("--kv {value:?}: expected q8_0, q4_0 or fp8_e4m3")
                        })?,
                )
            }
            "--logits" => logits = Some(PathBuf::from(value)),
            "--draft" => draft = Some(PathBuf::from(value)),
            "--draft-len" => {
                draft_len = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|&k| k >= 1)
                        .ok_or_else(|| format!("--draft-len {value:?}: an integer >= 1"))?,
                )
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if draft.is_none() && draft_len.is_some() {
        return Err(format!("--draft-len needs --draft\n{USAGE}"));
    }
    if draft.is_some() && logits.is_some() {
        return Err(format!(
            "--logits is not available with --draft (the verification passes score drafts, not one row per step)\n{USAGE}"
        ));
    }
    Ok(Some(Args {
        model: model.ok_or_else(|| format!("--model is required\n{USAGE}"))?,
        prompt: prompt.ok_or_else(|| format!("--prompt is required\n{USAGE}"))?,
        steps: steps.ok_or_else(|| format!("--steps is required\n{USAGE}"))?,
        dtype,
        kv,
        logits,
        draft,
        draft_len: draft_len.unwrap_or(4),
    }))
}

fn report_reprefill(at: Option<usize>) {
    if let Some(n) = at {
        eprintln!("tiny_llm: LongRoPE switch: re-encoded all {n} tokens with the long factors");
    }
}

fn print_tokens(tokens: &[u32]) {
    let tokens: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    println!("tokens: {}", tokens.join(" "));
}

fn run(args: &Args) -> Result<(), String> {
    let ctx = Context::new().map_err(|e| e.to_string())?;
    let kv = args.kv.unwrap_or(KvFormat::from_dtype(args.dtype));
    let m = tiny_llm::model::Model::load(&ctx, &args.model, args.dtype)
        .and_then(|m| m.with_kv(kv))
        .map_err(|e| e.to_string())?;
    if let Some(dir) = &args.draft {
        let same = dir.canonicalize().ok() == args.model.canonicalize().ok();
        let loaded;
        let draft = if same {
            &m
        } else {
            loaded = tiny_llm::model::Model::load(&ctx, dir, args.dtype)
                .and_then(|m| m.with_kv(kv))
                .map_err(|e| format!("--draft: {e}"))?;
            &loaded
        };
        let out = tiny_llm::speculative::generate(
            &ctx,
            &m,
            draft,
            &args.prompt,
            args.steps,
            args.draft_len,
        )
        .map_err(|e| e.to_string())?;
        report_reprefill(out.reprefilled_at);
        eprintln!(
            "tiny_llm: {} of {} drafts accepted, {} draft passes",
            out.accepted, out.drafted, out.draft_passes
        );
        print_tokens(&out.tokens);
        println!("target_passes: {}", out.target_passes);
        return Ok(());
    }
    let out = m
        .generate(&ctx, &args.prompt, args.steps)
        .map_err(|e| e.to_string())?;
    eprintln!("tiny_llm: warm-up built {} pipelines", out.warmed_up);
    report_reprefill(out.reprefilled_at);
    print_tokens(&out.tokens);
    if let Some(path) = &args.logits {
        let rows = args.prompt.len() + args.steps;
        let bytes: Vec<u8> = out.logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![rows, m.cfg.vocab],
            &bytes,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        safetensors::serialize_to_file([("logits", view)], None, path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tiny_llm: {msg}");
            ExitCode::FAILURE
        }
    }
}
