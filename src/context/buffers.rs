//! Buffers and tensors: creation, the scratch buffer, upload, readback and fill.

use wgpu::util::DeviceExt;

use super::Context;
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Tensor};

impl Context {
    /// The context's scratch storage buffer, at least `bytes` long (grown to a power of two).
    ///
    /// Shared by every call: a kernel that uses it writes it and reads it back within the
    /// dispatches of one `encode`, and wgpu orders the passes of a command buffer and the
    /// command buffers of its one queue, so calls never see each other's contents. A grown
    /// buffer replaces the old one; commands already recorded keep the old one alive.
    pub fn scratch(&self, op: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let mut s = self
            .scratch
            .lock()
            .map_err(|_| Error::gpu(op, "scratch buffer poisoned"))?;
        if let Some(b) = s.as_ref().filter(|b| b.size() >= bytes) {
            return Ok(b.clone());
        }
        let size = bytes
            .max(256)
            .next_power_of_two()
            .min(self.limits.max_storage_buffer_binding_size.max(bytes));
        let b = self.create_buffer(op, size)?;
        *s = Some(b.clone());
        Ok(b)
    }

    /// A new buffer usable as kernel storage, upload target and readback source.
    pub fn create_buffer(&self, op: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let size = bytes.max(4).div_ceil(4) * 4;
        crate::ensure!(
            size <= self.limits.max_buffer_size,
            Limit,
            op,
            "buffer of {size} bytes exceeds the device's max_buffer_size {}",
            self.limits.max_buffer_size
        );
        self.scoped(op, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(op),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// A new contiguous tensor (contents unspecified: zeroed by wgpu).
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = shape
            .iter()
            .try_fold(dtype.size(), |b, &d| b.checked_mul(d))
            .ok_or_else(|| {
                Error::limit(
                    "empty",
                    format!("a {dtype} tensor of shape {shape:?} overflows usize bytes"),
                )
            })?;
        let buf = self.create_buffer("empty", bytes as u64)?;
        Ok(Tensor::new(&buf, 0, shape, dtype))
    }

    /// Upload host values of any [`Element`] type into a new contiguous tensor.
    pub fn upload<T: Element>(&self, data: &[T], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        crate::ensure!(
            n == data.len(),
            Shape,
            "upload",
            "shape {shape:?} holds {n} elements but {} were given",
            data.len()
        );
        let mut bytes = bytemuck::cast_slice::<T, u8>(data).to_vec();
        bytes.resize(bytes.len().max(4).div_ceil(4) * 4, 0);
        let buf = self.scoped("upload", || {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("upload"),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                })
        })?;
        Ok(Tensor::new(&buf, 0, shape, T::DTYPE))
    }

    /// Upload f32 values converted to `dtype` (round to nearest even).
    pub fn upload_as(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        match dtype {
            DType::F32 => self.upload(data, shape),
            DType::F16 => self.upload(
                &data
                    .iter()
                    .map(|&v| half::f16::from_f32(v))
                    .collect::<Vec<_>>(),
                shape,
            ),
            DType::BF16 => self.upload(
                &data
                    .iter()
                    .map(|&v| half::bf16::from_f32(v))
                    .collect::<Vec<_>>(),
                shape,
            ),
        }
    }

    /// Write raw bytes into `buffer` at `byte_offset` (both multiples of 4).
    pub fn write_bytes(&self, buffer: &wgpu::Buffer, byte_offset: u64, bytes: &[u8]) -> Result<()> {
        crate::ensure!(
            byte_offset.is_multiple_of(4) && bytes.len().is_multiple_of(4),
            Bounds,
            "write",
            "writes must start and end on 4-byte boundaries (offset {byte_offset}, {} bytes)",
            bytes.len()
        );
        crate::ensure!(
            byte_offset + bytes.len() as u64 <= buffer.size(),
            Bounds,
            "write",
            "write of {} bytes at {byte_offset} passes the end of a {}-byte buffer",
            bytes.len(),
            buffer.size()
        );
        #[cfg(feature = "capture")]
        if let Some(capture) = self.capture.get() {
            capture.write(buffer, byte_offset, bytes)?;
        }
        self.scoped("write", || {
            self.queue.write_buffer(buffer, byte_offset, bytes)
        })?;
        self.wait("write", None)
    }

    /// Read the raw bytes `range` of `buffer` (rounded out to 4-byte boundaries internally).
    /// With a capture set (feature `capture`), the capture answers.
    pub fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        #[cfg(feature = "capture")]
        if let Some(capture) = self.capture.get() {
            crate::ensure!(
                range.start <= range.end && range.end <= buffer.size(),
                Bounds,
                "readback",
                "byte range {range:?} is outside a {}-byte buffer",
                buffer.size()
            );
            return capture.read(self, buffer, range);
        }
        self.read_device(buffer, range)
    }

    /// [`Context::read_bytes`] from the device itself.
    pub(crate) fn read_device(
        &self,
        buffer: &wgpu::Buffer,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        let op = "readback";
        crate::ensure!(
            range.start <= range.end && range.end <= buffer.size(),
            Bounds,
            op,
            "byte range {range:?} is outside a {}-byte buffer",
            buffer.size()
        );
        let start = range.start / 4 * 4;
        let end = (range.end.div_ceil(4) * 4).min(buffer.size());
        let len = (end - start).max(4);
        let staging = self.scoped(op, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: len,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        if end > start {
            self.submit_and_wait(op, |enc| {
                enc.copy_buffer_to_buffer(buffer, start, &staging, 0, end - start);
                Ok(())
            })?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(op, None)?;
        rx.recv()
            .map_err(|_| Error::gpu(op, "map callback never ran"))?
            .map_err(|e| Error::gpu(op, format!("map_async: {e}")))?;
        let data = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::gpu(op, format!("get_mapped_range: {e}")))?;
            let s = (range.start - start) as usize;
            view[s..s + (range.end - range.start) as usize].to_vec()
        };
        staging.unmap();
        Ok(data)
    }

    /// Read a view back as f32 values in logical (row-major) order, whatever its dtype/strides.
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        t.validate("readback", "tensor")?;
        let span = t.byte_span();
        let bytes = self.read_bytes(t.buffer(), span.clone())?;
        let flat = crate::tensor::decode_f32(&bytes, t.dtype());
        if t.is_contiguous() {
            return Ok(flat[..t.numel()].to_vec());
        }
        let base = t.element_span().start;
        let mut out = Vec::with_capacity(t.numel());
        let shape = t.shape();
        let strides = t.strides();
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..t.numel() {
            let off: usize =
                t.offset() + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
            out.push(flat[off - base]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(out)
    }

    /// Read a contiguous view back as host elements of its own dtype.
    pub fn read<T: Element>(&self, t: &Tensor) -> Result<Vec<T>> {
        t.expect_dtype("readback", "tensor", T::DTYPE)?;
        Ok(self.read_f32(t)?.into_iter().map(T::from_f32).collect())
    }

    /// Fill a contiguous view with `value` (converted to its dtype).
    pub fn fill(&self, t: &Tensor, value: f32) -> Result<()> {
        t.validate("fill", "tensor")?;
        crate::ensure!(
            t.is_contiguous(),
            Shape,
            "fill",
            "fill needs a contiguous view"
        );
        let span = t.byte_span();
        let mut bytes = crate::tensor::encode_f32(&vec![value; t.numel()], t.dtype());
        // Keep neighbouring half elements that share the first/last word intact.
        let start = span.start / 4 * 4;
        let end = span.end.div_ceil(4) * 4;
        if start != span.start || end != span.end {
            let mut word = self.read_bytes(t.buffer(), start..end.min(t.buffer().size()))?;
            word.resize((end - start) as usize, 0);
            let s = (span.start - start) as usize;
            word[s..s + bytes.len()].copy_from_slice(&bytes);
            bytes = word;
        }
        self.write_bytes(t.buffer(), start, &bytes)
    }
}
