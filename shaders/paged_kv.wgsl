// Paged KV cache write (vLLM's reshape_and_cache): new K and V rows, packed `[n_tokens,
// n_kv_heads, head_dim]` for many sequences at once (any outer strides, any storage dtype), go to
// the cache slots the host planned: slot = page * page_size + token-in-page, one per new token.
// A page holds K then V, each `[page_size, n_kv_heads, head_dim]` (NHD) or `[n_kv_heads,
// page_size, head_dim]` (HND), given as token and head strides. One dispatch per pool buffer
// that the batch's slots touch writes the tokens whose page lives in that buffer (the others are
// skipped); one invocation per (token, kv head, 4 elements) writes K and V.
//
// Override constants (set by `ops::paged`):
//   SRC_DTYPE  storage dtype of the new rows (0 f32, 1 f16, 2 bf16)
//   DST_DTYPE  storage dtype of the cache
//   WG         workgroup size
//   WRITE_K    false when RoPE writes the rotated K rows into the pages itself (`rope` through a
//              row map); paged_write_q reads it as the uniform `q_write_k` instead (RoPE's
//              `rope_q` writes K into quantized pages), so that its write with and without K is
//              one pipeline
//
// `paged_write_q` writes quantized pages (q8_0, q4_0, fp8; DST_DTYPE is the KvFormat code): each
// page is laid out as a quantized buffer of its 2 x page_size x n_kv_heads rows (src/kv_format.rs:
// data, then the rows' scales), `page_words` words apart; one invocation per (token, kv head,
// unit of `quant_unit`) quantizes K and V in the pass that writes them.

override SRC_DTYPE: u32 = 0u;
override DST_DTYPE: u32 = 0u;
override WG: u32 = 64u;
override WRITE_K: bool = true;

struct Params {
    n_tokens: u32,
    n_kv_heads: u32,
    head_dim: u32,
    page_size: u32,
    // pages per pool buffer, and the buffer this dispatch writes
    pages_per_buffer: u32,
    buffer: u32,
    // elements per page, element offset of V in a page, token and head strides in a page
    page_elems: u32,
    v_in_page: u32,
    tok_stride: u32,
    head_stride: u32,
    // word offset of the slot of token 0 in `slots`
    slot_off: u32,
    // Quantized pages: words per page, and the word offset of the scale plane in a page.
    page_words: u32,
    k_off: u32,
    k_st: u32,
    k_sh: u32,
    scale_word: u32,
    v_off: u32,
    v_st: u32,
    v_sh: u32,
    // paged_write_q: 0 when RoPE's rope_q writes K (V only), else 1 (WRITE_K as a uniform)
    q_write_k: u32,
    // fp8: the per-tensor scales of K and V.
    k_scale: f32,
    v_scale: f32,
    _pad3: u32,
    _pad4: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> pool: array<u32>;
@group(0) @binding(4) var<storage, read> slots: array<u32>;

fn store4(e: u32, v: vec4<f32>) {
    if DST_DTYPE == DT_F32 {
        pool[e] = bitcast<u32>(v.x);
        pool[e + 1u] = bitcast<u32>(v.y);
        pool[e + 2u] = bitcast<u32>(v.z);
        pool[e + 3u] = bitcast<u32>(v.w);
        return;
    }
    let h = e >> 1u;
    let w = pack_half4(v, DST_DTYPE);
    pool[h] = w.x;
    pool[h + 1u] = w.y;
}

@compute @workgroup_size(WG)
fn paged_write(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let hd4 = p.head_dim / 4u;
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    if idx >= p.n_tokens * p.n_kv_heads * hd4 {
        return;
    }
    let d = 4u * (idx % hd4);
    let rest = idx / hd4;
    let h = rest % p.n_kv_heads;
    let t = rest / p.n_kv_heads;
    let slot = slots[p.slot_off + t];
    let page = slot / p.page_size;
    if page / p.pages_per_buffer != p.buffer {
        return;
    }
    let dst = (page % p.pages_per_buffer) * p.page_elems + (slot % p.page_size) * p.tok_stride
        + h * p.head_stride + d;
    if WRITE_K {
        store4(dst, load4(false, p.k_off + t * p.k_st + h * p.k_sh + d));
    }
    store4(dst + p.v_in_page, load4(true, p.v_off + t * p.v_st + h * p.v_sh + d));
}

// kv_quant_store.wgsl's store seam: K and V rows share the pool buffer.
fn kv_put(is_v: bool, i: u32, w: u32) {
    pool[i] = w;
}

@compute @workgroup_size(WG)
fn paged_write_q(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let units = quant_units(DST_DTYPE, p.head_dim);
    let idx = linear_workgroup(wid, nwg) * WG + lid;
    if idx >= p.n_tokens * p.n_kv_heads * units {
        return;
    }
    let u = idx % units;
    let rest = idx / units;
    let h = rest % p.n_kv_heads;
    let t = rest / p.n_kv_heads;
    let slot = slots[p.slot_off + t];
    let page = slot / p.page_size;
    if page / p.pages_per_buffer != p.buffer {
        return;
    }
    let base = (page % p.pages_per_buffer) * p.page_words;
    let row_e = (slot % p.page_size) * p.tok_stride + h * p.head_stride;
    if p.q_write_k != 0u {
        let src = p.k_off + t * p.k_st + h * p.k_sh;
        quant_store(DST_DTYPE, false, base, row_e, p.scale_word, src, u, p.head_dim, p.k_scale);
    }
    let src = p.v_off + t * p.v_st + h * p.v_sh;
    let e0 = row_e + p.v_in_page;
    quant_store(DST_DTYPE, true, base, e0, p.scale_word, src, u, p.head_dim, p.v_scale);
}
