use super::*;
use crate::ops::attention::{all_variant_keys, DecodeGeometry, PrefillGeometry, HEAD_DIMS};
use crate::pipeline::PipelineKey;

/// (kind, kr, rows_per_wg, lanes, splits, chunk, bk, native_f16) of `row` of the table.
fn pick(dev: &DeviceDesc, row: usize) -> (Kind, u32, usize, usize, usize, usize, u32, bool) {
    let p = choice_table(dev)[row].plan.clone().unwrap();
    (
        p.variant.kind,
        p.variant.kr,
        p.rows_per_wg,
        p.lanes,
        p.splits,
        p.chunk,
        p.bk,
        p.variant.native_f16,
    )
}
const DECODE_4K: usize = 0;
const DECODE_32K: usize = 1;
const PREFILL_2K: usize = 2;

#[test]
fn llama3_8b_on_gpus_with_subgroups() {
    use Kind::*;
    // 4 query rows per kv head in one row block, one partial per (row, split); splits fill
    // the device (512 / 128 = 4 workgroups per compute unit x its compute units over 8 kv
    // heads) with chunks of at least 256 keys: 16 splits at 4k keys on all three; at 32k
    // NVIDIA's 132 SMs give 66, AMD's 120 CUs 60, Apple's 38 cores 19.
    for (dev, splits_32k) in [
        (DeviceDesc::nvidia(), 66),
        (DeviceDesc::apple(), 19),
        (DeviceDesc::amd(), 60),
    ] {
        let decode = pick(&dev, DECODE_4K);
        assert_eq!(
            decode,
            (DecodeSubgroup, 4, 4, 1, 16, 256, 32, true),
            "{dev:?}"
        );
        let long = pick(&dev, DECODE_32K);
        let chunk = 32768usize.div_ceil(splits_32k);
        assert_eq!(
            long,
            (DecodeSubgroup, 4, 4, 1, splits_32k, chunk, 32, true),
            "{dev:?}"
        );
        let prefill = pick(&dev, PREFILL_2K);
        assert_eq!(
            prefill,
            (PrefillSubgroup, 1, 64, 1, 1, 2048, 32, false),
            "{dev:?}"
        );
        let row = &choice_table(&dev)[DECODE_4K];
        assert_eq!(
            row.pipelines(),
            [
                "attention_decode_subgroup_f16.wgsl:attn_decode_sg",
                "attention_decode.wgsl:attn_decode_merge_rows"
            ]
        );
        assert_eq!(
            choice_table(&dev)[PREFILL_2K].pipelines(),
            ["attention_prefill_subgroup.wgsl:attn_prefill_sg"]
        );
    }
}

/// The prefill launch geometry of Llama-3-8B at 2k (8192 rows per kv head: 2048 tokens x 4
/// query heads) on each described device, and what takes the tiled prefill instead.
#[test]
fn llama3_8b_prefill_geometry() {
    let geometry = |dev: &DeviceDesc| {
        let row = &choice_table(dev)[PREFILL_2K];
        let kind = row.plan.as_ref().unwrap().variant.kind;
        (kind, row.prefill_geometry().expect("a prefill row"))
    };
    // GPUs with subgroups: groups of 8 lanes split head_dim 128 (4 vec4 slots each) for 4
    // rows; 128 invocations hold 16 groups, 64 rows; 128 row blocks x 8 kv heads; two f32
    // tiles of 32 keys; q and acc 64 f32 each, 6 scalars and a vec4 each of scores and of
    // probabilities per row; 16-byte K/V loads; one pass.
    let gpu = PrefillGeometry {
        workgroups: 1024,
        invocations: 128,
        workgroup_bytes: 32768,
        registers_per_lane: 2 * 64 + 4 * (6 + 8),
        accumulators_per_lane: 64,
        bytes_per_load: 16,
        lanes_per_row: 8,
        rows_per_workgroup: 64,
        splits: 1,
        merge_workgroups: 0,
        merge_invocations: 0,
    };
    for dev in [DeviceDesc::nvidia(), DeviceDesc::amd(), DeviceDesc::apple()] {
        assert_eq!(geometry(&dev), (Kind::PrefillSubgroup, gpu), "{dev:?}");
    }
    // WebGPU's defaults (no subgroups, 16 KiB): the tiled prefill, 16 invocations of 4 whole
    // rows, q and acc of 4 rows x 128 in private arrays beside 64 vec4s of scores, word loads.
    let web = PrefillGeometry {
        invocations: 16,
        workgroup_bytes: 16384,
        registers_per_lane: 512 + 512 + 256,
        accumulators_per_lane: 512,
        bytes_per_load: 4,
        lanes_per_row: 1,
        ..gpu
    };
    assert_eq!(
        geometry(&DeviceDesc::webgpu_default()),
        (Kind::Prefill, web)
    );
    // The same device with subgroups takes the subgroup prefill within 16 KiB (16-key tiles).
    let web_sg = DeviceDesc {
        subgroups: true,
        subgroup_min_size: 32,
        ..DeviceDesc::webgpu_default()
    };
    let (kind, g) = geometry(&web_sg);
    assert_eq!((kind, g.workgroup_bytes), (Kind::PrefillSubgroup, 16384));
    assert_eq!(
        choice_table(&web_sg)[PREFILL_2K].plan.as_ref().unwrap().bk,
        16
    );
    // Split over the keys (forced), the partials go through the element merge.
    let d = CHOICE_SHAPES[PREFILL_2K].1;
    let split = Attention {
        splits: Some(4),
        ..Attention::default()
    }
    .plan_for_device(&DeviceDesc::nvidia(), d, DType::F16, true)
    .unwrap()
    .prefill_geometry(&d)
    .unwrap();
    assert_eq!(
        (split.workgroups, split.splits, split.merge_workgroups),
        (4096, 4, 8 * 8192 * 32 / 64)
    );
    // The tiled prefill where the subgroup one does not apply: unaligned rows, f16 arithmetic,
    // fp8 rows that are not whole 16-byte units (forced, they are refused), a CPU adapter
    // (PrefillKeys, which has no prefill geometry). Quantized caches whose rows are whole units
    // prefill with it, as the float ones do.
    let nvidia = DeviceDesc::nvidia();
    let plan_at = |a: &Attention, d: Dims, kv: KvFormat, aligned| {
        a.plan_on(&nvidia, "a described device", d, (DType::F16, kv), aligned)
    };
    let plan = |a: &Attention, kv: KvFormat, aligned| plan_at(a, d, kv, aligned);
    let kind = |a: &Attention, kv, aligned| plan(a, kv, aligned).unwrap().variant.kind;
    let f16 = Attention {
        f16_arithmetic: true,
        ..Attention::default()
    };
    let default = Attention::default();
    assert_eq!(kind(&default, KvFormat::F16, false), Kind::Prefill);
    assert_eq!(kind(&f16, KvFormat::F16, true), Kind::Prefill);
    let forced = Attention {
        kind: Some(Kind::PrefillSubgroup),
        ..Attention::default()
    };
    for q in KvFormat::QUANTIZED {
        let p = plan(&default, q, true).unwrap();
        assert_eq!(
            (p.variant.kind, p.variant.kv),
            (Kind::PrefillSubgroup, q),
            "{q}"
        );
        assert_eq!(kind(&forced, q, true), Kind::PrefillSubgroup, "{q}");
        // Packed 8-bit q·k: the same plan with the I8 key and the same workgroup memory (the
        // int8 K tile lives in the f32 one's space), for the block formats only.
        let int8 = Attention {
            int8_dot: true,
            ..Attention::default()
        };
        match plan(&int8, q, true) {
            Ok(i) => {
                assert!(q.is_block(), "{q}");
                assert_eq!(
                    i.variant,
                    Variant {
                        int8_dot: true,
                        ..p.variant
                    }
                );
                assert_eq!(i.variant.keys()[0].constant("I8"), Some(1));
                assert_eq!(
                    i.prefill_geometry(&d).unwrap().workgroup_bytes,
                    p.prefill_geometry(&d).unwrap().workgroup_bytes
                );
            }
            Err(e) => assert!(!q.is_block() && e.to_string().contains("int8_dot"), "{e}"),
        }
        // Without subgroups (WebGPU's defaults) the tiled prefill reads it.
        let web = default.plan_on(
            &DeviceDesc::webgpu_default(),
            "a described device",
            d,
            (DType::F16, q),
            true,
        );
        assert_eq!(web.unwrap().variant.kind, Kind::Prefill, "{q}");
    }
    let hd40 = Dims { head_dim: 40, ..d };
    let fp8 = KvFormat::Fp8E4M3;
    assert_eq!(
        plan_at(&default, hd40, fp8, true).unwrap().variant.kind,
        Kind::Prefill
    );
    let e = plan_at(&forced, hd40, fp8, true).unwrap_err().to_string();
    assert!(
        e.contains("the PrefillSubgroup kernel reads whole 16-byte units of a K/V row: fp8_e4m3 rows of head_dim 40 are not"),
        "{e}"
    );
    let forced = Attention {
        kind: Some(Kind::PrefillSubgroup),
        ..Attention::default()
    };
    let e = plan(&forced, KvFormat::F16, false).unwrap_err().to_string();
    assert!(
        e.contains("the PrefillSubgroup kernel reads 16-byte units"),
        "{e}"
    );
    let e = forced
        .plan_for_device(&DeviceDesc::webgpu_default(), d, DType::F16, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs a device with the SUBGROUP feature"),
        "{e}"
    );
    assert_eq!(
        choice_table(&DeviceDesc::lavapipe())[PREFILL_2K].prefill_geometry(),
        None
    );
}

/// The subgroup prefill's shape at every head_dim and smallest subgroup size: lanes per row
/// within the subgroup, 4..=16; accumulators (and q) within 64 f32 per lane; 128 or 256
/// invocations; at least 64 rows per workgroup.
#[test]
fn prefill_subgroup_shapes() {
    use crate::ops::attention::{
        prefill_sg_shape, PrefillSgShape, PREFILL_SG_MAX_ACC, SUBGROUP_MIN_SIZES,
    };
    let shape = |l, slots, r, wg| PrefillSgShape {
        lanes_per_row: l,
        slots,
        rows_per_group: r,
        invocations: wg,
    };
    // Llama-3.2-1B (64), Llama-3-8B (128), Gemma-2 (256) on 32-lane subgroups.
    assert_eq!(prefill_sg_shape(16, 32), shape(4, 4, 4, 128));
    assert_eq!(prefill_sg_shape(32, 32), shape(8, 4, 4, 128));
    assert_eq!(prefill_sg_shape(64, 32), shape(16, 4, 4, 256));
    // 8-lane subgroups (lavapipe, Intel) cap the lanes per row at 8; 4-lane ones at 4.
    assert_eq!(prefill_sg_shape(64, 8), shape(8, 8, 2, 256));
    assert_eq!(prefill_sg_shape(32, 4), shape(4, 8, 2, 128));
    assert_eq!(prefill_sg_shape(64, 4), shape(4, 16, 1, 256));
    for hd4 in 1..=64 {
        for sg in SUBGROUP_MIN_SIZES {
            let s = prefill_sg_shape(hd4, sg);
            assert!(s.lanes_per_row <= sg.max(4) && (4..=16).contains(&s.lanes_per_row));
            assert!(s.slots * s.lanes_per_row >= hd4, "{hd4} {sg}: {s:?}");
            assert!(s.acc_f32() <= PREFILL_SG_MAX_ACC, "{hd4} {sg}: {s:?}");
            assert!(s.rows_per_wg() >= 64, "{hd4} {sg}: {s:?}");
            assert!([128, 256].contains(&s.invocations), "{hd4} {sg}: {s:?}");
        }
    }
    assert_eq!(DeviceDesc::nvidia().prefill_sg_cap_keys(32, 32), None);
    // lavapipe at head_dim 128: 193 loop trips per block of 4 keys, 828 keys per split.
    assert_eq!(DeviceDesc::lavapipe().prefill_sg_cap_keys(32, 8), Some(828));
}

/// The decode launch geometry of Llama-3-8B (f16, head_dim 128: 16 units of 16 bytes per
/// K/V row) on the described devices.
#[test]
fn llama3_8b_decode_geometry() {
    let geometry = |dev: &DeviceDesc, row: usize| {
        choice_table(dev)[row]
            .decode_geometry()
            .expect("a decode row")
    };
    // GPUs with subgroups of 32 or 64: a row read by 16 lanes (one 16-byte unit each; a
    // subgroup of 32 takes 2 keys per step, of 64 takes 4), 128 invocations = 8 lane groups,
    // the in-workgroup merge of 4 lane groups' accumulators (4 x 32 vec4s) and (m, l);
    // per lane 4 rows x 2 vec4s of q and of acc, 2 vec4s each of K and V, m and l.
    for (dev, splits_32k) in [
        (DeviceDesc::nvidia(), 66),
        (DeviceDesc::amd(), 60),
        (DeviceDesc::apple(), 19),
    ] {
        for (row, splits) in [(DECODE_4K, 16), (DECODE_32K, splits_32k)] {
            assert_eq!(
                geometry(&dev, row),
                DecodeGeometry {
                    workgroups: 8 * splits,
                    invocations: 128,
                    workgroup_bytes: 4 * 32 * 16 + 4 * 8,
                    registers_per_lane: 4 * 2 * (2 * 4 + 2) + 2 * 4,
                    bytes_per_load: 16,
                    lanes_per_row: 16,
                    splits,
                    merge_workgroups: 32,
                    merge_invocations: 128,
                },
                "{dev:?} {row}"
            );
        }
    }
    // WebGPU's defaults (no subgroups): the workgroup-tile decode, 32 invocations staging
    // 16-key tiles of K and V in all 16 KiB, word loads, 512 workgroups.
    let dev = DeviceDesc::webgpu_default();
    for (row, chunk_splits) in [(DECODE_4K, 64), (DECODE_32K, 64)] {
        assert_eq!(
            geometry(&dev, row),
            DecodeGeometry {
                workgroups: 8 * chunk_splits,
                invocations: 32,
                workgroup_bytes: 16384,
                registers_per_lane: 2 * 4 * 64 + 64,
                bytes_per_load: 4,
                lanes_per_row: 1,
                splits: chunk_splits,
                merge_workgroups: (32 * 32usize).div_ceil(32),
                merge_invocations: 32,
            },
            "{row}"
        );
    }
    // Prefill has no decode geometry.
    assert_eq!(choice_table(&dev)[PREFILL_2K].decode_geometry(), None);
    // Every subgroup shape of the declared space stays within WebGPU's default workgroup
    // memory and 64 accumulators per lane.
    for v in crate::ops::attention::declared_variants() {
        if v.kind == Kind::DecodeSubgroup {
            let sh = v.sg_shape();
            assert!(sh.workgroup_bytes() <= 16384, "{v:?} {sh:?}");
            assert!(4 * sh.sv() * v.kr <= 64, "{v:?} {sh:?}");
            assert_eq!(sh.wg, sh.nlg * sh.lg, "{v:?}");
            assert!(sh.lg <= v.sg_min && sh.lg * sh.slots >= sh.upr, "{v:?}");
        }
    }
}

/// Llama-3-8B decode over a quantized cache on the described devices: GPUs with subgroups
/// take the subgroup decode as for float K/V, each lane reading whole 16-byte units (16 q8_0 or
/// fp8 values: 8 lanes per row, 4 rows; a q4_0 block: 4 lanes per row, 2 rows per workgroup
/// within 64 f32 of accumulators); WebGPU's defaults keep Decode and lavapipe DecodeKeys; fp8
/// rows that are not whole 16-byte units (head_dim 40) take Decode, and forced are refused.
#[test]
fn quantized_caches_decode_with_subgroups() {
    let d = CHOICE_SHAPES[DECODE_4K].1;
    let plan = |a: &Attention, dev: &DeviceDesc, d: Dims, kv: KvFormat| {
        a.plan_on(dev, "a described device", d, (DType::F16, kv), true)
    };
    let default = Attention::default();
    for dev in [DeviceDesc::nvidia(), DeviceDesc::amd(), DeviceDesc::apple()] {
        for (kv, vpu, kr, lanes) in [
            (KvFormat::Q8_0, 4, 4, 8),
            (KvFormat::Q4_0, 8, 2, 4),
            (KvFormat::Fp8E4M3, 4, 4, 8),
        ] {
            let p = plan(&default, &dev, d, kv).unwrap();
            let v = p.variant;
            assert_eq!(
                (v.kind, v.kv, v.kr, v.native_f16, p.rows_per_wg, p.splits),
                (
                    Kind::DecodeSubgroup,
                    kv,
                    kr,
                    false,
                    kr as usize,
                    // 8 kv heads x 4 rows / kr row blocks share the device.
                    sg_splits(&dev, 128, 8 * 4 / kr as usize, 4096, 1)
                ),
                "{dev:?} {kv}"
            );
            let sh = v.sg_shape();
            assert_eq!(
                (sh.vpu, sh.lg, sh.slots, sh.upr * sh.vpu),
                (vpu, lanes, 1, 32)
            );
            assert!(4 * sh.sv() * kr <= 64, "{kv}: {sh:?}");
            let g = p.decode_geometry(&d).unwrap();
            assert_eq!(
                (g.bytes_per_load, g.lanes_per_row, g.invocations),
                (16, lanes, 128),
                "{kv}"
            );
            let keys = v.keys();
            assert_eq!(keys[0].shader.name, "attention_decode_subgroup.wgsl");
            assert_eq!(keys[0].constant("VPU"), Some(vpu));
            assert_eq!(keys[0].constant("KV_FMT"), Some(kv.shader_code()));
            // The merge reads partials: the float format's pipeline.
            assert_eq!(
                keys[1],
                Variant {
                    kv: KvFormat::F16,
                    native_f16: false,
                    ..v
                }
                .keys()[1]
            );
            // Forced kinds still apply.
            for kind in [Kind::Decode, Kind::DecodeSubgroup] {
                let forced = Attention {
                    kind: Some(kind),
                    ..Attention::default()
                };
                assert_eq!(plan(&forced, &dev, d, kv).unwrap().variant.kind, kind);
            }
            // Packed 8-bit q·k: the same plan with the I8 key, for the block formats only.
            let int8 = Attention {
                int8_dot: true,
                ..Attention::default()
            };
            match plan(&int8, &dev, d, kv) {
                Ok(p) => {
                    assert!(kv.is_block(), "{kv}");
                    assert_eq!(
                        p.variant,
                        Variant {
                            int8_dot: true,
                            ..v
                        }
                    );
                    assert_eq!(p.variant.keys()[0].constant("I8"), Some(1));
                }
                Err(e) => assert!(!kv.is_block() && e.to_string().contains("int8_dot"), "{e}"),
            }
        }
    }
    let kind = |dev: &DeviceDesc, d: Dims, kv| plan(&default, dev, d, kv).unwrap().variant.kind;
    for kv in KvFormat::QUANTIZED {
        assert_eq!(
            kind(&DeviceDesc::webgpu_default(), d, kv),
            Kind::Decode,
            "{kv}"
        );
        assert_eq!(
            kind(&DeviceDesc::lavapipe(), d, kv),
            Kind::DecodeKeys,
            "{kv}"
        );
    }
    let hd40 = Dims { head_dim: 40, ..d };
    assert_eq!(
        kind(&DeviceDesc::nvidia(), hd40, KvFormat::Fp8E4M3),
        Kind::Decode
    );
    let forced = Attention {
        kind: Some(Kind::DecodeSubgroup),
        ..Attention::default()
    };
    let e = plan(&forced, &DeviceDesc::nvidia(), hd40, KvFormat::Fp8E4M3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the DecodeSubgroup kernel reads whole 16-byte units of a K/V row: fp8_e4m3 rows of head_dim 40 are not"),
        "{e}"
    );
    // The loop cap of lavapipe (forced subgroup decode) holds for every format.
    assert_eq!(DeviceDesc::nvidia().sg_cap_keys(32, 32, 4), None);
    assert!(DeviceDesc::lavapipe().sg_cap_keys(32, 8, 4).is_some());
}

#[test]
fn subgroup_splits_follow_occupancy() {
    let dev = DeviceDesc::nvidia();
    // 528 resident workgroups of 128 over 8 (batch x kv heads): 66 splits, fewer when the
    // chunks would pass below 256 keys, at least one, more when the loop cap asks.
    assert_eq!(sg_splits(&dev, 128, 8, 32768, 1), 66);
    assert_eq!(sg_splits(&dev, 128, 8, 4096, 1), 16);
    assert_eq!(sg_splits(&dev, 128, 8, 255, 1), 1);
    assert_eq!(sg_splits(&dev, 128, 8, 511, 1), 1);
    assert_eq!(sg_splits(&dev, 128, 8, 512, 1), 2);
    // A batch of 64 sequences over 8 kv heads already fills the device.
    assert_eq!(sg_splits(&dev, 128, 512, 32768, 1), 2);
    assert_eq!(sg_splits(&dev, 128, 4096, 32768, 1), 1);
    assert_eq!(sg_splits(&dev, 128, 8, 300, 5), 5);
    // A live device counts DEFAULT_COMPUTE_UNITS.
    let live = DeviceDesc {
        compute_units: crate::ops::attention::DEFAULT_COMPUTE_UNITS,
        ..dev
    };
    assert_eq!(live.resident_workgroups(128), 512);
    assert_eq!(sg_splits(&live, 128, 8, 32768, 1), 64);
}

#[test]
fn llama3_8b_on_webgpu_defaults() {
    // No subgroups: the workgroup-tile decode, rows 4 x 8 key lanes per workgroup; 16 KiB of
    // workgroup memory: 512 vec4s per tile, 16 keys at head_dim 128.
    let dev = DeviceDesc::webgpu_default();
    assert_eq!(
        pick(&dev, DECODE_4K),
        (Kind::Decode, 1, 4, 8, 64, 64, 16, false)
    );
    assert_eq!(
        pick(&dev, DECODE_32K),
        (Kind::Decode, 1, 4, 8, 64, 512, 16, false)
    );
    assert_eq!(
        pick(&dev, PREFILL_2K),
        (Kind::Prefill, 1, 64, 1, 1, 2048, 16, false)
    );
    assert_eq!(
        choice_table(&dev)[DECODE_4K].pipelines(),
        [
            "attention_decode.wgsl:attn_decode_partial",
            "attention_decode.wgsl:attn_decode_merge"
        ]
    );
    // Gemma-2's head_dim 256 gets 8 keys per tile.
    assert_eq!(choice_table(&dev)[7].plan.as_ref().unwrap().bk, 8);
}

#[test]
fn llama3_8b_on_lavapipe() {
    // CPU adapter, aligned rows: DecodeKeys in chunks of its cap (64 trips of one key at four
    // rows per workgroup), one partial per split; PrefillKeys in one pass.
    let dev = DeviceDesc::lavapipe();
    assert_eq!(
        pick(&dev, DECODE_4K),
        (Kind::DecodeKeys, 4, 4, 1, 64, 64, 32, false)
    );
    assert_eq!(
        pick(&dev, DECODE_32K),
        (Kind::DecodeKeys, 4, 4, 1, 512, 64, 32, false)
    );
    assert_eq!(
        pick(&dev, PREFILL_2K),
        (Kind::PrefillKeys, 1, 8, 1, 1, 2048, 32, false)
    );
    assert_eq!(keys_chunk_keys(4), 64);
    assert_eq!(keys_chunk_keys(1), 256);
    assert_eq!(dev.prefill_keys_loop_cap_keys(128), Some(18_432));
    assert_eq!(dev.loop_cap_keys(128), Some(724));
    assert_eq!(DeviceDesc::nvidia().loop_cap_keys(128), None);
    // Unaligned rows fall back to the workgroup-tile decode, split under the loop cap.
    let d = CHOICE_SHAPES[DECODE_32K].1;
    let p = Attention::default()
        .plan_for_device(&dev, d, DType::F16, false)
        .unwrap();
    assert_eq!(p.variant.kind, Kind::Decode);
    assert_eq!(p.splits, 32768usize.div_ceil(p.chunk));
    assert!(p.chunk <= 724, "{p:?}");
    // A prefill past the PrefillKeys loop cap writes partials for the merge.
    let long = Dims {
        kv_len: 40_000,
        ..CHOICE_SHAPES[PREFILL_2K].1
    };
    let p = Attention::default()
        .plan_for_device(&dev, long, DType::F16, true)
        .unwrap();
    assert_eq!(
        (p.variant.kind, p.splits, p.variant.split_kv),
        (Kind::PrefillKeys, 3, true)
    );
}

/// What a GPU reporting each smallest subgroup size from 4 to 128 gets for Llama-3-8B decode
/// (head_dim 128, GQA-4, f16): the subgroup decode with lane groups of `lg` lanes (at most the
/// subgroup size) holding `slots` 16-byte units each, enough to cover a row, every key
/// declared. 128 is past SUBGROUP_MIN_SIZES: it gets 64's pipelines (a row of 16 units needs
/// 16 lanes either way). `Attention::subgroup_min_size` assumes smaller subgroups, and never
/// more than the device's.
#[test]
fn subgroup_sizes_4_to_128() {
    let declared: std::collections::HashSet<PipelineKey> = all_variant_keys().into_iter().collect();
    let d = CHOICE_SHAPES[DECODE_4K].1;
    let hd4 = (d.head_dim / 4) as u32;
    let mut keys_at = Vec::new();
    for size in [4u32, 8, 16, 32, 64, 128] {
        let dev = DeviceDesc {
            subgroup_min_size: size,
            ..DeviceDesc::nvidia()
        };
        let p = Attention::default()
            .plan_for_device(&dev, d, DType::F16, true)
            .unwrap();
        assert_eq!(p.variant.kind, Kind::DecodeSubgroup, "{size}");
        let sh = p.variant.sg_shape();
        assert!(
            sh.slots * sh.lg >= sh.upr && sh.lg <= size && sh.upr * sh.vpu == hd4,
            "{size}: {sh:?}"
        );
        assert_eq!(sh.nlg * sh.lg, sh.wg, "{size}: {sh:?}");
        let keys = p.variant.keys();
        for k in &keys {
            assert!(declared.contains(k), "{size}: {k:?} is not declared");
        }
        keys_at.push(keys);
    }
    assert_eq!(keys_at[4], keys_at[5], "128 gets 64's pipelines");
    let forced = |n| Attention {
        subgroup_min_size: Some(n),
        ..Attention::default()
    };
    let p = forced(4)
        .plan_for_device(&DeviceDesc::nvidia(), d, DType::F16, true)
        .unwrap();
    assert_eq!((p.variant.sg_min, p.variant.sg_shape().lg), (4, 4));
    for bad in [64, 24, 2] {
        let e = forced(bad)
            .plan_for_device(&DeviceDesc::nvidia(), d, DType::F16, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("subgroup_min_size {bad} must be a power of two from 4 to the smallest subgroup size of a described device, 32")),
            "{e}"
        );
    }
}

#[test]
fn the_planner_needs_what_the_device_lacks() {
    let d = CHOICE_SHAPES[PREFILL_2K].1;
    let f16 = Attention {
        f16_arithmetic: true,
        ..Attention::default()
    };
    let e = f16
        .plan_for_device(&DeviceDesc::webgpu_default(), d, DType::F16, true)
        .unwrap_err();
    assert!(e.to_string().contains("SHADER_F16"), "{e}");
    // On lavapipe f16 arithmetic takes the tiled prefill instead of PrefillKeys.
    let p = f16
        .plan_for_device(&DeviceDesc::lavapipe(), d, DType::F16, true)
        .unwrap();
    assert_eq!((p.variant.kind, p.variant.f16), (Kind::Prefill, true));
}

/// [`planned_variants`] on every preset.
fn sweep(head_dims: impl Iterator<Item = usize> + Clone) -> Vec<Variant> {
    DeviceDesc::presets()
        .iter()
        .flat_map(|(_, dev)| planned_variants(dev, head_dims.clone()))
        .collect()
}

#[test]
fn the_declared_keys_cover_the_planner() {
    let declared: std::collections::HashSet<PipelineKey> = all_variant_keys().into_iter().collect();
    let planned = sweep(HEAD_DIMS.iter().map(|&h| h as usize));
    let kinds: std::collections::HashSet<Kind> = planned.iter().map(|v| v.kind).collect();
    assert_eq!(kinds.len(), Kind::ALL.len(), "the sweep reaches every kind");
    for v in planned {
        for k in v.keys() {
            assert!(
                declared.contains(&k),
                "{v:?} plans {k:?}, which is not declared"
            );
        }
    }
}

#[test]
fn every_planned_variant_is_a_point_of_the_space() {
    for v in sweep((4..=crate::ops::attention::MAX_HEAD_DIM).step_by(4)) {
        assert!(v.fits(), "{v:?}");
    }
}
