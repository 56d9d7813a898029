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

/// Where RoPE stores f16 through `pack2x16float`, per described device (the f16-in-f32
/// capability as wgpu-hal 30 sets it: every backend but llvmpipe, where it follows
/// `SHADER_F16`): by default on every GPU, never on lavapipe; forced, an `Err` naming the op,
/// the option and the value for another dtype or on a device without the capability (which no
/// machine here has).
#[test]
fn f16_store_choice_by_device() {
    for (name, dev) in DeviceDesc::presets() {
        let cpu = dev.device_type == wgpu::DeviceType::Cpu;
        let f16_in_f32 = dev.shader_f16 || !cpu;
        let choose =
            |option, dtype| f16_store_choice(option, dtype, dev.device_type, f16_in_f32, name);
        assert_eq!(choose(None, DType::F16).unwrap(), !cpu, "{name}");
        for dtype in [DType::F32, DType::BF16] {
            assert!(!choose(None, dtype).unwrap(), "{name} {dtype}");
            let e = choose(Some(true), dtype).unwrap_err();
            assert!(matches!(e, Error::DType { .. }), "{name}: {e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with("rope: ") && msg.contains(&dtype.to_string()),
                "{msg}"
            );
        }
        assert!(!choose(Some(false), DType::F16).unwrap(), "{name}");
        assert_eq!(
            choose(Some(true), DType::F16).unwrap(),
            f16_in_f32,
            "{name}"
        );
    }
    // A Vulkan CPU adapter without SHADER_F16 (llvmpipe on an older Mesa): integer by default,
    // an error when forced.
    let cpu = wgpu::DeviceType::Cpu;
    assert!(!f16_store_choice(None, DType::F16, cpu, false, "llvmpipe").unwrap());
    let e = f16_store_choice(Some(true), DType::F16, cpu, false, "llvmpipe").unwrap_err();
    assert!(matches!(e, Error::Limit { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("rope: ")
            && msg.contains("native_f16_store: Some(true)")
            && msg.contains("SHADER_F16_IN_F32")
            && msg.contains("llvmpipe"),
        "{msg}"
    );
    // A GPU without it (none known to wgpu 30, but the rule holds): never by default.
    let gpu = wgpu::DeviceType::DiscreteGpu;
    assert!(!f16_store_choice(None, DType::F16, gpu, false, "gpu").unwrap());
    assert!(f16_store_choice(Some(true), DType::F16, gpu, false, "gpu").is_err());
}
