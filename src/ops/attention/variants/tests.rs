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
    assert_eq!(prefill_keys_workgroup_bytes(16), (16 * 16 + 288) * 16);
    assert_eq!(prefill_keys_workgroup_bytes(64), (16 * 64 + 288) * 16);
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
