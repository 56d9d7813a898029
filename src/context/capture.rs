//! Dispatch capture (feature `capture`): a [`Context`] with a [`Capture`] set records every
//! launch instead of running it, so another WebGPU implementation (Dawn, through
//! `scripts/dawn/`) can run the same dispatches and hand back what the host reads.
//!
//! What a capture holds, in order: each dispatch of [`Context::encode_kernel`] (the
//! spec-correct module text of its key, entry point, override constants, workgroup grid, params
//! bytes and every binding: buffer, offset and size, or the kind of dummy), each read of
//! [`Context::read_bytes`] (buffer and byte range) and each write of [`Context::write_bytes`] to
//! a buffer the capture has seen. A buffer's bytes are taken (read from the device) the first
//! time a dispatch binds it: until then only host writes have touched it, since kernels run
//! nowhere else while the capture is set. Reads return the bytes of `replies` (what the other
//! implementation read at the same point of the same trace) or, without them, zeros.
//!
//! Limits: GPU work recorded outside the launch path (an op's `copy_buffer_to_buffer`, a
//! caller's own passes) is not captured; the host code must not decide what to launch from
//! what it reads (a replayed trace must be the trace the replies came from, which
//! [`Capture::finish`] checks).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::Context;
use crate::error::{Error, Result};
use crate::pipeline::{reflect, Access, PipelineKey};

const OP: &str = "capture";

/// Records the launches of a [`Context`] to a folder (see the module doc).
pub struct Capture {
    dir: PathBuf,
    replies: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Buffers seen, by their position here (their id in the trace).
    buffers: Vec<wgpu::Buffer>,
    /// Module texts written, by text, to their file name.
    modules: HashMap<String, String>,
    events: Vec<Value>,
    reads: usize,
    /// The bytes of buffers the device cannot copy from (the constant pool's), as created.
    created: Vec<(wgpu::Buffer, Vec<u8>)>,
}

fn io(e: std::io::Error, what: &Path) -> Error {
    Error::gpu(OP, format!("{}: {e}", what.display()))
}

impl Capture {
    /// A capture writing to `dir` (created; `modules/` and `bytes/` under it). With `replies`,
    /// read number `n` returns the bytes of `replies/read-<n>.bin`.
    pub fn new(dir: &Path, replies: Option<&Path>) -> Result<Capture> {
        for sub in ["modules", "bytes"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| io(e, &d))?;
        }
        Ok(Capture {
            dir: dir.to_path_buf(),
            replies: replies.map(Path::to_path_buf),
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::gpu(OP, "capture state poisoned"))
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| io(e, &path))
    }

    /// The trace id of `buffer`, taking its bytes when it is new.
    fn buffer_id(&self, ctx: &Context, state: &mut State, buffer: &wgpu::Buffer) -> Result<usize> {
        if let Some(i) = state.buffers.iter().position(|b| b == buffer) {
            return Ok(i);
        }
        let id = state.buffers.len();
        let bytes = if buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            ctx.read_device(buffer, 0..buffer.size())?
        } else if let Some((_, bytes)) = state.created.iter().find(|(b, _)| b == buffer) {
            bytes.clone()
        } else {
            return Err(Error::gpu(
                OP,
                format!(
                    "a dispatch binds a buffer ({:?}) whose bytes the capture cannot read (no COPY_SRC)",
                    buffer
                ),
            ));
        };
        self.write_file(&format!("bytes/buffer-{id}.bin"), &bytes)?;
        state.buffers.push(buffer.clone());
        Ok(id)
    }

    /// Record one launch (see [`Context::encode_kernel`]).
    pub(crate) fn dispatch(
        &self,
        ctx: &Context,
        op: &'static str,
        key: &PipelineKey,
        params: &[u8],
        named: &[(&str, wgpu::BindingResource<'_>)],
        grid: (u32, u32, u32),
    ) -> Result<()> {
        let source = key.source();
        let (slots, _) =
            reflect(&source, key.entry_point).map_err(|e| Error::gpu(op, e.to_string()))?;
        let mut state = self.state()?;
        let n = state.modules.len();
        let module = match state.modules.get(&source) {
            Some(m) => m.clone(),
            None => {
                let name = format!("modules/{n}-{}", key.shader.name);
                self.write_file(&name, source.as_bytes())?;
                state.modules.insert(source, name.clone());
                name
            }
        };
        let mut bindings = Vec::new();
        for slot in &slots {
            let access = match slot.access {
                Access::Uniform => "uniform",
                Access::Read => "read",
                Access::ReadWrite => "read_write",
            };
            let filled = named.iter().find(|(n, _)| *n == slot.name);
            let b = match (slot.access, filled) {
                (_, Some((_, wgpu::BindingResource::Buffer(b)))) => {
                    let id = self.buffer_id(ctx, &mut state, b.buffer)?;
                    let size = b.size.map_or(b.buffer.size() - b.offset, |s| s.get());
                    json!({"binding": slot.binding, "name": slot.name, "access": access,
                           "buffer": id, "offset": b.offset, "size": size})
                }
                (_, Some((name, _))) => {
                    return Err(Error::gpu(
                        op,
                        format!("binding {name} is not a buffer binding"),
                    ))
                }
                (Access::Uniform, None) => {
                    json!({"binding": slot.binding, "name": slot.name, "access": access, "params": true})
                }
                (_, None) => {
                    json!({"binding": slot.binding, "name": slot.name, "access": access, "dummy": true})
                }
            };
            bindings.push(b);
        }
        let words: Vec<u32> = params
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect();
        let constants: serde_json::Map<String, Value> = key
            .overrides()
            .into_iter()
            .map(|(n, v)| (n.to_string(), json!(v)))
            .collect();
        state.events.push(json!({"dispatch": {
            "op": op, "shader": key.shader.name, "module": module, "entry_point": key.entry_point,
            "constants": constants, "key_constants": key.constants.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "grid": [grid.0, grid.1, grid.2], "params": words, "bindings": bindings,
        }}));
        Ok(())
    }

    /// Remember the bytes a buffer without `COPY_SRC` was created with (the constant pool's).
    pub(crate) fn created(&self, buffer: &wgpu::Buffer, bytes: &[u8]) -> Result<()> {
        self.state()?.created.push((buffer.clone(), bytes.to_vec()));
        Ok(())
    }

    /// Record a read and return its bytes (see the module doc).
    pub(crate) fn read(
        &self,
        ctx: &Context,
        buffer: &wgpu::Buffer,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        let mut state = self.state()?;
        let id = self.buffer_id(ctx, &mut state, buffer)?;
        let n = state.reads;
        state.reads += 1;
        state.events.push(json!({"read": {
            "buffer": id, "offset": range.start, "size": range.end - range.start, "n": n,
        }}));
        let len = (range.end - range.start) as usize;
        let Some(replies) = &self.replies else {
            return Ok(vec![0; len]);
        };
        let path = replies.join(format!("read-{n}.bin"));
        let bytes = std::fs::read(&path).map_err(|e| io(e, &path))?;
        if bytes.len() != len {
            return Err(Error::gpu(
                OP,
                format!(
                    "{} holds {} bytes, read {n} wants {len}",
                    path.display(),
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    /// Record a host write to a buffer the capture has seen (a new buffer's bytes are taken
    /// when it is first bound).
    pub(crate) fn write(
        &self,
        buffer: &wgpu::Buffer,
        byte_offset: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let state = self.state()?;
        let Some(id) = state.buffers.iter().position(|b| b == buffer) else {
            return Ok(());
        };
        let n = state.events.len();
        let name = format!("bytes/write-{n}.bin");
        drop(state);
        self.write_file(&name, bytes)?;
        self.state()?.events.push(json!({"write": {
            "buffer": id, "offset": byte_offset, "file": name,
        }}));
        Ok(())
    }

    /// Write `trace.json` (the buffers' sizes and first bytes, then the events in order) and
    /// return the number of events. With replies, check instead that the trace equals the one
    /// they were read from (`replies/trace.json`).
    pub fn finish(&self) -> Result<usize> {
        let state = self.state()?;
        let buffers: Vec<Value> = state
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| json!({"id": i, "size": b.size(), "file": format!("bytes/buffer-{i}.bin")}))
            .collect();
        let trace = json!({"buffers": buffers, "events": state.events});
        let Some(replies) = &self.replies else {
            let text = serde_json::to_string(&trace).map_err(|e| Error::gpu(OP, e.to_string()))?;
            self.write_file("trace.json", text.as_bytes())?;
            return Ok(state.events.len());
        };
        {
            let path = replies.join("trace.json");
            let before = std::fs::read_to_string(&path).map_err(|e| io(e, &path))?;
            let before: Value =
                serde_json::from_str(&before).map_err(|e| Error::gpu(OP, e.to_string()))?;
            if before["events"] != trace["events"] {
                return Err(Error::gpu(
                    OP,
                    format!(
                        "the replayed run launched other work than the trace in {}",
                        replies.display()
                    ),
                ));
            }
        }
        Ok(state.events.len())
    }
}

impl Context {
    /// Record every launch, read and write to `capture` from now on instead of running
    /// launches (feature `capture`, see [`Capture`]); an error if one is set already.
    pub fn set_capture(&self, capture: Capture) -> Result<()> {
        self.capture
            .set(capture)
            .map_err(|_| Error::gpu(OP, "a capture is set already"))
    }

    /// The capture set on this context.
    pub fn capture(&self) -> Option<&Capture> {
        self.capture.get()
    }
}
