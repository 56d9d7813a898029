//! The pieces of the `llama-kernels` command: the self-test (the default), `info` and `check`.
//! `bench` lives in the library (`llama_kernels::bench`) so that `cargo bench` shares it.

pub mod check;
pub mod dawn;
pub mod info;
pub mod progress;
pub mod selftest;
pub mod tiny_model;

use serde_json::{json, Value};

/// One line of the self-test table: a kernel run on one shape and dtype, judged against the f64
/// reference.
#[derive(Clone, Debug)]
pub struct Row {
    /// Kernel family and form, e.g. `rms_norm+residual`.
    pub kernel: String,
    /// The variant the dispatcher chose (what `info` reports for the same shape).
    pub variant: String,
    pub dtype: String,
    pub shape: String,
    pub nmse: f64,
    pub max_abs: f64,
    /// NMSE limit the row is judged by.
    pub tolerance: f64,
    /// The op's `prepare` before the first run: milliseconds and pipelines built.
    pub prepare: Option<(f64, usize)>,
    /// Milliseconds of the first run, which on lavapipe includes LLVM's compile of the pipeline
    /// (llvmpipe compiles at first dispatch, after `prepare` has created it).
    pub first_ms: Option<f64>,
    /// Milliseconds of GPU time of a second, warm run (see [`selftest::Timer`] for how they are
    /// taken); `None` when the row failed before it ran.
    pub gpu_ms: Option<f64>,
    pub pass: bool,
    /// Why the row failed, when it did not get as far as a comparison (an `Err` from an op) or
    /// failed on NaN/inf placement rather than NMSE.
    pub note: Option<String>,
}

impl Row {
    /// A row for a kernel that returned an error instead of a result.
    pub fn failed(kernel: &str, dtype: &str, shape: &str, error: String) -> Row {
        Row {
            kernel: kernel.into(),
            variant: "-".into(),
            dtype: dtype.into(),
            shape: shape.into(),
            nmse: f64::NAN,
            max_abs: f64::NAN,
            tolerance: f64::NAN,
            prepare: None,
            first_ms: None,
            gpu_ms: None,
            pass: false,
            note: Some(error),
        }
    }

    /// The row as a JSON object (NaN becomes null).
    pub fn to_json(&self) -> Value {
        let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        json!({
            "kernel": self.kernel,
            "variant": self.variant,
            "dtype": self.dtype,
            "shape": self.shape,
            "nmse": num(self.nmse),
            "max_abs": num(self.max_abs),
            "tolerance": num(self.tolerance),
            "prepare_ms": self.prepare.map(|p| p.0),
            "pipelines_built": self.prepare.map(|p| p.1),
            "first_run_ms": self.first_ms,
            "gpu_ms": self.gpu_ms,
            "pass": self.pass,
            "note": self.note,
        })
    }
}

/// The rows as an aligned text table, with a PASS/FAIL column and notes under failed rows.
pub fn table(rows: &[Row], time_header: &str) -> String {
    let head = [
        "kernel",
        "variant",
        "dtype",
        "shape",
        "NMSE",
        "max abs err",
        "prepare ms (built)",
        "1st run ms",
        time_header,
        "",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.kernel.clone(),
                r.variant.clone(),
                r.dtype.clone(),
                r.shape.clone(),
                sci(r.nmse),
                sci(r.max_abs),
                r.prepare
                    .map_or("-".into(), |(t, n)| format!("{t:.1} ({n})")),
                r.first_ms.map_or("-".into(), |t| format!("{t:.1}")),
                r.gpu_ms.map_or("-".into(), |t| format!("{t:.3}")),
                if r.pass { "ok" } else { "FAIL" }.into(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(width).enumerate() {
            // Numbers right-aligned, words left-aligned.
            if (4..9).contains(&i) {
                s += &format!("{cell:>w$}  ");
            } else {
                s += &format!("{cell:<w$}  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head.map(String::from));
    out += &line(&width.map(|w| "-".repeat(w)));
    for (r, c) in rows.iter().zip(&cells) {
        out += &line(c);
        if let Some(n) = &r.note {
            out += &format!("    {n}\n");
        }
    }
    out
}

fn sci(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2e}")
    }
}
