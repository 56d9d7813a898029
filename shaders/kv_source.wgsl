// Shared by the two cache writers (prepended to kv_cache.wgsl and paged_kv.wgsl by
// `Shader::source`, after common.wgsl and kv_quant.wgsl): the new K and V rows' bindings and
// their reads (`load4`, which kv_quant_store.wgsl quantizes from). Each writer declares
// `SRC_DTYPE` (the new rows' storage dtype), its own destination bindings and `kv_put`.

@group(0) @binding(1) var<storage, read> k_src: array<u32>;
@group(0) @binding(2) var<storage, read> v_src: array<u32>;

fn src_word(is_v: bool, i: u32) -> u32 {
    if is_v {
        return v_src[i];
    }
    return k_src[i];
}

// Four elements of the new K (or V) rows starting at element e (a multiple of 2 for half
// types). The same shape as attention_common.wgsl's load4, on other bindings: WGSL cannot pass a
// storage buffer to a function, so each binding set keeps its own word fetch; the decoding is
// shared (unpack_half4 in common.wgsl).
fn load4(is_v: bool, e: u32) -> vec4<f32> {
    if SRC_DTYPE == DT_F32 {
        return vec4<f32>(
            bitcast<f32>(src_word(is_v, e)),
            bitcast<f32>(src_word(is_v, e + 1u)),
            bitcast<f32>(src_word(is_v, e + 2u)),
            bitcast<f32>(src_word(is_v, e + 3u)),
        );
    }
    let h = e >> 1u;
    return unpack_half4(vec2<u32>(src_word(is_v, h), src_word(is_v, h + 1u)), SRC_DTYPE);
}
