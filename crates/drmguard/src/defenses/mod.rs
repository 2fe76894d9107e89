//! Defenses: decide whether a model is backdoored, and repair it.
//!
//! A defense sees exactly two things: the [`Suspect`] (the model, its task and input spec) and
//! the defender's [`CleanSet`]. Neither type can carry the attack: a `Suspect` is built from a
//! model card by dropping its backdoor record, and a `CleanSet` can only be loaded from a user
//! folder or drawn fresh from the built-in generator, never made from a poisoned [`Dataset`].
//! This module does not depend on [`crate::attacks`].

pub mod abs;
pub mod agnostic;
pub mod anp;
pub mod blend;
pub mod class_repair;
pub mod drmguard;
pub mod feature_re;
pub mod fine_pruning;
pub mod fine_tuning;
pub mod neural_cleanse;
pub mod neuron_noise;
pub mod references;
pub mod registry;
pub mod trigger;
pub mod unlearn;
pub mod warp;
pub mod warp_collapse;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{DataSource, Dataset, Split};
use crate::error::{Error, Result};
use crate::models::inference::model_device;
use crate::models::{Model, ModelSpec, Regressor};
use crate::task::Task;
pub use abs::{Abs, AbsConfig};
pub use agnostic::{Agnostic, AgnosticConfig};
pub use anp::{Anp, AnpConfig};
pub use drmguard::{DrmGuard, DrmGuardConfig, DrmGuardRepair, DrmGuardTest};
pub use feature_re::{FeatureRe, FeatureReConfig};
pub use fine_pruning::{FinePruning, FinePruningConfig};
pub use fine_tuning::{FineTuning, FineTuningConfig};
pub use neural_cleanse::{NcUnlearning, NeuralCleanse, NeuralCleanseConfig};
pub use neuron_noise::{NeuronNoise, NeuronNoiseConfig};
pub use registry::{DetectorConfigs, DetectorKind, MitigatorConfigs, MitigatorKind};
pub use trigger::ReversedTrigger;
pub use unlearn::{UnlearnConfig, repair_finding};
pub use warp_collapse::{WarpCollapseConfig, WarpCollapseSearch, spread_ratio_under};

/// A model under suspicion, as a defense sees it.
#[derive(Debug, Clone)]
pub struct Suspect {
    pub model: Model,
    pub task: Task,
    pub spec: ModelSpec,
    pub output_names: Vec<String>,
    /// Where the model's training data came from (not the data themselves): for built-in
    /// tasks, a defender's sample is drawn with a different seed. Unknown for imported models.
    training_data: Option<DataSource>,
    /// Training samples the model saw (all splits), for the default clean-set size.
    training_samples: usize,
}

impl Suspect {
    /// A suspect as its card describes it (see `ModelCard::suspect`): `training_data` and
    /// `training_samples` are unknown (`None`, 0) for imported models.
    pub(crate) fn described(model: Model, task: Task, spec: ModelSpec, output_names: Vec<String>, training_data: Option<DataSource>, training_samples: usize) -> Self {
        Suspect { model, task, spec, output_names, training_data, training_samples }
    }

    /// A suspect built from its parts (tests, benchmarks, models from elsewhere). `training_data`
    /// and `training_samples` describe where the model was trained, for the default clean set.
    pub fn from_parts(model: Model, task: Task, spec: ModelSpec, training_data: DataSource, training_samples: usize) -> Self {
        let output_names = task.output_names();
        Self::described(model, task, spec, output_names, Some(training_data), training_samples)
    }

    pub fn image_size(&self) -> u32 {
        self.spec.input_size
    }

    /// The same task, input size and outputs with another model in place of this one: a
    /// reference model scored as the suspect is, for calibration.
    pub fn with_model(&self, model: Model) -> Suspect {
        Suspect { model, ..self.clone() }
    }
}

/// Stream mixed into the training data's seed to draw the defender's built-in sample.
const DEFENDER_SEED_STREAM: u64 = 0xdefe_2d00_5eed_0001;

/// The defender's clean, correctly labelled images.
#[derive(Debug, Clone)]
pub struct CleanSet {
    data: Dataset,
    origin: String,
}

impl CleanSet {
    /// Default size: 5% of the training set, and at least 500 images.
    pub fn default_size(suspect: &Suspect) -> usize {
        (suspect.training_samples / 20).max(500)
    }

    /// All images of a user folder in the `labels.csv` format.
    pub fn from_folder(path: &std::path::Path, suspect: &Suspect) -> Result<Self> {
        let source = DataSource::Folder { path: path.to_path_buf() };
        let data = source.load(suspect.task, suspect.image_size(), Split::All)?;
        Self::checked(data, source.describe())
    }

    /// A fresh sample of the built-in task, drawn with a seed derived from (and different from)
    /// the training data's, so that it shares no image with the training set.
    /// Fashion-MNIST's defender draws from the test part, which training never reads.
    pub fn fresh_builtin(suspect: &Suspect, n: usize) -> Result<Self> {
        let (task, seed) = match &suspect.training_data {
            Some(DataSource::Synthetic { task, seed, .. }) => (task, seed),
            Some(DataSource::FashionMnist { path, .. }) => {
                let part = crate::data::fashion::Part::Test;
                let data = crate::data::fashion::load(path, part, Some(n), suspect.image_size())?.labelled_for(suspect.task)?;
                return Self::checked(data, format!("the first {n} Fashion-MNIST test images"));
            }
            _ => {
                return Err(Error::Data(
                    "the model was not trained on built-in data (a user folder, or imported): pass the defender's clean images with --data".into(),
                ));
            }
        };
        let seed = seed ^ DEFENDER_SEED_STREAM;
        let data = crate::data::synthesize(*task, n, suspect.image_size(), seed)?;
        Self::checked(data, format!("{n} fresh built-in {task} images (seed {seed})"))
    }

    /// A sample of the built-in `task` drawn from `seed`, shared by every suspect of the task
    /// that takes `image_size` images (a test bed scanning many models with one clean set, so
    /// that their reference models are trained once). `seed` must differ from every training
    /// seed's data stream.
    pub fn shared_builtin(task: crate::task::Task, n: usize, image_size: u32, seed: u64) -> Result<Self> {
        let data = crate::data::synthesize(task, n, image_size, seed)?;
        Self::checked(data, format!("{n} built-in {task} images shared by the test bed (seed {seed})"))
    }

    fn checked(data: Dataset, origin: String) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::Data(format!("the clean set {origin} is empty")));
        }
        Ok(CleanSet { data, origin })
    }

    /// Checks that the set fits `suspect` and holds at least one batch.
    pub fn check_for(&self, suspect: &Suspect, batch_size: usize) -> Result<()> {
        if self.data.image_size != suspect.image_size() || self.data.dim() != suspect.spec.outputs {
            return Err(Error::Data(format!(
                "the clean set has {}×{} images with {} outputs; the model takes {}×{} images and has {} outputs",
                self.data.image_size,
                self.data.image_size,
                self.data.dim(),
                suspect.image_size(),
                suspect.image_size(),
                suspect.spec.outputs
            )));
        }
        if self.len() < batch_size {
            return Err(Error::Data(format!(
                "the clean set has {} images, fewer than one batch of {batch_size}",
                self.len()
            )));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn describe(&self) -> &str {
        &self.origin
    }

    pub fn data(&self) -> &Dataset {
        &self.data
    }

    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<2>) {
        self.data.batch(indices, device)
    }

    /// The mean of `model`'s outputs over the set (where the free target vectors of Neural
    /// Cleanse and FeatureRE start).
    pub fn mean_output(&self, model: &Model, batch_size: usize) -> Result<Vec<f32>> {
        let outputs = crate::models::inference::predict(model, &self.data, batch_size)?;
        Ok(crate::metrics::column_means(&outputs, self.data.dim()))
    }
}

/// The verdict of a detector, with the numbers behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Detection {
    pub defense: String,
    pub backdoored: bool,
    /// The defense's statistic (DRMGuard: I(f); Neural Cleanse: the mask's L1 norm; …).
    pub score: f64,
    pub threshold: f64,
    /// How far the score is from the threshold, signed so that positive means "looks benign".
    pub margin: f64,
    /// The score oriented so that larger means more suspicious (for ROC curves across defenses).
    pub suspicion: f64,
    pub elapsed_s: f64,
    /// Defense-specific results (estimated target, RAV, history, …), a JSON object.
    pub details: serde_json::Value,
    /// The scalar signals behind the verdict, by name (DRMGuard: I(f), its collapse ratios,
    /// RAV, the reference contrast), for tables that compare signals across models.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub signals: std::collections::BTreeMap<String, f64>,
}

impl Detection {
    /// A verdict from `score` and `threshold`; `low_is_backdoored` says which side is flagged.
    pub fn decide(defense: &str, score: f64, threshold: f64, low_is_backdoored: bool, elapsed_s: f64, details: serde_json::Value) -> Self {
        let (backdoored, margin, suspicion) = if low_is_backdoored {
            (score < threshold, score - threshold, -score)
        } else {
            (score >= threshold, threshold - score, score)
        };
        Detection { defense: defense.into(), backdoored, score, threshold, margin, suspicion, elapsed_s, details, signals: Default::default() }
    }

    /// Sets the named scalar signals behind the verdict.
    pub fn set_signals<'a>(&mut self, signals: impl IntoIterator<Item = (&'a str, f64)>) {
        self.signals = signals.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    }
}

/// Endless shuffled mini-batches of indices into a set of `n`: reshuffled (from a seeded
/// generator) whenever fewer than one batch remain.
#[derive(Debug)]
pub struct BatchCursor {
    order: Vec<usize>,
    cursor: usize,
    batch_size: usize,
    rng: ChaCha8Rng,
}

impl BatchCursor {
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        BatchCursor { order: (0..n).collect(), cursor: n, batch_size: batch_size.min(n), rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn next_batch(&mut self) -> &[usize] {
        if self.cursor + self.batch_size > self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.cursor = 0;
        }
        self.cursor += self.batch_size;
        &self.order[self.cursor - self.batch_size..self.cursor]
    }
}


/// A tensor's values, row-major.
pub fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_to_vec::<f32>().map_err(|e| Error::Numerical(format!("{e:?}")))
}

/// A one-element tensor's value.
pub fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// The penultimate features F(x) of every clean image, `[n, k]`, on the model's device.
pub fn clean_features(model: &Model, clean: &CleanSet, batch_size: usize) -> Result<Tensor<2>> {
    let device = model_device(model);
    let indices: Vec<usize> = (0..clean.len()).collect();
    let parts: Vec<Tensor<2>> = indices.chunks(batch_size.max(1)).map(|b| model.features(clean.batch(b, &device).0)).collect();
    if parts.is_empty() {
        return Err(Error::Data("the clean set is empty".into()));
    }
    Ok(Tensor::cat(parts, 0))
}

/// A picture a defense made of what it found, written beside its report.
#[derive(Debug, Clone)]
pub struct Figure {
    /// File name inside the report folder, e.g. `reversed.png`.
    pub file: String,
    /// One sentence for the Markdown report: what the picture shows.
    pub caption: String,
    pub image: image::RgbImage,
}

/// Everything a detector reports: the verdict, its resolved config, and what people read.
#[derive(Debug, Clone)]
pub struct Finding {
    pub detection: Detection,
    /// The resolved configuration, written as `config.json` and into the report.
    pub config: serde_json::Value,
    pub seed: u64,
    /// One line saying how to read the score, e.g. "backdoored iff I(f) < ε".
    pub rule: String,
    /// Rows (name, value) of the Markdown report's table.
    pub rows: Vec<(String, String)>,
    pub figures: Vec<Figure>,
    /// The trigger the detector reversed, on the defense's device, where it reverses one that
    /// unlearning can use.
    pub trigger: Option<std::sync::Arc<dyn ReversedTrigger>>,
}

impl Finding {
    /// The detector's details, as a JSON object (empty if they are not one).
    pub fn details_object(&self) -> serde_json::Map<String, serde_json::Value> {
        self.detection.details.as_object().cloned().unwrap_or_default()
    }
}

/// A defense that decides whether a model is backdoored. It sees the suspect and the clean set
/// only.
pub trait Detector {
    fn name(&self) -> &'static str;
    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding>;
}

/// A repaired model and a JSON record of what the repair did (stored in its sidecar).
#[derive(Debug, Clone)]
pub struct Repair {
    pub model: Model,
    pub record: serde_json::Value,
}

/// A defense that removes a backdoor from a model, from the suspect and the clean set only.
pub trait Mitigator {
    fn name(&self) -> &'static str;
    fn mitigate(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Repair>;
}
