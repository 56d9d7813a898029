//! The benchmark's outputs: the record's JSON form (written by `--json`, read back by `--peer`),
//! the text table, the SVG chart (`--plot`), and merging a peer run.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::harness::{ceilings, Record, Timing, MIB, OP};
use super::host;
use crate::error::{Error, Result};

impl Record {
    /// The record as a JSON object with the documented field names.
    pub fn to_json(&self) -> Value {
        json!({
            "kernel": self.kernel,
            "variant": self.variant,
            "dtype": self.dtype,
            "shape": Value::Object(self.shape.clone()),
            "time_ms": self.time_ms,
            "bytes": self.bytes,
            "gbps": self.gbps,
            "fraction_of_copy": self.fraction_of_copy,
            "fraction_of_wgsl_copy": self.fraction_of_wgsl_copy,
            "gflops": self.gflops,
            "speedup_vs_naive": self.speedup_vs_naive,
            "fraction_of_matmul": self.fraction_of_matmul,
            "speedup_vs_peer": self.speedup_vs_peer,
            "speedup_vs_bf16": self.speedup_vs_bf16,
            "timing": self.timing.name(),
            "ceiling_copy_gbps": self.ceiling_copy_gbps,
            "ceiling_wgsl_copy_gbps": self.ceiling_wgsl_copy_gbps,
        })
    }

    /// A record read back from the JSON [`Record::to_json`] writes, or `None` when a field is
    /// missing or has the wrong type. Its group is its kernel, model, dtype and shape.
    pub fn from_json(v: &Value) -> Option<Record> {
        let text = |k: &str| v.get(k)?.as_str().map(str::to_string);
        let num = |k: &str| v.get(k)?.as_f64();
        let opt = |k: &str| v.get(k).and_then(Value::as_f64);
        let shape = v.get("shape")?.as_object()?.clone();
        let timing = match v.get("timing")?.as_str()? {
            "timestamp" => Timing::Timestamp,
            "wall" => Timing::Wall,
            _ => return None,
        };
        let (kernel, dtype) = (text("kernel")?, text("dtype")?);
        let group = format!("{kernel}/{dtype}/{}", Value::Object(shape.clone()));
        Some(Record {
            variant: text("variant")?,
            time_ms: num("time_ms")?,
            bytes: v.get("bytes")?.as_u64()?,
            gbps: num("gbps")?,
            fraction_of_copy: opt("fraction_of_copy").unwrap_or(f64::NAN),
            fraction_of_wgsl_copy: opt("fraction_of_wgsl_copy").unwrap_or(f64::NAN),
            gflops: opt("gflops"),
            speedup_vs_naive: opt("speedup_vs_naive"),
            fraction_of_matmul: opt("fraction_of_matmul"),
            speedup_vs_peer: opt("speedup_vs_peer"),
            speedup_vs_bf16: opt("speedup_vs_bf16"),
            timing,
            ceiling_copy_gbps: opt("ceiling_copy_gbps").unwrap_or(f64::NAN),
            ceiling_wgsl_copy_gbps: opt("ceiling_wgsl_copy_gbps").unwrap_or(f64::NAN),
            kernel,
            dtype,
            shape,
            group,
        })
    }

    fn same_problem(&self, other: &Record) -> bool {
        self.kernel == other.kernel && self.dtype == other.dtype && self.shape == other.shape
    }

    fn shape_text(&self) -> String {
        self.shape
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => s.clone(),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub(super) fn table_header() -> String {
    format!(
        "{:<9} {:<26} {:<5} {:<34} {:>9} {:>8} {:>7} {:>6} {:>6} {:>8} {:>7} {:>5} {:>7}",
        "kernel",
        "variant",
        "dtype",
        "shape",
        "time_ms",
        "MiB",
        "GB/s",
        "%copy",
        "%wgsl",
        "GFLOP/s",
        "speedup",
        "%mm",
        "vs peer"
    )
}

pub(super) fn table_row(r: &Record) -> String {
    let pct = |f: f64| {
        if f.is_finite() {
            format!("{:.0}%", f * 100.0)
        } else {
            "-".into()
        }
    };
    format!(
        "{:<9} {:<26} {:<5} {:<34} {:>9.3} {:>8.1} {:>7.2} {:>6} {:>6} {:>8} {:>7} {:>5} {:>7}",
        r.kernel,
        r.variant,
        r.dtype,
        r.shape_text(),
        r.time_ms,
        r.bytes as f64 / MIB as f64,
        r.gbps,
        pct(r.fraction_of_copy),
        pct(r.fraction_of_wgsl_copy),
        r.gflops.map_or("-".into(), |g| format!("{g:.1}")),
        r.speedup_vs_naive
            .map_or("-".into(), |s| format!("{s:.2}x")),
        r.fraction_of_matmul.map_or("-".into(), pct),
        r.speedup_vs_peer.map_or("-".into(), |s| format!("{s:.2}x")),
    )
}

/// The results table, one line per record, with the ceilings and the timing method on top.
pub fn table(records: &[Record]) -> String {
    let (copy, wgsl) = ceilings(records);
    let mut s = String::new();
    let timing = records.first().map_or("-", |r| r.timing.name());
    let _ = writeln!(
        s,
        "ceilings: copy_buffer_to_buffer {copy:.2} GB/s, best WGSL copy {wgsl:.2} GB/s; timing: {timing}"
    );
    let _ = writeln!(
        s,
        "(kernel fractions divide by both ceilings re-measured with runs interleaved with the kernel's)"
    );
    let _ = writeln!(s, "{}", table_header());
    for r in records {
        let _ = writeln!(s, "{}", table_row(r));
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart (SVG) of achieved GB/s per record, with both ceilings as lines.
pub fn svg_chart(records: &[Record], title: &str) -> String {
    let (copy, wgsl) = ceilings(records);
    let bars: Vec<&Record> = records.iter().filter(|r| r.gbps.is_finite()).collect();
    let label_w = 430.0;
    let plot_w = 520.0;
    let bar_h = 18.0;
    let gap = 4.0;
    let top = 88.0;
    let height = top + bars.len() as f64 * (bar_h + gap) + 40.0;
    let width = label_w + plot_w + 160.0;
    // `copy_buffer_to_buffer` can be far above every shader (a driver memcpy on CPU adapters);
    // the scale then ends a little past the largest other value and longer bars are clipped.
    let others = bars
        .iter()
        .filter(|r| !(r.kernel == "copy" && r.variant == "buffer_copy"))
        .map(|r| r.gbps)
        .chain([wgsl].into_iter().filter(|v| v.is_finite()))
        .fold(0.0f64, f64::max);
    let all = others.max(if copy.is_finite() { copy } else { 0.0 });
    let max = if all > 2.0 * others && others > 0.0 {
        others * 1.15
    } else {
        all * 1.05
    }
    .max(1e-9);
    let x = |v: f64| label_w + v.min(max) / max * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="40">achieved GB/s (bytes each kernel must move / median time); lines: <tspan fill="#d62728">copy_buffer_to_buffer {copy:.1} GB/s</tspan>, <tspan fill="#2ca02c">best WGSL copy {wgsl:.1} GB/s</tspan> (measured first)</text>"##
    );
    // The compute ceiling has no place on a GB/s axis: it is stated in GFLOP/s with prefill's
    // fraction of it.
    let matmul = records
        .iter()
        .find(|r| r.kernel == "matmul" && r.variant == "ceiling");
    let prefill = records
        .iter()
        .filter(|r| r.variant == "prefill")
        .filter_map(|r| Some((r.gflops?, r.fraction_of_matmul?)))
        .map(|(g, f)| format!("{g:.2} GFLOP/s ({:.0}%)", f * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(m) = matmul {
        let _ = writeln!(
            s,
            r##"<text x="10" y="58" fill="#8c564b">matmul ceiling (best tiling, {}): {:.2} GFLOP/s; prefill attention: {}</text>"##,
            xml_escape(
                m.shape
                    .get("tiling")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
            ),
            m.gflops.unwrap_or(f64::NAN),
            if prefill.is_empty() {
                "-".to_string()
            } else {
                prefill
            }
        );
    }
    if bars.iter().any(|r| r.variant.contains("peer")) {
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}" fill="#e377c2">pink: the peer library on the same problem in its own run on this adapter (wall time, measured beside the same ceilings); ours show their speed-up over it</text>"##,
            top - 10.0
        );
    }
    for (i, r) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let color = match (r.kernel.as_str(), r.variant.contains("naive")) {
            _ if r.variant.contains("peer") => "#e377c2",
            (_, true) => "#bbbbbb",
            ("copy", _) => "#8c8c8c",
            ("rms_norm", _) => "#1f77b4",
            ("rope", _) => "#ff7f0e",
            ("attention", _) => "#9467bd",
            ("matmul", _) => "#8c564b",
            _ => "#17becf",
        };
        let label = format!("{} {} {} {}", r.kernel, r.variant, r.dtype, r.shape_text());
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 6.0,
            y + bar_h * 0.75,
            xml_escape(&label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{label_w}" y="{y:.1}" width="{:.1}" height="{bar_h}" fill="{color}"/>"#,
            (x(r.gbps) - label_w).max(0.5)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{:.1} ({:.0}%){}{}</text>"#,
            x(r.gbps) + 4.0,
            y + bar_h * 0.75,
            r.gbps,
            r.fraction_of_wgsl_copy * 100.0,
            if r.gbps > max { " off scale" } else { "" },
            r.speedup_vs_peer
                .map_or(String::new(), |p| format!(", {p:.2}x the peer"))
        );
    }
    let bottom = top + bars.len() as f64 * (bar_h + gap);
    for (v, color) in [(copy, "#d62728"), (wgsl, "#2ca02c")] {
        if v.is_finite() {
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="6,3"/>"#,
                x(v),
                top - 6.0,
                bottom
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<line x1="{label_w}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="black"/>"#,
        label_w + plot_w
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.1}</text>"#,
            x(v),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">GB/s; % = of the best WGSL copy re-measured beside each kernel</text>"#,
        label_w + plot_w / 2.0,
        bottom + 32.0
    );
    s.push_str("</svg>\n");
    s
}

/// Read a peer run's JSON (an array of records, as `--json` writes them).
pub fn read_records(path: &PathBuf) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bad = |what: String| Error::param(OP, format!("{}: {what}", path.display()));
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let arr = v
        .as_array()
        .ok_or_else(|| bad("expected an array of records".into()))?;
    arr.iter()
        .enumerate()
        // Host records (`kernel: "host"`) have no time or bandwidth; they are not merged.
        .filter(|(_, r)| r.get("kernel").and_then(Value::as_str) != Some("host"))
        .map(|(i, r)| Record::from_json(r).ok_or_else(|| bad(format!("record {i} is malformed"))))
        .collect()
}

/// Merge a peer run into `records`: its peer records (variants containing `peer`) are
/// appended, and each of our records takes the `speedup_vs_peer` the peer run measured for the
/// same kernel, variant, dtype and shape (a ratio from one run, never across runs). Returns how
/// many peer records were added.
pub fn merge_peer(records: &mut Vec<Record>, peer_run: &[Record]) -> usize {
    for r in records.iter_mut() {
        if let Some(p) = peer_run
            .iter()
            .find(|p| p.same_problem(r) && p.variant == r.variant && p.speedup_vs_peer.is_some())
        {
            r.speedup_vs_peer = p.speedup_vs_peer;
        }
    }
    let peers: Vec<Record> = peer_run
        .iter()
        .filter(|p| p.variant.contains("peer"))
        .cloned()
        .collect();
    let n = peers.len();
    records.extend(peers);
    n
}

/// The `--json` array: the kernel records, then the host records.
pub fn write_json(path: &PathBuf, records: &[Record], host: &[host::HostRecord]) -> Result<()> {
    let arr = Value::Array(
        records
            .iter()
            .map(Record::to_json)
            .chain(host.iter().map(host::HostRecord::to_json))
            .collect(),
    );
    let text = serde_json::to_string_pretty(&arr)
        .map_err(|e| Error::gpu(OP, format!("JSON encoding: {e}")))?;
    write_file(path, &(text + "\n"))
}

/// Write `text` to `path`, the error naming the file.
pub fn write_file(path: &PathBuf, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}
