// GQA attention, FlashAttention-2 style prefill.
//
// out[b, t, h] = softmax_j(softcap(scale * q[b, t, h] . k[b, j, h / g]) + mask) . v[b, :, h / g]
//
// One workgroup owns WG query rows of one (batch, kv head). Rows are numbered r = t * g + i
// (token-major, then the g query heads of the group), so every K/V tile that the workgroup stages
// in workgroup memory serves all query heads of the group. Each invocation keeps its query row
// (pre-multiplied by `scale`) and its f32 accumulator in registers and runs an online softmax
// over tiles of `bk` keys. The key range is cut to the union of what the workgroup's rows can see
// (causal upper bound, window lower bound), so fully masked tiles are never loaded. A row with no
// visible key stores 0.
//
// Override constants (set by `ops::attention::Variant`):
//   DTYPE    storage dtype of q, k, v and out (0 f32, 1 f16, 2 bf16)
//   WG       workgroup size = query rows per workgroup
//   TILE_V4  vec4 capacity of each of the K and V tiles (bk * head_dim / 4 <= TILE_V4)
//   HD4      head_dim / 4 (1 ..= 64)

// Overrides, Params, input bindings and helpers: attention_common.wgsl.

@group(0) @binding(5) var<storage, read_write> out_buf: array<u32>;

@compute @workgroup_size(WG)
fn attn_prefill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barriers is allowed.
    if wg_id >= p.batch * p.n_kv_heads * p.row_blocks {
        return;
    }
    let blk = wg_id % p.row_blocks;
    let bh = wg_id / p.row_blocks;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let r0 = blk * WG;
    let r_last = min(r0 + WG, p.rows) - 1u;
    let r = r0 + lid;
    let row_ok = r < p.rows;
    let rc = min(r, p.rows - 1u);
    let t = rc / p.group;
    let h = kvh * p.group + rc % p.group;
    let pos = p.q_offset + i32(t);
    let hd4 = HD4;

    // Keys any row of this workgroup can see: [kv_lo, kv_hi).
    var kv_lo = 0i;
    var kv_hi = i32(p.kv_len);
    if p.causal != 0u {
        kv_hi = min(kv_hi, p.q_offset + i32(r_last / p.group) + 1);
    }
    if p.window != 0u {
        kv_lo = max(kv_lo, p.q_offset + i32(r0 / p.group) - i32(p.window) + 1);
    }

    var q: array<vec4<f32>, MAX_HD4>;
    var acc: array<vec4<f32>, MAX_HD4>;
    var s: array<f32, MAX_BK>;
    let q_base = p.q_off + b * p.q_sb + t * p.q_st + h * p.q_sh;
    for (var d = 0u; d < hd4; d++) {
        q[d] = load4(0u, q_base + 4u * d) * p.scale;
        acc[d] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;

    for (var j0 = kv_lo; j0 < kv_hi; j0 += i32(p.bk)) {
        let n = min(p.bk, u32(kv_hi - j0));
        for (var i = lid; i < n * hd4; i += WG) {
            let j = u32(j0) + i / hd4;
            let d4 = 4u * (i % hd4);
            k_tile[i] = load4(1u, k_base + j * p.k_st + d4);
            v_tile[i] = load4(2u, v_base + j * p.v_st + d4);
        }
        workgroupBarrier();
        if row_ok {
            var m_new = m;
            for (var jj = 0u; jj < n; jj++) {
                var x = NEG_BIG;
                if visible(j0 + i32(jj), pos) {
                    var dot_acc = vec4<f32>(0.0);
                    let kb = jj * hd4;
                    for (var d = 0u; d < HD4; d++) {
                        dot_acc += q[d] * k_tile[kb + d];
                    }
                    x = cap_logit(dot_acc.x + dot_acc.y + dot_acc.z + dot_acc.w);
                    m_new = max(m_new, x);
                }
                s[jj] = x;
            }
            if m_new > m {
                let alpha = exp(m - m_new);
                l *= alpha;
                for (var d = 0u; d < hd4; d++) {
                    acc[d] *= alpha;
                }
                m = m_new;
            }
            for (var jj = 0u; jj < n; jj++) {
                if visible(j0 + i32(jj), pos) {
                    let pj = exp(s[jj] - m);
                    l += pj;
                    let vb = jj * hd4;
                    for (var d = 0u; d < HD4; d++) {
                        acc[d] += pj * v_tile[vb + d];
                    }
                }
            }
        }
        workgroupBarrier();
    }

    if row_ok {
        var a = 1.0;
        if p.has_sinks != 0u {
            let sink = sinks[p.s_off + h];
            let m2 = max(m, sink);
            a = exp(m - m2);
            l = l * a + exp(sink - m2);
        }
        // No visible key: l == 0 and acc == 0; store 0, not 0 / 0.
        var inv = 0.0;
        if l > 0.0 {
            inv = a / l;
        }
        let o_base = p.o_off + b * p.o_sb + t * p.o_st + h * p.o_sh;
        for (var d = 0u; d < hd4; d++) {
            store4(o_base + 4u * d, acc[d] * inv);
        }
    }
}
