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

/// Writes `value` as [`write_json`] does, with its wall-clock fields moved into one `timing`
/// section ([`timing::separate`]): the rest of the file is then the same, byte for byte, for
/// every run of the same command and seed.
pub fn write_json_timed<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut value = serde_json::to_value(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    timing::separate(&mut value);
    write_json(path, &value)
}

/// Reads a file [`write_json_timed`] wrote (or one written before it, without a `timing`
/// section), with the wall-clock fields back in their places.
pub fn read_json_timed<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let mut value: serde_json::Value = read_json(path)?;
    timing::restore(&mut value);
    serde_json::from_value(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Wall-clock measurements in JSON outputs. Everything else a run writes follows from its inputs
/// and seed; how long it took does not. These fields move into one top-level `timing` object,
/// each under its JSON pointer (RFC 6901), so that two runs' outputs compare equal once that
/// object is set aside.
pub mod timing {
    use serde_json::{Map, Value};

    /// The top-level key of the section.
    pub const SECTION: &str = "timing";

    /// Field names that hold wall-clock seconds, wherever they stand.
    pub const FIELDS: [&str; 6] = ["elapsed_s", "mean_seconds", "seconds", "seconds_per_step", "train_s", "train_seconds"];

    /// Moves every number under one of [`FIELDS`] into the `timing` section of `value` (a JSON
    /// object; anything else is left as it is).
    pub fn separate(value: &mut Value) {
        if !value.is_object() {
            return;
        }
        let mut found = Map::new();
        collect(value, &mut String::new(), &mut found);
        if let Value::Object(top) = value
            && !found.is_empty()
        {
            top.insert(SECTION.into(), Value::Object(found));
        }
    }

    fn collect(value: &mut Value, pointer: &mut String, found: &mut Map<String, Value>) {
        let start = pointer.len();
        match value {
            Value::Object(map) => {
                let timed: Vec<String> = map.iter().filter(|(k, v)| FIELDS.contains(&k.as_str()) && v.is_number()).map(|(k, _)| k.clone()).collect();
                for key in timed {
                    let v = map.remove(&key).expect("the key was just listed");
                    found.insert(format!("{pointer}/{}", escape(&key)), v);
                }
                for (key, child) in map.iter_mut() {
                    pointer.push('/');
                    pointer.push_str(&escape(key));
                    collect(child, pointer, found);
                    pointer.truncate(start);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    pointer.push_str(&format!("/{i}"));
                    collect(child, pointer, found);
                    pointer.truncate(start);
                }
            }
            _ => {}
        }
    }

    /// Puts the fields of `value`'s `timing` section back where [`separate`] took them from.
    pub fn restore(value: &mut Value) {
        let Some(Value::Object(section)) = value.as_object_mut().and_then(|top| top.remove(SECTION)) else {
            return;
        };
        for (pointer, v) in section {
            let Some((parent, leaf)) = pointer.rsplit_once('/') else {
                continue;
            };
            if let Some(Value::Object(map)) = value.pointer_mut(parent) {
                map.insert(leaf.replace("~1", "/").replace("~0", "~"), v);
            }
        }
    }

    /// `value` without its `timing` section: what two runs of one command and seed share.
    pub fn without(value: &Value) -> Value {
        let mut value = value.clone();
        if let Value::Object(top) = &mut value {
            top.remove(SECTION);
        }
        value
    }

    fn escape(key: &str) -> String {
        key.replace('~', "~0").replace('/', "~1")
    }
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
    fn timing_fields_move_to_their_own_section_and_back() {
        use serde_json::json;
        let original = json!({
            "score": 0.5,
            "elapsed_s": 12.5,
            "history": [{"epoch": 1, "seconds": 3.0}, {"epoch": 2, "seconds": 4.0}],
            "search": {"seconds_per_step": 0.1, "steps": 7, "odd/key~": {"seconds": 1.0}},
            "seconds": "not a number, so not a time",
        });
        let mut separated = original.clone();
        timing::separate(&mut separated);
        assert_eq!(
            separated["timing"],
            json!({"/elapsed_s": 12.5, "/history/0/seconds": 3.0, "/history/1/seconds": 4.0, "/search/seconds_per_step": 0.1, "/search/odd~1key~0/seconds": 1.0})
        );
        assert_eq!(
            timing::without(&separated),
            json!({"score": 0.5, "history": [{"epoch": 1}, {"epoch": 2}], "search": {"steps": 7, "odd/key~": {}}, "seconds": "not a number, so not a time"})
        );
        timing::restore(&mut separated);
        assert_eq!(separated, original);
    }

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
