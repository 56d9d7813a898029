#!/usr/bin/env python3
"""Write tiny random models in HF format, with reference logits, for tiny_llm
(tools/src/tiny_llm/, tools/examples/tiny_llm.rs).

    pip install numpy torch transformers safetensors
    python3 scripts/gen_tiny_models.py            # writes models/<name>/

Each model is made by transformers itself (random init with a fixed seed, eager attention) and
saved with `save_pretrained` (config.json + model.safetensors). Beside it, reference.safetensors
holds, for a fixed prompt and its greedy continuation:

- prompt [P] and tokens [N + 1] (I64): the argmaxes of logits rows P-1 .. P+N-1;
- logits_f64 [P + N, vocab] (F64): the model run in float64 (`model.double()`);
- logits_bf16 [P + N, vocab] (BF16): the same run in bfloat16;
- metadata: steps, and nmse_bf16 (transformers' own bf16 logits against float64).

Prompt rows come from one forward pass over the prompt; the rest from `generate()` (greedy,
KV cache), so model-specific generation logic runs as users run it: Phi-3's LongRoPE switch
drops the cache and re-encodes the whole sequence when it first crosses
original_max_position_embeddings.

Random init gives near-uniform logits, so a greedy token could flip on rounding noise. The
script uses a larger init range, randomises norm weights and biases (HF initialises them to
1/0, which would hide a swapped or missing one), and reseeds until every step's top-1 margin is
far above the bf16 error, the bf16 run picks the same tokens, and the continuation is not one
token repeated.
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

# Every model has head_dim 32: lavapipe compiles each attention specialisation (one per head_dim
# and dtype) once per machine, so one head_dim keeps the cold test run short; 32 is the smallest
# that holds a q8_0 or q4_0 KV cache (blocks of 32 values of a head row).
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")

COMMON = dict(
    vocab_size=128,
    hidden_size=128,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.1,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    rms_norm_eps=1e-5,
)


def spec(name, model_type, steps, prompt_len, storage, old_form=False, **kw):
    cfg = dict(COMMON)
    cfg.update(kw)
    return dict(name=name, model_type=model_type, steps=steps, prompt_len=prompt_len,
                storage=storage, old_form=old_form, config=cfg)


MODELS = [
    # Llama 3.1 scaling, old config form (top-level rope_theta + rope_scaling), untied.
    spec("llama3", "llama", 8, 11, torch.bfloat16, old_form=True, tie_word_embeddings=False,
         rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=16)),
    # YaRN; head_dim given (32) and != hidden / heads (64); MQA; tied; attention and MLP biases;
    # stored F32.
    spec("llama_yarn", "llama", 8, 9, torch.float32, tie_word_embeddings=True, head_dim=32,
         num_attention_heads=2, num_key_value_heads=1,
         attention_bias=True, mlp_bias=True,
         rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                              original_max_position_embeddings=32)),
    # Linear position interpolation, MHA.
    spec("llama_linear", "llama", 6, 8, torch.bfloat16, tie_word_embeddings=False, num_key_value_heads=4,
         rope_parameters=dict(rope_type="linear", rope_theta=500000.0, factor=2.0)),
    # Dynamic NTK: the decode steps grow past max_position_embeddings = 16.
    spec("llama_dynamic", "llama", 12, 10, torch.bfloat16, tie_word_embeddings=False, max_position_embeddings=16,
         rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
    # q/k/v bias; stored F16.
    spec("qwen2", "qwen2", 8, 10, torch.float16, tie_word_embeddings=False,
         rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    # Sliding window 6 on every layer, MQA; the prompt crosses the window.
    spec("mistral", "mistral", 8, 12, torch.bfloat16, tie_word_embeddings=False, num_key_value_heads=1,
         sliding_window=6, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    # Per-head q/k RMSNorm before RoPE; head_dim given; tied.
    spec("qwen3", "qwen3", 8, 9, torch.bfloat16, tie_word_embeddings=True, head_dim=32,
         rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    # Gemma 2: sqrt(hidden) embedding scale (96: rounds in bf16), (1 + w) sandwich norms, both
    # softcaps, query_pre_attn_scalar != head_dim, sliding window 5 on even layers, gelu tanh.
    # Untied: tied, the scaled embedding dominates the residual stream and a random model only
    # ever repeats its input token.
    spec("gemma2", "gemma2", 8, 11, torch.bfloat16, hidden_size=96, head_dim=32, num_hidden_layers=3,
         tie_word_embeddings=False, query_pre_attn_scalar=24, attn_logit_softcapping=4.0,
         final_logit_softcapping=8.0, sliding_window=5, hidden_activation="gelu_pytorch_tanh",
         rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    # Phi-3: fused qkv_proj / gate_up_proj, LongRoPE; decode crosses original_max_position_embeddings
    # = 16 (generate() re-encodes the sequence with the long factors there). One factor per
    # rotary pair (head_dim / 2 = 16).
    spec("phi3", "phi3", 12, 10, torch.bfloat16, tie_word_embeddings=False, original_max_position_embeddings=16,
         max_position_embeddings=64,
         rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                              short_factor=[1.0, 1.05, 1.1, 1.2, 1.3, 1.45, 1.6, 1.8,
                                            2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75],
                              long_factor=[1.0, 1.25, 1.5, 1.85, 2.2, 2.6, 3.0, 3.75,
                                           4.5, 5.25, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])),
]


def to_old_form(cfg_json):
    """Rewrite the config as older Hub checkpoints carry it: top-level rope_theta and
    rope_scaling (with `type`), and no head_dim when it is derived."""
    # Older configs leave head_dim out when it is hidden_size / num_attention_heads.
    if cfg_json.get("head_dim") == cfg_json["hidden_size"] // cfg_json["num_attention_heads"]:
        del cfg_json["head_dim"]
    rp = cfg_json.pop("rope_parameters")
    cfg_json["rope_theta"] = rp.pop("rope_theta")
    rp["type"] = rp.pop("rope_type")
    cfg_json["rope_scaling"] = rp
    return cfg_json


def randomise(model, gen, gemma):
    """Norm weights and biases away from HF's 1/0 init, so a missing or swapped one shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                base = 0.0 if gemma else 1.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def nmse(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(((got - want) ** 2).sum() / (want ** 2).sum())


def run(model, prompt, steps):
    """Logits rows [P + steps, vocab] and the steps + 1 greedy tokens."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[0]
        gen_cfg = GenerationConfig(max_new_tokens=steps + 1, min_new_tokens=0, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True,
                                   eos_token_id=None, pad_token_id=0, bos_token_id=None)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
    gen_rows = torch.stack([l[0] for l in out.logits])
    assert gen_rows.shape[0] == steps + 1, gen_rows.shape
    tokens = out.sequences[0, len(prompt):].tolist()
    # Row P-1 from the prompt pass and from generate's prefill are the same computation.
    assert torch.allclose(full[-1].double(), gen_rows[0].double(), rtol=0, atol=1e-3 * float(full.abs().max())), \
        "prefill row mismatch"
    rows = torch.cat([full[:-1], gen_rows], 0)
    return rows, tokens


def load(d, dtype):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m = m.double() if dtype == torch.float64 else m.to(dtype)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    m.eval()
    return m


def make(s, seed):
    d = os.path.join(ROOT, s["name"])
    shutil.rmtree(d, ignore_errors=True)
    cfg = AutoConfig.for_model(s["model_type"], **s["config"])
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed + 1)
    randomise(model, gen, s["model_type"] == "gemma2")
    model.to(s["storage"]).save_pretrained(d)
    if s["old_form"]:
        path = os.path.join(d, "config.json")
        with open(path) as f:
            cj = json.load(f)
        with open(path, "w") as f:
            json.dump(to_old_form(cj), f, indent=2, sort_keys=True)
    rng = np.random.default_rng(seed)
    prompt = [int(t) for t in rng.integers(0, s["config"]["vocab_size"], s["prompt_len"])]
    f64, tokens = run(load(d, torch.float64), prompt, s["steps"])
    b16, tokens_b16 = run(load(d, torch.bfloat16), prompt, s["steps"])
    f64 = f64.double()
    top2 = torch.topk(f64, 2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1])[len(prompt) - 1:]
    row_err = (b16.double() - f64).abs().max(dim=-1).values[len(prompt) - 1:]
    err_b16 = float(row_err.max())
    # Each greedy step must be decided by far more than bf16 rounding moves that row's logits
    # (and by far more than f32 error), and bf16 must pick the same tokens.
    ok = tokens == tokens_b16 and bool((margins > 3 * row_err).all()) and float(margins.min()) > 1e-3
    # Random models like to repeat one token; a varied continuation feeds the decode steps
    # different embeddings.
    ok = ok and len(set(tokens)) >= 3
    return d, dict(prompt=prompt, tokens=tokens, same=tokens == tokens_b16, f64=f64, b16=b16,
                   margins=margins, ratio=float((margins / row_err).min()), err_b16=err_b16, ok=ok)


def main():
    names = sys.argv[1:]
    summary = []
    for s in MODELS:
        if names and s["name"] not in names:
            continue
        for attempt in range(200):
            seed = 1000 * (MODELS.index(s) + 1) + attempt
            d, r = make(s, seed)
            if r["ok"]:
                break
            print(f"{s['name']}: seed {seed} not decisive (min margin {float(r['margins'].min()):.3g}, "
                  f"margin / bf16 row error {r['ratio']:.3g}, same tokens {r['same']}, "
                  f"{len(set(r['tokens']))} distinct); reseeding")
        else:
            raise SystemExit(f"{s['name']}: no decisive seed found")
        n_b16 = nmse(r["b16"].double().numpy(), r["f64"].numpy())
        save_file(
            {
                "prompt": torch.tensor(r["prompt"], dtype=torch.int64),
                "tokens": torch.tensor(r["tokens"], dtype=torch.int64),
                "logits_f64": r["f64"].contiguous(),
                "logits_bf16": r["b16"].to(torch.bfloat16).contiguous(),
            },
            os.path.join(d, "reference.safetensors"),
            metadata={"steps": str(s["steps"]), "nmse_bf16": repr(n_b16), "seed": str(seed),
                      "transformers": __import__("transformers").__version__},
        )
        line = (f"{s['name']:14s} seed {seed}  P={len(r['prompt'])} N={s['steps']}  "
                f"min margin {float(r['margins'].min()):.3g}  margin/bf16 err {r['ratio']:.3g}  "
                f"nmse_bf16 {n_b16:.3g}")
        print(line)
        summary.append(line)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(ROOT) for f in fs)
    print(f"models/: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
