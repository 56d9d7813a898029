// Appended to attention_decode.wgsl in a module of its own (`ops::attention::
// ATTENTION_DECODE_SUBGROUP`): a module that uses subgroup operations anywhere fails validation
// on devices without SUBGROUP.
//
// `attn_decode_sg`: split-KV decode for GPUs, built as the GPU decode kernels that are known to
// work build it: flash-decoding (Dao et al., 2023: split the keys over workgroups, a partial
// softmax per split, a fixed-order merge) with FlashInfer's decode layout
// (`BatchDecodeWithPagedKVCacheKernel` / `SingleDecodeWithKVCacheKernel`, Ye et al., 2024:
// the lanes of a warp split head_dim, each holding a vector of it; a partial dot product per lane
// finished by a warp reduction; every K/V row a warp loads serves all query heads of the GQA
// group, which sit in the same block).
//
// One workgroup of WG invocations per (batch, kv head, row block, split), rows as in
// `attn_decode_partial` (r = t * g + i, RS rows per workgroup: the GQA group's query heads times
// the tokens). Inside, each subgroup splits head_dim: lane `sg_lane` of a subgroup of `sg_size`
// lanes holds the vec4 slots d = sg_lane + sg_size * i (i < SLOTS) of every query row (in
// registers, pre-scaled) and of every accumulator, and loads the same slots of each K and V row,
// so one subgroup reads a row as consecutive 16-byte pieces (coalesced). Keys go four at a time:
// a lane's partial dots of 4 keys x RS rows, then one `subgroupAdd` per row (a vec4: the 4 keys'
// scores) gives every lane the full scores, the online softmax updates m and l once per 4 keys
// (identically in every lane), and the V rows of the 4 keys are added into the lane's slots.
//
// No subgroup size is assumed beyond the adapter's minimum (`SLOTS` = ceil(HD4 / min size); a
// larger subgroup leaves lanes past HD4 idle). The key lanes are NSG = WG / min size "virtual
// subgroups", fixed per pipeline: virtual subgroup v takes the 4-key blocks v, v + NSG, ... of
// the split and writes its own partial (m, l, acc) for each row; a subgroup runs the virtual
// subgroups sg_id, sg_id + num_subgroups, ... . So which keys meet in one partial does not depend
// on the subgroup size the device picks, and `attn_decode_merge` combines the n_splits x NSG
// partials in ascending order: bitwise repeatable on one device.
//
// Override constants beyond attention_decode.wgsl's:
//   RS     query rows per workgroup (1, 2, 4 or 8); RS * SLOTS <= MAX_SG_REGS
//   SLOTS  vec4 slots of a head per lane: ceil(HD4 / the adapter's smallest subgroup)
//   NSG    key lanes (partials per row and split): WG / the adapter's smallest subgroup
override RS: u32 = 4u;
override SLOTS: u32 = 4u;
override NSG: u32 = 8u;
// Registers per lane for the q rows (and as many for the accumulators).
const MAX_SG_REGS: u32 = 64u;
const MAX_RS: u32 = 8u;

@compute @workgroup_size(WG)
fn attn_decode_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let wg_id = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the subgroup operations is allowed.
    if wg_id >= p.batch * p.n_kv_heads * p.row_blocks * p.n_splits {
        return;
    }
    let split = wg_id % p.n_splits;
    let rest = wg_id / p.n_splits;
    let blk = rest % p.row_blocks;
    let bh = rest / p.row_blocks;
    let kvh = bh % p.n_kv_heads;
    let b = bh / p.n_kv_heads;
    let r0 = blk * RS;
    let r_last = min(r0 + RS, p.rows) - 1u;
    let split_end = min(p.kv_len, (split + 1u) * p.chunk);
    let kv = key_range(i32(split * p.chunk), i32(split_end), r0, r_last, p.q_offset);

    // This lane's slots of every row's q (rows past p.rows read the last row; never stored).
    var q: array<vec4<f32>, MAX_SG_REGS>;
    var pos: array<i32, MAX_RS>;
    for (var r = 0u; r < RS; r++) {
        let rc = min(r0 + r, p.rows - 1u);
        let h = kvh * p.group + rc % p.group;
        let q_base = p.q_off + b * p.q_sb + (rc / p.group) * p.q_st + h * p.q_sh;
        pos[r] = p.q_offset + i32(rc / p.group);
        for (var i = 0u; i < SLOTS; i++) {
            let d = sg_lane + sg_size * i;
            var x = vec4<f32>(0.0);
            if d < HD4 {
                x = load4(0u, q_base + 4u * d) * p.scale;
            }
            q[r * SLOTS + i] = x;
        }
    }
    let k_base = p.k_off + b * p.k_sb + kvh * p.k_sh;
    let v_base = p.v_off + b * p.v_sb + kvh * p.v_sh;
    let stride = 4u * HD4 + 2u;
    let n_parts = p.n_splits * NSG;

    for (var vs = sg_id; vs < NSG; vs += n_sg) {
        var acc: array<vec4<f32>, MAX_SG_REGS>;
        var m: array<f32, MAX_RS>;
        var l: array<f32, MAX_RS>;
        for (var r = 0u; r < RS; r++) {
            m[r] = NEG_BIG;
            l[r] = 0.0;
            for (var i = 0u; i < SLOTS; i++) {
                acc[r * SLOTS + i] = vec4<f32>(0.0);
            }
        }
        for (var j0 = kv.x + 4 * i32(vs); j0 < kv.y; j0 += 4 * i32(NSG)) {
            // Keys j0 .. j0 + 4 that exist (the last block of a split may be short).
            let key_ok = vec4<i32>(j0, j0 + 1, j0 + 2, j0 + 3) < vec4<i32>(kv.y);
            var s: array<vec4<f32>, MAX_RS>;
            for (var r = 0u; r < RS; r++) {
                s[r] = vec4<f32>(0.0);
            }
            for (var c = 0u; c < 4u; c++) {
                let kr = k_base + u32(min(j0 + i32(c), kv.y - 1)) * p.k_st;
                for (var i = 0u; i < SLOTS; i++) {
                    let d = sg_lane + sg_size * i;
                    if d < HD4 {
                        let kx = load4(1u, kr + 4u * d);
                        for (var r = 0u; r < RS; r++) {
                            s[r][c] += dot(q[r * SLOTS + i], kx);
                        }
                    }
                }
            }
            var pr: array<vec4<f32>, MAX_RS>;
            for (var r = 0u; r < RS; r++) {
                let x = subgroupAdd(s[r]);
                let sc = vec4<f32>(cap_logit(x.x), cap_logit(x.y), cap_logit(x.z), cap_logit(x.w));
                let ok = key_ok & vec4<bool>(r0 + r < p.rows) & vec4<bool>(
                    visible(j0, pos[r]),
                    visible(j0 + 1, pos[r]),
                    visible(j0 + 2, pos[r]),
                    visible(j0 + 3, pos[r]),
                );
                let mx = select(vec4<f32>(NEG_BIG), sc, ok);
                let m_new = max(m[r], max(max(mx.x, mx.y), max(mx.z, mx.w)));
                // m_new >= m, so alpha <= 1; while nothing is visible both are NEG_BIG: alpha 1.
                let al = exp(m[r] - m_new);
                let pv = select(vec4<f32>(0.0), exp(sc - m_new), ok);
                l[r] = l[r] * al + (pv.x + pv.y + pv.z + pv.w);
                m[r] = m_new;
                pr[r] = pv;
                for (var i = 0u; i < SLOTS; i++) {
                    acc[r * SLOTS + i] *= al;
                }
            }
            for (var c = 0u; c < 4u; c++) {
                let vr = v_base + u32(min(j0 + i32(c), kv.y - 1)) * p.v_st;
                for (var i = 0u; i < SLOTS; i++) {
                    let d = sg_lane + sg_size * i;
                    if d < HD4 {
                        let vx = load4(2u, vr + 4u * d);
                        for (var r = 0u; r < RS; r++) {
                            acc[r * SLOTS + i] += pr[r][c] * vx;
                        }
                    }
                }
            }
        }
        // The partial of (row, split, key lane vs): m and l from lane 0, each lane its slots.
        for (var r = 0u; r < RS; r++) {
            if r0 + r < p.rows {
                let e = ((bh * p.rows + r0 + r) * n_parts + split * NSG + vs) * stride;
                if sg_lane == 0u {
                    part_out[e] = m[r];
                    part_out[e + 1u] = l[r];
                }
                for (var i = 0u; i < SLOTS; i++) {
                    let d = sg_lane + sg_size * i;
                    if d < HD4 {
                        let a = acc[r * SLOTS + i];
                        let o = e + 2u + 4u * d;
                        part_out[o] = a.x;
                        part_out[o + 1u] = a.y;
                        part_out[o + 2u] = a.z;
                        part_out[o + 3u] = a.w;
                    }
                }
            }
        }
    }
}
