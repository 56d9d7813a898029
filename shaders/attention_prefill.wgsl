// GQA attention, FlashAttention-2 style prefill.
//
// out[b, t, h] = softmax_j(softcap(scale * q[b, t, h] . k[b, j, h / g]) + mask) . v[b, :, h / g]
//
// One workgroup owns WG query rows of one (batch, kv head). Rows are numbered r = t * g + i
// (token-major, then the g query heads of the group), so every K/V tile that the workgroup stages
// in workgroup memory serves all query heads of the group. Each invocation keeps its query row
// (pre-multiplied by `scale`) and its f32 accumulator in registers and runs an online softmax
// over tiles of `bk` keys (`softmax_tile` in attention_common.wgsl, shared with the split-KV
// decode). The key range is cut to the union of what the workgroup's rows can see
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

    let kv = key_range(0, i32(p.kv_len), r0, r_last, p.q_offset);
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
            softmax_tile(&q, &acc, &m, &l, j0, n, pos, 0u, 1u);
        }
        workgroupBarrier();
    }

    if row_ok {
        let inv = out_scale(m, l, h);
        let o_base = p.o_off + b * p.o_sb + t * p.o_st + h * p.o_sh;
        for (var d = 0u; d < HD4; d++) {
            store4(o_base + 4u * d, acc[d] * inv);
        }
    }
}
