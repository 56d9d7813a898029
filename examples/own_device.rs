//! Calling llama-kernels from your own wgpu code: your device, your buffers, your encoder.
//!
//! A decoder layer's pre-attention step for a few tokens of Llama-3-8B (hidden 4096): the residual
//! stream is updated in place and normalised in one pass, then the next norm reads the result,
//! all recorded into one command encoder and submitted once.
//!
//! ```sh
//! cargo run --release --example own_device
//! ```

use llama_kernels::{Context, DType, Residual, RmsNorm, Tensor};
use wgpu::util::DeviceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The application's own device (here with wgpu's default limits).
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))?;
    println!("adapter: {}", adapter.get_info().name);

    let ctx = Context::from_device(&device, &queue);
    let (tokens, hidden) = (3usize, 4096usize);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let make = |data: &[half::bf16]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage,
        })
    };
    let values = |seed: u32, n: usize| -> Vec<half::bf16> {
        (0..n)
            .map(|i| {
                half::bf16::from_f32(
                    (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0,
                )
            })
            .collect()
    };
    // One activation buffer holding the attention output and the residual stream side by side.
    let mut act = values(1, tokens * hidden);
    act.extend(values(2, tokens * hidden));
    let act_buf = make(&act);
    let weight_buf = make(&values(3, hidden));
    let normed_buf = make(&vec![half::bf16::ZERO; tokens * hidden]);

    let attn_out = Tensor::new(&act_buf, 0, &[tokens, hidden], DType::BF16);
    let residual = Tensor::new(&act_buf, tokens * hidden, &[tokens, hidden], DType::BF16);
    let weight = Tensor::new(&weight_buf, 0, &[hidden], DType::BF16);
    let normed = Tensor::new(&normed_buf, 0, &[tokens, hidden], DType::BF16);

    let mut encoder = device.create_command_encoder(&Default::default());
    // residual += attn_out; normed = rms_norm(residual) * w   (residual updated in place)
    RmsNorm::new(1e-5).encode_residual(
        &ctx,
        &mut encoder,
        &attn_out,
        &weight,
        &normed,
        Residual::in_place(&residual),
    )?;
    queue.submit([encoder.finish()]);

    let y = ctx.read_f32(&normed)?;
    let ms: f32 = y[..hidden].iter().map(|v| v * v).sum::<f32>() / hidden as f32;
    println!("first token: y[0..4] = {:?}, mean(y^2) = {ms:.3}", &y[..4]);
    Ok(())
}
