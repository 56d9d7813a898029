//! Shared test helpers: the GPU context (fails, never skips, without an adapter), a seeded RNG,
//! NaN-prefilled outputs with guard regions, the NMSE check against the f64 reference, error
//! checks, case files, and the switch for the long sweeps. The tools crate's tests
//! (`tools/tests/`) include this file too, by path.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use llama_kernels::compare::{compare, Comparison};
use llama_kernels::{Context, DType, Error, Tensor};

/// The GPU context of the calling test. Panics (the test fails) when there is no adapter.
///
/// A test gets one context for its whole run (kept per thread: libtest runs each test on a
/// thread of its own), taken from a small pool: the one fewest running tests hold, or a new one
/// while the pool has fewer than the test threads (at most [`MAX_CONTEXTS`]). On a CPU adapter a
/// pipeline's LLVM compile runs on its device's queue, one at a time, so tests that share one
/// context wait for each other's compiles; two contexts let two tests compile at once. With
/// `--test-threads=1` (the GL pass) there is only ever one.
pub fn ctx() -> Arc<Context> {
    thread_local! {
        static MINE: std::cell::RefCell<Option<Arc<Context>>> = const { std::cell::RefCell::new(None) };
    }
    MINE.with(|m| m.borrow_mut().get_or_insert_with(pooled_context).clone())
}

/// The most contexts [`ctx`] creates.
pub const MAX_CONTEXTS: usize = 2;

fn pooled_context() -> Arc<Context> {
    static POOL: std::sync::Mutex<Vec<Arc<Context>>> = std::sync::Mutex::new(Vec::new());
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    // Capped by the test threads, not only by whether a context is free: a finished test's
    // thread may still hold its context (thread-local destructors run after libtest hears of
    // the result) when the next test asks, and with one thread that must not make a second.
    let threads = std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .or_else(|| {
            // `--test-threads N` or `--test-threads=N` on the command line.
            let args: Vec<String> = std::env::args().collect();
            args.iter().enumerate().find_map(|(i, a)| {
                a.strip_prefix("--test-threads=")
                    .map(str::to_string)
                    .or_else(|| {
                        (a == "--test-threads")
                            .then(|| args.get(i + 1).cloned())
                            .flatten()
                    })
                    .and_then(|n| n.parse().ok())
            })
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Held by the pool alone: no running test uses it.
    let least = pool.iter().min_by_key(|c| Arc::strong_count(c));
    if let Some(c) = least {
        if Arc::strong_count(c) == 1 || pool.len() >= threads.clamp(1, MAX_CONTEXTS) {
            return c.clone();
        }
    }
    let c = match Context::new() {
        Ok(c) => {
            if pool.is_empty() {
                eprintln!("adapter: {}", c.describe());
            }
            Arc::new(c)
        }
        Err(e) => panic!("GPU tests need an adapter and must not skip: {e}"),
    };
    pool.push(c.clone());
    c
}

/// Small deterministic generator (SplitMix64), so every failure reproduces from its seed.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    /// Approximately standard normal (sum of uniforms), scaled.
    pub fn normal(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform(-1.0, 1.0)).sum();
        s * 0.866 * scale
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Round host values to `dtype` so the reference sees exactly what the GPU stores.
pub fn rounded(data: &[f32], dtype: DType) -> Vec<f64> {
    data.iter().map(|&v| dtype.round(v as f64)).collect()
}

/// Elements of guard before and after every test view: an unaligned start exercises element
/// offsets inside the bound window, and the trailing guard catches stray writes.
pub const GUARD_BEFORE: usize = 70;
pub const GUARD_AFTER: usize = 64;
/// A guard that leaves the view 16-byte aligned in its binding window for every dtype (64 f32
/// = 256 bytes, 64 halves = 128 bytes), for the kernels with 16-byte loads.
pub const ALIGNED_GUARD: usize = 64;
pub const SENTINEL: f32 = 1234.5;

/// A view of `shape` starting `before` elements into a sentinel-filled buffer, holding `data`,
/// with `GUARD_AFTER` sentinels after it.
pub fn upload_at(
    ctx: &Context,
    data: &[f32],
    shape: &[usize],
    dtype: DType,
    before: usize,
) -> Tensor {
    let n: usize = shape.iter().product();
    assert_eq!(n, data.len());
    let mut all = vec![SENTINEL; before + n + GUARD_AFTER];
    all[before..before + n].copy_from_slice(data);
    let full = ctx.upload_as(&all, &[all.len()], dtype).expect("upload");
    Tensor::new(full.buffer(), before, shape, dtype)
}

/// [`upload_at`] with the unaligned `GUARD_BEFORE`.
pub fn upload_guarded(ctx: &Context, data: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    upload_at(ctx, data, shape, dtype, GUARD_BEFORE)
}

/// A plain f32 tensor of `shape` holding `value` everywhere (for the validation tests).
pub fn filled(ctx: &Context, shape: &[usize], value: f32) -> Tensor {
    ctx.upload(&vec![value; shape.iter().product()], shape)
        .expect("upload")
}

/// An output view pre-filled with NaN, with sentinel guards around it.
pub fn nan_output(ctx: &Context, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    upload_guarded(ctx, &vec![f32::NAN; n], shape, dtype)
}

/// Assert the guard regions around a view made by [`upload_at`] with `before` still hold the
/// sentinel.
pub fn assert_guards_at(ctx: &Context, t: &Tensor, before: usize, what: &str) {
    let n = t.numel();
    let full = Tensor::new(t.buffer(), 0, &[before + n + GUARD_AFTER], t.dtype());
    let all = ctx.read_f32(&full).expect("readback");
    let s = t.dtype().round(SENTINEL as f64) as f32;
    for (i, &v) in all[..before].iter().chain(&all[before + n..]).enumerate() {
        assert_eq!(v, s, "{what}: guard element {i} was overwritten with {v}");
    }
}

/// [`assert_guards_at`] for a view made by [`upload_guarded`] or [`nan_output`].
pub fn assert_guards(ctx: &Context, t: &Tensor, what: &str) {
    assert_guards_at(ctx, t, GUARD_BEFORE, what)
}

/// Read `got` back and compare it with `want`; panics with `what` and the numbers when the
/// comparison fails `tol`.
pub fn assert_close(ctx: &Context, got: &Tensor, want: &[f64], tol: f64, what: &str) -> Comparison {
    let g = ctx.read_f32(got).expect("readback");
    let c = compare(&g, want);
    assert!(c.passes(tol), "{what}: {c} (tolerance {tol:e})");
    c
}

/// An empty scratch folder for this test process, named `name`.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama-kernels-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The repository root, where `cases/` and `models/` are: this package's folder for the library's
/// tests, its parent for the tools crate's (`tools/`).
pub fn repo_root() -> &'static Path {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    match env!("CARGO_PKG_NAME") {
        "llama-kernels" => dir,
        _ => dir
            .parent()
            .expect("the tools crate sits in the repository"),
    }
}

/// The committed case files under `cases/` whose names start with `prefix`, sorted.
pub fn committed_cases(prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo_root().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

/// Write a case file holding `tensors` (name, dtype, shape; every value `fill`) and `meta`, run it
/// with `check`'s machinery, and return the error it must produce (panics if it is accepted).
pub fn case_error(
    tensors: &[(&str, DType, Vec<usize>)],
    meta: &[(&str, &str)],
    fill: f32,
) -> String {
    use llama_kernels::cases::{write_case, CaseFile};
    static N: AtomicUsize = AtomicUsize::new(0);
    let ctx = ctx();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = tmpdir(&format!("case{n}")).join("case.safetensors");
    let t: Vec<_> = tensors
        .iter()
        .map(|(name, d, s)| {
            (
                name.to_string(),
                *d,
                s.clone(),
                vec![fill; s.iter().product()],
            )
        })
        .collect();
    let m: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    write_case(&path, &t, &m).unwrap();
    match CaseFile::load(&path).and_then(|c| c.run(&ctx, None)) {
        Ok(_) => panic!("bad case was accepted: {tensors:?} {meta:?}"),
        Err(e) => e.to_string(),
    }
}

/// `r` must be an error of the kind `kind` whose message names `op` first and contains `needle`.
pub fn expect_err<T: std::fmt::Debug>(
    r: Result<T, Error>,
    op: &str,
    kind: fn(&Error) -> bool,
    needle: &str,
) {
    match r {
        Ok(v) => panic!("expected an error containing {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(kind(&e), "wrong error kind for {needle:?}: {e:?}");
            assert!(
                msg.starts_with(&format!("{op}: ")),
                "message must name the op {op}: {msg}"
            );
            assert!(
                msg.contains(needle),
                "message {msg:?} must contain {needle:?}"
            );
        }
    }
}

/// Error kinds, for [`expect_err`].
pub fn is_shape(e: &Error) -> bool {
    matches!(e, Error::Shape { .. })
}
pub fn is_dtype(e: &Error) -> bool {
    matches!(e, Error::DType { .. })
}
pub fn is_bounds(e: &Error) -> bool {
    matches!(e, Error::Bounds { .. })
}
pub fn is_alias(e: &Error) -> bool {
    matches!(e, Error::Alias { .. })
}
pub fn is_param(e: &Error) -> bool {
    matches!(e, Error::Param { .. })
}

/// `LLAMA_KERNELS_LONG_TESTS=1` runs the long sweeps (full grids) besides the default set, which
/// already reaches every variant and threshold with covering designs. Each extra specialisation
/// costs lavapipe an LLVM compile, which dominates a cold run.
pub fn long_tests() -> bool {
    std::env::var_os("LLAMA_KERNELS_LONG_TESTS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The NMSE limit for a result whose logits went through `tanh` (attention's softcap) on this
/// adapter. WGSL gives `tanh` no precision of its own (it inherits sinh/cosh's), and GPU drivers
/// may lower it to an approximate instruction (about 2^-11 relative error on NVIDIA), so on GPUs
/// such results are held to 1e-5, the error a logit off by 5e-4 relative gives; CPU adapters
/// (lavapipe computes `tanh` with libm precision) keep the dtype's limit. The tanh-free results
/// keep [`tolerance`] everywhere: exp and exp2 have a precision WGSL states (3 + 2|x| ULP).
pub fn softcap_tolerance(ctx: &Context, dtype: DType) -> f64 {
    let limit = llama_kernels::compare::tolerance(dtype);
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        limit
    } else {
        limit.max(1e-5)
    }
}

/// Two results of the same arithmetic from two different shader modules (paged and contiguous,
/// native and integer f16 reads): bit for bit on CPU adapters, where both are compiled the same
/// way; within 1e-12 NMSE (f32 rounding of a different FMA contraction) on GPUs, whose compilers
/// may contract each module differently (Vulkan does not promise otherwise).
pub fn assert_same_arithmetic(ctx: &Context, got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        assert!(
            got.iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: not bit for bit"
        );
        return;
    }
    let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    let cmp = compare(got, &want64);
    assert!(cmp.passes(1e-12), "{what}: {cmp}");
}

/// `cargo run --example NAME -- ARGS` from the workspace root (so it reuses the outer `cargo
/// test`'s build and features whichever package's test calls it); panics with the example's
/// output unless it exits 0, and returns its stdout.
pub fn run_example(name: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}
