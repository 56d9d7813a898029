// GQA attention for few query tokens (decode): split-KV "flash-decoding" in two passes.
//
// out[b, t, h] = softmax_j(softcap(scale * q[b, t, h] . k[b, j, h / g]) + mask) . v[b, :, h / g]
//
// Pass 1 (`attn_decode_partial`): one workgroup per (batch, kv head, row block, split). The
// workgroup's rows are the g query heads of the kv head times the query tokens (r = t * g + i),
// so each K/V row of the split's chunk of `chunk` keys is read from memory once per kv head and
// staged in workgroup memory for all query heads of the group. With fewer rows than invocations,
// the spare invocations become key lanes (WG / rows_per_wg per row), each taking every lanes-th
// key of a tile. Each invocation runs an f32 online softmax for its row and lane over the chunk
// (`softmax_tile` in attention_common.wgsl, the same step as the prefill) and writes the
// partial (m, l, acc); partials are ordered (row, split, lane). A chunk with no visible
// key writes (NEG_BIG, 0, 0), which the merge weighs with exp(NEG_BIG - M) * 0 = 0.
//
// Pass 2 (`attn_decode_merge`): one invocation per (row, 4 output elements) combines the
// n_splits * lanes partials in ascending (split, lane) order (bitwise repeatable), adds the
// sink to the denominator and divides;
// a row with no visible key at all stores 0.
//
// Override constants (set by `ops::attention::Variant`):
//   DTYPE    storage dtype of q, k, v and out (0 f32, 1 f16, 2 bf16)
//   WG       workgroup size = query rows per workgroup (pass 1), invocations per workgroup (pass 2)
//   TILE_V4  vec4 capacity of each of the K and V tiles (bk * head_dim / 4 <= TILE_V4)
//   HD4      head_dim / 4 (1 ..= 64)

// Overrides, Params, input bindings and helpers: attention_common.wgsl; the partials' bindings,
// store_partial and merge_partials: attention_split.wgsl.

@compute @workgroup_size(WG)
fn attn_decode_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= p.batch * p.n_kv_heads * p.row_blocks * p.n_splits {
        return;
    }
    let split = wg_id % p.n_splits;
    let rest = wg_id / p.n_splits;
    let blk = rest % p.row_blocks;
    let bh = rest / p.row_blocks;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    // rows_per_wg rows (a power of two <= WG) times `lanes` key lanes: lane l of a row takes
    // keys l, l + lanes, ... of every tile and writes its own partial, merged like a split.
    let lanes = p.lanes;
    let lane = lid / p.rows_per_wg;
    let r0 = blk * p.rows_per_wg;
    let r_last = min(r0 + p.rows_per_wg, p.rows) - 1u;
    let r = r0 + lid % p.rows_per_wg;
    let row_ok = r < p.rows;
    let pos = p.q_offset + i32(min(r, p.rows - 1u) / p.group);

    // Keys of this split that any row of the workgroup can see.
    let split_end = min(p.kv_len, (split + 1u) * p.chunk);
    let kv = key_range(i32(split * p.chunk), i32(split_end), r0, r_last, p.q_offset);
    var q: array<vec4<f32>, MAX_HD4>;
    var acc: array<vec4<f32>, MAX_HD4>;
    load_q(&q, b, r, kvh);
    for (var d = 0u; d < HD4; d++) {
        acc[d] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;

    for (var j0 = kv.x; j0 < kv.y; j0 += i32(p.bk)) {
        let n = min(p.bk, u32(kv.y - j0));
        stage_tile(lid, j0, n, k_base, v_base);
        workgroupBarrier();
        if row_ok {
            softmax_tile(&q, &acc, &m, &l, j0, n, pos, lane, lanes);
        }
        workgroupBarrier();
    }

    if row_ok {
        let stride = 4u * HD4 + 2u;
        let n_parts = p.n_splits * lanes;
        store_partial(&acc, ((bh * p.rows + r) * n_parts + split * lanes + lane) * stride, m, l);
    }
}

@compute @workgroup_size(WG)
fn attn_decode_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let hd4 = HD4;
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    let total_rows = p.batch * p.n_kv_heads * p.rows;
    if idx >= total_rows * hd4 {
        return;
    }
    let d = idx % hd4;
    let row = idx / hd4;
    let r = row % p.rows;
    let bh = row / p.rows;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let t = r / p.group;
    let h = kvh * p.group + r % p.group;
    let n_parts = p.n_splits * p.lanes;
    let base = row * n_parts * (4u * HD4 + 2u);
    let o_base = p.o_off + b * p.o_sb + t * p.o_st + h * p.o_sh;
    store4(o_base + 4u * d, merge_partials(base, n_parts, d, h));
}

// ---------------------------------------------------------------------------------------------
// `attn_decode_keys`: decode for CPU adapters. On llvmpipe every load instruction costs one
// scalar access per invocation (also for a workgroup-uniform address, and also for workgroup
// memory), while one 16-byte load costs about the same as one 4-byte load. So here each
// invocation owns whole keys (key lane `lane` takes the visible keys lo + lane, lo + lane + WG,
// ... of its split) and reads each K/V row of its keys once with 16-byte loads (8 halves or 4 f32
// per load), through the vec4 bindings 8 and 9, and uses it for all KR rows (query heads x
// tokens) of the workgroup's row block, so a GQA group shares every load. No workgroup memory,
// no barriers. Every array index is a constant once the fixed-trip loops over KR and HD4 are
// unrolled. Each (row, split, lane) writes a partial like `attn_decode_partial` (lanes = WG);
// `attn_decode_merge` finishes.
// Requires 16-byte aligned K/V rows (offsets and strides; head_dim a multiple of 8 for halves),
// which the host checks.
//
// Why this kernel does not use `softmax_tile` (attention_common.wgsl), which the prefill and
// `attn_decode_partial` share: that step works on one query row per invocation over a K/V tile
// staged in workgroup memory, scoring the whole tile before one rescale. Here nothing is staged
// (each invocation reads its own keys from the vec4 bindings, which is the point on CPU
// adapters); the unit of work is one key for KR rows at once, so m, l and the rescale are updated
// per key, branch-free across the KR rows held in vector components, with no score array (the
// tile step's `s[jj]` is indexed dynamically, which CPU adapters keep in memory, not registers).
// Sharing the step would need the workgroup-memory tile and the one-row-per-invocation lane
// structure that this kernel exists to avoid.
//
// Extra override constant:
//   KR       query rows per workgroup, every invocation computing all of them (1, 2 or 4)
@group(0) @binding(8) var<storage, read> k4: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> v4: array<vec4<u32>>;
override KR: u32 = 1u;

// The 16 bytes holding element e of K (is_v false) or V: 4 f32 (`hi` unused) or 8 halves.
fn kv_item(is_v: bool, e: u32) -> Item {
    var w: vec4<u32>;
    if is_v {
        w = v4[e / elems_per_item(DTYPE)];
    } else {
        w = k4[e / elems_per_item(DTYPE)];
    }
    return unpack_item(w, DTYPE);
}

// Score of one row against the key row in kr (q pre-scaled).
fn keys_dot(qa: ptr<function, array<vec4<f32>, MAX_HD4>>, kr: ptr<function, array<vec4<f32>, MAX_HD4>>) -> f32 {
    var dd = vec4<f32>(0.0);
    for (var d = 0u; d < HD4; d++) {
        dd += (*qa)[d] * (*kr)[d];
    }
    return cap_logit(dd.x + dd.y + dd.z + dd.w);
}

fn keys_pv(acc: ptr<function, array<vec4<f32>, MAX_HD4>>, vr: ptr<function, array<vec4<f32>, MAX_HD4>>, al: f32, pr: f32) {
    for (var d = 0u; d < HD4; d++) {
        (*acc)[d] = (*acc)[d] * al + pr * (*vr)[d];
    }
}

@compute @workgroup_size(WG)
fn attn_decode_keys(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    if wg_id >= p.batch * p.n_kv_heads * p.row_blocks * p.n_splits {
        return;
    }
    let split = wg_id % p.n_splits;
    let rest = wg_id / p.n_splits;
    let blk = rest % p.row_blocks;
    let bh = rest / p.row_blocks;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let lane = lid;
    let r0 = blk * KR;
    let r_last = min(r0 + KR, p.rows) - 1u;
    // 16-byte units per head: HD4 for f32, HD4 / 2 for halves (head_dim % 8 == 0).
    let per_unit = select(2u, 1u, DTYPE == DT_F32);
    let units = HD4 / per_unit;

    let split_end = min(p.kv_len, (split + 1u) * p.chunk);
    let kv = key_range(i32(split * p.chunk), i32(split_end), r0, r_last, p.q_offset);

    // Rows r0 + 0..KR (KR <= 4) in named arrays and vector components, so that every index
    // is a constant once the fixed-trip head_dim loops are unrolled.
    var q0: array<vec4<f32>, MAX_HD4>;
    var q1: array<vec4<f32>, MAX_HD4>;
    var q2: array<vec4<f32>, MAX_HD4>;
    var q3: array<vec4<f32>, MAX_HD4>;
    var a0: array<vec4<f32>, MAX_HD4>;
    var a1: array<vec4<f32>, MAX_HD4>;
    var a2: array<vec4<f32>, MAX_HD4>;
    var a3: array<vec4<f32>, MAX_HD4>;
    var kr: array<vec4<f32>, MAX_HD4>;
    load_q(&q0, b, r0, kvh);
    if KR > 1u {
        load_q(&q1, b, r0 + 1u, kvh);
    }
    if KR > 2u {
        load_q(&q2, b, r0 + 2u, kvh);
        load_q(&q3, b, r0 + 3u, kvh);
    }
    for (var d = 0u; d < HD4; d++) {
        a0[d] = vec4<f32>(0.0);
        a1[d] = vec4<f32>(0.0);
        a2[d] = vec4<f32>(0.0);
        a3[d] = vec4<f32>(0.0);
    }
    let rr = vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u);
    let row_ok = rr < vec4<u32>(min(p.rows, r0 + KR));
    let rcl = min(rr, vec4<u32>(p.rows - 1u));
    let pos = vec4<i32>(p.q_offset) + vec4<i32>(rcl / p.group);
    var m = vec4<f32>(NEG_BIG);
    var l = vec4<f32>(0.0);
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;

    for (var j = kv.x + i32(lane); j < kv.y; j += i32(WG)) {
        let ke = k_base + u32(j) * p.k_st;
        for (var u = 0u; u < units; u++) {
            let w = kv_item(false, ke + 4u * per_unit * u);
            kr[u * per_unit] = w.lo;
            if per_unit == 2u {
                kr[u * 2u + 1u] = w.hi;
            }
        }
        var x = vec4<f32>(NEG_BIG);
        x.x = keys_dot(&q0, &kr);
        if KR > 1u {
            x.y = keys_dot(&q1, &kr);
        }
        if KR > 2u {
            x.z = keys_dot(&q2, &kr);
            x.w = keys_dot(&q3, &kr);
        }
        let ok = row_ok & vec4<bool>(visible(j, pos.x), visible(j, pos.y), visible(j, pos.z), visible(j, pos.w));
        let m_new = select(m, max(m, x), ok);
        // m_new >= m, so alpha <= 1; while nothing is visible both are NEG_BIG: alpha 1.
        let al = exp(m - m_new);
        let pr = select(vec4<f32>(0.0), exp(x - m_new), ok);
        l = l * al + pr;
        m = m_new;
        let ve = v_base + u32(j) * p.v_st;
        // V row into kr (K is done with), then small fixed-trip loops per row.
        for (var u = 0u; u < units; u++) {
            let w = kv_item(true, ve + 4u * per_unit * u);
            kr[u * per_unit] = w.lo;
            if per_unit == 2u {
                kr[u * 2u + 1u] = w.hi;
            }
        }
        keys_pv(&a0, &kr, al.x, pr.x);
        if KR > 1u {
            keys_pv(&a1, &kr, al.y, pr.y);
        }
        if KR > 2u {
            keys_pv(&a2, &kr, al.z, pr.z);
            keys_pv(&a3, &kr, al.w, pr.w);
        }
    }

    let stride = 4u * HD4 + 2u;
    let n_parts = p.n_splits * WG;
    let e = ((bh * p.rows + r0) * n_parts + split * WG + lane) * stride;
    let row_step = n_parts * stride;
    store_partial(&a0, e, m.x, l.x);
    if row_ok.y {
        store_partial(&a1, e + row_step, m.y, l.y);
    }
    if row_ok.z {
        store_partial(&a2, e + 2u * row_step, m.z, l.z);
    }
    if row_ok.w {
        store_partial(&a3, e + 3u * row_step, m.w, l.w);
    }
}
