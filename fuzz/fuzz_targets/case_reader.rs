//! libFuzzer target: arbitrary bytes through the case reader (see `reader.rs`).
#![no_main]

mod reader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = reader::read("fuzz.safetensors", data);
});
