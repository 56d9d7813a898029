//! The packed-half conversions every kernel relies on (shaders/common.wgsl), checked bit for bit
//! through the cast op: every f16 and bf16 pattern decodes exactly, and f32 values (boundaries,
//! ties, subnormals, overflow, NaN, and a random sweep of bit patterns) encode as
//! round-to-nearest-even, as the `half` crate does.

use crate::common;

use common::*;
use half::{bf16, f16};
use llama_kernels::ops::cast;
use llama_kernels::{DType, Error, Tensor};

fn same(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

#[test]
fn every_f16_and_bf16_pattern_decodes_exactly() {
    let ctx = ctx();
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    for dtype in [DType::F16, DType::BF16] {
        let src = match dtype {
            DType::F16 => ctx.upload(
                &bits.iter().map(|&b| f16::from_bits(b)).collect::<Vec<_>>(),
                &[65536],
            ),
            _ => ctx.upload(
                &bits.iter().map(|&b| bf16::from_bits(b)).collect::<Vec<_>>(),
                &[65536],
            ),
        }
        .unwrap();
        let dst = nan_output(&ctx, &[65536], DType::F32);
        cast::run(&ctx, &src, &dst).unwrap();
        let got = ctx.read_f32(&dst).unwrap();
        for (&b, &g) in bits.iter().zip(&got) {
            let want = match dtype {
                DType::F16 => f16::from_bits(b).to_f32(),
                _ => bf16::from_bits(b).to_f32(),
            };
            // Subnormal bf16 may be flushed by the device's f32 path only through arithmetic;
            // the decode is a pure bit move, so it must be exact.
            assert!(
                same(g, want),
                "{dtype} bits {b:#06x}: got {g:e} ({:#x}), want {want:e}",
                g.to_bits()
            );
        }
        assert_guards(&ctx, &dst, "decode");
    }
}

fn encode_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.0,
        65520.0,
        65536.0,
        1e10,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        6.1035156e-5,
        6.097555e-5,
        5.9604645e-8,
        2.9802322e-8,
        2.9802326e-8,
        8.940697e-8,
        1.0e-9,
        3.3895314e38,
        3.3961776e38,
        f32::MIN_POSITIVE,
    ];
    // Exact ties between neighbouring f16 and bf16 values, both parities.
    for i in 0..64u32 {
        v.push(f32::from_bits(0x3f80_0000 + (i << 13) + (1 << 12))); // f16 ties near 1
        v.push(f32::from_bits(0x3f80_0000 + (i << 16) + (1 << 15))); // bf16 ties near 1
        v.push(f32::from_bits(0x3380_0000 + (i << 20))); // around the f16 subnormal range
    }
    let mut rng = Rng::new(99);
    for _ in 0..200_000 {
        v.push(f32::from_bits(rng.next_u64() as u32));
    }
    // Dense sweep of the f16 range so every exponent and rounding case appears.
    for _ in 0..100_000 {
        let e = rng.below(40) as u32 + 100;
        v.push(f32::from_bits(
            (e << 23) | (rng.next_u64() as u32 & 0x807f_ffff),
        ));
    }
    if v.len() % 2 == 1 {
        v.push(0.5);
    }
    v
}

#[test]
fn f32_encodes_round_to_nearest_even() {
    let ctx = ctx();
    let v = encode_inputs();
    let src = ctx.upload(&v, &[v.len()]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let dst = nan_output(&ctx, &[v.len()], dtype);
        cast::run(&ctx, &src, &dst).unwrap();
        let bytes = ctx.read_bytes(dst.buffer(), dst.byte_span()).unwrap();
        for (i, (&x, c)) in v.iter().zip(bytes.chunks_exact(2)).enumerate() {
            let got = u16::from_le_bytes([c[0], c[1]]);
            let want = match dtype {
                DType::F16 => f16::from_f32(x).to_bits(),
                _ => bf16::from_f32(x).to_bits(),
            };
            let nan = |b: u16| match dtype {
                DType::F16 => f16::from_bits(b).is_nan(),
                _ => bf16::from_bits(b).is_nan(),
            };
            assert!(
                got == want || (nan(got) && nan(want)),
                "{dtype} encode #{i} of {x:e} ({:#010x}): got {got:#06x}, want {want:#06x}",
                x.to_bits()
            );
        }
        assert_guards(&ctx, &dst, "encode");
    }
}

#[test]
fn every_pair_of_dtypes_and_odd_lengths() {
    let ctx = ctx();
    let mut rng = Rng::new(7);
    for src_d in DType::ALL {
        for dst_d in DType::ALL {
            for n in [2usize, 6, 510, 512, 514, 4098] {
                let x = rng.vec(n, 3.0);
                let src = upload_guarded(&ctx, &x, &[n], src_d);
                let dst = nan_output(&ctx, &[n], dst_d);
                cast::run(&ctx, &src, &dst).unwrap();
                let want: Vec<f64> = x
                    .iter()
                    .map(|&v| dst_d.round(src_d.round(v as f64)))
                    .collect();
                let got = ctx.read_f32(&dst).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(*g as f64, *w, "{src_d} -> {dst_d}, n {n}");
                }
                assert_guards(&ctx, &dst, "cast");
            }
        }
    }
    // Odd f32 -> f32 length: the last single element is copied, nothing past it is written.
    let x = rng.vec(7, 1.0);
    let src = upload_guarded(&ctx, &x, &[7], DType::F32);
    let dst = nan_output(&ctx, &[7], DType::F32);
    cast::run(&ctx, &src, &dst).unwrap();
    assert_eq!(ctx.read_f32(&dst).unwrap(), x);
    assert_guards(&ctx, &dst, "odd");
}

#[test]
fn cast_errors() {
    let ctx = ctx();
    let a = ctx.upload(&[1.0f32; 8], &[8]).unwrap();
    let b = ctx.empty(&[6], DType::F16).unwrap();
    let e = cast::run(&ctx, &a, &b).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. })
            && e.to_string() == "cast: src [8] has 8 elements but dst [6] has 6",
        "{e}"
    );
    let same = Tensor::new(a.buffer(), 4, &[4], DType::F32);
    let a4 = Tensor::new(a.buffer(), 0, &[4], DType::F32);
    let e = cast::run(&ctx, &a4, &same).unwrap_err();
    assert!(
        e.to_string().contains("cast: src and dst share a buffer"),
        "{e}"
    );
    let strided = Tensor::with_strides(a.buffer(), 0, &[2, 2], &[4, 1], DType::F32);
    let e = cast::run(&ctx, &strided, &ctx.empty(&[2, 2], DType::F32).unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .contains("cast: src and dst must be contiguous"),
        "{e}"
    );
    let odd = ctx.empty(&[3], DType::BF16).unwrap();
    let e = cast::run(&ctx, &ctx.upload(&[1.0f32; 3], &[3]).unwrap(), &odd).unwrap_err();
    assert!(
        e.to_string()
            .contains("cast: dst is bf16 with innermost dimension 3"),
        "{e}"
    );
}
