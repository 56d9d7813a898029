use super::*;

#[test]
fn tile_sizes() {
    assert_eq!(tile_v4_for(16384), 512);
    assert_eq!(tile_v4_for(32768), 1024);
    assert_eq!(tile_v4_for(65536), 1024);
    assert_eq!(tile_v4_for(20000), 512);
}

#[test]
fn prefill_classes_pick_the_smallest_module() {
    assert_eq!(prefill_shader(16, false), ATTENTION_PREFILL_HD64);
    assert_eq!(prefill_shader(17, false), ATTENTION_PREFILL_HD128);
    assert_eq!(prefill_shader(32, true), ATTENTION_PREFILL_F16_HD128);
    assert_eq!(prefill_shader(33, false), ATTENTION_PREFILL);
    assert_eq!(prefill_shader(64, true), ATTENTION_PREFILL_F16);
    // 8 staged q rows of the class, then per group of 4 rows 8 lanes' maxima and 64 keys' P^T.
    assert_eq!(prefill_keys_workgroup_bytes(16), (8 * 16 + 144) * 16);
    assert_eq!(prefill_keys_workgroup_bytes(64), (8 * 64 + 144) * 16);
}

#[test]
fn every_declared_key_is_in_one_of_the_modules() {
    let keys = all_variant_keys();
    for k in &keys {
        assert!(MODULES.contains(&k.shader), "{k:?}");
    }
    let shares: usize = MODULES.iter().map(|m| m.variants().len()).sum();
    assert_eq!(shares, keys.len());
    for m in MODULES {
        assert!(!m.variants().is_empty(), "{} has no variants", m.name);
    }
}

#[test]
fn kinds_are_declared_once_each() {
    for (i, k) in Kind::ALL.iter().enumerate() {
        assert_eq!(k.axes().kind, *k);
        assert!(!Kind::ALL[..i].contains(k));
    }
}

#[test]
fn int8_dot_is_declared_for_the_block_formats_of_the_subgroup_kernels() {
    let int8: Vec<Variant> = declared_variants()
        .into_iter()
        .filter(|v| v.int8_dot)
        .collect();
    assert!(!int8.is_empty());
    for v in &int8 {
        assert!(
            matches!(v.kind, Kind::DecodeSubgroup | Kind::PrefillSubgroup),
            "{v:?}"
        );
        assert!(v.kv.is_block(), "{v:?}");
        let keys = v.keys();
        assert_eq!(keys[0].constant("I8"), Some(1), "{v:?}");
        // The merge reads partials: the same pipeline as without.
        let off = Variant {
            int8_dot: false,
            ..*v
        };
        assert_eq!(keys[1..], off.keys()[1..]);
        assert_eq!(off.keys()[0].constant("I8"), None);
    }
    for kind in [Kind::DecodeSubgroup, Kind::PrefillSubgroup] {
        for kv in [KvFormat::Q8_0, KvFormat::Q4_0] {
            for dtype in DType::ALL {
                assert!(int8
                    .iter()
                    .any(|v| v.kind == kind && v.kv == kv && v.dtype == dtype));
            }
        }
    }
    let fp8 = Variant {
        kv: KvFormat::Fp8E4M3,
        ..int8[0]
    };
    assert!(!fp8.fits());
    let float = Variant {
        kv: KvFormat::from_dtype(int8[0].dtype),
        ..int8[0]
    };
    assert!(!float.fits());
}

#[test]
fn host_constants_match_the_shaders() {
    // The planner's chunk cap and rows per workgroup are the kernels' own sizes: a mismatch
    // would cut keys or rows short without an error.
    let keys = crate::pipeline::ATTENTION_KEYS_WGSL;
    assert!(keys.contains(&format!("const KEYS_TRIPS: u32 = {KEYS_TRIPS}u;")));
    // `keys_partial` reads the lanes' maxima and shares with 8 constant indices.
    assert_eq!(KEYS_WG, 8);
    let prefill = include_str!("../../../../shaders/attention_prefill.wgsl");
    assert!(prefill.contains(&format!("const PK_ROWS: u32 = {PREFILL_KEYS_ROWS}u;")));
    assert!(prefill.contains(&format!("const PK_BK: u32 = {PREFILL_KEYS_TILE}u;")));
}
