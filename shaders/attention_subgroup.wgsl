// The subgroup decode step (`sg_partial`) and the in-workgroup merge (`sg_merge_row`), shared by
// the GPU decode kernels `attn_decode_sg` (attention_decode_subgroup.wgsl, contiguous K/V) and
// `attn_paged_sg` (attention_paged_subgroup.wgsl, pages). Each includes it in a module of its
// own: a module that uses subgroup operations anywhere fails validation on devices without
// SUBGROUP. The including module says where a key's rows live and how a 16-byte unit is read:
// `keys_rows(h, j)` gives (K source, K unit, V source, V unit) of key j of the head described by
// `h` (the same seam the CPU kernels' `keys_partial` uses), and `sg_item(src, i)` reads unit i of
// a source as values (the K/V load seam, one function per storage format). Quantized K/V
// (KV_FMT >= KV_Q8_0) come through `sg_qrows(h, j)` instead (key j's K and V rows: each row's
// source, the 16-byte unit of its first data word and the f16 number of its first block's scale,
// or fp8's tensor scale, found once per row, so no unit pays a page division) and
// `sg_qscale(src, n)` (f16 scale number n of a source), both from the including file, and
// `keys_unit(src, i)`. With the same split structure both kernels run the same arithmetic,
// bit for bit.
//
// The design: split-KV decode for GPUs after flash-decoding (Dao et al., 2023: the keys split
// over workgroups, a partial softmax per split, a fixed-order merge) and FlashInfer's decode
// kernels (`BatchDecodeWithPagedKVCacheKernel`, Ye et al., 2024: a K/V row read with 16-byte
// vectors by a group of lanes, partial dots reduced with shuffles, the next rows prefetched
// before the reduction, several lane groups per warp on different keys, the GQA group's query
// heads sharing every row, partials merged in workgroup memory).
//
// One workgroup of WG invocations per (batch, kv head, row block, split) (paged: per work item
// of the host's plan and kv head), rows as in `attn_decode_partial` (r = t * g + i, RS rows
// per workgroup). A K/V row is UPR 16-byte units (4 f32, 8 halves, or quantized K/V (KV_FMT >=
// KV_Q8_0) read in place: 16 q8_0 or fp8 values, half a q8_0 block, or 32 q4_0 values, a whole
// block; src/kv_format.rs lays rows out so that units never straddle blocks or rows); LG lanes
// (a power of two <= the adapter's smallest subgroup) read it, lane li holding units li + LG * s
// (s < SLOTS) of each query row and accumulator, pre-scaled, in registers. A quantized unit is
// dequantized in registers as it is loaded, with its block's f16 scale loaded once for the unit
// (fp8: the tensor's scale, no load), and every score, the softmax and the accumulators are f32
// as for the float formats; the RS query rows (the GQA group) share each loaded unit. The workgroup's lanes form
// NLG = WG / LG lane groups with a fixed numbering, g = sg_id * (sg_size / LG) + sg_lane / LG:
// lane group g takes keys kv.x + g, kv.x + g + NLG, ... of the split. Per key: the V units and
// the next key's K units are loaded, the partial dots of the RS rows (packed four rows to a
// vec4) are reduced across the lane group by subgroupShuffleXor butterflies (every lane ends
// with the same sum), and the online softmax of each row takes the key. Then the NLG partials of
// each row are merged in a fixed tree over lane groups through workgroup memory (lane group
// g + half into g, half = NLG / 2, NLG / 4, ... 1), and lane group 0 writes the split's one
// partial per row, or, with one split, the output itself.
//
// Which keys meet in one partial and the order of every sum depend on LG and NLG alone, never
// on the subgroup size the device runs (any size that LG divides): bitwise repeatable.
//
// Key constants (`// @key`: each pipeline key sets them, `PipelineKey::source`): they size this
// lane's register arrays and the merge memory, which WGSL only allows with constant
// expressions. Arrays sized exactly to their loops' trip counts let the compiler unroll every
// loop over them and keep them in registers (no dynamically indexed private memory).
//   RS     query rows per workgroup (1, 2, 4 or 8); RS * SLOTS * VPU <= 16 (the planner's limit)
//          (the paged kernel's work item may hold a multiple of RS rows, taken RS at a time)
//   SLOTS  16-byte units of a row per lane: ceil(UPR / LG)
//   VPU    vec4s per unit: 1 (f32), 2 (halves), 4 (q8_0, fp8) or 8 (q4_0)
//   LG     lanes per lane group: min(next power of two >= UPR, the adapter's smallest subgroup)
//   NLG    lane groups per workgroup: WG / LG
//   MV4    vec4s of the merge memory: max(NLG / 2, 1) * HD4
//   I8     1: q·k over q8_0 or q4_0 K by packed 8-bit products (`dot4I8Packed`), as llama.cpp's
//          DP4A path: the rows' q quantized once per block of 32 as q8_0 with an f32 scale
//          (`sg_quant_q`), K's units kept as int8 words (`sg_key_i8`), per unit an i32 sum of
//          products times the two block scales in f32 (`sg_dot_i8`); V, the softmax and P·V as
//          on the f32 path. 0: every score from dequantized f32 units (every format)
// Loops (modules are created without naga's loop counters, src/pipeline.rs): rows, slots,
// vec4s and butterfly steps by 1 (or halving) to constants; the key loop by NLG (> 0) to the end
// of the split; the merge rounds halve a constant to 0.
const RS: u32 = 4u; // @key
const SLOTS: u32 = 1u; // @key
const VPU: u32 = 2u; // @key
const LG: u32 = 16u; // @key
const NLG: u32 = 8u; // @key
const MV4: u32 = 128u; // @key
const I8: u32 = 0u; // @key
// vec4s of a row per lane, and vec4s holding the rows' scores (four rows each).
const SV: u32 = SLOTS * VPU;
const S4: u32 = (RS + 3u) / 4u;
// Merge slots: one partial per lane group of the upper half of a round.
const MSLOTS: u32 = max(NLG / 2u, 1u);
// This lane's vec4s of the query rows (and of the accumulators): [row][slot * VPU + c].
alias SgRegs = array<array<vec4<f32>, SV>, RS>;
// This lane's vec4s of one K or V row.
alias SgUnits = array<vec4<f32>, SV>;
// I8: 16-byte int8 words per unit, 1 (q8_0: 16 values) or 2 (q4_0: 32 values), and per lane.
const QW: u32 = max(VPU / 4u, 1u);
const SQW: u32 = SLOTS * QW;
// I8: this lane's units of one q or K row as int8 words (word c of a unit: its values 4c ..
// 4c + 3, value 0 in the low byte) and each unit's block scale.
struct SgI8 {
    w: array<vec4<u32>, SQW>,
    d: array<f32, SLOTS>,
}

// The merge memory: the accumulators of up to MSLOTS lane groups of one row, and their (m, l).
var<workgroup> sg_acc: array<vec4<f32>, MV4>;
var<workgroup> sg_ml: array<vec2<f32>, MSLOTS>;

// 16-byte units of a K/V row.
fn sg_upr() -> u32 {
    return HD4 / VPU;
}

// Where key j's K and V rows start: float K/V `keys_rows`' units; quantized K/V `sg_qrows`'
// (`KvRows`, attention_common.wgsl).
alias SgRows = KvRows;

fn sg_rows(h: vec2<u32>, j: u32) -> SgRows {
    if KV_FMT >= KV_Q8_0 {
        return sg_qrows(h, j);
    }
    let a = keys_rows(h, j);
    return SgRows(vec3<u32>(a.xy, 0u), vec3<u32>(a.zw, 0u));
}

// This lane's units of the row r (`SgRows`' k or v; zero past the row). A quantized unit is
// whole blocks' data, its scale block VPU * u / 8 of the row (q8_0: two units per block).
fn sg_units(r: vec3<u32>, li: u32) -> SgUnits {
    var x: SgUnits;
    if KV_FMT >= KV_Q8_0 {
        for (var s = 0u; s < SLOTS; s++) {
            let u = li + LG * s;
            if u < sg_upr() {
                let w = keys_unit(r.x, r.y + u);
                var d = bitcast<f32>(r.z);
                if KV_FMT != KV_FP8 {
                    d = sg_qscale(r.x, r.z + VPU * u / 8u);
                }
                for (var c = 0u; c < VPU; c++) {
                    x[s * VPU + c] = kv_dequant_unit(KV_FMT, w, c, d);
                }
            }
        }
        return x;
    }
    for (var s = 0u; s < SLOTS; s++) {
        let u = li + LG * s;
        var it = Item(vec4<f32>(0.0), vec4<f32>(0.0));
        if u < sg_upr() {
            it = sg_item(r.x, r.y + u);
        }
        x[s * VPU] = it.lo;
        if VPU == 2u {
            x[s * VPU + 1u] = it.hi;
        }
    }
    return x;
}

// I8: this lane's K units of the row r (`SgRows`' k) as int8 words, q4_0's nibbles widened to
// q - 8 (`kv_i4_i8`), with their block scales (q8_0: two units per block); zero past the row.
fn sg_key_i8(r: vec3<u32>, li: u32) -> SgI8 {
    var x: SgI8;
    for (var s = 0u; s < SLOTS; s++) {
        let u = li + LG * s;
        if u < sg_upr() {
            let w = keys_unit(r.x, r.y + u);
            x.d[s] = sg_qscale(r.x, r.z + VPU * u / 8u);
            if KV_FMT == KV_Q4_0 {
                // Values 0 .. 15 are the low nibbles of the unit's words, 16 .. 31 the high ones.
                x.w[s * QW] = kv_i4_i8(w);
                x.w[s * QW + 1u] = kv_i4_i8(w >> vec4<u32>(4u));
            } else {
                x.w[s * QW] = w;
            }
        }
    }
    return x;
}

// K units of the row r: dequantized into kx, or on the I8 path as int8 words into ki.
fn sg_load_k(kx: ptr<function, SgUnits>, ki: ptr<function, SgI8>, r: vec3<u32>, li: u32) {
    if I8 == 1u {
        *ki = sg_key_i8(r, li);
    } else {
        *kx = sg_units(r, li);
    }
}

// I8: this lane's units of a pre-scaled q row quantized as q8_0 blocks of 32 (ggml's
// `quantize_row_q8_0_ref`: `kv_q8_scale`, `kv_q8_word`) with the scale d = amax / 127 kept in f32. A q8_0
// unit is half a block, the other half in the neighbouring lane (li ^ 1, the same slot: LG is
// even), so the block's amax is both lanes'; a q4_0 unit is a whole block. Every lane of the
// subgroup calls it (a shuffle).
fn sg_quant_q(x: SgUnits) -> SgI8 {
    var o: SgI8;
    for (var s = 0u; s < SLOTS; s++) {
        var a = vec4<f32>(0.0);
        for (var c = 0u; c < VPU; c++) {
            a = max(a, abs(x[s * VPU + c]));
        }
        var amax = max(max(a.x, a.y), max(a.z, a.w));
        if VPU < 8u {
            amax = max(amax, subgroupShuffleXor(amax, 1u));
        }
        let d = kv_q8_scale(amax);
        for (var c = 0u; c < VPU; c++) {
            o.w[s * QW + c / 4u][c % 4u] = kv_q8_word(x[s * VPU + c] * d.y);
        }
        o.d[s] = d.x;
    }
    return o;
}

// I8: the score of a q row's int8 units a against a key's b: per unit the i32 sum of its 16 or
// 32 products (exact), times the two block scales in f32.
fn sg_dot_i8(a: SgI8, b: SgI8) -> f32 {
    var d = 0.0;
    for (var s = 0u; s < SLOTS; s++) {
        var n = 0i;
        for (var c = 0u; c < QW; c++) {
            let x = a.w[s * QW + c];
            let y = b.w[s * QW + c];
            n += dot4I8Packed(x.x, y.x) + dot4I8Packed(x.y, y.y) + dot4I8Packed(x.z, y.z)
                + dot4I8Packed(x.w, y.w);
        }
        d += f32(n) * (a.d[s] * b.d[s]);
    }
    return d;
}

// This lane's units of the query rows r0 .. r0 + RS, pre-scaled, into q (rows past `rows` read
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
    li: u32,
) {
    for (var r = 0u; r < RS; r++) {
        let rc = min(r0 + r, rows - 1u);
        let h = kvh * p.group + rc % p.group;
        let q_base = p.q_off + tok0 + (rc / p.group) * p.q_st + h * p.q_sh;
        (*pos)[r] = q_offset + i32(rc / p.group);
        for (var s = 0u; s < SLOTS; s++) {
            let u = li + LG * s;
            for (var c = 0u; c < VPU; c++) {
                var x = vec4<f32>(0.0);
                if u < sg_upr() {
                    x = q_load4(q_base + 4u * (u * VPU + c)) * p.scale;
                }
                (*q)[r][s * VPU + c] = x;
            }
        }
    }
}

// Rows r0 .. r0 + RS (q: this lane's units of each row, pre-scaled; pos: each row's position)
// against the keys kv.x + g, kv.x + g + NLG, ... (< kv.y) of the head `h`
// (kv head kvh, for the rows' ALiBi slopes; ms: the sequence's mask inputs): this lane's units
// of the unnormalised accumulators into acc, and each row's m and l (identical in every lane of
// the lane group).
fn sg_partial(
    q: ptr<function, SgRegs>,
    pos: ptr<function, array<i32, RS>>,
    acc: ptr<function, SgRegs>,
    m: ptr<function, array<f32, RS>>,
    l: ptr<function, array<f32, RS>>,
    h: vec2<u32>,
    kvh: u32,
    ms: MaskSeq,
    kv: vec2<i32>,
    r0: u32,
    rows: u32,
    g: u32,
    li: u32,
) {
    for (var r = 0u; r < RS; r++) {
        (*m)[r] = NEG_BIG;
        (*l)[r] = 0.0;
        for (var v = 0u; v < SV; v++) {
            (*acc)[r][v] = vec4<f32>(0.0);
        }
    }
    // I8: the rows' q quantized once.
    var qi: array<SgI8, RS>;
    if I8 == 1u {
        for (var r = 0u; r < RS; r++) {
            qi[r] = sg_quant_q((*q)[r]);
        }
    }
    let j_first = kv.x + i32(g);
    // Addresses and K units of key j; an empty range loads a valid key and never uses it.
    var a = sg_rows(h, u32(max(min(j_first, kv.y - 1), 0)));
    var kx: SgUnits;
    var ki: SgI8;
    sg_load_k(&kx, &ki, a.k, li);
    // MASKS: the key whose K units kx holds, and the block's query tokens.
    var ka = j_first;
    let toks = vec2<u32>(r0, min(rows, r0 + RS) - 1u) / p.group;
    for (var j = j_first; j < kv.y; j += i32(NLG)) {
        // MASKS: a key the boolean mask hides from every row of the block is neither loaded nor
        // scored (the lane group's keys are its own: no vote); after a run of such keys, the K
        // units the step prefetched belong to a skipped key, so they are loaded here.
        if mask_bits_on() {
            if !mask_key_seen(ms, toks.x, toks.y, j) {
                continue;
            }
            if ka != j {
                a = sg_rows(h, u32(j));
                sg_load_k(&kx, &ki, a.k, li);
            }
        }
        let vx = sg_units(a.v, li);
        var s: array<vec4<f32>, S4>;
        for (var i = 0u; i < S4; i++) {
            s[i] = vec4<f32>(0.0);
        }
        for (var r = 0u; r < RS; r++) {
            var d = 0.0;
            if I8 == 1u {
                d = sg_dot_i8(qi[r], ki);
            } else {
                for (var v = 0u; v < SV; v++) {
                    d += dot((*q)[r][v], kx[v]);
                }
            }
            s[r / 4u][r % 4u] = d;
        }
        // The next key's K units (clamped to a valid key) load while the scores reduce.
        a = sg_rows(h, u32(min(j + i32(NLG), kv.y - 1)));
        sg_load_k(&kx, &ki, a.k, li);
        ka = j + i32(NLG);
        for (var o = LG / 2u; o > 0u; o = o / 2u) {
            for (var i = 0u; i < S4; i++) {
                s[i] += subgroupShuffleXor(s[i], o);
            }
        }
        for (var r = 0u; r < RS; r++) {
            if r0 + r < rows && visible(j, (*pos)[r]) {
                let x = cap_logit(s[r / 4u][r % 4u]) + row_slope(r0 + r, kvh) * f32(j - (*pos)[r]);
                let sc = mask_logit(x, j, (*pos)[r], kvh * p.group + (r0 + r) % p.group, ms);
                if shown(sc) && sc > (*m)[r] {
                    // The first visible key gives alpha = exp(NEG_BIG - sc) = 0 on l = acc = 0.
                    let al = exp((*m)[r] - sc);
                    (*l)[r] *= al;
                    for (var v = 0u; v < SV; v++) {
                        (*acc)[r][v] *= al;
                    }
                    (*m)[r] = sc;
                }
                // A hidden key (sc = NEG_BIG) adds exp(NEG_BIG - m) = 0 once a key was seen, and
                // nothing before (pj 0).
                let pj = select(0.0, exp(sc - (*m)[r]), shown(sc));
                (*l)[r] += pj;
                for (var v = 0u; v < SV; v++) {
                    (*acc)[r][v] += pj * vx[v];
                }
            }
        }
    }
}

// Row r's partials of the NLG lane groups merged into lane group 0's (m, l, acc): a fixed tree
// (lane group g + half into g for half = NLG / 2, NLG / 4, ..., 1) through workgroup memory.
// Every invocation of the workgroup calls it (it has barriers).
fn sg_merge_row(
    acc: ptr<function, SgRegs>,
    m: ptr<function, array<f32, RS>>,
    l: ptr<function, array<f32, RS>>,
    r: u32,
    g: u32,
    li: u32,
) {
    for (var half = NLG / 2u; half > 0u; half = half / 2u) {
        let upper = g >= half && g < 2u * half;
        if upper {
            let slot = g - half;
            if li == 0u {
                sg_ml[slot] = vec2<f32>((*m)[r], (*l)[r]);
            }
            for (var s = 0u; s < SLOTS; s++) {
                let u = li + LG * s;
                if u < sg_upr() {
                    for (var c = 0u; c < VPU; c++) {
                        sg_acc[slot * HD4 + u * VPU + c] = (*acc)[r][s * VPU + c];
                    }
                }
            }
        }
        workgroupBarrier();
        if g < half {
            let o = sg_ml[g];
            let m2 = max((*m)[r], o.x);
            let a = exp((*m)[r] - m2);
            let b = exp(o.x - m2);
            (*m)[r] = m2;
            (*l)[r] = (*l)[r] * a + o.y * b;
            for (var s = 0u; s < SLOTS; s++) {
                let u = li + LG * s;
                if u < sg_upr() {
                    for (var c = 0u; c < VPU; c++) {
                        let v = s * VPU + c;
                        (*acc)[r][v] = (*acc)[r][v] * a + sg_acc[g * HD4 + u * VPU + c] * b;
                    }
                }
            }
        }
        workgroupBarrier();
    }
}

// Lane group 0's share of row r's result: with one partial per row (`direct`) the output of
// query head `hq` at element o_base of out_buf, else the partial (m, l, acc) at unit e of part_out.
fn sg_store_row(
    acc: ptr<function, SgRegs>,
    m: f32,
    l: f32,
    r: u32,
    li: u32,
    direct: bool,
    e: u32,
    o_base: u32,
    hq: u32,
) {
    if direct {
        let inv = out_scale(m, l, hq);
        for (var s = 0u; s < SLOTS; s++) {
            let u = li + LG * s;
            if u < sg_upr() {
                for (var c = 0u; c < VPU; c++) {
                    store4(o_base + 4u * (u * VPU + c), (*acc)[r][s * VPU + c] * inv);
                }
            }
        }
        return;
    }
    if li == 0u {
        part_out[e] = vec4<f32>(m, l, 0.0, 0.0);
    }
    for (var s = 0u; s < SLOTS; s++) {
        let u = li + LG * s;
        if u < sg_upr() {
            for (var c = 0u; c < VPU; c++) {
                part_out[e + 1u + u * VPU + c] = (*acc)[r][s * VPU + c];
            }
        }
    }
}

// This invocation's (lane group, lane in it) under the fixed numbering.
fn sg_lane_group(sg_lane: u32, sg_size: u32, sg_id: u32) -> vec2<u32> {
    return vec2<u32>(sg_id * (sg_size / LG) + sg_lane / LG, sg_lane % LG);
}
