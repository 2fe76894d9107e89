//! A model on disk: `MODEL.safetensors` (weights with torchvision's names and layouts) plus the sidecar
//! `MODEL.json` (the [`ModelCard`]) with everything needed to use the model again.
//!
//! Models trained elsewhere come in through [`import`]: weights from PyTorch or safetensors plus a
//! TOML card the user writes. [`load`] takes either.

pub mod import;
pub mod inspect;
pub mod state_dict;

use std::path::{Path, PathBuf};

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::attacks::{BackdoorSpec, backdoor_errors};
use crate::data::{DataSource, Dataset};
use crate::defenses::Suspect;
use crate::error::{Error, Result};
use crate::io::{ensure_parent_exists, read_json_timed, write_json_timed};
use crate::metrics::{BackdoorErrors, TaskError};
use crate::models::inference::evaluate;
use crate::models::{Model, ModelSpec};
use crate::task::Task;
use crate::train::{EpochRecord, TrainConfig};

pub const CARD_FORMAT_VERSION: u32 = 1;

/// The sidecar of a trained model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub format_version: u32,
    pub drmguard_version: String,
    pub task: Task,
    pub output_names: Vec<String>,
    /// Units of the outputs (and of the labels).
    pub output_units: String,
    pub model: ModelSpec,
    /// How drmguard trained the model; absent on an imported model.
    #[serde(flatten)]
    pub trained: Option<TrainingRecord>,
    /// Where an imported model came from; absent on a model drmguard trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<import::ImportRecord>,
    /// The attack the model was trained under, if it was poisoned: enough to regenerate the
    /// poisoned test set. Defenses never see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backdoor: Option<BackdoorSpec>,
    /// Set on a repaired model: the defense, its resolved config and what it measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mitigation: Option<serde_json::Value>,
}

/// How drmguard trained a model (stored inline in the card).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub training: TrainConfig,
    pub data: DataSource,
    /// SHA-256 of the training split (names, labels, pixels).
    pub data_hash: String,
    /// Mean training label: the "mean predictor" that evaluation compares against.
    pub label_mean: Vec<f32>,
    pub history: Vec<EpochRecord>,
    pub train_seconds: f64,
}

impl ModelCard {
    /// The suspect view of `model`, loaded with this card: everything in the card except the
    /// attack, which no defense may see.
    pub fn suspect(&self, model: Model) -> Suspect {
        let samples = self.trained.as_ref().map_or(0, |t| t.training.samples);
        Suspect::described(model, self.task, self.model.clone(), self.output_names.clone(), self.training_data().cloned(), samples)
    }

    /// The clean error of `model` on `data` and, when the card records a backdoor, AE and DAE on
    /// the same images with the trigger applied.
    pub fn errors(&self, model: &Model, data: &Dataset) -> Result<(TaskError, Option<BackdoorErrors>)> {
        // An imported model has no training batch size; 32 fits every model drmguard imports.
        let batch_size = self.trained.as_ref().map_or(32, |t| t.training.batch_size);
        let error = evaluate(model, self.task, data, batch_size)?;
        let backdoor = match &self.backdoor {
            Some(spec) => {
                let trigger = spec.trigger(self.task, self.model.input_size)?;
                Some(backdoor_errors(model, self.task, data, &trigger, batch_size)?)
            }
            None => None,
        };
        Ok((error, backdoor))
    }

    /// The training record, or an error naming what needs it for an imported model.
    pub fn trained(&self, needed_for: &str) -> Result<&TrainingRecord> {
        self.trained.as_ref().ok_or_else(|| {
            Error::Data(format!(
                "{needed_for} needs the model's training record, and this model was imported (it has none): pass its data explicitly"
            ))
        })
    }

    /// The data the model was trained on, when drmguard trained it.
    pub fn training_data(&self) -> Option<&DataSource> {
        self.trained.as_ref().map(|t| &t.data)
    }
}

/// A block's shortcut: torchvision's name on disk, drmguard's in memory.
const SHORTCUT_NAMES: [(&str, &str); 2] = [("downsample.0", "downsample.conv"), ("downsample.1", "downsample.bn")];

/// Key renames (regex, replacement) for the path segment `from` → `to`.
fn segment_rename(from: &str, to: &str) -> (String, String) {
    (format!(r"\.{}\.", regex::escape(from)), format!(".{to}."))
}

/// The renames from torchvision's names on disk to drmguard's in memory.
pub(crate) fn torchvision_to_drmguard() -> impl Iterator<Item = (String, String)> {
    SHORTCUT_NAMES.iter().map(|(disk, memory)| segment_rename(disk, memory))
}

/// What is wrong with a load that left tensors missing, unexpected (except those `expected_extra`
/// accepts) or of the wrong shape; `None` when every parameter was loaded.
pub(crate) fn incomplete_load(result: &burn::store::ApplyResult, expected_extra: impl Fn(&str) -> bool) -> Option<String> {
    let unused: Vec<&str> = result.unused.iter().map(String::as_str).filter(|k| !expected_extra(k)).collect();
    if result.missing.is_empty() && unused.is_empty() && result.errors.is_empty() {
        return None;
    }
    let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).take(5).collect();
    Some(format!(
        "missing [{}], unexpected [{}], {} shape errors{}",
        missing.join(", "),
        unused.iter().take(5).copied().collect::<Vec<_>>().join(", "),
        result.errors.len(),
        result.errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default(),
    ))
}

/// The sidecar path of a weights file: the same name with a `.json` extension.
pub fn card_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Saves weights and sidecar; each file is written atomically, the weights first. The sidecar's
/// training and repair times stand in its `timing` section.
pub fn save(weights: &Path, model: &Model, card: &ModelCard) -> Result<()> {
    if weights.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(Error::invalid(
            "model path",
            format!("{} (must end in .safetensors)", weights.display()),
        ));
    }
    ensure_parent_exists(weights)?;
    // torchvision's names and layouts on disk: BatchNorm `weight`/`bias`, `fc.weight` as
    // [out, in], shortcuts as `downsample.0` / `downsample.1`. One metadata entry, PyTorch's own
    // (`format: pt`): burn's default three come out of a HashMap, in another order in every
    // process, and the same weights would then differ byte for byte between two runs.
    let mut store = SafetensorsStore::from_file(weights)
        .clear_metadata()
        .metadata("format", "pt")
        .overwrite(true)
        .skip_enum_variants(true)
        .with_to_adapter(BurnToPyTorchAdapter);
    for (disk, memory) in SHORTCUT_NAMES {
        let (pattern, replacement) = segment_rename(memory, disk);
        store = store.with_key_remapping(pattern, replacement);
    }
    model
        .save_into(&mut store)
        .map_err(|e| Error::Weights { path: weights.to_path_buf(), message: e.to_string() })?;
    write_json_timed(&card_path(weights), card)
}

/// Loads a model and its sidecar. The weights must match the sidecar's architecture exactly.
///
/// A `.toml` path is a user's card for a model trained elsewhere, imported with [`import::load`].
pub fn load(weights: &Path, device: &Device) -> Result<(Model, ModelCard)> {
    if weights.extension().and_then(|e| e.to_str()) == Some("toml") {
        return import::load(weights, device);
    }
    if !weights.is_file() {
        return Err(Error::Read {
            path: weights.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
        });
    }
    let card_file = card_path(weights);
    if !card_file.is_file() {
        return Err(Error::Read {
            path: card_file,
            cause: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the model's sidecar is missing (drmguard writes MODEL.json beside MODEL.safetensors)",
            ),
        });
    }
    let card: ModelCard = read_json_timed(&card_file)?;
    if card.format_version != CARD_FORMAT_VERSION {
        return Err(Error::Json {
            path: card_file,
            message: format!("format_version {} is not supported (expected {CARD_FORMAT_VERSION})", card.format_version),
        });
    }
    if card.trained.is_some() == card.imported.is_some() {
        return Err(Error::Json {
            path: card_file,
            message: "the sidecar must hold either a training record (training, data, history, …) or an import record".into(),
        });
    }
    if card.model.outputs != card.task.output_dim() || card.output_names.len() != card.model.outputs {
        return Err(Error::Json {
            path: card_file,
            message: format!(
                "task {} has {} outputs, the sidecar declares {} outputs named [{}]",
                card.task,
                card.task.output_dim(),
                card.model.outputs,
                card.output_names.join(", ")
            ),
        });
    }
    // Every weight is overwritten by the file; the seed only fills the skeleton.
    let mut model = card.model.init(device, 0)?;
    let weights_err = |message: String| Error::Weights { path: weights.to_path_buf(), message };
    let mut store = SafetensorsStore::from_file(weights).skip_enum_variants(true).with_from_adapter(PyTorchToBurnAdapter);
    for (disk, memory) in torchvision_to_drmguard() {
        store = store.with_key_remapping(disk, memory);
    }
    let result = model.load_from(&mut store).map_err(|e| weights_err(e.to_string()))?;
    if let Some(problem) = incomplete_load(&result, |_| false) {
        return Err(weights_err(format!("the weights disagree with the sidecar's architecture {:?}: {problem}", card.model.architecture)));
    }
    Ok((model, card))
}
