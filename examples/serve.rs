//! A continuous-batching server's attention loop over the paged KV cache.
//!
//! Requests with different prompt lengths arrive and finish at different steps. Each step the
//! scheduler takes every running request's next token (decode) and a chunk of at most
//! `--chunk` prompt tokens of each request still in prefill (chunked prefill), grows their pages
//! in the [`PageTable`], and records, in one encoder: the copy-on-write page copies, the append
//! of every new K/V row (RoPE on K at each token's own position), and one variable-length
//! attention call over all sequences, read in place from the pages. Two requests share a
//! prompt prefix: the second is a fork of the first, sharing its pages until they diverge.
//! The device is opened with a 1 MiB binding limit, so the page pool spans three buffers, as a
//! pool past 128 MiB does on a real device; a long-lived sequence holds most of the first
//! buffer's pages, so the requests' pages straddle two buffers.
//!
//! Every step's output is checked against the f64 reference over each request's whole history;
//! the process exits 1 on the first mismatch, 2 on a bad argument.
//!
//! ```sh
//! cargo run --release --example serve -- [--dtype f32|f16|bf16] [--chunk N] [--layout nhd|hnd]
//! ```

use std::process::ExitCode;

use llama_kernels::compare::{compare, tolerance};
use llama_kernels::ops::paged::{Heads, PageLayout, SeqId};
use llama_kernels::reference;
use llama_kernels::{
    Attention, Context, DType, PageTable, PagedBatch, PagedKvCache, PagedKvConfig, Rope,
};

// Llama-3-8B's GQA group of 4 and rope_theta, with fewer and smaller heads.
const N_HEADS: usize = 8;
const N_KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const THETA: f64 = 500000.0;
const PAGE: usize = 16;
/// Bytes per binding the example's device allows.
const BINDING_LIMIT: u64 = 1 << 20;

/// (arrives at step, prompt tokens, tokens to generate, fork of request)
const REQUESTS: [(usize, usize, usize, Option<usize>); 5] = [
    (0, 37, 6, None),
    (0, 5, 9, None),
    (1, 37, 5, Some(0)),
    (3, 20, 4, None),
    (5, 70, 3, None),
];

struct Args {
    dtype: DType,
    chunk: usize,
    layout: PageLayout,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dtype: DType::F16,
        chunk: 24,
        layout: PageLayout::Hnd,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--dtype" => {
                args.dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype {other:?}: use f32, f16 or bf16")),
                }
            }
            "--chunk" => {
                let v = value()?;
                args.chunk = v
                    .parse()
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or(format!("--chunk {v:?} is not a positive number"))?;
            }
            "--layout" => {
                args.layout = match value()?.as_str() {
                    "nhd" => PageLayout::Nhd,
                    "hnd" => PageLayout::Hnd,
                    other => return Err(format!("--layout {other:?}: use nhd or hnd")),
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: serve [--dtype f32|f16|bf16] [--chunk N] [--layout nhd|hnd]"
                ))
            }
        }
    }
    Ok(args)
}

/// A deterministic value stream per (request, token, kind), so a forked request sees the same
/// prompt rows as its parent.
fn values(req: usize, token: usize, kind: u64, n: usize) -> Vec<f32> {
    let mut s = (req as u64) << 40 ^ (token as u64) << 8 ^ kind ^ 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Request {
    seq: Option<SeqId>,
    prompt: usize,
    generate: usize,
    // Tokens appended so far (prompt and generated).
    done: usize,
    // The rotated K and V rows the cache holds, in f64 (rounded to the storage dtype).
    k: Vec<f64>,
    v: Vec<f64>,
    // Requests forked from this one share its prompt: they take the K/V rows of `values(root..)`.
    root: usize,
}

fn run(args: &Args) -> Result<bool, llama_kernels::Error> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .map_err(|e| llama_kernels::Error::NoDevice(e.to_string()))?;
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: BINDING_LIMIT
            .min(adapter.limits().max_storage_buffer_binding_size),
        ..adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .map_err(|e| llama_kernels::Error::NoDevice(e.to_string()))?;
    let ctx = Context::from_device(&device, &queue);
    println!("adapter: {}", ctx.describe());
    let dtype = args.dtype;
    let heads = Heads {
        n_heads: N_HEADS,
        n_kv_heads: N_KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let page_bytes = 2 * PAGE * N_KV_HEADS * HEAD_DIM * dtype.size();
    let per_buffer = BINDING_LIMIT as usize / page_bytes;
    let n_pages = 2 * per_buffer + 8;
    let mut table = PageTable::new(n_pages, PAGE)?;
    let cache = PagedKvCache::new(
        &ctx,
        PagedKvConfig {
            n_pages,
            page_size: PAGE,
            n_kv_heads: N_KV_HEADS,
            head_dim: HEAD_DIM,
            dtype,
            layout: args.layout,
            kv_format: None,
        },
    )?;
    // A long-lived sequence (never attended here) holds all but 3 pages of the first buffer.
    let resident = table.add_sequence();
    table.append(&[(resident, (per_buffer - 3) * PAGE)])?;
    println!(
        "pool: {n_pages} pages of {PAGE} tokens in {} buffers ({} pages each), {dtype}, {:?}",
        cache.buffers().len(),
        cache.pages_per_buffer(),
        args.layout
    );
    let rope = Rope::new(THETA, llama_kernels::Layout::Half).with_seq_len(4096);
    let (inv_freq, factor) = reference::rope::frequencies(THETA, HEAD_DIM, &rope.scaling, 4096);
    let row = N_KV_HEADS * HEAD_DIM;
    let qrow = N_HEADS * HEAD_DIM;
    let mut reqs: Vec<Request> = Vec::new();
    let mut all_ok = true;
    let mut step = 0;
    loop {
        // Arrivals (a fork shares its parent's pages and history).
        for (i, &(at, prompt, generate, fork)) in REQUESTS.iter().enumerate() {
            if at != step {
                continue;
            }
            let r = match fork {
                Some(p) => {
                    let parent = &reqs[p];
                    let seq = table.fork(parent.seq.expect("parent still running"))?;
                    Request {
                        seq: Some(seq),
                        prompt,
                        generate,
                        done: parent.done,
                        k: parent.k.clone(),
                        v: parent.v.clone(),
                        root: parent.root,
                    }
                }
                None => Request {
                    seq: Some(table.add_sequence()),
                    prompt,
                    generate,
                    done: 0,
                    k: Vec::new(),
                    v: Vec::new(),
                    root: i,
                },
            };
            reqs.push(r);
        }
        // Schedule: each running request's next chunk of prompt, or one generated token.
        let mut entries: Vec<(usize, usize)> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            if r.seq.is_none() {
                continue;
            }
            let n = if r.done < r.prompt {
                (r.prompt - r.done).min(args.chunk)
            } else {
                1
            };
            entries.push((i, n));
        }
        if entries.is_empty() {
            if step >= REQUESTS.iter().map(|r| r.0).max().unwrap_or(0) {
                break;
            }
            step += 1;
            continue;
        }
        let ids: Vec<(SeqId, usize)> = entries
            .iter()
            .map(|&(i, n)| (reqs[i].seq.unwrap(), n))
            .collect();
        let copies = table.append(&ids)?;
        let batch = PagedBatch::new(&ctx, &table, &ids, heads)?;
        let total = batch.total_q();
        // The new rows: prompt tokens are a function of (root request, position), so a fork
        // shares them with its parent; generated tokens are the request's own.
        let (mut k_new, mut v_new, mut q) = (Vec::new(), Vec::new(), Vec::new());
        for &(i, n) in &entries {
            let r = &reqs[i];
            for t in r.done..r.done + n {
                let src = if t < r.prompt { r.root } else { i };
                k_new.extend(values(src, t, 1, row));
                v_new.extend(values(src, t, 2, row));
                q.extend(values(i, t, 3, qrow));
            }
        }
        let kt = ctx.upload_as(&k_new, &[total, N_KV_HEADS, HEAD_DIM], dtype)?;
        let vt = ctx.upload_as(&v_new, &[total, N_KV_HEADS, HEAD_DIM], dtype)?;
        let qt = ctx.upload_as(&q, &[total, N_HEADS, HEAD_DIM], dtype)?;
        let out = ctx.empty(&[total, N_HEADS, HEAD_DIM], dtype)?;
        let mut enc = device.create_command_encoder(&Default::default());
        cache.copy_pages(&ctx, &mut enc, &copies)?;
        cache.append_rope(&ctx, &mut enc, &batch, &kt, &vt, &rope, None, None)?;
        Attention::default().encode_paged(&ctx, &mut enc, &qt, &cache, &batch, None, &out)?;
        queue.submit([enc.finish()]);
        let got = ctx.read_f32(&out)?;

        // The reference: each request's history grows by its rotated, rounded rows.
        let round = |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| dtype.round(v as f64)).collect() };
        let mut want = Vec::with_capacity(got.len());
        let mut t0 = 0;
        let mut prefill = 0;
        for &(i, n) in &entries {
            let r = &mut reqs[i];
            let pos: Vec<i64> = (r.done..r.done + n).map(|p| p as i64).collect();
            let rot = reference::rope::rope(
                &round(&k_new[t0 * row..(t0 + n) * row]),
                [1, n, N_KV_HEADS, HEAD_DIM],
                &pos,
                &inv_freq,
                factor,
                rope.layout,
                HEAD_DIM,
            );
            r.k.extend(rot.iter().map(|&x| dtype.round(x)));
            r.v.extend(round(&v_new[t0 * row..(t0 + n) * row]));
            r.done += n;
            if n > 1 {
                prefill += n;
            }
            want.extend(reference::attention::attention(
                &round(&q[t0 * qrow..(t0 + n) * qrow]),
                &r.k,
                &r.v,
                None,
                reference::attention::Dims {
                    batch: 1,
                    q_len: n,
                    kv_len: r.done,
                    n_heads: N_HEADS,
                    n_kv_heads: N_KV_HEADS,
                    head_dim: HEAD_DIM,
                },
                &reference::attention::Options::default(),
            ));
            t0 += n;
        }
        let cmp = compare(&got, &want);
        let ok = cmp.passes(tolerance(dtype));
        all_ok &= ok;
        println!(
            "step {step:2}: {} sequences, {prefill} prefill + {} decode tokens, {} pages in use, {} page copies, kv lens {:?}: {cmp} {}",
            entries.len(),
            total - prefill,
            n_pages - table.free_pages(),
            copies.len(),
            batch.kv_lens(),
            if ok { "ok" } else { "MISMATCH" }
        );
        if !ok {
            return Ok(false);
        }
        // Finished requests free their pages.
        for r in reqs.iter_mut() {
            if let Some(seq) = r.seq {
                if r.done >= r.prompt + r.generate {
                    table.remove(seq)?;
                    r.seq = None;
                }
            }
        }
        step += 1;
    }
    table.remove(resident)?;
    println!(
        "{} requests served in {step} steps; {} of {n_pages} pages free at the end",
        reqs.len(),
        table.free_pages()
    );
    Ok(all_ok)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("serve: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => {
            println!("all steps match the f64 reference");
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("serve: {e}");
            ExitCode::from(1)
        }
    }
}
