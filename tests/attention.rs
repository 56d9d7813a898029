//! GQA attention and the KV cache on a real adapter against the f64 reference: the cross-check
//! grid, forced variants at every threshold, edge cases, properties, and every validation rule.

mod common;

use common::*;
use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::attention::{
    Kind, DECODE_MAX_Q_LEN, DECODE_MIN_CHUNK, DECODE_TARGET_WORKGROUPS,
};
use llama_kernels::reference::attention as reference;
use llama_kernels::{Attention, DType, Error, KvCache, Tensor};

#[derive(Clone, Copy, Debug)]
struct Case {
    dtype: DType,
    batch: usize,
    q_len: usize,
    kv_len: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    causal: bool,
    q_offset: Option<i64>,
    window: u32,
    softcap: f32,
    sinks: bool,
    scale: Option<f32>,
    kind: Option<Kind>,
    splits: Option<u32>,
}

impl Case {
    fn new(
        q_len: usize,
        kv_len: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Case {
            dtype: DType::F32,
            batch: 1,
            q_len,
            kv_len,
            n_heads,
            n_kv_heads,
            head_dim,
            causal: true,
            q_offset: None,
            window: 0,
            softcap: 0.0,
            sinks: false,
            scale: None,
            kind: None,
            splits: None,
        }
    }
    fn op(&self) -> Attention {
        Attention {
            causal: self.causal,
            q_offset: self.q_offset,
            scale: self.scale,
            window: self.window,
            softcap: self.softcap,
            kind: self.kind,
            splits: self.splits,
        }
    }
    fn dims(&self) -> reference::Dims {
        reference::Dims {
            batch: self.batch,
            q_len: self.q_len,
            kv_len: self.kv_len,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
    fn ref_opts(&self) -> reference::Options {
        reference::Options {
            causal: self.causal,
            q_offset: self.q_offset,
            scale: self.scale.map(|s| s as f64),
            window: self.window as usize,
            softcap: self.softcap as f64,
        }
    }
    fn shapes(&self) -> (Vec<usize>, Vec<usize>) {
        let mut qs = vec![self.q_len, self.n_heads, self.head_dim];
        let mut ks = vec![self.kv_len, self.n_kv_heads, self.head_dim];
        if self.batch > 1 {
            qs.insert(0, self.batch);
            ks.insert(0, self.batch);
        }
        (qs, ks)
    }
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    sinks: Vec<f32>,
}

fn data(c: &Case, seed: u64, q_scale: f32) -> Data {
    let mut rng = Rng::new(seed);
    let nq = c.batch * c.q_len * c.n_heads * c.head_dim;
    let nk = c.batch * c.kv_len * c.n_kv_heads * c.head_dim;
    Data {
        q: rng.vec(nq, q_scale),
        k: rng.vec(nk, 1.0),
        v: rng.vec(nk, 1.0),
        sinks: rng.vec(c.n_heads, 1.0),
    }
}

/// Run `c` on the GPU; returns the output values.
fn gpu(c: &Case, d: &Data) -> Vec<f32> {
    let ctx = ctx();
    let (qs, ks) = c.shapes();
    let q = upload_guarded(&ctx, &d.q, &qs, c.dtype);
    let k = upload_guarded(&ctx, &d.k, &ks, c.dtype);
    let v = upload_guarded(&ctx, &d.v, &ks, c.dtype);
    let sinks = c
        .sinks
        .then(|| upload_guarded(&ctx, &d.sinks, &[c.n_heads], DType::F32));
    let out = nan_output(&ctx, &qs, c.dtype);
    c.op()
        .run(&ctx, &q, &k, &v, sinks.as_ref(), &out)
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert_guards(&ctx, &out, &format!("{c:?}"));
    ctx.read_f32(&out).unwrap()
}

fn want(c: &Case, d: &Data) -> Vec<f64> {
    let sinks: Vec<f64> = d.sinks.iter().map(|&s| s as f64).collect();
    reference::attention(
        &rounded(&d.q, c.dtype),
        &rounded(&d.k, c.dtype),
        &rounded(&d.v, c.dtype),
        c.sinks.then_some(&sinks[..]),
        c.dims(),
        &c.ref_opts(),
    )
}

fn tol(dtype: DType) -> f64 {
    tolerance(dtype)
}

fn check(c: Case, seed: u64) {
    let d = data(&c, seed, 1.0);
    let got = gpu(&c, &d);
    let w = want(&c, &d);
    let cmp = compare(&got, &w);
    assert!(cmp.passes(tol(c.dtype)), "{c:?}: {cmp}");
}

#[test]
fn smoke() {
    for kind in [Kind::Prefill, Kind::Decode] {
        let mut c = Case::new(3, 7, 4, 2, 8);
        c.kind = Some(kind);
        check(c, 1);
        c.causal = false;
        check(c, 2);
    }
}
