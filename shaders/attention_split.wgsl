// Shared by the split-KV kernels (prepended to the decode, paged and prefill modules by
// `Shader::source`, after attention_common.wgsl): the partial results' bindings, their store and
// the fixed-order merge. The CPU-adapter decode kernels' key-lane step is attention_keys.wgsl.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): by 1 to HD4 and to
// n_parts (the plan's splits x key lanes).

// Per (row, split, lane): m, l, then head_dim accumulator values (unnormalised).
@group(0) @binding(5) var<storage, read_write> part_out: array<f32>;
@group(0) @binding(6) var<storage, read> part_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> out_buf: array<u32>;

// The partial (m, l, acc) of one (row, split, lane) at part_out[e ..].
fn store_partial(acc: ptr<function, array<vec4<f32>, MAX_HD4>>, e: u32, m: f32, l: f32) {
    part_out[e] = m;
    part_out[e + 1u] = l;
    for (var d = 0u; d < HD4; d++) {
        let a = (*acc)[d];
        part_out[e + 2u + 4u * d] = a.x;
        part_out[e + 3u + 4u * d] = a.y;
        part_out[e + 4u + 4u * d] = a.z;
        part_out[e + 5u + 4u * d] = a.w;
    }
}

// Output elements 4d .. 4d + 4 of query head h from the n_parts partials of one row starting at
// part_in[base]: combined in ascending order (bitwise repeatable), the sink joining the
// denominator; a row with no visible key gives 0.
fn merge_partials(base: u32, n_parts: u32, d: u32, h: u32) -> vec4<f32> {
    let stride = 4u * HD4 + 2u;
    var m = NEG_BIG;
    for (var sp = 0u; sp < n_parts; sp++) {
        m = max(m, part_in[base + sp * stride]);
    }
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var sp = 0u; sp < n_parts; sp++) {
        let e = base + sp * stride;
        let w = exp(part_in[e] - m);
        l += part_in[e + 1u] * w;
        let a = e + 2u + 4u * d;
        acc += w * vec4<f32>(part_in[a], part_in[a + 1u], part_in[a + 2u], part_in[a + 3u]);
    }
    return acc * out_scale(m, l, h);
}
