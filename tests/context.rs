//! The host layer: wrapping the application's own device, wgpu errors as `Err` (error scopes),
//! device limits, views anywhere in a buffer, and readback of strided and half views.

use crate::common;

use common::*;
use llama_kernels::compare::tolerance;
use llama_kernels::pipeline::{PipelineKey, Shader};
use llama_kernels::{reference, Context, DType, Error, RmsNorm, Tensor};

/// An application creates its own device with default limits; the kernels run on it, record
/// into the application's encoder and use the application's buffers.
#[test]
fn runs_on_the_applications_own_device() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .unwrap_or_else(|e| panic!("{}: {e}", llama_kernels::context::NO_ADAPTER_HELP));
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let ctx = Context::from_device(&device, &queue);
    assert_eq!(
        ctx.limits().max_storage_buffer_binding_size,
        device.limits().max_storage_buffer_binding_size
    );

    let (rows, n) = (5, 200);
    let mut rng = Rng::new(1);
    let x = rng.vec(rows * n, 1.0);
    let w = rng.vec(n, 1.0);
    use wgpu::util::DeviceExt;
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    // The application's buffer holds other data first: the view starts 333 elements in.
    let mut host = vec![7.0f32; 333];
    host.extend_from_slice(&x);
    let xb = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&host),
        usage,
    });
    let wb = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&w),
        usage,
    });
    let ob = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (rows * n * 4) as u64,
        usage,
        mapped_at_creation: false,
    });
    let xt = Tensor::new(&xb, 333, &[rows, n], DType::F32);
    let wt = Tensor::new(&wb, 0, &[n], DType::F32);
    let ot = Tensor::new(&ob, 0, &[rows, n], DType::F32);
    let mut enc = device.create_command_encoder(&Default::default());
    RmsNorm::new(1e-6)
        .encode(&ctx, &mut enc, &xt, &wt, &ot)
        .unwrap();
    queue.submit([enc.finish()]);
    let (want, _) = reference::rms_norm::rms_norm(
        &rounded(&x, DType::F32),
        &rounded(&w, DType::F32),
        None,
        1e-6,
        0.0,
        DType::F32,
    );
    assert_close(&ctx, &ot, &want, tolerance(DType::F32), "user device");
}

/// A pipeline that wgpu refuses comes back as `Error::Gpu` naming the op, not as a panic from
/// wgpu's uncaptured-error handler.
#[test]
fn wgpu_errors_come_back_as_err() {
    let ctx = ctx();
    let key = PipelineKey::new(Shader::RMS_NORM, "no_such_entry_point", vec![]);
    let e = ctx.kernel("rms_norm", &key).unwrap_err();
    assert!(matches!(e, Error::Gpu { op: "rms_norm", .. }), "{e:?}");
    assert!(e.to_string().starts_with("rms_norm: wgpu error:"), "{e}");
    // An override constant with a value the shader cannot take (workgroup size 0).
    let key = PipelineKey::new(Shader::CAST, "cast_dtype", vec![("WG", 0)]);
    let e = ctx.kernel("cast", &key).unwrap_err();
    assert!(e.to_string().starts_with("cast: wgpu error:"), "{e}");
    // The device still works afterwards.
    let t = ctx.upload(&[1.0f32, 2.0], &[2]).unwrap();
    assert_eq!(ctx.read_f32(&t).unwrap(), vec![1.0, 2.0]);
}

/// Readback of strided and half views, and fill of a half view at an odd word boundary.
#[test]
fn readback_and_fill() {
    let ctx = ctx();
    let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let t = ctx.upload_as(&data, &[24], DType::BF16).unwrap();
    let v = Tensor::with_strides(t.buffer(), 2, &[3, 4], &[6, 1], DType::BF16);
    let got = ctx.read_f32(&v).unwrap();
    let want: Vec<f32> = (0..3)
        .flat_map(|r| (0..4).map(move |c| (2 + r * 6 + c) as f32))
        .collect();
    assert_eq!(got, want);
    let sub = Tensor::new(t.buffer(), 2, &[4], DType::BF16);
    ctx.fill(&sub, -3.0).unwrap();
    let all = ctx.read_f32(&t).unwrap();
    let mut expect = data.clone();
    expect[2..6].iter_mut().for_each(|v| *v = -3.0);
    assert_eq!(all, expect);
    let e = ctx.upload(&[1.0f32; 3], &[2, 2]).unwrap_err();
    assert!(
        e.to_string()
            .contains("upload: shape [2, 2] holds 4 elements but 3 were given"),
        "{e}"
    );
}

#[test]
fn pipelines_are_cached_per_key() {
    // A context of its own: the shared one gains pipelines from the tests on other threads.
    let ctx = Context::new().expect("adapter");
    let x = ctx.upload(&[1.0f32; 64], &[2, 32]).unwrap();
    let w = ctx.upload(&[1.0f32; 32], &[32]).unwrap();
    let o = ctx.empty(&[2, 32], DType::F32).unwrap();
    RmsNorm::new(1e-6).run(&ctx, &x, &w, &o).unwrap();
    let before = ctx.cached_pipelines();
    RmsNorm::new(1e-3).run(&ctx, &x, &w, &o).unwrap();
    assert_eq!(
        ctx.cached_pipelines(),
        before,
        "eps is a uniform, not a new pipeline"
    );
}

/// Kernel parameters come from a pool of immutable buffers keyed by their bytes: repeating a
/// call allocates nothing new, and a call with other parameters gets its own buffer (one that an
/// earlier, not yet submitted encoder still reads is never overwritten).
#[test]
fn parameters_are_pooled_not_overwritten() {
    // A context of its own: the shared one's pool counts other tests' parameters too.
    let ctx = Context::new().expect("adapter");
    let x = ctx.upload(&[2.0f32; 64], &[2, 32]).unwrap();
    let w = ctx.upload(&[1.0f32; 32], &[32]).unwrap();
    let (o1, o2) = (
        ctx.empty(&[2, 32], DType::F32).unwrap(),
        ctx.empty(&[2, 32], DType::F32).unwrap(),
    );
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    RmsNorm::new(0.0)
        .encode(&ctx, &mut enc, &x, &w, &o1)
        .unwrap();
    let after_first = ctx.pooled_constants();
    RmsNorm::new(0.0)
        .encode(&ctx, &mut enc, &x, &w, &o1)
        .unwrap();
    assert_eq!(
        ctx.pooled_constants(),
        after_first,
        "same params, same buffer"
    );
    // Different params recorded into the same, still unsubmitted encoder: eps 12 changes the
    // result, and o1 must still get eps 0.
    RmsNorm::new(12.0)
        .encode(&ctx, &mut enc, &x, &w, &o2)
        .unwrap();
    assert_eq!(ctx.pooled_constants(), after_first + 1);
    ctx.queue().submit([enc.finish()]);
    let (a, b) = (ctx.read_f32(&o1).unwrap(), ctx.read_f32(&o2).unwrap());
    assert!(a.iter().all(|&v| (v - 1.0).abs() < 1e-6), "{a:?}");
    let want = 2.0 / (4.0f32 + 12.0).sqrt();
    assert!(b.iter().all(|&v| (v - want).abs() < 1e-6), "{b:?}");
}

/// A decode loop's parameters are new every call (position, length). Each block gets a slot of
/// the parameter slab, written once, and the launch keeps its bind group, which names the slab,
/// not the slot. Recorded into one unsubmitted encoder past one slab's slots and past the
/// pool's entry limit, every call still reads its own parameters.
#[test]
fn new_parameters_every_call_keep_their_values_and_bind_group() {
    // A context of its own: its thousands of parameter blocks and the bind-group count must not
    // meet other tests' (`parameters_are_pooled_not_overwritten` counts the pool).
    let ctx = Context::new().expect("adapter");
    let n = 4;
    // RmsNorm's parameter block is 64 bytes, so a slab holds at most this many.
    let calls = (llama_kernels::context::PARAM_SLAB_BYTES / 64) as usize + 100;
    let x = ctx.upload(&[2.0f32; 4], &[1, 4]).unwrap();
    let w = ctx.upload(&[1.0f32; 4], &[4]).unwrap();
    let out = ctx.empty(&[calls, n], DType::F32).unwrap();
    let eps = |i: usize| i as f32 / 64.0;
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    for i in 0..calls {
        let row = Tensor::with_strides(out.buffer(), i * n, &[1, n], &[n, 1], DType::F32);
        RmsNorm::new(eps(i))
            .encode(&ctx, &mut enc, &x, &w, &row)
            .unwrap();
    }
    ctx.queue().submit([enc.finish()]);
    let got = ctx.read_f32(&out).unwrap();
    for i in 0..calls {
        let want = 2.0 / (4.0 + eps(i)).sqrt();
        for &v in &got[i * n..(i + 1) * n] {
            assert!((v - want).abs() <= 1e-6 * want, "call {i}: {v} != {want}");
        }
    }

    // Same bindings, new parameters: no new bind group.
    let o = ctx.empty(&[1, n], DType::F32).unwrap();
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    RmsNorm::new(0.5)
        .encode(&ctx, &mut enc, &x, &w, &o)
        .unwrap();
    let groups = ctx.cached_bind_groups();
    for i in 0..50 {
        RmsNorm::new(1.0 + i as f32)
            .encode(&ctx, &mut enc, &x, &w, &o)
            .unwrap();
    }
    assert_eq!(ctx.cached_bind_groups(), groups);
    ctx.queue().submit([enc.finish()]);
    let want = 2.0 / (4.0f32 + 50.0).sqrt();
    let got = ctx.read_f32(&o).unwrap();
    assert!(
        got.iter().all(|&v| (v - want).abs() <= 1e-6 * want),
        "{got:?}"
    );
}

/// A module naga rejects is an `Err` from the launch path that names the shader file (or inline
/// part) and the line in it, not a line of the joined module.
#[test]
fn a_broken_shader_is_an_error_naming_file_and_line() {
    static BROKEN: Shader = Shader {
        name: "broken.wgsl",
        parts: &[
            llama_kernels::pipeline::COMMON_WGSL,
            "@compute @workgroup_size(1)\nfn main() {\n    let x = undefined_name;\n}",
        ],
        variants: Vec::new,
    };
    let key = PipelineKey::new(&BROKEN, "main", vec![]);
    let e = ctx().kernel("test_op", &key).unwrap_err().to_string();
    assert!(e.contains("test_op"), "{e}");
    assert!(e.contains("broken.wgsl part 2:3"), "{e}");
    assert!(e.contains("undefined_name"), "{e}");
}
