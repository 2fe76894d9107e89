//! Modules trained once and kept in drmguard's cache, read back by shape.

use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::error::{Error, Result};

/// A module trained once and cached at `path` (ISSBA's encoder, Input-Aware's networks, a
/// defense's reference models): `build` makes one of the right shape, the file fills it. `None`
/// when the file is missing or does not fit, so that the caller retrains.
pub fn load_cached<M: burn::module::Module>(path: &std::path::Path, what: &str, build: impl FnOnce() -> M) -> Option<M> {
    if !path.is_file() {
        return None;
    }
    let mut module = build();
    let mut store = SafetensorsStore::from_file(path);
    match module.load_from(&mut store) {
        Ok(r) if r.missing.is_empty() && r.unused.is_empty() && r.errors.is_empty() => Some(module),
        _ => {
            tracing::warn!(path = %path.display(), "retraining: the cached {what} cannot be read");
            None
        }
    }
}

/// Writes `module` to `path` through a temporary name, so that a concurrent run never reads a
/// half-written file.
pub fn save_cached<M: burn::module::Module>(module: &M, path: &std::path::Path) -> Result<()> {
    let dir = path.parent().expect("cache paths have a folder");
    std::fs::create_dir_all(dir).map_err(|cause| Error::Write { path: dir.to_path_buf(), cause })?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    module.save_into(&mut store).map_err(|e| Error::Weights { path: tmp.clone(), message: e.to_string() })?;
    std::fs::rename(&tmp, path).map_err(|cause| Error::Write { path: path.to_path_buf(), cause })
}
