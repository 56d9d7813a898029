// RMSNorm family: y = x / sqrt(mean(x*x) + eps) * (w + weight_offset), over rows of length n.
// Fused residual: h = x + residual (rounded to the storage dtype, as the model stores it),
// residual_out = h, y = norm(h). One workgroup per row; f32 accumulation; a tree reduction in
// workgroup memory.
//
// Override constants (set by `ops::rms_norm::Variant`):
//   DTYPE      storage dtype of x, weight, residual and outputs (0 f32, 1 f16, 2 bf16)
//   V          elements per chunk: 1 or 4 for f32, 2 or 4 for half types (pairs share a word)
//   WG         workgroup size, a power of two <= 256
//   HAS_RES    fused residual variant
//   X_SRC      where x is read from: 0 its own binding, 1 the `dst` binding (in place, or the same
//              buffer as out), 2 the `res_dst` binding (the same buffer as residual_out)
//   R_SRC      the same for residual (2 when residual is updated in place)
//   W_SRC      the same for weight
// A buffer cannot be bound read-only and read-write in one dispatch, so a tensor that shares a
// buffer with an output is read through that output's read_write binding.
// Unused bindings are bound to small dummy buffers and never read.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): chunks step by 1 or by
// WG (sum_squares4 is called with step 1 or WG) to the row's chunk count; the reductions halve
// their stride down to 0.

override DTYPE: u32 = 0u;
override V: u32 = 4u;
override WG: u32 = 256u;
override HAS_RES: bool = false;
override X_SRC: u32 = 0u;
override R_SRC: u32 = 0u;
override W_SRC: u32 = 0u;

struct Params {
    n_rows: u32,
    n: u32,
    x_off: u32,
    x_stride: u32,
    w_off: u32,
    r_off: u32,
    r_stride: u32,
    out_off: u32,
    out_stride: u32,
    rout_off: u32,
    rout_stride: u32,
    eps: f32,
    weight_offset: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read> res: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<u32>;
@group(0) @binding(5) var<storage, read_write> res_dst: array<u32>;

const B_X: u32 = 0u;
const B_W: u32 = 1u;
const B_R: u32 = 2u;
const B_OUT: u32 = 3u;
const B_ROUT: u32 = 4u;

// Word `i` of logical buffer `b`; `b` is always a literal, so this folds to one load.
fn word(b: u32, i: u32) -> u32 {
    switch b {
        case 0u: {
            if X_SRC == 1u {
                return dst[i];
            }
            if X_SRC == 2u {
                return res_dst[i];
            }
            return src[i];
        }
        case 1u: {
            if W_SRC == 1u {
                return dst[i];
            }
            if W_SRC == 2u {
                return res_dst[i];
            }
            return weight[i];
        }
        case 2u: {
            if R_SRC == 1u {
                return dst[i];
            }
            if R_SRC == 2u {
                return res_dst[i];
            }
            return res[i];
        }
        case 3u: {
            return dst[i];
        }
        default: {
            return res_dst[i];
        }
    }
}

fn put(b: u32, i: u32, w: u32) {
    if b == B_OUT {
        dst[i] = w;
    } else {
        res_dst[i] = w;
    }
}

// V values starting at element e (e % V == 0) as a vec4; lanes past V are 0.
fn load(b: u32, e: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if DTYPE == DT_F32 {
        for (var k = 0u; k < V; k++) {
            v[k] = bitcast<f32>(word(b, e + k));
        }
        return v;
    }
    let h = e >> 1u;
    if V == 4u {
        return unpack_half4(vec2<u32>(word(b, h), word(b, h + 1u)), DTYPE);
    }
    return vec4<f32>(unpack_half2(word(b, h), DTYPE), 0.0, 0.0);
}

fn store(b: u32, e: u32, v: vec4<f32>) {
    if DTYPE == DT_F32 {
        for (var k = 0u; k < V; k++) {
            put(b, e + k, bitcast<u32>(v[k]));
        }
        return;
    }
    let h = e >> 1u;
    if V == 4u {
        let w = encode_half4(v, DTYPE);
        put(b, h, w.x);
        put(b, h + 1u, w.y);
        return;
    }
    put(b, h, encode_half4(vec4<f32>(v.xy, 0.0, 0.0), DTYPE).x);
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(WG)
fn rms_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if row >= p.n_rows {
        return;
    }
    let n_chunks = p.n / V;
    let xb = p.x_off + row * p.x_stride;
    let rb = p.r_off + row * p.r_stride;
    let ob = p.out_off + row * p.out_stride;
    let rob = p.rout_off + row * p.rout_stride;

    var ss = 0.0;
    for (var c = lid; c < n_chunks; c += WG) {
        var h = load(B_X, xb + c * V);
        if HAS_RES {
            h = round_to_dtype(h + load(B_R, rb + c * V), DTYPE);
            store(B_ROUT, rob + c * V, h);
        }
        ss += dot(h, h);
    }
    partial[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(partial[0] / f32(p.n) + p.eps);

    // Each invocation re-reads only chunks it wrote itself, so in-place aliasing is safe.
    for (var c = lid; c < n_chunks; c += WG) {
        var h: vec4<f32>;
        if HAS_RES {
            h = load(B_ROUT, rob + c * V);
        } else {
            h = load(B_X, xb + c * V);
        }
        let w = load(B_W, p.w_off + c * V) + vec4<f32>(p.weight_offset);
        store(B_OUT, ob + c * V, h * inv * w);
    }
}

// One invocation per row, for adapters that run invocations as SIMD lanes of a CPU (lavapipe,
// SwiftShader, WARP). No workgroup memory and no barriers: each invocation sums its own row in
// registers. The weight index is the same for every invocation of a step, so such drivers load
// it once and broadcast it, and each lane streams one row sequentially. On a GPU this pattern is
// uncoalesced; the host only picks it for CPU adapters (see `ops::rms_norm::Variant::choose`).
@compute @workgroup_size(WG)
fn rms_norm_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg) * WG + lid;
    // No barrier follows, so a non-uniform return is fine here.
    if row >= p.n_rows {
        return;
    }
    let n_chunks = p.n / V;
    let xb = p.x_off + row * p.x_stride;
    let rb = p.r_off + row * p.r_stride;
    let ob = p.out_off + row * p.out_stride;
    let rob = p.rout_off + row * p.rout_stride;

    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < n_chunks; c++) {
        var h = load(B_X, xb + c * V);
        if HAS_RES {
            h = round_to_dtype(h + load(B_R, rb + c * V), DTYPE);
            store(B_ROUT, rob + c * V, h);
        }
        acc += h * h;
    }
    let inv = 1.0 / sqrt((acc.x + acc.y + acc.z + acc.w) / f32(p.n) + p.eps);

    // Re-reads only what this invocation wrote, so in-place aliasing is safe.
    for (var c = 0u; c < n_chunks; c++) {
        var h: vec4<f32>;
        if HAS_RES {
            h = load(B_ROUT, rob + c * V);
        } else {
            h = load(B_X, xb + c * V);
        }
        let w = load(B_W, p.w_off + c * V) + vec4<f32>(p.weight_offset);
        store(B_OUT, ob + c * V, h * inv * w);
    }
}

// `rms_norm_rows` over 16-byte items (4 f32 or 8 half values; `Item` in common.wgsl) through
// `vec4<u32>` bindings: CPU drivers turn one 16-byte load per invocation into far fewer
// instructions than four 4-byte loads. The host picks it when the row length, every view's start and every row stride are
// multiples of 16 bytes; binding types cannot depend on override constants, so these are
// separate bindings of the same buffers.
@group(0) @binding(6) var<storage, read> src4: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> weight4: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> res4: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read_write> dst4: array<vec4<u32>>;
@group(0) @binding(10) var<storage, read_write> res_dst4: array<vec4<u32>>;

// Item `i` of logical buffer `b` (a literal at every call site, so this folds to one load).
// f16 read through its own binding takes the native path where the module has one
// (rms_norm_f16.wgsl).
fn item(b: u32, i: u32) -> Item {
    if NATIVE_F16 && DTYPE == DT_F16 {
        if (b == B_X && X_SRC == 0u) || (b == B_W && W_SRC == 0u) || (b == B_R && R_SRC == 0u) {
            return f16_item(b, i);
        }
    }
    var u: vec4<u32>;
    switch b {
        case 0u: {
            if X_SRC == 1u {
                u = dst4[i];
            } else if X_SRC == 2u {
                u = res_dst4[i];
            } else {
                u = src4[i];
            }
        }
        case 1u: {
            if W_SRC == 1u {
                u = dst4[i];
            } else if W_SRC == 2u {
                u = res_dst4[i];
            } else {
                u = weight4[i];
            }
        }
        case 2u: {
            if R_SRC == 1u {
                u = dst4[i];
            } else if R_SRC == 2u {
                u = res_dst4[i];
            } else {
                u = res4[i];
            }
        }
        case 3u: {
            u = dst4[i];
        }
        default: {
            u = res_dst4[i];
        }
    }
    return unpack_item(u, DTYPE);
}

fn put_words(b: u32, i: u32, u: vec4<u32>) {
    if b == B_OUT {
        dst4[i] = u;
    } else {
        res_dst4[i] = u;
    }
}

fn put_item(b: u32, i: u32, v: Item) {
    put_words(b, i, encode_item(v, DTYPE));
}

// Sum of squares of the items `first, first + step, ...` of one row (16-byte items). With the
// fused residual, h = x + residual is encoded once: the stored words are residual_out, and
// decoding them gives h rounded to the storage dtype (encoding twice, as `round_to_dtype`
// does, would double the conversion work of the half types). Decoding the stored words (with
// the exact integer decode) also keeps the norm on exactly the residual_out that was written
// when the encoder is `pack2x16float` (f16_store.wgsl), whose rounding WGSL leaves open.
fn sum_squares4(row: u32, first: u32, step: u32) -> f32 {
    let e = elems_per_item(DTYPE);
    let n_items = p.n / e;
    let xb = (p.x_off + row * p.x_stride) / e;
    let rb = (p.r_off + row * p.r_stride) / e;
    let rob = (p.rout_off + row * p.rout_stride) / e;
    var acc = vec4<f32>(0.0);
    for (var c = first; c < n_items; c += step) {
        var h = item(B_X, xb + c);
        if HAS_RES {
            let r = item(B_R, rb + c);
            let words = encode_item(Item(h.lo + r.lo, h.hi + r.hi), DTYPE);
            put_words(B_ROUT, rob + c, words);
            h = unpack_item(words, DTYPE);
        }
        acc += h.lo * h.lo + h.hi * h.hi;
    }
    return acc.x + acc.y + acc.z + acc.w;
}

// out = h * inv * (w + weight_offset) over the same items as `sum_squares4`. Each invocation
// re-reads only items it wrote itself, so in-place aliasing is safe.
fn scale4(row: u32, first: u32, step: u32, inv: f32) {
    let e = elems_per_item(DTYPE);
    let n_items = p.n / e;
    let xb = (p.x_off + row * p.x_stride) / e;
    let ob = (p.out_off + row * p.out_stride) / e;
    let rob = (p.rout_off + row * p.rout_stride) / e;
    let wb = p.w_off / e;
    let wo = vec4<f32>(p.weight_offset);
    for (var c = first; c < n_items; c += step) {
        var h: Item;
        if HAS_RES {
            h = item(B_ROUT, rob + c);
        } else {
            h = item(B_X, xb + c);
        }
        let w = item(B_W, wb + c);
        put_item(B_OUT, ob + c, Item(h.lo * inv * (w.lo + wo), h.hi * inv * (w.hi + wo)));
    }
}

@compute @workgroup_size(WG)
fn rms_norm_rows4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg) * WG + lid;
    // No barrier follows, so a non-uniform return is fine here.
    if row >= p.n_rows {
        return;
    }
    let ss = sum_squares4(row, 0u, 1u);
    scale4(row, 0u, 1u, 1.0 / sqrt(ss / f32(p.n) + p.eps));
}

// A workgroup per row over 16-byte items: invocation `lid` takes items lid, lid + WG, ..., so a
// workgroup's loads of one step are consecutive (coalesced on a GPU). The partial sums meet in a
// tree in workgroup memory; `rms_norm_subgroup.wgsl` has the subgroup-reduced form.
@compute @workgroup_size(WG)
fn rms_norm_wg4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if row >= p.n_rows {
        return;
    }
    partial[lid] = sum_squares4(row, lid, WG);
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    scale4(row, lid, WG, 1.0 / sqrt(partial[0] / f32(p.n) + p.eps));
}
