//! Error scopes, submission and waiting.

use super::Context;
use crate::error::{Error, Result};

/// The output of `f`: polled once, since wgpu's native backends answer error-scope pops at
/// once, and waited for with `pollster` only if it is not ready (a per-call cost otherwise:
/// every `encode` pops three scopes).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => pollster::block_on(f),
    }
}

impl Context {
    fn check_lost(&self, op: &'static str) -> Result<()> {
        if let Some(msg) = self.lost.lock().ok().and_then(|g| g.clone()) {
            return Err(Error::DeviceLost { op, msg });
        }
        Ok(())
    }

    /// Run `f` inside validation, out-of-memory and internal error scopes and turn anything they
    /// catch into `Error::Gpu` for `op`.
    pub fn scoped<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> Result<T> {
        // After a loss wgpu objects come back invalid, and some wgpu helpers panic on them
        // (create_buffer_init maps its new buffer): refuse before calling into wgpu at all.
        self.check_lost(op)?;
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let errs = [
            ready(validation.pop()),
            ready(oom.pop()),
            ready(internal.pop()),
        ];
        if let Some(e) = errs.into_iter().flatten().next() {
            return Err(Error::gpu(op, e.to_string()));
        }
        self.check_lost(op)?;
        Ok(out)
    }

    /// Record with `f` into a fresh encoder, submit, and wait for the GPU. Errors from recording
    /// and from wgpu validation come back as `Err`.
    pub fn submit_and_wait(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<()> {
        let idx = self.scoped(op, || -> Result<wgpu::SubmissionIndex> {
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
            f(&mut enc)?;
            Ok(self.queue.submit([enc.finish()]))
        })??;
        self.wait(op, Some(idx))
    }

    /// Block until the queue has finished `idx` (or everything submitted, with `None`).
    pub fn wait(&self, op: &'static str, idx: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: idx,
                timeout: None,
            })
            .map_err(|e| Error::gpu(op, format!("waiting for the GPU: {e}")))?;
        self.check_lost(op)
    }
}
