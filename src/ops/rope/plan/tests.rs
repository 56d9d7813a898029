use super::*;
use crate::ops::attention::DeviceDesc;

/// (head groups, heads per group) of each described device for `w`.
fn per_device(w: HeadWork) -> Vec<(&'static str, (usize, usize))> {
    DeviceDesc::presets()
        .into_iter()
        .map(|(name, dev)| {
            let cpu = dev.device_type == wgpu::DeviceType::Cpu;
            (name, head_groups(w, cpu))
        })
        .collect()
}

/// Every described device but lavapipe gets `gpu`, lavapipe (a CPU adapter) `cpu`.
fn assert_groups(w: HeadWork, gpu: (usize, usize), cpu: (usize, usize)) {
    for (name, got) in per_device(w) {
        let want = if name == "lavapipe" { cpu } else { gpu };
        assert_eq!(got, want, "{name}: {w:?}");
    }
}

/// The head grouping of the bench's RoPE shapes (Llama-3-8B's fused q and k: 40 heads of 128)
/// per described device: GPUs walk 2 heads per invocation, CPU adapters (lavapipe) as many as
/// keep the dispatch near `TARGET_INVOCATIONS` within 4 KiB of a token (8 f32 heads, 14
/// halves).
#[test]
fn rope_heads_per_invocation_by_device() {
    let vec4 = |tokens, n_cols, head_bytes| HeadWork {
        tokens,
        heads: 40,
        n_cols,
        head_bytes,
        vec4: true,
        norm: false,
    };
    // f32: 3328 tokens, 16 vec4 units of pairs per head.
    assert_groups(vec4(3328, 16, 512), (20, 2), (5, 8));
    // bf16: 6656 tokens, 8 units of 8 pairs per head.
    assert_groups(vec4(6656, 8, 256), (20, 2), (3, 14));
    // One decode token: one head per invocation everywhere (the device needs the invocations).
    assert_groups(vec4(1, 16, 512), (40, 1), (40, 1));
    // The scalar kernel (unaligned views) at Qwen2.5-0.5B's 14 + 2 heads of 64.
    let scalar = HeadWork {
        tokens: 1000,
        heads: 16,
        n_cols: 16,
        head_bytes: 256,
        vec4: false,
        norm: false,
    };
    assert_groups(scalar, (8, 2), (4, 4));
    // QK-norm + RoPE (Qwen3-8B's 32 + 8 heads, 2048 tokens): up to 8 heads on CPU adapters.
    let norm = HeadWork {
        tokens: 2048,
        heads: 40,
        n_cols: 64,
        head_bytes: 512,
        vec4: false,
        norm: true,
    };
    assert_groups(norm, (20, 2), (5, 8));
    // Every group count covers every head, within GPU_HEADS_PER_INVOCATION off the CPU.
    for tokens in [1, 7, 512, 4096, 70_000] {
        for heads in [1, 2, 3, 40, 64, 129] {
            for (vec4, norm) in [(true, false), (false, false), (false, true)] {
                let w = HeadWork {
                    tokens,
                    heads,
                    n_cols: 8,
                    head_bytes: 256,
                    vec4,
                    norm,
                };
                for (name, (groups, per_group)) in per_device(w) {
                    assert!(groups * per_group >= heads, "{name}: {w:?}");
                    assert!((groups - 1) * per_group < heads, "{name}: {w:?}");
                    if name != "lavapipe" {
                        assert!(per_group <= GPU_HEADS_PER_INVOCATION, "{name}: {w:?}");
                    }
                }
            }
        }
    }
}
