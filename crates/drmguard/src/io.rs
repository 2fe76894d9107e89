//! File output that never leaves a half-written file behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Checks that the folder `path` would be written into exists, and returns it. Outputs are never
/// written into folders that drmguard would have to invent.
pub fn ensure_parent_exists(path: &Path) -> Result<&Path> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::Write {
            path: path.to_path_buf(),
            cause: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("folder {} does not exist", parent.display()),
            ),
        });
    }
    Ok(parent)
}

/// The lock of the cache entry at `path` within this process. Concurrent jobs that need the same
/// entry (the benchmark's jobs, scanning models against one task's reference models) take it
/// before looking the entry up, so that the first computes it and the others then read it.
pub fn cache_entry_lock(path: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// Writes `bytes` to `path` through a temporary file in the same folder, then renames it, so that
/// readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = ensure_parent_exists(path)?;
    let write_err = |cause| Error::Write {
        path: path.to_path_buf(),
        cause,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    // Temporary files are private (0600); the result is an ordinary output file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// A short hash (16 hex digits of SHA-256) of a value's JSON, for cache file names.
pub fn short_hash(value: &impl serde::Serialize) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(value).expect("cache keys serialise to JSON");
    Sha256::digest(&json).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// drmguard's cache folder: `$DRMGUARD_CACHE`, else `$XDG_CACHE_HOME/drmguard`, else
/// `~/.cache/drmguard`, else `.drmguard-cache` in the working folder.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("DRMGUARD_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("drmguard");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("drmguard"),
        None => PathBuf::from(".drmguard-cache"),
    }
}

/// Defaults and skips for config fields added after configs were first written: a field left out
/// at its old value keeps the serialised config, and so every cache key, as it was; a missing
/// field reads back as that value.
pub mod serde_compat {
    pub fn one() -> usize {
        1
    }

    pub fn is_one(n: &usize) -> bool {
        *n == 1
    }

    pub fn is_zero(n: &usize) -> bool {
        *n == 0
    }

    pub fn is_zero_f64(v: &f64) -> bool {
        *v == 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_cache_entry() {
        let (a, b) = (Path::new("/cache/a.json"), Path::new("/cache/b.json"));
        assert!(std::sync::Arc::ptr_eq(&cache_entry_lock(a), &cache_entry_lock(a)));
        assert!(!std::sync::Arc::ptr_eq(&cache_entry_lock(a), &cache_entry_lock(b)));
        // Held, the entry's lock keeps a second taker out; another entry's stays free.
        let held = cache_entry_lock(a);
        let _guard = held.lock().unwrap();
        assert!(cache_entry_lock(a).try_lock().is_err());
        assert!(cache_entry_lock(b).try_lock().is_ok());
    }
}
