//! The case reader under hostile input: a seeded mutation fuzzer over every committed case file.
//!
//! Each mutation (byte flips, truncations, header-length lies, JSON edits of keys, dtypes, shapes,
//! offsets and metadata values) is written to a file and read with `CaseFile::load`; files that
//! still load are run, as `llama-kernels check` would (by default only the mutations of the
//! files `runs_on_device` names; all of them with `LLAMA_KERNELS_LONG_TESTS=1`). Nothing may panic, every load refusal must
//! name the file, and no single allocation nor the live heap of the fuzzing thread may grow past
//! what the file's size justifies: a counting global allocator watches this thread and refuses
//! (aborting the test binary with the mutation's number) any request beyond a hard cap.
//!
//! `LLAMA_KERNELS_FUZZ_MUTATIONS` sets the mutations per file (default 300) for a longer sweep;
//! `LLAMA_KERNELS_FUZZ_SEED` changes the seed.
//!
//! The corpus of the `cargo fuzz` target (`fuzz/`, nightly only) is replayed here on stable.

use crate::common;
// The `cargo fuzz` target's own reader (fuzz/), so the corpus replay runs exactly what libFuzzer
// ran.
#[path = "../fuzz/fuzz_targets/reader.rs"]
mod reader;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::{ctx, Rng};
use llama_kernels::cases::CaseFile;
use llama_kernels::Error;

/// Counts the heap of threads that opt in (the fuzzing thread); other threads pass through.
struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static BIGGEST: Cell<usize> = const { Cell::new(0) };
    /// Requests above this many bytes are refused (the process aborts): a reader bug that asks
    /// for terabytes must fail here, not be granted lazily by the OS's overcommit.
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
    static MUTATION: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) -> bool {
    // `try_with`: thread-local storage may already be gone while a thread exits.
    TRACK
        .try_with(|t| {
            if !t.get() {
                return true;
            }
            BIGGEST.with(|b| b.set(b.get().max(size)));
            LIVE.with(|l| {
                l.set(l.get() + size as isize);
                PEAK.with(|p| p.set(p.get().max(l.get())));
            });
            if size > CAP.with(Cell::get) {
                // Name the mutation before the allocation failure aborts the binary. Writing to
                // the unbuffered stderr with a stack buffer does not allocate.
                let mut buf = [0u8; 96];
                let mut w = &mut buf[..];
                let _ = writeln!(
                    w,
                    "fuzz_cases: mutation {} asked for {size} bytes",
                    MUTATION.with(Cell::get)
                );
                let n = 96 - w.len();
                let _ = std::io::stderr().write_all(&buf[..n]);
                return false;
            }
            true
        })
        .unwrap_or(true)
}

fn forget(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            LIVE.with(|l| l.set(l.get() - size as isize));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        forget(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        forget(layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap use of one closure on this thread: (largest single request, peak live bytes above the
/// start), with requests above `cap` refused.
fn measured<T>(cap: usize, f: impl FnOnce() -> T) -> (T, usize, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    BIGGEST.with(|b| b.set(0));
    CAP.with(|c| c.set(cap));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    CAP.with(|c| c.set(usize::MAX));
    (
        r,
        BIGGEST.with(Cell::get),
        PEAK.with(Cell::get).max(0) as usize,
    )
}

/// The case files whose loaded mutations are also run on the device by default: every
/// RMSNorm and RoPE file, and for attention the smallest file of each kind of input the case
/// runner takes (plain, a quantized KV cache, pages with a boolean mask, bias and block ids). Every file is read under every mutation either way. Running a mutation compiles
/// its case's pipelines (the attention files' are the costly ones, seconds each on a CPU
/// adapter, and they are what the mutations share), so the other attention files run with
/// `LLAMA_KERNELS_LONG_TESTS=1` only.
fn runs_on_device(case: &Path) -> bool {
    let name = case.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    common::long_tests()
        || name.starts_with("rms_norm")
        || name.starts_with("rope")
        || ATTENTION_RUNS.contains(&name)
}

/// The attention files of [`runs_on_device`]'s default set.
const ATTENTION_RUNS: [&str; 3] = [
    "attention_masked_rows_f32",
    "attention_decode_fp8_f32",
    "paged_attention_blocks_tree_f32",
];

fn committed_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
    v.sort();
    v
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A safetensors file split into its header JSON and its data.
fn split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), &bytes[8 + n..])
}

fn join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(&h);
    v.extend_from_slice(data);
    v
}

const META_VALUES: &[&str] = &[
    "",
    " ",
    "0",
    "1",
    "-1",
    "2",
    "0.5",
    "-0.5",
    "1e308",
    "-1e308",
    "1e-320",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "abc",
    "true",
    "false",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "[]",
    "[NaN]",
    "[1e308, -1e308]",
    "[1,2,",
    "1,,2",
    "half",
    "interleaved",
    "rms_norm",
    "rope",
    "attention",
    "yarn",
    "longrope",
    "llama3",
    "dynamic",
    "linear",
    "inv_freq",
    "default",
];

const DTYPES: &[&str] = &[
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U64", "BOOL", "F8_E4M3", "F4",
    "f32", "", "Q4",
];

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len())]
}

/// A hostile unsigned number: small, at a 32- or 64-bit edge, or near the file's size.
fn hostile_u64(rng: &mut Rng, near: u64) -> serde_json::Value {
    let v: serde_json::Value = match rng.below(10) {
        0 => 0.into(),
        1 => 1.into(),
        2 => (near + rng.below(3) as u64).into(),
        3 => near.saturating_sub(1 + rng.below(3) as u64).into(),
        4 => (u32::MAX as u64 + rng.below(2) as u64).into(),
        5 => (1u64 << 62).into(),
        6 => u64::MAX.into(),
        7 => (-1i64).into(),
        8 => 1.5.into(),
        _ => "7".into(),
    };
    v
}

/// One JSON edit of the header; returns what it did.
fn json_edit(
    rng: &mut Rng,
    h: &mut serde_json::Map<String, serde_json::Value>,
    data_len: u64,
) -> String {
    let names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() {
        return "no tensor left to edit".into();
    }
    let name = pick(rng, &names).clone();
    if !h[&name].is_object() {
        return format!("{name} is no longer an object");
    }
    match rng.below(9) {
        0 => {
            // Rename, drop or duplicate a tensor entry.
            let e = h.remove(&name).unwrap();
            match rng.below(3) {
                0 => format!("drop tensor {name}"),
                1 => {
                    let to = pick(
                        rng,
                        &[
                            "x",
                            "y",
                            "weight",
                            "q",
                            "k",
                            "v",
                            "sinks",
                            "mask",
                            "bias",
                            "block_ids",
                            "positions",
                            "residual",
                            "expected.out",
                            "expected.foo",
                            "expected.",
                            "",
                        ],
                    )
                    .to_string();
                    h.insert(to.clone(), e);
                    format!("rename {name} -> {to}")
                }
                _ => {
                    h.insert(name.clone(), e.clone());
                    h.insert(format!("{name}2"), e);
                    format!("duplicate {name}")
                }
            }
        }
        1 => {
            let d = pick(rng, DTYPES).to_string();
            h[&name]["dtype"] = d.clone().into();
            format!("{name}.dtype = {d:?}")
        }
        2 | 3 => {
            let shape = h[&name]["shape"].as_array().cloned().unwrap_or_default();
            let mut s = shape.clone();
            match rng.below(7) {
                0 if !s.is_empty() => {
                    let i = rng.below(s.len());
                    s[i] = hostile_u64(rng, s[i].as_u64().unwrap_or(1));
                }
                1 => s.push(1.into()),
                2 => {
                    s.pop();
                }
                3 => s.reverse(),
                4 => {
                    // Same element count, different split (e.g. a huge dim times a zero).
                    s = vec![0.into(), (1u64 << 40).into()];
                }
                5 => s = vec![],
                _ => {
                    for d in s.iter_mut() {
                        *d = (d.as_u64().unwrap_or(0) * 2).into();
                    }
                }
            }
            h[&name]["shape"] = s.clone().into();
            format!("{name}.shape {shape:?} -> {s:?}")
        }
        4 => {
            let mut o = h[&name]["data_offsets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            match rng.below(4) {
                0 => o.reverse(),
                1 if !o.is_empty() => {
                    let i = rng.below(o.len());
                    o[i] = hostile_u64(rng, data_len);
                }
                2 => o.push(0.into()),
                _ => o.truncate(1),
            }
            h[&name]["data_offsets"] = o.clone().into();
            format!("{name}.data_offsets -> {o:?}")
        }
        5 => {
            let key = pick(rng, &["dtype", "shape", "data_offsets"]).to_string();
            let obj = h[&name].as_object_mut().unwrap();
            if rng.below(2) == 0 {
                obj.remove(&key);
                format!("{name}: drop {key}")
            } else {
                obj.insert(format!("{key}_typo"), 0.into());
                format!("{name}: extra field")
            }
        }
        _ => {
            // Metadata: set a known key to a hostile value, drop a key, or break the map.
            let meta = h
                .entry("__metadata__")
                .or_insert_with(|| serde_json::json!({}));
            if !meta.is_object() {
                *meta = serde_json::json!({});
            }
            match rng.below(8) {
                0 => {
                    let keys: Vec<String> = meta
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    if keys.is_empty() {
                        return "metadata: nothing to drop".into();
                    }
                    let k = pick(rng, &keys).clone();
                    meta.as_object_mut().unwrap().remove(&k);
                    format!("metadata: drop {k}")
                }
                1 => {
                    let k = pick(rng, reader::KEYS).to_string();
                    meta[&k] = 1.5.into(); // not a string: safetensors wants strings
                    format!("metadata {k} = number")
                }
                2 => {
                    *meta = serde_json::json!([]);
                    "metadata = []".into()
                }
                _ => {
                    // Half the time a key the file already has, so the edit reaches its op.
                    let own: Vec<String> = meta
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    let k = if own.is_empty() || rng.below(2) == 0 {
                        pick(rng, reader::KEYS).to_string()
                    } else {
                        pick(rng, &own).clone()
                    };
                    let v = pick(rng, META_VALUES).to_string();
                    meta[&k] = v.clone().into();
                    format!("metadata {k} = {v:?}")
                }
            }
        }
    }
}

/// One mutation of `orig`; returns the bytes and what was done.
fn mutate(rng: &mut Rng, orig: &[u8]) -> (Vec<u8>, String) {
    let header_len = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
    match rng.below(10) {
        0 | 1 => {
            // Byte flips, mostly in the header (flips in the data only change values).
            let mut b = orig.to_vec();
            let n = 1 + rng.below(4);
            let mut at = Vec::new();
            for _ in 0..n {
                let i = if rng.below(4) == 0 {
                    rng.below(b.len())
                } else {
                    rng.below(8 + header_len)
                };
                b[i] ^= 1 + rng.below(255) as u8;
                at.push(i);
            }
            (b, format!("flip bytes {at:?}"))
        }
        2 => {
            let cut = rng.below(orig.len());
            (orig[..cut].to_vec(), format!("truncate to {cut}"))
        }
        3 => {
            let lie: u64 = match rng.below(6) {
                0 => 0,
                1 => header_len as u64 + 1 + rng.below(8) as u64,
                2 => header_len.saturating_sub(1 + rng.below(8)) as u64,
                3 => orig.len() as u64,
                4 => 100_000_001,
                _ => u64::MAX - rng.below(8) as u64,
            };
            let mut b = orig.to_vec();
            b[..8].copy_from_slice(&lie.to_le_bytes());
            (b, format!("header length {header_len} -> {lie}"))
        }
        _ => {
            let (mut h, data) = split(orig);
            let mut what = Vec::new();
            for _ in 0..1 + rng.below(3) {
                what.push(json_edit(rng, &mut h, data.len() as u64));
            }
            (join(&h, data), what.join("; "))
        }
    }
}

/// Every committed case file, mutated many times, read and (when it still loads) run: no panic,
/// refusals name the file, memory stays proportional to the file.
#[test]
fn mutated_case_files_never_panic_or_overallocate() {
    let per_file = env_usize("LLAMA_KERNELS_FUZZ_MUTATIONS", 300);
    let seed = env_usize("LLAMA_KERNELS_FUZZ_SEED", 10) as u64;
    let ctx = ctx();
    let dir = std::env::temp_dir().join(format!("llama-kernels-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut mutations, mut loaded, mut ran, mut run_refused) = (0usize, 0usize, 0usize, 0usize);
    let mut device_files = 0usize;
    let mut failures = Vec::new();
    let cases = committed_cases();
    for name in ATTENTION_RUNS {
        assert!(
            cases
                .iter()
                .any(|c| c.file_stem().is_some_and(|s| s == name)),
            "{name}.safetensors, which the fuzzer runs on the device, is no longer committed"
        );
    }
    for (fi, case) in cases.iter().enumerate() {
        let orig = std::fs::read(case).unwrap();
        let device_run = runs_on_device(case);
        device_files += usize::from(device_run);
        let mut rng = Rng::new(seed.wrapping_mul(1000).wrapping_add(fi as u64));
        for m in 0..per_file {
            let (bytes, what) = mutate(&mut rng, &orig);
            mutations += 1;
            let id = fi * per_file + m;
            MUTATION.with(|c| c.set(id));
            let path = dir.join(format!("m{id}.safetensors"));
            std::fs::write(&path, &bytes).unwrap();
            let shown = path.display().to_string();
            let label = format!("{} mutation {m} ({what})", case.display());
            // The file is read whole, and its f16/bf16/f32 values are widened to f64: up to 4x
            // the file. Everything else the reader holds is small.
            let file = bytes.len();
            let cap = 16 * file + (1 << 20);
            let (loaded_case, biggest, peak) = measured(cap, || {
                catch_unwind(AssertUnwindSafe(|| CaseFile::load(&path)))
            });
            if peak > 8 * file + (1 << 20) || biggest > 4 * file + (64 << 10) {
                failures.push(format!(
                    "{label}: load used {biggest} bytes at once, peak {peak}, file {file}"
                ));
            }
            let c = match loaded_case {
                Err(_) => {
                    failures.push(format!("{label}: load panicked"));
                    continue;
                }
                Ok(Err(e)) => {
                    if !e.to_string().contains(&shown) {
                        failures.push(format!("{label}: refusal does not name the file: {e}"));
                    }
                    if !matches!(e, Error::Case { .. } | Error::Io { .. }) {
                        failures.push(format!("{label}: refusal is not a case error: {e:?}"));
                    }
                    continue;
                }
                Ok(Ok(c)) => c,
            };
            loaded += 1;
            if !device_run {
                continue;
            }
            // Running also uploads and reads back each tensor (f32 on the host, a buffer on the
            // device), so it may use a few times the loaded values; never more than a small
            // multiple of the file.
            let (report, biggest, _) =
                measured(cap, || catch_unwind(AssertUnwindSafe(|| c.run(&ctx, None))));
            ran += 1;
            if biggest > 8 * file + (1 << 20) {
                failures.push(format!(
                    "{label}: run used {biggest} bytes at once, file {file}"
                ));
            }
            match report {
                Err(_) => failures.push(format!("{label}: run panicked")),
                Ok(Err(e)) => {
                    run_refused += 1;
                    if matches!(e, Error::Gpu { .. } | Error::DeviceLost { .. }) {
                        failures.push(format!("{label}: reached the GPU and failed there: {e}"));
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "fuzz_cases: {mutations} mutations, {loaded} loaded, {ran} ran (the loaded ones of \
         {device_files} files; {run_refused} refused by the op)"
    );
    assert!(
        failures.is_empty(),
        "{} of {mutations} mutations misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The fuzzer must reach past the parser, or it tests nothing but safetensors.
    assert!(
        loaded > mutations / 10 && ran > 0,
        "only {loaded} of {mutations} mutations loaded"
    );
}

/// Pinned from the fuzzer's metadata edits: a start position near i64::MAX must be refused with
/// a message, not overflow the bounds check.
#[test]
fn rope_offset_at_i64_edges_is_refused() {
    use llama_kernels::DType;
    for offset in ["9223372036854775807", "-9223372036854775808", "2147483647"] {
        let tensors = [
            ("x", DType::F32, vec![2, 1, 4]),
            ("expected.out", DType::F32, vec![2, 1, 4]),
        ];
        let e = common::case_error(&tensors, &[("op", "rope"), ("offset", offset)], 0.5);
        assert!(e.contains("offset") && e.contains("32-bit"), "{e}");
    }
}

/// Pinned from the fuzzer: theta 1e-320 (finite, > 0, so accepted) gives inverse frequencies
/// near 1e26, whose fixed-point turn once looped forever. It must finish, with or without Err.
#[test]
fn rope_tiny_theta_terminates() {
    let ctx = ctx();
    let x = ctx.upload(&[0.5f32; 4 * 3 * 48], &[4, 3, 48]).unwrap();
    let op = llama_kernels::Rope::new(1e-320, llama_kernels::Layout::Half);
    let _ = op.run(&ctx, &x, llama_kernels::Positions::Start(8188));
    // For real frequencies the carry gives the same words as the stepwise carry it replaced.
    let stepwise = |inv_freq: f64| {
        const TAU_LO: f64 = 2.449_293_598_294_706_4e-16;
        let t = inv_freq / std::f64::consts::TAU;
        let r = (-t).mul_add(std::f64::consts::TAU, inv_freq) - t * TAU_LO;
        let t_lo = r / std::f64::consts::TAU;
        let x = (t - t.floor()) * 4294967296.0;
        let mut hi = x.floor();
        let mut rem = (x - hi) + t_lo * 4294967296.0;
        while rem < 0.0 {
            rem += 1.0;
            hi -= 1.0;
        }
        while rem >= 1.0 {
            rem -= 1.0;
            hi += 1.0;
        }
        let mut lo = (rem * 4294967296.0).round();
        if lo >= 4294967296.0 {
            lo = 0.0;
            hi += 1.0;
        }
        (hi.rem_euclid(4294967296.0) as u32, lo as u32)
    };
    for theta in [10000.0f64, 500000.0, 1e6, 2.0] {
        for i in 0..64 {
            let f = theta.powf(-(2 * i) as f64 / 128.0);
            for g in [f, std::f64::consts::TAU * f, 1.0 / f.max(1e-6)] {
                assert_eq!(
                    llama_kernels::ops::rope::fixed_point_turn(g),
                    stepwise(g),
                    "{g}"
                );
            }
        }
    }
}

/// The `cargo fuzz` corpus (`fuzz/corpus/case_reader/`: the committed case files, hand-made
/// hostile inputs and inputs libFuzzer found) through the fuzz target's reader and through
/// `CaseFile::load`, as `check` reads a file: no panic, every refusal names the file. Host only:
/// running the loaded cases on a device is the mutation fuzzer's part above.
#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/case_reader");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "corpus {} holds {} files",
        dir.display(),
        files.len()
    );
    let panic_msg = |p: Box<dyn std::any::Any + Send>| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    };
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut failures = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        let bytes = std::fs::read(f).unwrap();
        // `read` itself asserts that a refusal names the file.
        match catch_unwind(AssertUnwindSafe(|| reader::read(&name, &bytes))) {
            Err(p) => failures.push(format!("{name}: the reader panicked: {}", panic_msg(p))),
            Ok(Ok(())) => accepted += 1,
            Ok(Err(_)) => refused += 1,
        }
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            CaseFile::load(f).and_then(|c| c.check_metadata())
        }));
        match loaded {
            Err(p) => failures.push(format!("{name}: load panicked: {}", panic_msg(p))),
            Ok(Err(e)) if !e.to_string().contains(&name) => {
                failures.push(format!("{name}: refusal does not name the file: {e}"))
            }
            Ok(_) => {}
        }
    }
    eprintln!(
        "fuzz corpus: {} files, {accepted} accepted, {refused} refused",
        files.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Both sides are reached: the committed cases load, the hostile inputs do not.
    assert!(
        accepted >= 20 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
