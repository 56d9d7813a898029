// Prepended after attention_split.wgsl to the decode and paged modules only (the prefill module
// has no `keys_rows` / `keys_unit`).
//
// `keys_partial`: the key-lane step of the CPU-adapter decode kernels `attn_decode_keys`
// (contiguous K/V) and `attn_paged_keys` (pages). On llvmpipe every load instruction costs one
// scalar access per invocation (also for a workgroup-uniform address, and also for workgroup
// memory), while one 16-byte load costs about the same as one 4-byte load. So here each
// invocation owns whole keys (key lane `lane` takes the visible keys lo + lane, lo + lane + WG,
// ... of its split) and reads each K/V row of its keys once with 16-byte loads (8 halves or 4 f32
// per load) and uses it for all KR rows (query heads x tokens) of the workgroup's row block, so a
// GQA group shares every load. No workgroup memory, no barriers. Every array index is a constant
// once the fixed-trip loops over KR and HD4 are unrolled. Each (row, split, lane) writes a partial
// like `attn_decode_partial` (lanes = WG), merged by the same fixed-order pass.
//
// The including kernel supplies where rows live: `keys_rows(h, j)` gives (K source, K unit,
// V source, V unit) for key j of the head described by `h`, and `keys_unit(src, i)` loads 16-byte
// unit i of a source. With the same split structure the contiguous and paged kernels therefore
// run the same arithmetic, bit for bit.
//
// Why this does not use `softmax_tile` (attention_common.wgsl), which the prefill and
// `attn_decode_partial` share: that step works on one query row per invocation over a K/V tile
// staged in workgroup memory, scoring the whole tile before one rescale. Here nothing is staged
// (each invocation reads its own keys through 16-byte units, which is the point on CPU adapters);
// the unit of work is one key for KR rows at once, so m, l and the rescale are updated per key,
// branch-free across the KR rows held in vector components, with no score array (the tile
// step's `s[jj]` is indexed dynamically, which CPU adapters keep in memory, not registers).
//
// Override constant:
//   KR       query rows per workgroup, every invocation computing all of them (1, 2 or 4)
override KR: u32 = 1u;

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

// The row of 16-byte units from unit u0 of source src into kr (head_dim values).
fn keys_load_row(kr: ptr<function, array<vec4<f32>, MAX_HD4>>, src: u32, u0: u32) {
    // 16-byte units per head: HD4 for f32, HD4 / 2 for halves (head_dim % 8 == 0).
    let per_unit = select(2u, 1u, DTYPE == DT_F32);
    for (var u = 0u; u < HD4 / per_unit; u++) {
        let w = unpack_item(keys_unit(src, u0 + u), DTYPE);
        (*kr)[u * per_unit] = w.lo;
        if per_unit == 2u {
            (*kr)[u * 2u + 1u] = w.hi;
        }
    }
}

// Rows r0 .. r0 + KR (q0 .. q3 pre-scaled; rows past `rows` are computed on a clamped copy and
// not stored) over the keys kv.x + lane, kv.x + lane + WG, ... < kv.y of the head `h`, queries at
// positions q_offset + r / group; the partial of row r0 + i goes to part_out[e + i * row_step].
fn keys_partial(
    q0: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q1: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q2: ptr<function, array<vec4<f32>, MAX_HD4>>,
    q3: ptr<function, array<vec4<f32>, MAX_HD4>>,
    h: vec2<u32>,
    kv: vec2<i32>,
    lane: u32,
    r0: u32,
    rows: u32,
    q_offset: i32,
    e: u32,
    row_step: u32,
) {
    var a0: array<vec4<f32>, MAX_HD4>;
    var a1: array<vec4<f32>, MAX_HD4>;
    var a2: array<vec4<f32>, MAX_HD4>;
    var a3: array<vec4<f32>, MAX_HD4>;
    var kr: array<vec4<f32>, MAX_HD4>;
    for (var d = 0u; d < HD4; d++) {
        a0[d] = vec4<f32>(0.0);
        a1[d] = vec4<f32>(0.0);
        a2[d] = vec4<f32>(0.0);
        a3[d] = vec4<f32>(0.0);
    }
    let rr = vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u);
    let row_ok = rr < vec4<u32>(min(rows, r0 + KR));
    let rcl = min(rr, vec4<u32>(rows - 1u));
    let pos = vec4<i32>(q_offset) + vec4<i32>(rcl / p.group);
    var m = vec4<f32>(NEG_BIG);
    var l = vec4<f32>(0.0);

    for (var j = kv.x + i32(lane); j < kv.y; j += i32(WG)) {
        let at = keys_rows(h, u32(j));
        keys_load_row(&kr, at.x, at.y);
        var x = vec4<f32>(NEG_BIG);
        x.x = keys_dot(q0, &kr);
        if KR > 1u {
            x.y = keys_dot(q1, &kr);
        }
        if KR > 2u {
            x.z = keys_dot(q2, &kr);
            x.w = keys_dot(q3, &kr);
        }
        let ok = row_ok & vec4<bool>(visible(j, pos.x), visible(j, pos.y), visible(j, pos.z), visible(j, pos.w));
        let m_new = select(m, max(m, x), ok);
        // m_new >= m, so alpha <= 1; while nothing is visible both are NEG_BIG: alpha 1.
        let al = exp(m - m_new);
        let pr = select(vec4<f32>(0.0), exp(x - m_new), ok);
        l = l * al + pr;
        m = m_new;
        // V row into kr (K is done with), then small fixed-trip loops per row.
        keys_load_row(&kr, at.z, at.w);
        keys_pv(&a0, &kr, al.x, pr.x);
        if KR > 1u {
            keys_pv(&a1, &kr, al.y, pr.y);
        }
        if KR > 2u {
            keys_pv(&a2, &kr, al.z, pr.z);
            keys_pv(&a3, &kr, al.w, pr.w);
        }
    }

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
