//! Faults a long-lived server meets: the device is lost mid-stream, an allocation is larger than
//! the adapter allows, sizes whose byte counts overflow. Each must come back as an `Err` that
//! says what happened, promptly, never as a panic, a hang or an abort; and a fresh `Context`
//! afterwards must work.

use crate::common;

use std::sync::mpsc;
use std::time::Duration;

use llama_kernels::{
    Attention, Context, DType, Error, KvCache, KvCacheConfig, Layout, Positions, RmsNorm, Rope,
};

/// Run `f` on its own thread; fail if it panics or takes longer than `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => panic!("{what}: panicked"),
        Err(_) => panic!("{what}: no answer within {secs} s (hang?)"),
    }
}

fn is_lost(r: &llama_kernels::Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(Error::DeviceLost { .. }))
}

#[test]
fn device_loss_mid_stream_gives_device_lost_then_a_fresh_context_works() {
    within(120, "device loss", || {
        let ctx = Context::new().unwrap();
        let x = ctx.upload(&[0.5f32; 4 * 64], &[4, 64]).unwrap();
        let w = ctx.upload(&[1.0f32; 64], &[64]).unwrap();
        let q = ctx.upload(&[0.25f32; 2 * 4 * 64], &[2, 4, 64]).unwrap();
        let k = ctx.upload(&[0.25f32; 9 * 2 * 64], &[9, 2, 64]).unwrap();
        let out = ctx.empty(&[2, 4, 64], DType::F32).unwrap();
        RmsNorm::new(1e-5).run(&ctx, &x, &w, &x).unwrap();

        // Work recorded and submitted, then the device goes away before it is waited for.
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        Attention::causal()
            .encode(&ctx, &mut enc, &q, &k, &k, None, &out)
            .unwrap();
        let idx = ctx.queue().submit([enc.finish()]);
        ctx.device().destroy();
        let waited = ctx.wait("test", Some(idx));
        assert!(is_lost(&waited), "wait after loss: {waited:?}");

        // Every later call says the device is lost.
        let rope = Rope::new(1e4, Layout::Half);
        let results = [
            (
                "rms_norm",
                RmsNorm::new(1e-5).run(&ctx, &x, &w, &x).map(|_| ()),
            ),
            ("rope", rope.run(&ctx, &q, Positions::Start(0)).map(|_| ())),
            (
                "attention",
                Attention::causal()
                    .run(&ctx, &q, &k, &k, None, &out)
                    .map(|_| ()),
            ),
            ("upload", ctx.upload(&[1.0f32; 8], &[8]).map(|_| ())),
            ("empty", ctx.empty(&[8], DType::F16).map(|_| ())),
            ("read_f32", ctx.read_f32(&x).map(|_| ())),
            (
                "kv_cache",
                KvCache::new(
                    &ctx,
                    KvCacheConfig {
                        batch: 1,
                        n_kv_heads: 2,
                        capacity: 16,
                        head_dim: 64,
                        dtype: DType::F32,
                        kv_format: None,
                    },
                )
                .map(|_| ()),
            ),
        ];
        for (what, r) in &results {
            assert!(is_lost(r), "{what} after device loss: {r:?}");
        }
        drop(ctx);

        let fresh = Context::new().unwrap();
        let x = fresh.upload(&[3.0f32; 64], &[1, 64]).unwrap();
        let w = fresh.upload(&[1.0f32; 64], &[64]).unwrap();
        RmsNorm::new(0.0).run(&fresh, &x, &w, &x).unwrap();
        let y = fresh.read_f32(&x).unwrap();
        assert!(y.iter().all(|&v| (v - 1.0).abs() < 1e-6), "{:?}", &y[..4]);
    });
}

#[test]
fn allocations_past_the_adapter_limits_are_errors() {
    within(120, "allocation limits", || {
        let ctx = common::ctx();
        let max = ctx.limits().max_buffer_size;
        let binding = ctx.limits().max_storage_buffer_binding_size;
        // One element past the largest buffer.
        let n = (max / 4 + 1) as usize;
        let r = ctx.empty(&[n], DType::F32);
        assert!(matches!(r, Err(Error::Limit { .. })), "{r:?}");
        // Byte counts that overflow usize / u64: refused, not wrapped around or panicking.
        for shape in [
            vec![usize::MAX],
            vec![1 << 40, 1 << 40],
            vec![usize::MAX / 2 + 1, 2],
        ] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.empty(&shape, DType::F32)
            }));
            assert!(
                matches!(r, Ok(Err(_))),
                "empty({shape:?}) must be Err: {:?}",
                r.map(|r| r.map(|_| ()))
            );
        }
        // A KV cache whose K buffer would pass one binding: Limit, naming both sizes.
        let cap = (binding / (8 * 128 * 4)) as usize + 1;
        match KvCache::new(
            &ctx,
            KvCacheConfig {
                batch: 1,
                n_kv_heads: 8,
                capacity: cap,
                head_dim: 128,
                dtype: DType::F32,
                kv_format: None,
            },
        ) {
            Err(Error::Limit { msg, .. }) => {
                assert!(msg.contains(&binding.to_string()), "{msg}")
            }
            other => panic!("cache past the binding limit: {other:?}"),
        }
        // The context is still usable afterwards.
        let x = ctx.upload(&[2.0f32; 8], &[1, 8]).unwrap();
        let w = ctx.upload(&[1.0f32; 8], &[8]).unwrap();
        RmsNorm::new(0.0).run(&ctx, &x, &w, &x).unwrap();
        assert!(ctx
            .read_f32(&x)
            .unwrap()
            .iter()
            .all(|&v| (v - 1.0).abs() < 1e-6));
    });
}
