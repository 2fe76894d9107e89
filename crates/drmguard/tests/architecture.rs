//! The library's layers (ARCHITECTURE.md): a module may use modules of lower layers only, so
//! the import graph has no cycle and attacks and defenses never see each other.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module and its layer; a module may import from strictly lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("task", 1),
    ("io", 1),
    ("device", 1),
    ("progress", 1),
    ("parallel", 1),
    ("settings", 1),
    ("metrics", 2),
    ("data", 2),
    ("figures", 3),
    ("models", 4),
    ("train", 5),
    ("attacks", 6),
    ("defenses", 6),
    ("model_file", 7),
    ("untrusted", 8),
    ("pipeline", 8),
    ("report", 9),
    ("bench", 10),
];

/// `crate::NAME` paths outside comments in every file of `dir`, by top-level module.
fn imports(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let top = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            if top == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    // Skip `drmguard::crate::` look-alikes and `$crate::` in macros.
                    if i > 0 && !line[..i].ends_with(|c: char| !c.is_alphanumeric() && c != '_' && c != '$') {
                        continue;
                    }
                    let name: String = line[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() && name != top && name.chars().next().is_some_and(|c| c.is_lowercase()) {
                        out.entry(top.clone()).or_default().entry(name).or_insert_with(|| relative.display().to_string());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_module_imports_from_lower_layers_only() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = imports(&src);
    let mut wrong = Vec::new();
    for (module, used) in &found {
        let Some(&own) = layers.get(module.as_str()) else {
            wrong.push(format!("module `{module}` has no layer in LAYERS (and ARCHITECTURE.md)"));
            continue;
        };
        for (dep, file) in used {
            match layers.get(dep.as_str()) {
                Some(&theirs) if theirs < own => {}
                Some(&theirs) => wrong.push(format!("{file}: `{module}` (layer {own}) uses `crate::{dep}` (layer {theirs})")),
                None => wrong.push(format!("{file}: `crate::{dep}` is not a module with a layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
    assert!(found.contains_key("defenses") && found["defenses"].contains_key("train"), "the scan saw the sources");
}
