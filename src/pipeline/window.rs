//! Binding windows: the aligned part of a buffer that one storage binding covers.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The aligned part of a buffer that one storage binding covers, and where views start in it.
#[derive(Clone, Debug)]
pub struct Window {
    /// The buffer bound.
    pub buffer: wgpu::Buffer,
    /// First byte of the binding (a multiple of `min_storage_buffer_offset_alignment`).
    pub byte_start: u64,
    /// Bytes bound.
    pub byte_len: u64,
}

impl Window {
    /// The binding window covering all `views`, which must share one buffer.
    pub fn covering(ctx: &Context, op: &'static str, views: &[&Tensor]) -> Result<Window> {
        let first = views
            .first()
            .ok_or_else(|| Error::shape(op, "no views to bind"))?;
        let buffer = first.buffer().clone();
        let mut lo = u64::MAX;
        let mut hi = 0u64;
        for v in views {
            if v.buffer() != &buffer {
                return Err(Error::alias(op, "views bound together must share a buffer"));
            }
            let s = v.byte_span();
            lo = lo.min(s.start);
            hi = hi.max(s.end);
        }
        let align = ctx.limits().min_storage_buffer_offset_alignment.max(4) as u64;
        let byte_start = lo / align * align;
        let byte_end = (hi.div_ceil(4) * 4).min(buffer.size()).max(byte_start + 4);
        let byte_len = byte_end - byte_start;
        let max = ctx.limits().max_storage_buffer_binding_size;
        crate::ensure!(
            byte_len <= max,
            Limit,
            op,
            "binding of {byte_len} bytes exceeds the device's max_storage_buffer_binding_size of {max} bytes"
        );
        Ok(Window {
            buffer,
            byte_start,
            byte_len,
        })
    }

    /// The offset of `view`'s first element inside this window, in elements of its dtype.
    pub fn elem_offset(&self, view: &Tensor) -> u32 {
        ((view.offset() as u64 * view.dtype().size() as u64 - self.byte_start)
            / view.dtype().size() as u64) as u32
    }

    /// The window as a binding resource.
    pub fn resource(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.byte_start,
            size: std::num::NonZeroU64::new(self.byte_len),
        })
    }
}

/// Whether the views of each buffer, taken together, fit one binding window (with the slack of
/// an aligned window start): the ops that split work past one binding ask it first.
pub(crate) fn fits_one_binding(ctx: &Context, views: &[&Tensor]) -> bool {
    let max = ctx.limits().max_storage_buffer_binding_size;
    let slack = ctx.limits().min_storage_buffer_offset_alignment as u64 + 4;
    views.iter().all(|v| {
        let (lo, hi) = views
            .iter()
            .filter(|w| w.buffer() == v.buffer())
            .map(|w| w.byte_span())
            .fold((u64::MAX, 0), |(lo, hi), s| {
                (lo.min(s.start), hi.max(s.end))
            });
        hi.saturating_sub(lo) + slack <= max
    })
}
