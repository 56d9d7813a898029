//! Quantized KV caches (q8_0, q4_0, fp8 e4m3): the CPU quantizers against the formats' own
//! reference code (a dump written by `scripts/gen_kv_quant_ref.py` with `gguf.quants` and an
//! e4m3 cast), the cache's append against the CPU quantizer bit for bit, and attention over a
//! quantized cache against the f64 reference over the dequantized values.

mod common;

use llama_kernels::kv_format::BLOCK;
use llama_kernels::reference::quant;

/// The committed dump: inputs, gguf q8_0 / q4_0 blocks, fp8 codes per scale.
struct Dump {
    x: Vec<f32>,
    q8: Vec<u8>,
    q4: Vec<u8>,
    fp8: Vec<(f32, Vec<u8>)>,
}

fn dump() -> Dump {
    let b: &[u8] = include_bytes!("data/kv_quant_ref.bin");
    assert_eq!(&b[..4], b"KVQ1");
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let n = u32_at(4);
    let mut o = 8;
    let x = b[o..o + 4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    o += 4 * n;
    let q8 = b[o..o + n / 32 * 34].to_vec();
    o += q8.len();
    let q4 = b[o..o + n / 32 * 18].to_vec();
    o += q4.len();
    let scales = u32_at(o);
    o += 4;
    let mut fp8 = Vec::new();
    for _ in 0..scales {
        let s = f32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        fp8.push((s, b[o + 4..o + 4 + n].to_vec()));
        o += 4 + n;
    }
    assert_eq!(o, b.len());
    Dump { x, q8, q4, fp8 }
}

/// q8_0 and q4_0 blocks bit for bit as llama.cpp's Python quantizers make them, fp8 codes as
/// the e4m3 cast makes them. q4_0 rounds as the reference without a fused multiply-add; the
/// values where a fused one would differ are counted (and are not among the dump's blocks).
#[test]
fn cpu_quantizers_match_the_reference_dump() {
    let d = dump();
    let mut fused_ties = 0;
    for (i, block) in d.x.chunks_exact(BLOCK).enumerate() {
        let block: &[f32; BLOCK] = block.try_into().unwrap();
        let (dq8, q8) = quant::quantize_q8_0(block);
        let want = &d.q8[i * 34..(i + 1) * 34];
        assert_eq!(dq8.to_le_bytes(), want[..2], "q8_0 block {i} d");
        let got: Vec<u8> = q8.iter().map(|&q| q as u8).collect();
        assert_eq!(got, want[2..], "q8_0 block {i}");
        let (dq4, q4) = quant::quantize_q4_0(block);
        let want = &d.q4[i * 18..(i + 1) * 18];
        assert_eq!(dq4.to_le_bytes(), want[..2], "q4_0 block {i} d");
        assert_eq!(quant::pack_q4_0(&q4), want[2..], "q4_0 block {i}");
        fused_ties += quant::q4_0_fused_differs(block).len();
    }
    eprintln!("q4_0: {fused_ties} values where a fused multiply-add would round differently");
    for (scale, codes) in &d.fp8 {
        for (i, (&x, &c)) in d.x.iter().zip(codes).enumerate() {
            assert_eq!(quant::quantize_fp8(x, *scale), c, "fp8 value {i} ({x}) at scale {scale}");
        }
    }
}
