//! Reading a weights file from elsewhere (PyTorch pickles, safetensors) as a state dict: its
//! tensors' names and shapes after the card's renames, and the architecture they imply.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::store::{ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};

use super::import::{WeightsFormat, architecture_by_name};
use crate::error::{Error, Result};
use crate::models::Architecture;

/// A weights file's tensors, names and shapes, after the renames.
#[derive(Debug, Clone)]
pub struct StateDict {
    pub path: PathBuf,
    pub format: WeightsFormat,
    /// Every tensor, by name, with its shape.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// The prefix in front of the network's tensor names (`module.`, `state_dict.`, …), or "".
    pub prefix: String,
}

pub(super) enum Store {
    Pytorch(PytorchStore),
    Safetensors(SafetensorsStore),
}

pub(super) fn open_store(path: &Path, format: WeightsFormat, state_dict_key: Option<&str>, remaps: &[(String, String)]) -> Store {
    match format {
        WeightsFormat::Pytorch => {
            let mut store = PytorchStore::from_file(path).skip_enum_variants(true).allow_partial(true).validate(false);
            if let Some(key) = state_dict_key {
                store = store.with_top_level_key(key);
            }
            for (from, to) in remaps {
                store = store.with_key_remapping(from, to.clone());
            }
            Store::Pytorch(store)
        }
        WeightsFormat::Safetensors | WeightsFormat::Onnx => {
            let mut store = SafetensorsStore::from_file(path)
                .skip_enum_variants(true)
                .allow_partial(true)
                .validate(false)
                .with_from_adapter(PyTorchToBurnAdapter);
            for (from, to) in remaps {
                store = store.with_key_remapping(from, to.clone());
            }
            Store::Safetensors(store)
        }
    }
}

/// Runs a reader, turning a panic on malformed input into an error (the readers are third-party
/// code that a crafted file must not be able to crash drmguard with).
pub(super) fn guarded<T>(path: &Path, read: impl FnOnce() -> std::result::Result<T, String>) -> Result<T> {
    let weights_err = |message: String| Error::Weights { path: path.to_path_buf(), message };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(result) => result.map_err(weights_err),
        Err(_) => Err(weights_err("the file is malformed (its reader gave up)".into())),
    }
}

/// Reads the tensor names and shapes of a weights file, with `key_remap` applied, and finds the
/// prefix in front of the network's names.
pub fn read_state_dict(path: &Path, state_dict_key: Option<&str>, key_remap: &[[String; 2]]) -> Result<StateDict> {
    let format = WeightsFormat::of(path)?;
    if format == WeightsFormat::Onnx {
        return Err(Error::invalid("weights file", format!("{} is an ONNX graph, which has no state dict", path.display())));
    }
    if !path.is_file() {
        return Err(Error::Read {
            path: path.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such weights file"),
        });
    }
    for [from, _] in key_remap {
        regex::Regex::new(from).map_err(|e| Error::invalid("key_remap pattern", format!("{from}: {e}")))?;
    }
    let remaps: Vec<(String, String)> = key_remap.iter().map(|[a, b]| (a.clone(), b.clone())).collect();
    let shapes = guarded(path, || {
        let shapes = |tensors: &BTreeMap<String, burn::store::burn_pack::Tensor>| {
            tensors.iter().map(|(name, t)| (name.clone(), t.shape.to_vec())).collect::<BTreeMap<_, _>>()
        };
        match open_store(path, format, state_dict_key, &remaps) {
            Store::Pytorch(mut s) => s.get_all_tensors().map(shapes).map_err(|e| e.to_string()),
            Store::Safetensors(mut s) => s.get_all_tensors().map(shapes).map_err(|e| e.to_string()),
        }
    })?;
    if shapes.is_empty() {
        return Err(Error::Weights { path: path.to_path_buf(), message: "the file holds no tensors".into() });
    }
    // The stem convolution is the one `conv1.weight` outside the residual stages.
    let prefix = shapes
        .keys()
        .filter_map(|k| k.strip_suffix("conv1.weight"))
        .filter(|p| (p.is_empty() || p.ends_with('.')) && !p.contains("layer"))
        .min_by_key(|p| p.len())
        .unwrap_or("")
        .to_string();
    Ok(StateDict { path: path.to_path_buf(), format, shapes, prefix })
}

/// What the weights say about the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    pub architecture: Architecture,
    pub outputs: usize,
    /// Width of the penultimate features (the input of `fc`).
    pub features: usize,
    pub parameters: usize,
}

impl StateDict {
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(&format!("{}{name}", self.prefix)).map(Vec::as_slice)
    }

    /// The network's tensors, without the prefix.
    pub fn network(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.shapes.iter().filter_map(|(k, v)| k.strip_prefix(self.prefix.as_str()).map(|k| (k, v.as_slice())))
    }

    /// Tensors that are not the network's (outside the prefix: optimiser state, counters, …).
    /// BatchNorm's batch counters, which every PyTorch state dict has, are not listed.
    pub fn ignored(&self) -> Vec<String> {
        self.shapes.keys().filter(|k| !k.starts_with(self.prefix.as_str()) && !k.ends_with("num_batches_tracked")).cloned().collect()
    }

    /// Recognises a torchvision ResNet-18, -34 or -50 (any stem width) and its head.
    pub fn infer(&self) -> Result<Inferred> {
        let fail = |message: String| Error::Weights { path: self.path.clone(), message };
        let stem = self.shape("conv1.weight").ok_or_else(|| {
            let some: Vec<&str> = self.shapes.keys().take(6).map(String::as_str).collect();
            fail(format!(
                "no stem convolution `conv1.weight`: not a torchvision ResNet state dict (first tensors: {}){}",
                some.join(", "),
                if some.iter().all(|k| k.contains('.')) { "; if the state dict is nested, set state_dict_key" } else { "" }
            ))
        })?;
        let width = match stem {
            [w, 3, 7, 7] => *w,
            other => return Err(fail(format!("`conv1.weight` has shape {other:?}; a ResNet stem is [width, 3, 7, 7]"))),
        };
        let bottleneck = self.shape("layer1.0.conv3.weight").is_some();
        let blocks: Vec<usize> = (1..=4)
            .map(|stage| {
                self.network()
                    .filter_map(|(k, _)| k.strip_prefix(&format!("layer{stage}."))?.split('.').next()?.parse::<usize>().ok())
                    .collect::<BTreeSet<_>>()
                    .len()
            })
            .collect();
        let name = match (bottleneck, blocks.as_slice()) {
            (false, [2, 2, 2, 2]) => "resnet18",
            (false, [3, 4, 6, 3]) => "resnet34",
            (true, [3, 4, 6, 3]) => "resnet50",
            _ => {
                return Err(fail(format!(
                    "a ResNet with {blocks:?} {} per stage: drmguard builds ResNet-18 [2, 2, 2, 2], -34 [3, 4, 6, 3] and -50 [3, 4, 6, 3] with bottlenecks",
                    if bottleneck { "bottlenecks" } else { "basic blocks" }
                )));
            }
        };
        let architecture = architecture_by_name(name, width)?;
        architecture.validate().map_err(|e| fail(e.to_string()))?;
        let (outputs, features) = match self.shape("fc.weight") {
            Some([o, f]) => (*o, *f),
            Some(other) => return Err(fail(format!("`fc.weight` has shape {other:?}, expected [outputs, features]"))),
            None => return Err(fail("no output layer `fc.weight` (if the head has another name, rename it with key_remap)".into())),
        };
        let expected = architecture.feature_width().unwrap_or_default();
        if features != expected {
            return Err(fail(format!("`fc.weight` takes {features} features; a {name} of width {width} has {expected}")));
        }
        let parameters = self
            .network()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var") && !k.ends_with("num_batches_tracked"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        Ok(Inferred { architecture, outputs, features, parameters })
    }
}
