//! RMSNorm on a real adapter against the f64 reference: the cross-check grid, edge cases and
//! properties, and every validation rule.

use crate::common;

use common::*;
use llama_kernels::compare::tolerance;
use llama_kernels::ops::rms_norm::{Strategy, Variant, ROWS_PER_INVOCATION_MIN};
use llama_kernels::reference;
use llama_kernels::{DType, Error, Residual, RmsNorm, Tensor};

#[derive(Clone, Copy, Debug)]
struct Case {
    dtype: DType,
    n: usize,
    rows: usize,
    eps: f32,
    weight_offset: f32,
    residual: bool,
    in_place: bool,
}

fn run_case(c: Case, seed: u64) {
    run_case_with(c, seed, Strategy::Auto, GUARD_BEFORE);
}

/// Run case `c` with a forced strategy, the views starting `before` elements into their
/// buffers; returns the variant that ran.
fn run_case_with(c: Case, seed: u64, strategy: Strategy, before: usize) -> Variant {
    run_case_outputs(c, seed, strategy, before).0
}

/// [`run_case_with`], also returning out and residual_out (empty when not fused) as f32.
fn run_case_outputs(
    c: Case,
    seed: u64,
    strategy: Strategy,
    before: usize,
) -> (Variant, Vec<f32>, Vec<f32>) {
    let ctx = ctx();
    let mut rng = Rng::new(seed);
    let shape = [c.rows, c.n];
    let x = rng.vec(c.rows * c.n, 1.0);
    let w = rng.vec(c.n, 0.5);
    let r = rng.vec(c.rows * c.n, 1.0);
    let (xr, wr, rr) = (
        rounded(&x, c.dtype),
        rounded(&w, c.dtype),
        rounded(&r, c.dtype),
    );
    let (want, want_res) = reference::rms_norm::rms_norm(
        &xr,
        &wr,
        c.residual.then_some(&rr[..]),
        c.eps as f64,
        c.weight_offset as f64,
        c.dtype,
    );
    let xt = upload_at(&ctx, &x, &shape, c.dtype, before);
    let wt = upload_at(&ctx, &w, &[c.n], c.dtype, before);
    let nan = vec![f32::NAN; c.rows * c.n];
    let out = if c.in_place {
        xt.clone()
    } else {
        upload_at(&ctx, &nan, &shape, c.dtype, before)
    };
    let op = RmsNorm {
        eps: c.eps,
        weight_offset: c.weight_offset,
    };
    let tol = tolerance(c.dtype);
    let variant;
    let mut r_out = Vec::new();
    if c.residual {
        let rt = upload_at(&ctx, &r, &shape, c.dtype, before);
        let rout = if c.in_place {
            rt.clone()
        } else {
            upload_at(&ctx, &nan, &shape, c.dtype, before)
        };
        let res = Some(Residual {
            residual: &rt,
            residual_out: &rout,
        });
        variant = op.variant(&ctx, &xt, &wt, &out, res, strategy).unwrap();
        ctx.submit_and_wait("test", |enc| {
            op.encode_with(&ctx, enc, &xt, &wt, &out, res, strategy)
        })
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        // residual_out is h rounded to the storage dtype: exact up to f32 addition rounding.
        assert_close(
            &ctx,
            &rout,
            want_res.as_ref().unwrap(),
            tol,
            &format!("{c:?} residual_out"),
        );
        assert_guards_at(&ctx, &rout, before, &format!("{c:?} residual_out"));
        r_out = ctx.read_f32(&rout).unwrap();
    } else {
        variant = op.variant(&ctx, &xt, &wt, &out, None, strategy).unwrap();
        if strategy == Strategy::Auto {
            op.run(&ctx, &xt, &wt, &out)
        } else {
            ctx.submit_and_wait("test", |enc| {
                op.encode_with(&ctx, enc, &xt, &wt, &out, None, strategy)
            })
        }
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
    assert_close(&ctx, &out, &want, tol, &format!("{c:?} {variant:?} out"));
    assert_guards_at(&ctx, &out, before, &format!("{c:?} out"));
    (variant, ctx.read_f32(&out).unwrap(), r_out)
}

/// Every dtype x row length x row count, each with two of the 24 combinations of eps, weight
/// offset, residual and in-place, rotated so that every combination meets every dtype. The many-row
/// count is `ROWS_PER_INVOCATION_MIN` (64), where the dispatcher already takes one invocation per
/// row on CPU adapters; `LLAMA_KERNELS_LONG_TESTS=1` runs 1024 rows instead (up to 4M elements,
/// and the 16384-wide rows once per dtype), which moves 16x more data through the same kernels.
#[test]
fn grid_against_reference() {
    let long = long_tests();
    let lengths = [1usize, 3, 31, 32, 33, 1000, 4096, 8192, 16384];
    let many = if long { 1024 } else { ROWS_PER_INVOCATION_MIN };
    let row_counts = [1usize, 7, many];
    let eps = [0.0f32, 1e-6, 0.1];
    let mut i = 0usize;
    for dtype in DType::ALL {
        for &n in &lengths {
            if dtype.is_half() && n % 2 == 1 {
                continue; // odd rows are refused for half types (see errors test)
            }
            for &rows in &row_counts {
                if rows * n > 4 << 20 {
                    continue;
                }
                for k in 0..2 {
                    let combo = (i * 7 + k * 13) % 24;
                    let c = Case {
                        dtype,
                        n,
                        rows,
                        eps: eps[combo % 3],
                        weight_offset: ((combo / 3) % 2) as f32,
                        residual: (combo / 6) % 2 == 1,
                        in_place: (combo / 12) % 2 == 1,
                    };
                    run_case(c, i as u64 * 31 + k as u64);
                }
                i += 1;
            }
        }
    }
    if !long {
        return;
    }
    // The 16384-wide rows at 1024 rows, which the loop above leaves out, once per dtype.
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        run_case(
            Case {
                dtype,
                n: 16384,
                rows: 1024,
                eps: 1e-6,
                weight_offset: 0.0,
                residual: i == 1,
                in_place: i == 2,
            },
            900 + i as u64,
        );
    }
}

/// Every combination of the four switches on one odd-ish shape, for each dtype.
#[test]
fn all_switches() {
    let mut seed = 5000;
    for dtype in DType::ALL {
        for combo in 0..24 {
            seed += 1;
            run_case(
                Case {
                    dtype,
                    n: 130,
                    rows: 3,
                    eps: [0.0f32, 1e-6, 0.1][combo % 3],
                    weight_offset: ((combo / 3) % 2) as f32,
                    residual: (combo / 6) % 2 == 1,
                    in_place: (combo / 12) % 2 == 1,
                },
                seed,
            );
        }
    }
}

/// More rows than one grid dimension holds (65535 workgroups): the 2-D grid must cover them all.
#[test]
fn more_than_a_million_rows() {
    run_case(
        Case {
            dtype: DType::F32,
            n: 4,
            rows: 1_100_003,
            eps: 1e-6,
            weight_offset: 0.0,
            residual: false,
            in_place: false,
        },
        77,
    );
}

/// f16 rows of 4096 values around +-1000: x*x overflows f16 but must not overflow here.
#[test]
fn f16_large_values_do_not_overflow() {
    let ctx = ctx();
    let mut rng = Rng::new(3);
    let n = 4096;
    let x: Vec<f32> = (0..n)
        .map(|_| rng.uniform(900.0, 1100.0) * if rng.below(2) == 0 { -1.0 } else { 1.0 })
        .collect();
    let w = rng.vec(n, 1.0);
    let (xr, wr) = (rounded(&x, DType::F16), rounded(&w, DType::F16));
    let (want, _) = reference::rms_norm::rms_norm(&xr, &wr, None, 1e-6, 0.0, DType::F16);
    let xt = upload_guarded(&ctx, &x, &[1, n], DType::F16);
    let wt = upload_guarded(&ctx, &w, &[n], DType::F16);
    let out = nan_output(&ctx, &[1, n], DType::F16);
    RmsNorm::new(1e-6).run(&ctx, &xt, &wt, &out).unwrap();
    assert_close(&ctx, &out, &want, tolerance(DType::F16), "f16 +-1000");
}

/// Strided rows (a row stride larger than the row) and a 3-D view.
#[test]
fn strided_and_3d_views() {
    let ctx = ctx();
    let mut rng = Rng::new(11);
    let (rows, n, stride) = (5, 64, 100);
    let data = rng.vec(rows * stride, 1.0);
    let w = rng.vec(n, 1.0);
    let xt_full = ctx.upload(&data, &[rows * stride]).unwrap();
    let xt = Tensor::with_strides(xt_full.buffer(), 0, &[rows, n], &[stride, 1], DType::F32);
    let wt = ctx.upload(&w, &[n]).unwrap();
    let out = nan_output(&ctx, &[rows, n], DType::F32);
    RmsNorm::new(1e-5).run(&ctx, &xt, &wt, &out).unwrap();
    let xs: Vec<f64> = (0..rows)
        .flat_map(|r| data[r * stride..r * stride + n].iter().map(|&v| v as f64))
        .collect();
    let wr: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let (want, _) = reference::rms_norm::rms_norm(&xs, &wr, None, 1e-5, 0.0, DType::F32);
    assert_close(&ctx, &out, &want, tolerance(DType::F32), "strided rows");

    let x3 = rng.vec(2 * 3 * 32, 1.0);
    let xt3 = ctx.upload(&x3, &[2, 3, 32]).unwrap();
    let wt3 = ctx.upload(&w[..32], &[32]).unwrap();
    let out3 = nan_output(&ctx, &[2, 3, 32], DType::F32);
    RmsNorm::gemma(1e-6).run(&ctx, &xt3, &wt3, &out3).unwrap();
    let (want3, _) = reference::rms_norm::rms_norm(
        &rounded(&x3, DType::F32),
        &wr[..32],
        None,
        1e-6,
        1.0,
        DType::F32,
    );
    assert_close(&ctx, &out3, &want3, tolerance(DType::F32), "3-D view");
}

/// Every tensor of the fused form in ONE buffer, disjoint (and residual updated in place): each
/// read tensor reaches the kernel through the read_write binding of the output sharing its buffer,
/// for both strategies and all dtypes.
#[test]
fn all_tensors_in_one_buffer() {
    use llama_kernels::ops::rms_norm::Strategy;
    let ctx = ctx();
    let mut rng = Rng::new(14);
    let (rows, n) = (70, 64);
    for dtype in DType::ALL {
        let mut strategies = vec![Strategy::WorkgroupPerRow, Strategy::InvocationPerRow];
        if dtype == DType::F16 && ctx.caps().shader_f16 {
            // Every read goes through an output's read_write binding: the native module with
            // none of its f16 bindings in use.
            strategies.push(Strategy::WorkgroupNativeF16);
        }
        for strategy in strategies {
            for in_place_residual in [false, true] {
                // Layout: [weight | x | residual | out | residual_out], each region 16-byte aligned.
                let m = rows * n;
                let w = rng.vec(n, 1.0);
                let x = rng.vec(m, 1.0);
                let r = rng.vec(m, 1.0);
                let mut all = w.clone();
                all.extend(&x);
                all.extend(&r);
                all.extend(vec![f32::NAN; 2 * m]);
                let buf = ctx.upload_as(&all, &[all.len()], dtype).unwrap();
                let view =
                    |off: usize, shape: &[usize]| Tensor::new(buf.buffer(), off, shape, dtype);
                let wt = view(0, &[n]);
                let xt = view(n, &[rows, n]);
                let rt = view(n + m, &[rows, n]);
                let out = view(n + 2 * m, &[rows, n]);
                let rout = if in_place_residual {
                    rt.clone()
                } else {
                    view(n + 3 * m, &[rows, n])
                };
                let op = RmsNorm::new(1e-6);
                let mut enc = ctx.device().create_command_encoder(&Default::default());
                op.encode_with(
                    &ctx,
                    &mut enc,
                    &xt,
                    &wt,
                    &out,
                    Some(Residual {
                        residual: &rt,
                        residual_out: &rout,
                    }),
                    strategy,
                )
                .unwrap_or_else(|e| panic!("{dtype} {strategy:?}: {e}"));
                ctx.queue().submit([enc.finish()]);
                let (want, h) = reference::rms_norm::rms_norm(
                    &rounded(&x, dtype),
                    &rounded(&w, dtype),
                    Some(&rounded(&r, dtype)),
                    1e-6,
                    0.0,
                    dtype,
                );
                let what = format!("{dtype} {strategy:?} in_place_residual={in_place_residual}");
                assert_close(&ctx, &out, &want, tolerance(dtype), &what);
                assert_close(&ctx, &rout, &h.unwrap(), tolerance(dtype), &what);
                // x and weight are untouched.
                assert_eq!(
                    ctx.read_f32(&xt).unwrap(),
                    rounded(&x, dtype)
                        .iter()
                        .map(|&v| v as f32)
                        .collect::<Vec<_>>()
                );
                assert_eq!(
                    ctx.read_f32(&wt).unwrap(),
                    rounded(&w, dtype)
                        .iter()
                        .map(|&v| v as f32)
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

/// x and out in one buffer, disjoint: both reach the kernel through the one read_write binding.
#[test]
fn x_and_out_share_a_buffer() {
    let ctx = ctx();
    let mut rng = Rng::new(12);
    let (rows, n) = (3, 96);
    let data = rng.vec(2 * rows * n, 1.0);
    let buf = ctx.upload(&data, &[2 * rows * n]).unwrap();
    let x = Tensor::new(buf.buffer(), 0, &[rows, n], DType::F32);
    let out = Tensor::new(buf.buffer(), rows * n, &[rows, n], DType::F32);
    let w = rng.vec(n, 1.0);
    let wt = ctx.upload(&w, &[n]).unwrap();
    RmsNorm::new(1e-6).run(&ctx, &x, &wt, &out).unwrap();
    let (want, _) = reference::rms_norm::rms_norm(
        &rounded(&data[..rows * n], DType::F32),
        &rounded(&w, DType::F32),
        None,
        1e-6,
        0.0,
        DType::F32,
    );
    assert_close(&ctx, &out, &want, tolerance(DType::F32), "shared buffer");
    // x itself is untouched.
    let xr = ctx.read_f32(&x).unwrap();
    assert_eq!(xr, data[..rows * n].to_vec());
}

/// Chained in one encoder: the fused residual norm of layer i feeds layer i+1.
#[test]
fn chained_in_one_encoder() {
    let ctx = ctx();
    let mut rng = Rng::new(13);
    let (rows, n) = (4, 256);
    let x = rng.vec(rows * n, 1.0);
    let r = rng.vec(rows * n, 1.0);
    let w = rng.vec(n, 1.0);
    let xt = ctx.upload(&x, &[rows, n]).unwrap();
    let rt = ctx.upload(&r, &[rows, n]).unwrap();
    let wt = ctx.upload(&w, &[n]).unwrap();
    let mid = ctx.empty(&[rows, n], DType::F32).unwrap();
    let out = ctx.empty(&[rows, n], DType::F32).unwrap();
    let op = RmsNorm::new(1e-6);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    op.encode_residual(&ctx, &mut enc, &xt, &wt, &mid, Residual::in_place(&rt))
        .unwrap();
    op.encode(&ctx, &mut enc, &mid, &wt, &out).unwrap();
    ctx.queue().submit([enc.finish()]);
    let (m, h) = reference::rms_norm::rms_norm(
        &rounded(&x, DType::F32),
        &rounded(&w, DType::F32),
        Some(&rounded(&r, DType::F32)),
        1e-6,
        0.0,
        DType::F32,
    );
    let (want, _) =
        reference::rms_norm::rms_norm(&m, &rounded(&w, DType::F32), None, 1e-6, 0.0, DType::F32);
    assert_close(&ctx, &out, &want, 1e-9, "chained");
    assert_close(&ctx, &rt, &h.unwrap(), 1e-12, "residual updated in place");
}

#[test]
fn every_validation_rule_has_an_error() {
    let ctx = ctx();
    let f32v = |shape: &[usize]| filled(&ctx, shape, 1.0);
    let x = f32v(&[4, 8]);
    let w = f32v(&[8]);
    let out = f32v(&[4, 8]);
    let op = RmsNorm::new(1e-6);
    let expect_err = |r: Result<(), Error>, kind: fn(&Error) -> bool, needle: &str| {
        expect_err(r, "rms_norm", kind, needle)
    };

    expect_err(
        RmsNorm {
            eps: -1.0,
            weight_offset: 0.0,
        }
        .run(&ctx, &x, &w, &out),
        is_param,
        "eps must be finite and >= 0, got -1",
    );
    expect_err(
        RmsNorm {
            eps: f32::NAN,
            weight_offset: 0.0,
        }
        .run(&ctx, &x, &w, &out),
        is_param,
        "eps",
    );
    expect_err(
        RmsNorm {
            eps: 0.0,
            weight_offset: f32::INFINITY,
        }
        .run(&ctx, &x, &w, &out),
        is_param,
        "weight_offset must be finite",
    );
    expect_err(
        op.run(&ctx, &x, &f32v(&[7]), &out),
        is_shape,
        "weight has shape [7] but must be [8]",
    );
    expect_err(
        op.run(&ctx, &x, &w, &f32v(&[4, 9])),
        is_shape,
        "out has shape [4, 9] but x has [4, 8]",
    );
    let h = ctx.upload_as(&[1.0; 8], &[8], DType::F16).unwrap();
    expect_err(
        op.run(&ctx, &x, &h, &out),
        is_dtype,
        "weight is f16 but must be f32",
    );
    // View past the end of its buffer.
    let past = Tensor::new(x.buffer(), 4, &[4, 8], DType::F32);
    expect_err(
        op.run(&ctx, &past, &w, &out),
        is_bounds,
        "ends at byte 144 but its buffer has 128 bytes",
    );
    // Half precision: odd rows and odd offsets.
    let h3 = ctx.upload_as(&[1.0; 12], &[4, 3], DType::F16).unwrap();
    let w3 = ctx.upload_as(&[1.0; 4], &[4], DType::F16).unwrap();
    expect_err(
        op.run(&ctx, &h3, &w3, &h3),
        is_shape,
        "even innermost dimension",
    );
    let hodd = Tensor::new(h3.buffer(), 1, &[1, 2], DType::F16);
    expect_err(
        op.run(&ctx, &hodd, &w3, &hodd),
        is_bounds,
        "must start at an even element",
    );
    // Empty dims and scalars.
    let empty = Tensor::new(x.buffer(), 0, &[0, 8], DType::F32);
    expect_err(
        op.run(&ctx, &empty, &w, &empty),
        is_shape,
        "empty dimension",
    );
    let scalar = Tensor::new(x.buffer(), 0, &[], DType::F32);
    expect_err(
        op.run(&ctx, &scalar, &w, &scalar),
        is_shape,
        "at least 1 dimension",
    );
    // Non-contiguous last dim, and leading dims that do not collapse.
    let strided = Tensor::with_strides(x.buffer(), 0, &[4, 4], &[8, 2], DType::F32);
    expect_err(
        op.run(&ctx, &strided, &f32v(&[4]), &f32v(&[4, 4])),
        is_bounds,
        "contiguous in its last dimension",
    );
    let big = f32v(&[64]);
    let bad3 = Tensor::with_strides(big.buffer(), 0, &[2, 2, 4], &[20, 4, 1], DType::F32);
    expect_err(
        op.run(&ctx, &bad3, &f32v(&[4]), &f32v(&[2, 2, 4])),
        is_bounds,
        "collapse to rows",
    );
    // Aliasing.
    let shifted = Tensor::new(x.buffer(), 2, &[3, 8], DType::F32);
    let x3 = Tensor::new(x.buffer(), 0, &[3, 8], DType::F32);
    expect_err(
        op.run(&ctx, &x3, &f32v(&[8]), &shifted),
        is_alias,
        "partially overlaps x",
    );
    let wx = Tensor::new(out.buffer(), 0, &[8], DType::F32);
    expect_err(
        op.run(&ctx, &x, &wx, &out),
        is_alias,
        "weight and out overlap",
    );
    let r = f32v(&[4, 8]);
    let rout = f32v(&[4, 8]);
    expect_err(
        op.run_residual(
            &ctx,
            &x,
            &w,
            &out,
            Residual {
                residual: &r,
                residual_out: &out,
            },
        ),
        is_alias,
        "residual_out and out overlap",
    );
    expect_err(
        op.run_residual(
            &ctx,
            &x,
            &w,
            &out,
            Residual {
                residual: &r,
                residual_out: &f32v(&[4, 7]),
            },
        ),
        is_shape,
        "residual_out [4, 7] must both have x's shape",
    );
    let r_shift = Tensor::new(r.buffer(), 2, &[3, 8], DType::F32);
    let r3 = Tensor::new(r.buffer(), 0, &[3, 8], DType::F32);
    expect_err(
        op.run_residual(
            &ctx,
            &x3,
            &w,
            &f32v(&[3, 8]),
            Residual {
                residual: &r3,
                residual_out: &r_shift,
            },
        ),
        is_alias,
        "partially overlaps residual",
    );
    expect_err(
        op.run_residual(
            &ctx,
            &x,
            &w,
            &out,
            Residual {
                residual: &r,
                residual_out: &x,
            },
        ),
        is_alias,
        "residual_out must not overlap x",
    );
    let rh = ctx.upload_as(&[1.0; 32], &[4, 8], DType::BF16).unwrap();
    expect_err(
        op.run_residual(
            &ctx,
            &x,
            &w,
            &out,
            Residual {
                residual: &rh,
                residual_out: &rout,
            },
        ),
        is_dtype,
        "residual is bf16 but must be f32",
    );
}

/// Each strategy forced, on every dtype, with and without the fused residual and in place, on
/// views that are 16-byte aligned (`rms_norm_rows4`, `rms_norm_wg4`, and
/// `rms_norm_wg4_subgroup` where the device has subgroups) and views that are not
/// (`rms_norm_rows`, `rms_norm`), and row lengths on both sides of the 16-byte item (f32: 4
/// elements, half: 8). On lavapipe (subgroups of 8) the GPU paths run with several subgroups
/// per workgroup and, at the short rows, idle invocations.
#[test]
fn every_strategy_and_item_layout() {
    let subgroups = ctx().caps().subgroups;
    let mut seed = 7000;
    for dtype in DType::ALL {
        let item = 16 / dtype.size();
        let mut strategies = vec![Strategy::WorkgroupTree, Strategy::InvocationPerRow];
        if subgroups {
            strategies.push(Strategy::WorkgroupSubgroup);
        }
        for strategy in strategies {
            // 64 elements before the view: 256 B (f32) or 128 B (half), aligned; 66 is not.
            for (before, n) in [
                (64, 4 * item),
                (64, 4 * item + 2),
                (66, 4 * item),
                (64, item),
                (64, 2),
                (64, 1000),
            ] {
                for combo in 0..4 {
                    seed += 1;
                    let c = Case {
                        dtype,
                        n,
                        rows: 9,
                        eps: 1e-6,
                        weight_offset: (combo % 2) as f32,
                        residual: combo / 2 == 1,
                        in_place: combo == 1 || combo == 3,
                    };
                    let v = run_case_with(c, seed, strategy, before);
                    let aligned = before == 64 && n % item == 0;
                    assert_eq!(
                        v.per_invocation,
                        strategy == Strategy::InvocationPerRow,
                        "{c:?} {v:?}"
                    );
                    assert_eq!(v.items16, aligned, "{c:?} {v:?}");
                    assert_eq!(
                        v.subgroup,
                        aligned && strategy == Strategy::WorkgroupSubgroup,
                        "{c:?} {v:?}"
                    );
                }
            }
        }
    }
}

/// A row stride that is not a multiple of 16 bytes keeps 4-byte words even when the row length
/// and the start are aligned.
#[test]
fn unaligned_row_stride_uses_words() {
    let ctx = ctx();
    let mut rng = Rng::new(21);
    let (rows, n, stride) = (70, 8, 10);
    let data = rng.vec(rows * stride, 1.0);
    let w = rng.vec(n, 1.0);
    let full = ctx.upload(&data, &[rows * stride]).unwrap();
    let x = Tensor::with_strides(full.buffer(), 0, &[rows, n], &[stride, 1], DType::F32);
    let wt = ctx.upload(&w, &[n]).unwrap();
    let out = nan_output(&ctx, &[rows, n], DType::F32);
    let op = RmsNorm::new(1e-5);
    let v = op
        .variant(&ctx, &x, &wt, &out, None, Strategy::InvocationPerRow)
        .unwrap();
    assert!(v.per_invocation && !v.items16, "{v:?}");
    ctx.submit_and_wait("test", |enc| {
        op.encode_with(&ctx, enc, &x, &wt, &out, None, Strategy::InvocationPerRow)
    })
    .unwrap();
    let xs: Vec<f64> = (0..rows)
        .flat_map(|r| data[r * stride..r * stride + n].iter().map(|&v| v as f64))
        .collect();
    let wr: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let (want, _) = reference::rms_norm::rms_norm(&xs, &wr, None, 1e-5, 0.0, DType::F32);
    assert_close(
        &ctx,
        &out,
        &want,
        tolerance(DType::F32),
        "strided rows, per invocation",
    );
}

/// The automatic choice around its row threshold: one invocation per row from
/// `ROWS_PER_INVOCATION_MIN` rows on, on CPU adapters only; correct on both sides.
#[test]
fn auto_strategy_row_threshold() {
    let ctx = ctx();
    let cpu = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let t = ROWS_PER_INVOCATION_MIN;
    for (i, rows) in [t - 1, t, t + 1].into_iter().enumerate() {
        let c = Case {
            dtype: DType::F32,
            n: 256,
            rows,
            eps: 1e-6,
            weight_offset: 0.0,
            residual: i == 1,
            in_place: false,
        };
        let v = run_case_with(c, 8000 + i as u64, Strategy::Auto, 64);
        assert_eq!(v.per_invocation, cpu && rows >= t, "rows {rows}: {v:?}");
        // 16-byte aligned views: 16-byte items on either strategy.
        assert!(v.items16, "rows {rows}: {v:?}");
    }
}

/// Native f16 reads and `pack2x16float` stores (`Strategy::WorkgroupNativeF16`, the GPU
/// default with SHADER_F16, forced here with the subgroup reduction where the device has
/// SUBGROUP, as GPUs run it): against the f64 reference with the f16 tolerance (out and
/// residual_out, in `run_case_outputs`), and against the integer decode and encoder of the same
/// workgroup-per-row kernel and reduction. Widening f16 is exact, but WGSL leaves
/// `pack2x16float`'s rounding (either neighbour) and out-of-range results open, so the two are
/// compared bit for bit on lavapipe only, where its conversion rounds to nearest even as the
/// integer encoder does; elsewhere the tolerance is what holds (the repo's rule: bit equality
/// only between runs of one module). Plain and fused, in place and not, Gemma's offset, one
/// item per row and many (125 items, an odd count). Without SHADER_F16 the strategy is an
/// error; misuse (other dtypes, unaligned views) is an error everywhere.
#[test]
fn native_f16_reads_equal_integer_reads() {
    let ctx = ctx();
    let (rows, before) = (9, 64);
    let op = RmsNorm::new(1e-6);
    let x = upload_at(&ctx, &vec![1.0; rows * 8], &[rows, 8], DType::F16, before);
    let w = upload_at(&ctx, &[1.0; 8], &[8], DType::F16, before);
    let out = upload_at(&ctx, &vec![0.0; rows * 8], &[rows, 8], DType::F16, before);
    let forced = |x: &Tensor, w: &Tensor, out: &Tensor| {
        op.variant(&ctx, x, w, out, None, Strategy::WorkgroupNativeF16)
    };
    if !ctx.caps().shader_f16 {
        let e = forced(&x, &w, &out).unwrap_err();
        assert!(matches!(e, Error::Limit { .. }), "{e}");
        assert!(e.to_string().contains("SHADER_F16"), "{e}");
        return;
    }
    // The dispatcher's own choice: CPU adapters keep the integer decode.
    let auto = op
        .variant(&ctx, &x, &w, &out, None, Strategy::Auto)
        .unwrap();
    assert_eq!(
        auto.native_f16,
        llama_kernels::ops::rms_norm::native_f16_wanted(&ctx) && !auto.per_invocation,
        "{auto:?}"
    );
    let mut seed = 9100;
    for n in [8, 64, 1000] {
        for combo in 0..8 {
            seed += 1;
            let c = Case {
                dtype: DType::F16,
                n,
                rows,
                eps: 1e-6,
                weight_offset: (combo % 2) as f32,
                residual: combo & 2 != 0,
                in_place: combo & 4 != 0,
            };
            let (native, a, ra) = run_case_outputs(c, seed, Strategy::WorkgroupNativeF16, before);
            assert!(
                native.native_f16 && !native.per_invocation,
                "{c:?} {native:?}"
            );
            assert_eq!(native.subgroup, ctx.caps().subgroups, "{c:?} {native:?}");
            let integer = if native.subgroup {
                Strategy::WorkgroupSubgroup
            } else {
                Strategy::WorkgroupTree
            };
            let (_, b, rb) = run_case_outputs(c, seed, integer, before);
            if ctx.adapter_info().name.contains("llvmpipe") {
                assert_eq!(a, b, "{c:?}: native and integer paths differ");
                assert_eq!(ra, rb, "{c:?}: residual_out differs");
            }
        }
    }
    // Misuse.
    let xb = upload_at(&ctx, &vec![1.0; rows * 8], &[rows, 8], DType::BF16, before);
    let wb = upload_at(&ctx, &[1.0; 8], &[8], DType::BF16, before);
    let ob = upload_at(&ctx, &vec![0.0; rows * 8], &[rows, 8], DType::BF16, before);
    let e = forced(&xb, &wb, &ob).unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    assert!(e.to_string().contains("bf16"), "{e}");
    let xu = upload_at(
        &ctx,
        &vec![1.0; rows * 8],
        &[rows, 8],
        DType::F16,
        before + 2,
    );
    let e = forced(&xu, &w, &out).unwrap_err();
    assert!(matches!(e, Error::Param { .. }), "{e}");
    assert!(e.to_string().contains("16-byte aligned"), "{e}");
}
