//! PyTorch's reference values, as the fixture scripts write them: shared by the tests of
//! drmguard-onnx and drmguard (`#[path]` modules), which compare against the same kind of file.

use std::collections::BTreeMap;
use std::path::Path;

/// The f32 tensors of a safetensors file (others are skipped), by name, with their shapes.
pub fn read_safetensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F32)
        .map(|(name, t)| {
            let values = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (name, (t.shape().to_vec(), values))
        })
        .collect()
}
