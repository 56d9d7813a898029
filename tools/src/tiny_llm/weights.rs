//! Tensors of `model.safetensors` (or the shards listed in `model.safetensors.index.json`), read
//! by name with the shape the config implies. Every error names the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::model::{Error, Result};

/// Raw bytes of every shard and where each tensor lives.
pub struct Weights {
    shards: Vec<(PathBuf, Vec<u8>)>,
    index: HashMap<String, usize>,
}

impl Weights {
    pub fn open(dir: &Path) -> Result<Weights> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| Error(format!("{}: {e}", index_path.display())))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error(format!("{}: {e}", index_path.display())))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error(format!("{}: no `weight_map` object", index_path.display()))
                })?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(Error(format!(
                "{}: not found (nor model.safetensors.index.json)",
                single.display()
            )));
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let bytes =
                std::fs::read(&path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| {
                Error(format!(
                    "{}: not a valid safetensors file: {e}",
                    path.display()
                ))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            drop(st);
            shards.push((path, bytes));
        }
        Ok(Weights { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The file that holds (or would hold) `name`, for messages.
    fn file_of(&self, name: &str) -> String {
        let i = self.index.get(name).copied().unwrap_or(0);
        self.shards[i].0.display().to_string()
    }

    /// Tensor `name` as f32 values, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let Some(&i) = self.index.get(name) else {
            return Err(Error(format!(
                "{}: missing tensor `{name}`",
                self.file_of(name)
            )));
        };
        let (path, bytes) = &self.shards[i];
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error(format!("{}: {e}", path.display())))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error(format!("{}: tensor `{name}`: {e}", path.display())))?;
        if view.shape() != shape {
            return Err(Error(format!(
                "{}: tensor `{name}` has shape {:?} but the config implies {shape:?}",
                path.display(),
                view.shape()
            )));
        }
        let dtype = match view.dtype() {
            Dtype::F32 => llama_kernels::DType::F32,
            Dtype::F16 => llama_kernels::DType::F16,
            Dtype::BF16 => llama_kernels::DType::BF16,
            other => {
                return Err(Error(format!(
                    "{}: tensor `{name}` is {other:?}; tiny_llm reads F32, F16 and BF16",
                    path.display()
                )))
            }
        };
        Ok(llama_kernels::tensor::decode_f32(view.data(), dtype))
    }
}
