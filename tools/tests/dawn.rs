//! The Rust side of the Dawn check (`llama-kernels dawn`, hidden), without Dawn: a capture holds
//! the launches, reads and first buffer bytes of the self-test's rows and runs nothing; the judge
//! fails rows whose replies are wrong, and refuses replies from another trace. The check with
//! Dawn itself is scripts/dawn-check.sh (CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dawn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama-kernels"))
        .arg("dawn")
        .args(args)
        .output()
        .expect("run llama-kernels")
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn trace(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("trace.json")).expect("trace.json");
    serde_json::from_str(&text).expect("trace.json is JSON")
}

#[test]
fn a_capture_records_launches_and_reads_and_the_judge_fails_wrong_replies() {
    let dir = fresh_dir("dawn-capture");
    let d = dir.to_str().unwrap();
    let out = dawn(&["capture", d, "--only", "rms_norm"]);
    assert!(out.status.success(), "{out:?}");
    let t = trace(&dir);
    let events = t["events"].as_array().unwrap();
    let dispatches: Vec<&serde_json::Value> =
        events.iter().filter_map(|e| e.get("dispatch")).collect();
    let reads: Vec<&serde_json::Value> = events.iter().filter_map(|e| e.get("read")).collect();
    // rms_norm and rms_norm+residual in three dtypes, each launched twice (checked, timed).
    assert_eq!(dispatches.len(), 12, "{events:?}");
    assert!(reads.len() >= 9, "{reads:?}");
    for d in &dispatches {
        assert!(d["entry_point"].as_str().unwrap().starts_with("rms_norm"));
        let module = std::fs::read_to_string(dir.join(d["module"].as_str().unwrap())).unwrap();
        // The spec's text, as a browser gets it.
        assert!(module.contains("fn rms_norm"));
        for b in d["bindings"].as_array().unwrap() {
            if let Some(id) = b["buffer"].as_u64() {
                let size = t["buffers"][id as usize]["size"].as_u64().unwrap();
                let end = b["offset"].as_u64().unwrap() + b["size"].as_u64().unwrap();
                assert!(end <= size, "{b} past a buffer of {size} bytes");
            }
        }
    }
    // A buffer's first bytes are what the host wrote: the inputs are not all zero.
    let first = std::fs::read(dir.join(t["buffers"][0]["file"].as_str().unwrap())).unwrap();
    assert!(first.iter().any(|&b| b != 0));

    // Replies of zeros: every row fails and the judge exits non-zero.
    for r in &reads {
        let n = r["n"].as_u64().unwrap();
        let size = r["size"].as_u64().unwrap() as usize;
        std::fs::write(dir.join(format!("read-{n}.bin")), vec![0u8; size]).unwrap();
    }
    let out = dawn(&["judge", d, "--only", "rms_norm"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("0 of 6 self-test rows passed in Dawn -- FAILED"),
        "{text}"
    );

    // Replies from another trace are refused.
    let out = dawn(&["judge", d, "--only", "rms_norm+residual"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("launched other work than the trace") || err.contains("read-"),
        "{err}"
    );
}

#[test]
fn variants_lists_every_variant_with_its_features() {
    let dir = fresh_dir("dawn-variants");
    let out = dawn(&["variants", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(dir.join("variants.json")).unwrap();
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let declared: usize = llama_kernels::pipeline::Shader::ALL
        .iter()
        .map(|s| s.variants().len())
        .sum();
    assert_eq!(all.len(), declared);
    for v in &all {
        let module = std::fs::read_to_string(dir.join(v["module"].as_str().unwrap())).unwrap();
        let features: Vec<&str> = v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(
            features.contains(&"subgroups"),
            module.contains("enable subgroups;"),
            "{v}"
        );
        // A variant that needs a feature is never one the planner picks for a default device.
        if !features.is_empty() {
            assert_eq!(v["default_device"], false, "{v}");
        }
        // The default device is one of the described devices.
        if v["default_device"] == true {
            assert_eq!(v["picked"], true, "{v}");
        }
    }
    // Some attention variants no described device gets (created by the check's --full only).
    assert!(all.iter().any(|v| v["picked"] == false));
    // The planner picks some of every kind's variants for a device with WebGPU's defaults.
    assert!(all
        .iter()
        .any(|v| v["default_device"] == true && v["shader"] == "attention_decode.wgsl"));
}
