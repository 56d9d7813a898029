//! Reference GQA attention in f64.
//!
//! ```text
//! out[b, t, h] = softmax_j(s[b, t, h, j] + mask[t, j]) · V[b, :, h / g]
//! s[b, t, h, j] = softcap(scale · q[b, t, h] · k[b, j, h / g])
//! ```
//! with `g = n_heads / n_kv_heads`, query `t` at position `pos = q_offset + t`
//! (default `q_offset = kv_len - q_len`, bottom-right aligned), key `j` visible iff
//! `j <= pos` (causal only), `j > pos - window` (window > 0 only), `pos - j <= window_left` and
//! `j - pos <= window_right` (each when set) and `floor(j / chunk) == floor(pos / chunk)`
//! (chunk > 0 only). With ALiBi, `alibi_slopes(n_heads)[h] · (j − pos)` joins each logit after the
//! softcap. A sink logit joins only the denominator. A row with no visible key is exactly 0.
//!
//! Masks ([`Masks`], the kernels' [`crate::ops::attention::Inputs`]): a boolean mask hides key
//! `j` of query `t` where `mask[t, j]` is false; block ids give back a key that causal masking
//! hid when the key and the query's position carry the same id `>= 0` (the windows and chunks
//! still apply); the bias adds `bias[(h,) t, j]` to the logit after ALiBi, and a logit of `-inf`
//! hides the key.

/// Sizes of one attention call (the op's own [`crate::ops::attention::Dims`]). The
/// reference takes contiguous layouts: q/out `[batch, q_len, n_heads, head_dim]`, k/v
/// `[batch, kv_len, n_kv_heads, head_dim]`.
pub use crate::ops::attention::Dims;

/// Masking and logit options; `None` / 0 mean the defaults described in the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Mask keys after the query's position.
    pub causal: bool,
    /// Position of query 0; default `kv_len - q_len`.
    pub q_offset: Option<i64>,
    /// Logit scale; default `1/sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// 0 = no window.
    pub window: usize,
    /// Two-sided window, left side (`None` = unbounded).
    pub window_left: Option<usize>,
    /// Two-sided window, right side (`None` = unbounded).
    pub window_right: Option<usize>,
    /// Chunked local attention; 0 = none.
    pub chunk: usize,
    /// 0 = no softcap.
    pub softcap: f64,
    /// ALiBi: `alibi_slopes(n_heads)[h] * (j - pos)` added to each logit after the softcap.
    pub alibi: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            causal: true,
            q_offset: None,
            scale: None,
            window: 0,
            window_left: None,
            window_right: None,
            chunk: 0,
            softcap: 0.0,
            alibi: false,
        }
    }
}

/// The masks of a call (see the module docs); each given per batch row or shared by the batch,
/// told apart by length.
#[derive(Clone, Copy, Debug, Default)]
pub struct Masks<'a> {
    /// `[q_len, kv_len]` or `[batch, q_len, kv_len]`, true = visible.
    pub mask: Option<&'a [bool]>,
    /// `[q_len, kv_len]` or `[batch, q_len, kv_len]`; with `bias_heads`, `[n_heads, q_len,
    /// kv_len]` or `[batch, n_heads, q_len, kv_len]`.
    pub bias: Option<&'a [f64]>,
    /// The bias has a head dimension.
    pub bias_heads: bool,
    /// `[kv_len]` or `[batch, kv_len]`.
    pub block_ids: Option<&'a [i32]>,
}

impl Masks<'_> {
    /// Whether key `j` of query `t` (at position `pos`) of batch row `b` passes the boolean
    /// mask, and whether block ids make it visible past causal masking.
    fn mask_bits(&self, d: &Dims, b: usize, t: usize, j: usize, pos: i64) -> (bool, bool) {
        let per = d.q_len * d.kv_len;
        let shown = self.mask.is_none_or(|m| {
            let base = if m.len() == per { 0 } else { b * per };
            m[base + t * d.kv_len + j]
        });
        let same_block = self.block_ids.is_some_and(|ids| {
            let base = if ids.len() == d.kv_len {
                0
            } else {
                b * d.kv_len
            };
            let kid = ids[base + j];
            (0..d.kv_len as i64).contains(&pos) && kid >= 0 && ids[base + pos as usize] == kid
        });
        (shown, same_block)
    }

    fn bias_at(&self, d: &Dims, b: usize, t: usize, h: usize, j: usize) -> f64 {
        self.bias.map_or(0.0, |bias| {
            let heads = if self.bias_heads { d.n_heads } else { 1 };
            let per = heads * d.q_len * d.kv_len;
            let base = if bias.len() == per { 0 } else { b * per };
            let hb = if self.bias_heads { h } else { 0 };
            bias[base + (hb * d.q_len + t) * d.kv_len + j]
        })
    }
}

/// One output row `out[b, t, h, :]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_row(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    sinks: Option<&[f64]>,
    d: Dims,
    o: &Options,
    b: usize,
    t: usize,
    h: usize,
) -> Vec<f64> {
    attention_row_masked(q, k, v, sinks, d, o, &Masks::default(), b, t, h)
}

/// One output row `out[b, t, h, :]` under masks.
#[allow(clippy::too_many_arguments)]
pub fn attention_row_masked(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    sinks: Option<&[f64]>,
    d: Dims,
    o: &Options,
    masks: &Masks,
    b: usize,
    t: usize,
    h: usize,
) -> Vec<f64> {
    let hd = d.head_dim;
    let g = d.n_heads / d.n_kv_heads;
    let kvh = h / g;
    let scale = o.scale.unwrap_or(1.0 / (hd as f64).sqrt());
    let q_offset = o.q_offset.unwrap_or(d.kv_len as i64 - d.q_len as i64);
    let pos = q_offset + t as i64;
    let qrow = &q[((b * d.q_len + t) * d.n_heads + h) * hd..][..hd];
    let mut logits: Vec<(usize, f64)> = Vec::new();
    for j in 0..d.kv_len {
        let ji = j as i64;
        let (shown, same_block) = masks.mask_bits(&d, b, t, j, pos);
        if !shown || (o.causal && ji > pos && !same_block) {
            continue;
        }
        if o.window > 0 && ji <= pos - o.window as i64 {
            continue;
        }
        if o.window_left.is_some_and(|l| pos - ji > l as i64)
            || o.window_right.is_some_and(|r| ji - pos > r as i64)
        {
            continue;
        }
        if o.chunk > 0 && ji.div_euclid(o.chunk as i64) != pos.div_euclid(o.chunk as i64) {
            continue;
        }
        let krow = &k[((b * d.kv_len + j) * d.n_kv_heads + kvh) * hd..][..hd];
        let mut s = 0.0;
        for i in 0..hd {
            s += qrow[i] * krow[i];
        }
        s *= scale;
        if o.softcap > 0.0 {
            s = o.softcap * (s / o.softcap).tanh();
        }
        if o.alibi {
            s += alibi_slopes(d.n_heads)[h] * (ji - pos) as f64;
        }
        s += masks.bias_at(&d, b, t, h, j);
        if s == f64::NEG_INFINITY {
            continue;
        }
        logits.push((j, s));
    }
    let sink = sinks.map(|s| s[h]);
    let mut m = f64::NEG_INFINITY;
    for &(_, s) in &logits {
        m = m.max(s);
    }
    if let Some(s) = sink {
        m = m.max(s);
    }
    let mut out = vec![0.0; hd];
    if logits.is_empty() {
        return out;
    }
    let mut denom = 0.0;
    for &(j, s) in &logits {
        let w = (s - m).exp();
        denom += w;
        let vrow = &v[((b * d.kv_len + j) * d.n_kv_heads + kvh) * hd..][..hd];
        for i in 0..hd {
            out[i] += w * vrow[i];
        }
    }
    if let Some(s) = sink {
        denom += (s - m).exp();
    }
    for x in &mut out {
        *x /= denom;
    }
    out
}

/// The largest power of two `<= n_heads` (`n_heads >= 1`), BLOOM's `closest_power_of_2`.
pub fn alibi_pow2(n_heads: usize) -> usize {
    1 << (usize::BITS - 1 - n_heads.max(1).leading_zeros())
}

/// ALiBi slopes, one per query head, as transformers' BLOOM `build_alibi_tensor` makes them
/// (`_get_alibi_slopes`): with `n = alibi_pow2(n_heads)`, head `h < n` gets `2^(-8 (h + 1) / n)`
/// and head `n + i` gets `2^(-4 (2 i + 1) / n)` (odd powers of the next power of two's base).
pub fn alibi_slopes(n_heads: usize) -> Vec<f64> {
    let n = alibi_pow2(n_heads);
    (0..n_heads)
        .map(|h| {
            let e = if h < n {
                -8.0 * (h + 1) as f64 / n as f64
            } else {
                -4.0 * (2 * (h - n) + 1) as f64 / n as f64
            };
            e.exp2()
        })
        .collect()
}

/// The whole output, `[batch, q_len, n_heads, head_dim]`.
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    sinks: Option<&[f64]>,
    d: Dims,
    o: &Options,
) -> Vec<f64> {
    attention_masked(q, k, v, sinks, d, o, &Masks::default())
}

/// The whole output under masks.
pub fn attention_masked(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    sinks: Option<&[f64]>,
    d: Dims,
    o: &Options,
    masks: &Masks,
) -> Vec<f64> {
    assert_eq!(q.len(), d.batch * d.q_len * d.n_heads * d.head_dim);
    assert_eq!(k.len(), d.batch * d.kv_len * d.n_kv_heads * d.head_dim);
    assert_eq!(v.len(), k.len());
    assert!(d.n_kv_heads > 0 && d.n_heads.is_multiple_of(d.n_kv_heads));
    let mut out = Vec::with_capacity(q.len());
    for b in 0..d.batch {
        for t in 0..d.q_len {
            for h in 0..d.n_heads {
                out.extend(attention_row_masked(q, k, v, sinks, d, o, masks, b, t, h));
            }
        }
    }
    out
}
