// The subgroup decode step (`sg_partial`), shared by the GPU decode kernels `attn_decode_sg`
// (attention_decode_subgroup.wgsl, contiguous K/V) and `attn_paged_sg`
// (attention_paged_subgroup.wgsl, pages). Each includes it in a module of its own: a module that
// uses subgroup operations anywhere fails validation on devices without SUBGROUP. The including
// module says where a key's rows live: `sg_row(h, j)` gives (K source, K element, V source, V
// element) of key j of the head described by `h`, and `sg_load4(src, e)` loads four elements at
// element e of a source; with the same split structure both kernels run the same arithmetic,
// bit for bit.
//
// The design: split-KV decode for GPUs, built as the GPU decode kernels that are known to
// work build it: flash-decoding (Dao et al., 2023: split the keys over workgroups, a partial
// softmax per split, a fixed-order merge) with FlashInfer's decode layout
// (`BatchDecodeWithPagedKVCacheKernel` / `SingleDecodeWithKVCacheKernel`, Ye et al., 2024:
// the lanes of a warp split head_dim, each holding a vector of it; a partial dot product per lane
// finished by a warp reduction; every K/V row a warp loads serves all query heads of the GQA
// group, which sit in the same block).
//
// One workgroup of WG invocations per (batch, kv head, row block, split) (paged: per work item
// of the host's plan and kv head), rows as in
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
// Constants beyond attention_decode.wgsl's overrides. RS and SLOTS size this lane's register
// arrays, which WGSL only allows with constant expressions, so they are key constants (`// @key`:
// each pipeline key sets them, `PipelineKey::source`). Arrays sized exactly to their loops' trip
// counts let the compiler unroll every row and slot loop and keep the arrays in registers (no
// dynamically indexed private memory, which spills on GPUs and multiplies LLVM's time on CPU
// adapters: BENCHMARKS.md, cold compile).
//   RS     query rows per workgroup (1, 2, 4 or 8); RS * SLOTS <= 64 (the planner's limit)
//   SLOTS  vec4 slots of a head per lane: ceil(HD4 / the adapter's smallest subgroup)
//   NSG    key lanes (partials per row and split): WG / the adapter's smallest subgroup
// Loops (modules are created without naga's loop counters, src/pipeline.rs): rows, slots and the
// keys of a block by 1 to constants; the key loop by 4 * NSG (> 0) to the end of the split.
const RS: u32 = 4u; // @key
const SLOTS: u32 = 4u; // @key
override NSG: u32 = 8u;
// This lane's slots of the query rows (and of the accumulators): [row][slot].
alias SgRegs = array<array<vec4<f32>, SLOTS>, RS>;

// This lane's slots of the query rows r0 .. r0 + RS, pre-scaled, into q (rows past `rows` read
// the last row and are never stored), and each row's position into pos. Row r = t * group + i is
// token t, query head kvh * group + i; token t's q row starts at element tok0 + t * q_st of q_buf
// (past p.q_off), its position is q_offset + t.
fn sg_load_q(
    q: ptr<function, SgRegs>,
    pos: ptr<function, array<i32, RS>>,
    r0: u32,
    rows: u32,
    kvh: u32,
    tok0: u32,
    q_offset: i32,
    sg_lane: u32,
    sg_size: u32,
) {
    for (var r = 0u; r < RS; r++) {
        let rc = min(r0 + r, rows - 1u);
        let h = kvh * p.group + rc % p.group;
        let q_base = p.q_off + tok0 + (rc / p.group) * p.q_st + h * p.q_sh;
        (*pos)[r] = q_offset + i32(rc / p.group);
        for (var i = 0u; i < SLOTS; i++) {
            let d = sg_lane + sg_size * i;
            var x = vec4<f32>(0.0);
            if d < HD4 {
                x = q_load4(q_base + 4u * d) * p.scale;
            }
            (*q)[r][i] = x;
        }
    }
}

// Rows r0 .. r0 + RS (q: this lane's slots of each row, pre-scaled; pos: each row's query
// position) against the 4-key blocks vs, vs + NSG, ... of the keys kv.x .. kv.y of the head `h`
// (kv head kvh, for the rows' ALiBi slopes):
// this lane's slots of the unnormalised accumulators into acc, and each row's m and l
// (identical in every lane).
fn sg_partial(
    q: ptr<function, SgRegs>,
    pos: ptr<function, array<i32, RS>>,
    acc: ptr<function, SgRegs>,
    m: ptr<function, array<f32, RS>>,
    l: ptr<function, array<f32, RS>>,
    h: vec2<u32>,
    kvh: u32,
    kv: vec2<i32>,
    r0: u32,
    rows: u32,
    vs: u32,
    sg_lane: u32,
    sg_size: u32,
) {
    for (var r = 0u; r < RS; r++) {
        (*m)[r] = NEG_BIG;
        (*l)[r] = 0.0;
        for (var i = 0u; i < SLOTS; i++) {
            (*acc)[r][i] = vec4<f32>(0.0);
        }
    }
    for (var j0 = kv.x + 4 * i32(vs); j0 < kv.y; j0 += 4 * i32(NSG)) {
        // Keys j0 .. j0 + 4 that exist (the last block of a split may be short).
        let key_ok = vec4<i32>(j0, j0 + 1, j0 + 2, j0 + 3) < vec4<i32>(kv.y);
        var s: array<vec4<f32>, RS>;
        for (var r = 0u; r < RS; r++) {
            s[r] = vec4<f32>(0.0);
        }
        for (var c = 0u; c < 4u; c++) {
            let kr = sg_row(h, u32(min(j0 + i32(c), kv.y - 1)));
            for (var i = 0u; i < SLOTS; i++) {
                let d = sg_lane + sg_size * i;
                if d < HD4 {
                    let kx = sg_load4(kr.x, kr.y + 4u * d);
                    for (var r = 0u; r < RS; r++) {
                        s[r][c] += dot((*q)[r][i], kx);
                    }
                }
            }
        }
        var pr: array<vec4<f32>, RS>;
        for (var r = 0u; r < RS; r++) {
            let x = subgroupAdd(s[r]);
            let ps = (*pos)[r];
            let dist = vec4<f32>(vec4<i32>(j0, j0 + 1, j0 + 2, j0 + 3) - vec4<i32>(ps));
            let sc = vec4<f32>(cap_logit(x.x), cap_logit(x.y), cap_logit(x.z), cap_logit(x.w)) + row_slope(r0 + r, kvh) * dist;
            let ok = key_ok & vec4<bool>(r0 + r < rows) & vec4<bool>(
                visible(j0, ps),
                visible(j0 + 1, ps),
                visible(j0 + 2, ps),
                visible(j0 + 3, ps),
            );
            let mx = select(vec4<f32>(NEG_BIG), sc, ok);
            let m_new = max((*m)[r], max(max(mx.x, mx.y), max(mx.z, mx.w)));
            // m_new >= m, so alpha <= 1; while nothing is visible both are NEG_BIG: alpha 1.
            let al = exp((*m)[r] - m_new);
            let pv = select(vec4<f32>(0.0), exp(sc - m_new), ok);
            (*l)[r] = (*l)[r] * al + (pv.x + pv.y + pv.z + pv.w);
            (*m)[r] = m_new;
            pr[r] = pv;
            for (var i = 0u; i < SLOTS; i++) {
                (*acc)[r][i] *= al;
            }
        }
        for (var c = 0u; c < 4u; c++) {
            let vr = sg_row(h, u32(min(j0 + i32(c), kv.y - 1)));
            for (var i = 0u; i < SLOTS; i++) {
                let d = sg_lane + sg_size * i;
                if d < HD4 {
                    let vx = sg_load4(vr.z, vr.w + 4u * d);
                    for (var r = 0u; r < RS; r++) {
                        (*acc)[r][i] += pr[r][c] * vx;
                    }
                }
            }
        }
    }
}

// This lane's share of row r's partial (m, l from lane 0, each lane its slots) at part_out[e ..].
fn sg_store_partial(
    acc: ptr<function, SgRegs>,
    m: f32,
    l: f32,
    r: u32,
    e: u32,
    sg_lane: u32,
    sg_size: u32,
) {
    if sg_lane == 0u {
        part_out[e] = m;
        part_out[e + 1u] = l;
    }
    for (var i = 0u; i < SLOTS; i++) {
        let d = sg_lane + sg_size * i;
        if d < HD4 {
            let a = (*acc)[r][i];
            let o = e + 2u + 4u * d;
            part_out[o] = a.x;
            part_out[o + 1u] = a.y;
            part_out[o + 2u] = a.z;
            part_out[o + 3u] = a.w;
        }
    }
}
