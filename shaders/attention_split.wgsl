// Shared by the split-KV kernels (prepended to the decode, paged and prefill modules by
// `Shader::source`, after attention_common.wgsl): the partial results' bindings, their store and
// the fixed-order merge. The CPU-adapter decode kernels' key-lane step is attention_keys.wgsl.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): by 1 to HD4 and to
// n_parts (the plan's splits x key lanes); `merge_row`'s by WG or by its groups (>= 1) to
// n_parts, its tree by halving WG (a power of two) to 0, its groups by 1 to a constant.

// Per (row, split, lane), `part_units()` 16-byte units: (m, l, 0, 0), then the head_dim
// accumulator values (unnormalised). Whole units, so that a partial is written with one store per
// 4 values: on llvmpipe every store instruction is a loop over the lanes, and LLVM's compile time
// grows with their number (BENCHMARKS.md, cold compile).
@group(0) @binding(5) var<storage, read_write> part_out: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> part_in: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> out_buf: array<u32>;

// 16-byte units per partial.
fn part_units() -> u32 {
    return HD4 + 1u;
}

// The partial (m, l, acc) of one (row, split, lane) at unit e of part_out.
fn store_partial(acc: ptr<function, array<vec4<f32>, MAX_HD4>>, e: u32, m: f32, l: f32) {
    part_out[e] = vec4<f32>(m, l, 0.0, 0.0);
    for (var d = 0u; d < HD4; d++) {
        part_out[e + 1u + d] = (*acc)[d];
    }
}

// Output elements 4d .. 4d + 4 of query head h from the n_parts partials of one row starting at
// part_in[base]: combined in ascending order (bitwise repeatable), the sink joining the
// denominator; a row with no visible key gives 0.
fn merge_partials(base: u32, n_parts: u32, d: u32, h: u32) -> vec4<f32> {
    let stride = part_units();
    var m = NEG_BIG;
    for (var sp = 0u; sp < n_parts; sp++) {
        m = max(m, part_in[base + sp * stride].x);
    }
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var sp = 0u; sp < n_parts; sp++) {
        let e = base + sp * stride;
        let ml = part_in[e];
        let w = exp(ml.x - m);
        l += ml.y * w;
        acc += w * part_in[e + 1u + d];
    }
    return acc * out_scale(m, l, h);
}

// `merge_row`'s workgroup memory: the maxima's tree, then each group's sums.
var<workgroup> mg_max: array<f32, WG>;
var<workgroup> mg_acc: array<vec4<f32>, WG>;
var<workgroup> mg_l: array<f32, WG>;

// `merge_partials` by one workgroup of WG (a power of two >= HD4) invocations for one row: the
// partials' maximum by a tree over the invocations (exact in any order), then
// max(WG / HD4, 1) groups of HD4 invocations, group k summing partials k, k + groups, ... for
// output vec4 d = lid % HD4, and the groups' sums added in ascending order: the splits reduce in
// parallel, in an order fixed by WG and HD4 (bitwise repeatable). Invocation lid < HD4 gets
// output elements 4 lid .. 4 lid + 4. Every invocation calls it (it has barriers).
fn merge_row(base: u32, n_parts: u32, h: u32, lid: u32) -> vec4<f32> {
    let stride = part_units();
    var mx = NEG_BIG;
    for (var sp = lid; sp < n_parts; sp += WG) {
        mx = max(mx, part_in[base + sp * stride].x);
    }
    mg_max[lid] = mx;
    workgroupBarrier();
    for (var o = WG / 2u; o > 0u; o = o / 2u) {
        if lid < o {
            mg_max[lid] = max(mg_max[lid], mg_max[lid + o]);
        }
        workgroupBarrier();
    }
    let m = mg_max[0];
    let groups = max(WG / HD4, 1u);
    let grp = lid / HD4;
    let d = lid % HD4;
    var acc = vec4<f32>(0.0);
    var l = 0.0;
    if grp < groups {
        for (var sp = grp; sp < n_parts; sp += groups) {
            let e = base + sp * stride;
            let ml = part_in[e];
            let w = exp(ml.x - m);
            l += ml.y * w;
            acc += w * part_in[e + 1u + d];
        }
    }
    mg_acc[lid] = acc;
    mg_l[lid] = l;
    workgroupBarrier();
    if lid < HD4 {
        for (var k = 1u; k < groups; k++) {
            acc += mg_acc[k * HD4 + lid];
            l += mg_l[k * HD4 + lid];
        }
    }
    return acc * out_scale(m, l, h);
}
