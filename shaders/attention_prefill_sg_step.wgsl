// The GPU prefill step (`Kind::PrefillSubgroup`), shared by `attn_prefill_sg`
// (attention_prefill_subgroup.wgsl, contiguous K/V) and `attn_paged_prefill_sg`
// (attention_paged_prefill_subgroup.wgsl, pages). Each includes it in a module of its own: a
// module that uses subgroup operations anywhere fails validation on devices without SUBGROUP.
// The including module says where a key's rows live: `pf_stage(lid, j0, n, src)` stages keys
// j0 .. j0 + n of the head that `src` describes into k_tile / v_tile, 16 bytes per load (the
// one per-format read of float K/V is there); quantized K/V (KV_FMT >= KV_Q8_0) are staged here
// (`pf_qstage`) from the including module's `pf_qrows(src, j)` (key j's rows, `KvRows`) and
// `keys_unit(src, i)` (16-byte unit i of a source); with the same tiles both kernels run the
// same arithmetic, bit for bit.
//
// out[b, t, h] = softmax_j(softcap(scale * q[b, t, h] . k[b, j, h / g]) + mask) . v[b, :, h / g]
//
// The design is FlashAttention-2's (Dao 2023, Algorithm 1) laid out for SIMT lanes without
// matrix instructions, with the head split over lanes as FlashInfer's decode kernels split it
// (Ye et al., 2024) and as `attn_decode_sg` does:
// - One workgroup of WG invocations per (batch, kv head, block of rows, split) (paged: per work
//   item of the host's plan and kv head). Rows are
//   r = t * g + i (token-major, then the g query heads of the group), so every K/V tile serves
//   the whole GQA group; a block is R * WG / L rows (64 or more), so each K/V element staged in
//   workgroup memory is read by every row of the block.
// - The lanes of a subgroup form aligned groups of L (4, 8 or 16) consecutive lanes; a group
//   owns R neighbouring rows, and lane `lane` of it holds the vec4 slots d = lane + L * i
//   (i < SLOTS) of each row's pre-scaled q and f32 accumulator in registers: 2 * R * SLOTS vec4s,
//   at most 64 f32 of accumulators. Every private array is sized by a key constant and indexed
//   only by loops that run to that constant, so the compiler unrolls them into registers (no
//   dynamically indexed private memory, which spills to local memory on GPUs).
// - q is read once per row straight into registers: the L lanes of a group read a row as L
//   consecutive vec4s (coalesced), and it is never read again, so staging it in workgroup memory
//   would add a barrier and a second copy for nothing.
// - K/V tiles of p.bk keys are staged cooperatively in workgroup memory (the `k_tile` / `v_tile`
//   of attention_common.wgsl, as f32) with 16-byte loads (one `vec4<u32>` holds 4 f32 or 8
//   halves), so K/V rows must be 16-byte aligned (`ops::attention::kv_rows_aligned`);
//   quantized K/V are dequantized while staged (`pf_qstage`), so the tiles hold f32 for every
//   format and nothing after the staging depends on it; with I8 (q8_0 / q4_0 K) the K tile
//   holds int8 words and block scales instead (`pf_qput_i8`) and q·k is scored by packed 8-bit
//   products (`pf_block`), V as for every format.
//   Reading a tile, a group's lanes take consecutive vec4s of one key row (no bank conflict) and
//   the groups of a subgroup read the same row (a broadcast).
// - Per 4 keys: a lane's partial dots (its slots) of 4 keys x R rows, finished by a butterfly of
//   `subgroupShuffleXor` within the group (log2 L steps, a vec4 of 4 keys' scores at a time,
//   bitwise the same sum in every lane of the group), softcapped, plus the row's ALiBi term
//   slope * (j - pos); the online softmax in f32 (the running
//   max m and the denominator l per row, the same in every lane of the group; accumulators are
//   rescaled only when a row's maximum moves); then P V into the lane's slots.
// Masks: each row's visible keys are one interval (`visible_interval`), the workgroup walks only
// the union of its rows' intervals (`key_range`), and a row with no visible key stores 0. With
// MASKS, each score inside the interval then goes through `mask_logit` (boolean mask, bias,
// block ids), and a key it hides counts as outside.
// Split over the keys, each workgroup covers one chunk and writes (m, l, acc) partials in
// attention_split.wgsl's 16-byte units, which `attn_prefill_merge` (attention_prefill.wgsl) or
// the paged batch's merge (`attn_paged_merge`, or `attn_paged_merge_rows` in a batch with
// DecodeSubgroup rows) combines in a fixed order.
//
// The result does not depend on the subgroup size the device runs: a row's arithmetic is that of
// its group of L lanes, and L is at most the adapter's smallest subgroup size.
//
// Constants beyond attention_common.wgsl's overrides; R, SLOTS and L size this lane's register
// arrays and its reduction, which WGSL only allows with constant expressions, so they are key
// constants (`// @key`: each pipeline key sets them, `PipelineKey::source`):
//   R      rows per group of lanes (1, 2 or 4)
//   SLOTS  vec4 slots of a head per lane: ceil(HD4 / L); R * SLOTS <= 16
//   L      lanes per row (4, 8 or 16, at most the adapter's smallest subgroup size)
//   WG     invocations per workgroup (128 or 256), a multiple of every subgroup size it runs with
//   I8     1: q·k over q8_0 or q4_0 K by packed 8-bit products (`dot4I8Packed`), as the GPU
//          decode's I8 (attention_subgroup.wgsl) and llama.cpp's DP4A path: each row's q
//          quantized once per block of 32 as q8_0 with an f32 scale (`pf_quant_q`), K staged as
//          int8 words with its blocks' scales (`pf_qput_i8`), per word an i32 sum of 4 products
//          times the two block scales in f32 (`pf_block`); V, the softmax and P·V unchanged.
//          0: scores from the f32 tiles (every format)
// Loops (modules are created without naga's loop counters, src/pipeline.rs): rows, slots and the
// 4 keys of a block by 1 to constants; the tile loop by p.bk (>= 1) to the end of the key range;
// the blocks of a tile by 4 to the tile's key count (the staging loops: the including files).

const R: u32 = 4u; // @key
const SLOTS: u32 = 4u; // @key
const L: u32 = 8u; // @key
const I8: u32 = 0u; // @key

// This lane's slots of R rows: [row][slot].
alias PfRegs = array<array<vec4<f32>, SLOTS>, R>;

// I8: this lane's slots of R rows of q as int8 words (a slot's 4 values, value 0 in the low
// byte) and the scale of each slot's block: [row][slot].
struct PfQ8 {
    w: array<array<u32, SLOTS>, R>,
    d: array<array<f32, SLOTS>, R>,
}

// The sum of x over the L lanes of this lane's group (aligned groups of a subgroup), the same
// bits in every lane of the group: each butterfly step adds the same two values, commuted.
fn pf_group_sum(x: vec4<f32>) -> vec4<f32> {
    var s = x;
    if L > 1u {
        s += subgroupShuffleXor(s, 1u);
    }
    if L > 2u {
        s += subgroupShuffleXor(s, 2u);
    }
    if L > 4u {
        s += subgroupShuffleXor(s, 4u);
    }
    if L > 8u {
        s += subgroupShuffleXor(s, 8u);
    }
    return s;
}

// The first of the R rows of this lane's group (L consecutive lanes of its subgroup) in a
// block starting at row r0: groups are numbered across the workgroup's subgroups.
fn pf_group_row(r0: u32, sg_id: u32, sg_size: u32, sg_lane: u32) -> u32 {
    return r0 + R * (sg_id * (sg_size / L) + sg_lane / L);
}

// The per-row state of a group: running max, denominator, visible keys [lo, hi), the query's
// position, its head's ALiBi slope (0 when off) and the query head (for a per-head bias).
struct PfRow {
    m: f32,
    l: f32,
    lo: i32,
    hi: i32,
    pos: i32,
    slope: f32,
    head: u32,
}

// Keys jj .. jj + 4 of the staged tile (key j0 + jj is the tile's key jj; those at or past n do
// not exist) for this lane's R rows; ms: the sequence's mask inputs (MASKS).
fn pf_block(
    q: ptr<function, PfRegs>,
    qi: ptr<function, PfQ8>,
    acc: ptr<function, PfRegs>,
    st: ptr<function, array<PfRow, R>>,
    j0: i32,
    jj: u32,
    n: u32,
    lane: u32,
    ms: MaskSeq,
) {
    var s: array<vec4<f32>, R>;
    for (var r = 0u; r < R; r++) {
        s[r] = vec4<f32>(0.0);
    }
    for (var c = 0u; c < 4u; c++) {
        let key = min(jj + c, n - 1u);
        for (var i = 0u; i < SLOTS; i++) {
            let d = lane + L * i;
            if d < HD4 {
                if I8 == 1u {
                    let kx = pf_ki8(key * pf_ki8_row(), d);
                    for (var r = 0u; r < R; r++) {
                        let n8 = dot4I8Packed((*qi).w[r][i], kx.w);
                        s[r][c] += f32(n8) * ((*qi).d[r][i] * kx.d);
                    }
                } else {
                    let kx = k_tile[key * HD4 + d];
                    for (var r = 0u; r < R; r++) {
                        s[r][c] += dot((*q)[r][i], kx);
                    }
                }
            }
        }
    }
    let j = vec4<i32>(j0 + i32(jj)) + vec4<i32>(0, 1, 2, 3);
    let exists = vec4<u32>(jj) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n);
    var pr: array<vec4<f32>, R>;
    for (var r = 0u; r < R; r++) {
        var sc = pf_group_sum(s[r]);
        if p.softcap > 0.0 {
            let c = vec4<f32>(p.softcap);
            sc = c * tanh(clamp(sc / c, vec4<f32>(-15.0), vec4<f32>(15.0)));
        }
        let row = (*st)[r];
        sc += row.slope * vec4<f32>(j - vec4<i32>(row.pos));
        var ok = exists & (j >= vec4<i32>(row.lo)) & (j < vec4<i32>(row.hi));
        if MASKS {
            // Keys outside [lo, hi) are hidden by the interval already: clamp them into it so
            // that the mask reads stay in the sequence's inputs.
            let jc = clamp(j, vec4<i32>(row.lo), vec4<i32>(max(row.lo, row.hi - 1)));
            for (var c = 0u; c < 4u; c++) {
                sc[c] = mask_logit(sc[c], jc[c], row.pos, row.head, ms);
            }
            ok = ok & (sc > vec4<f32>(NEG_BIG));
        }
        let mx = select(vec4<f32>(NEG_BIG), sc, ok);
        let m_new = max(row.m, max(max(mx.x, mx.y), max(mx.z, mx.w)));
        let pv = select(vec4<f32>(0.0), exp(sc - m_new), ok);
        // m_new >= m: alpha <= 1, and 1 (no rescale) while the maximum stays.
        var l = row.l;
        if m_new > row.m {
            let alpha = exp(row.m - m_new);
            l *= alpha;
            for (var i = 0u; i < SLOTS; i++) {
                (*acc)[r][i] *= alpha;
            }
        }
        (*st)[r].m = m_new;
        (*st)[r].l = l + (pv.x + pv.y + pv.z + pv.w);
        pr[r] = pv;
    }
    for (var c = 0u; c < 4u; c++) {
        let vb = min(jj + c, n - 1u) * HD4;
        for (var i = 0u; i < SLOTS; i++) {
            let d = lane + L * i;
            if d < HD4 {
                let vx = v_tile[vb + d];
                for (var r = 0u; r < R; r++) {
                    (*acc)[r][i] += pr[r][c] * vx;
                }
            }
        }
    }
}

// One staged 16-byte piece of K and of V: vec4s t (and t + 1 for halves) of the tiles.
fn pf_put(t: u32, k: Item, v: Item) {
    k_tile[t] = k.lo;
    v_tile[t] = v.lo;
    if DTYPE != DT_F32 {
        k_tile[t + 1u] = k.hi;
        v_tile[t + 1u] = v.hi;
    }
}

// Quantized K/V (KV_FMT >= KV_Q8_0), staged as f32 into the same tiles: a staging piece is what
// one scale covers, read as whole 16-byte units of the data plane (`keys_unit`): a block of 32
// values (q8_0: two units, q4_0: one) with its f16 scale (one load per block), or one unit of 16
// fp8 values (the tensor's scale, no load); kv_quant.wgsl's `kv_dequant_unit` dequantizes it.

// vec4s of a row per piece: 8 (a block) or 4 (an fp8 unit).
fn pf_qvec4s() -> u32 {
    return select(8u, 4u, KV_FMT == KV_FP8);
}

// Keys j0 .. j0 + n of the head `src` describes into k_tile / v_tile, one piece of K and of V per
// invocation and step; the including module finds a key's rows (`pf_qrows(src, j)`: `KvRows`).
fn pf_qstage(lid: u32, j0: i32, n: u32, src: vec2<u32>) {
    let pieces = HD4 / pf_qvec4s();
    for (var i = lid; i < n * pieces; i += WG) {
        let jj = i / pieces;
        let pc = i % pieces;
        let rows = pf_qrows(src, u32(j0) + jj);
        let t = jj * HD4 + pc * pf_qvec4s();
        let k = pf_qpiece(rows.k, pc);
        if I8 == 1u {
            pf_qput_i8(k, jj * pf_ki8_row() + 5u * pc);
        }
        pf_qput(k, pf_qpiece(rows.v, pc), t);
    }
}

// Piece pc of the quantized row r (`KvRows`' k or v): its units (the second one q8_0's) and its
// scale.
struct PfPiece {
    u0: vec4<u32>,
    u1: vec4<u32>,
    d: f32,
}

fn pf_qpiece(r: vec3<u32>, pc: u32) -> PfPiece {
    if KV_FMT == KV_Q8_0 {
        let u = r.y + 2u * pc;
        return PfPiece(keys_unit(r.x, u), keys_unit(r.x, u + 1u), kv_unit_f16(keys_unit(r.x, (r.z + pc) >> 3u), r.z + pc));
    }
    let u0 = keys_unit(r.x, r.y + pc);
    var d = bitcast<f32>(r.z);
    if KV_FMT == KV_Q4_0 {
        d = kv_unit_f16(keys_unit(r.x, (r.z + pc) >> 3u), r.z + pc);
    }
    return PfPiece(u0, u0, d);
}

// A piece's values 4c .. 4c + 3 (q8_0's second unit from c = 4 on).
fn pf_qvalues(x: PfPiece, c: u32) -> vec4<f32> {
    return kv_dequant_unit(KV_FMT, select(x.u0, x.u1, c >= 4u), c, x.d);
}

// A piece of K and one of V into vec4s t .. t + pf_qvec4s() of k_tile and v_tile (K: not with
// I8, `pf_qput_i8`; the loop by 1 to 8, guarded).
fn pf_qput(k: PfPiece, v: PfPiece, t: u32) {
    for (var c = 0u; c < 8u; c++) {
        if c < pf_qvec4s() {
            if I8 == 0u {
                k_tile[t + c] = pf_qvalues(k, c);
            }
            v_tile[t + c] = pf_qvalues(v, c);
        }
    }
}

// I8: the K tile in k_tile's space (a key's row in pf_ki8_row() vec4s, at most HD4). Block b of
// a key (a piece) is 5 vec4s from 5b: its 8 int8 words (word w: values 4w .. 4w + 3, q4_0's
// nibbles widened to q - 8 by `kv_i4_i8`) as 16-bit halves, low first, in vec4 w / 2 (each
// half an integer below 2^16, so exact in f32: bit patterns such as NaNs never pass through an
// f32), then the block's scale in vec4 4's x.
fn pf_ki8_row() -> u32 {
    return HD4 / 8u * 5u;
}

fn pf_halves(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w.x, w.x >> 16u, w.y, w.y >> 16u) & vec4<u32>(0xffffu));
}

fn pf_qput_i8(k: PfPiece, ti: u32) {
    var a = k.u0;
    var b = k.u1;
    if KV_FMT == KV_Q4_0 {
        // Values 0 .. 15 are the low nibbles of the unit's words, 16 .. 31 the high ones.
        a = kv_i4_i8(k.u0);
        b = kv_i4_i8(k.u0 >> vec4<u32>(4u));
    }
    k_tile[ti] = pf_halves(a.xy);
    k_tile[ti + 1u] = pf_halves(a.zw);
    k_tile[ti + 2u] = pf_halves(b.xy);
    k_tile[ti + 3u] = pf_halves(b.zw);
    k_tile[ti + 4u] = vec4<f32>(k.d, 0.0, 0.0, 0.0);
}

// I8: word d (vec4 d of the row) of the staged key whose row starts at vec4 kb, and its block's
// scale.
struct PfK8 {
    w: u32,
    d: f32,
}

fn pf_ki8(kb: u32, d: u32) -> PfK8 {
    let b = kb + 5u * (d / 8u);
    let x = vec4<u32>(k_tile[b + (d % 8u) / 2u]);
    let h = select(x.xy, x.zw, (d & 1u) != 0u);
    return PfK8(h.x | (h.y << 16u), k_tile[b + 4u].x);
}

// I8: the rows' pre-scaled q quantized per block of 32 values by q8_0's rule (`kv_q8_scale`,
// `kv_q8_word`: the GPU decode's `sg_quant_q`) into qi. Slot i holds vec4 d = lane + L * i of a
// row, in block d / 8: the block's other vec4s are in the lanes of the group that differ from
// this one in the bits of lane below min(L, 8) (a butterfly of maxima) and, for L = 4, in this
// lane's neighbouring slot (i ^ 1). Every lane of the group calls it (shuffles).
fn pf_quant_q(q: ptr<function, PfRegs>, qi: ptr<function, PfQ8>) {
    for (var r = 0u; r < R; r++) {
        var a: array<f32, SLOTS>;
        for (var i = 0u; i < SLOTS; i++) {
            let v = abs((*q)[r][i]);
            var m = max(max(v.x, v.y), max(v.z, v.w));
            m = max(m, subgroupShuffleXor(m, 1u));
            m = max(m, subgroupShuffleXor(m, 2u));
            if L > 4u {
                m = max(m, subgroupShuffleXor(m, 4u));
            }
            a[i] = m;
        }
        for (var i = 0u; i < SLOTS; i++) {
            var amax = a[i];
            if L < 8u {
                amax = max(amax, a[min(i ^ 1u, SLOTS - 1u)]);
            }
            let d = kv_q8_scale(amax);
            (*qi).w[r][i] = kv_q8_word((*q)[r][i] * d.y);
            (*qi).d[r][i] = d.x;
        }
    }
}

// Rows rg .. rg + R of the `rows` rows of kv head kvh over kv_len keys (row r = t * group + i:
// token t, query head kvh * group + i; token t's q row at element tok0 + t * q_st past p.q_off,
// its position q_offset + t): this lane's slots of q, pre-scaled, into q; acc zeroed; each
// row's state into st (rows past the last see no key).
fn pf_load_rows(
    q: ptr<function, PfRegs>,
    acc: ptr<function, PfRegs>,
    st: ptr<function, array<PfRow, R>>,
    rg: u32,
    rows: u32,
    kvh: u32,
    tok0: u32,
    q_offset: i32,
    kv_len: u32,
    lane: u32,
) {
    for (var r = 0u; r < R; r++) {
        let rc = min(rg + r, rows - 1u);
        let t = rc / p.group;
        let h = kvh * p.group + rc % p.group;
        let q_base = p.q_off + tok0 + t * p.q_st + h * p.q_sh;
        let pos = q_offset + i32(t);
        let iv = visible_interval_in(pos, kv_len);
        (*st)[r] = PfRow(NEG_BIG, 0.0, iv.x, select(iv.x, iv.y, rg + r < rows), pos, alibi_slope(h), h);
        for (var i = 0u; i < SLOTS; i++) {
            let d = lane + L * i;
            var x = vec4<f32>(0.0);
            if d < HD4 {
                x = q_load4(q_base + 4u * d) * p.scale;
            }
            (*q)[r][i] = x;
            (*acc)[r][i] = vec4<f32>(0.0);
        }
    }
}

// The keys kv.x .. kv.y of the head `src` describes, tile by tile, for this lane's rows, under
// the sequence's mask inputs ms (the workgroup's rows: query tokens toks.x ..= toks.y). Uniform
// per workgroup (the barriers and the group reductions need it). MASKS: a tile the boolean mask
// hides from every row of the workgroup is neither staged nor scored (`mask_tile_seen`).
fn pf_run(
    q: ptr<function, PfRegs>,
    acc: ptr<function, PfRegs>,
    st: ptr<function, array<PfRow, R>>,
    kv: vec2<i32>,
    src: vec2<u32>,
    lid: u32,
    lane: u32,
    ms: MaskSeq,
    toks: vec2<u32>,
) {
    // I8: the rows' q quantized once.
    var qi: PfQ8;
    if I8 == 1u {
        pf_quant_q(q, &qi);
    }
    for (var j0 = kv.x; j0 < kv.y; j0 += i32(p.bk)) {
        let n = min(p.bk, u32(kv.y - j0));
        if mask_tile_seen(lid, WG, ms, toks.x, toks.y, j0, n) {
            if KV_FMT >= KV_Q8_0 {
                pf_qstage(lid, j0, n, src);
            } else {
                pf_stage(lid, j0, n, src);
            }
            workgroupBarrier();
            for (var jj = 0u; jj < n; jj += 4u) {
                pf_block(q, &qi, acc, st, j0, jj, n, lane, ms);
            }
            workgroupBarrier();
        }
    }
}

// Row rg + r's output (query head h) at element o_base of out_buf: this lane's slots.
fn pf_store_row(acc: ptr<function, PfRegs>, m: f32, l: f32, r: u32, h: u32, o_base: u32, lane: u32) {
    let inv = out_scale(m, l, h);
    for (var i = 0u; i < SLOTS; i++) {
        let d = lane + L * i;
        if d < HD4 {
            store4(o_base + 4u * d, (*acc)[r][i] * inv);
        }
    }
}

// Row rg + r's partial at unit e of part_out (attention_split.wgsl's layout: (m, l, 0, 0) from
// lane 0, then each lane its slots of the accumulator).
fn pf_store_partial(acc: ptr<function, PfRegs>, m: f32, l: f32, r: u32, e: u32, lane: u32) {
    if lane == 0u {
        part_out[e] = vec4<f32>(m, l, 0.0, 0.0);
    }
    for (var i = 0u; i < SLOTS; i++) {
        let d = lane + L * i;
        if d < HD4 {
            part_out[e + 1u + d] = (*acc)[r][i];
        }
    }
}

// Where a group's rows go: row r's output (token t = r / group) at element o_tok0 + t * p.o_st
// past p.o_off when the call has one split, else its partial of split `split` at entry
// part0 + r * n_splits + split of part_out.
struct PfDest {
    rows: u32,
    kvh: u32,
    o_tok0: u32,
    part0: u32,
    n_splits: u32,
    split: u32,
}

// This lane's rows rg .. rg + R (those below dest.rows): the normalised output with one split,
// else the partials for the merge.
fn pf_store(acc: ptr<function, PfRegs>, st: ptr<function, array<PfRow, R>>, rg: u32, dest: PfDest, lane: u32) {
    for (var r = 0u; r < R; r++) {
        let row = rg + r;
        if row < dest.rows {
            let t = row / p.group;
            let h = dest.kvh * p.group + row % p.group;
            let m = (*st)[r].m;
            let l = (*st)[r].l;
            if dest.n_splits == 1u {
                pf_store_row(acc, m, l, r, h, p.o_off + dest.o_tok0 + t * p.o_st + h * p.o_sh, lane);
            } else {
                let e = (dest.part0 + row * dest.n_splits + dest.split) * part_units();
                pf_store_partial(acc, m, l, r, e, lane);
            }
        }
    }
}
