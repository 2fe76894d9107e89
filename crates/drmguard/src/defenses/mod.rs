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
pub mod drmguard;
pub mod feature_re;
pub mod fine_pruning;
pub mod fine_tuning;
pub mod generator;
pub mod neural_cleanse;
pub mod neuron_noise;
pub mod references;
pub mod trigger;
pub mod unlearn;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{DataSource, Dataset, Split};
use crate::error::{Error, Result};
use crate::model_file::ModelCard;
use crate::models::{Model, ModelSpec, Regressor};
use crate::task::Task;
pub use abs::{Abs, AbsConfig};
pub use agnostic::{Agnostic, AgnosticConfig};
pub use anp::{Anp, AnpConfig};
pub use drmguard::{DrmGuard, DrmGuardConfig, DrmGuardRepair};
pub use feature_re::{FeatureRe, FeatureReConfig};
pub use fine_pruning::{FinePruning, FinePruningConfig};
pub use fine_tuning::{FineTuning, FineTuningConfig};
pub use neural_cleanse::{NcUnlearning, NeuralCleanse, NeuralCleanseConfig};
pub use neuron_noise::{NeuronNoise, NeuronNoiseConfig};
pub use unlearn::UnlearnConfig;

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
    /// The suspect view of a loaded model: everything in the card except the attack.
    pub fn new(model: Model, card: &ModelCard) -> Self {
        Suspect {
            model,
            task: card.task,
            spec: card.model.clone(),
            output_names: card.output_names.clone(),
            training_data: card.training_data().cloned(),
            training_samples: card.trained.as_ref().map_or(0, |t| t.training.samples),
        }
    }

    /// A suspect built from its parts (tests, benchmarks, models from elsewhere). `training_data`
    /// and `training_samples` describe where the model was trained, for the default clean set.
    pub fn from_parts(model: Model, task: Task, spec: ModelSpec, training_data: DataSource, training_samples: usize) -> Self {
        Suspect {
            model,
            task,
            output_names: task.output_names().iter().map(|s| s.to_string()).collect(),
            spec,
            training_data: Some(training_data),
            training_samples,
        }
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
    pub fn fresh_builtin(suspect: &Suspect, n: usize) -> Result<Self> {
        let Some(DataSource::Synthetic { task, seed, .. }) = &suspect.training_data else {
            return Err(Error::Data(
                "the model was not trained on built-in data (a user folder, or imported): pass the defender's clean images with --data".into(),
            ));
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
        let outputs = crate::train::predict(model, &self.data, batch_size)?;
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

pub use crate::progress::progress_bar;

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
    let device = model.devices().into_iter().next().unwrap_or_default();
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

/// Detectors, for `drmguard scan --defense`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    /// DRMGuard: generator-based trigger reverse engineering with output-variance and
    /// feature-angle objectives.
    Drmguard,
    /// Neural Cleanse: mask, pattern and a free target vector; score = the mask's share of the image.
    Nc,
    /// FeatureRE: an input transform plus a feature-space mask towards a free target vector.
    Featurere,
    /// ABS: stimulate inner neurons, reverse-engineer triggers for the most elevating ones.
    Abs,
    /// Neuron noise: bounded adversarial noise on the BatchNorm channels that collapses the
    /// outputs on clean images; score = the spread ratio it reaches.
    Noise,
    /// Input-agnostic reversal: one mask and pattern that collapse the suspect but not the
    /// defender's reference models, kept smooth; score = the mask's share of the image.
    Agnostic,
}

/// Mitigators, for `drmguard mitigate --defense`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MitigatorKind {
    /// DRMGuard: reverse-engineer a trigger, then unlearn it (fine-tune on reversed images with
    /// true labels).
    Drmguard,
    /// Fine-tuning on the clean set (the reference).
    Ft,
    /// Fine-pruning: prune dormant last-layer channels, then fine-tune.
    Fp,
    /// Adversarial neuron pruning over every BatchNorm channel.
    Anp,
    /// Neural Cleanse unlearning with its reversed trigger.
    Nc,
}

/// The settings of every detector (flattened into `drmguard scan`'s options); `build` is the
/// registry from name to detector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct DetectorConfigs {
    #[command(flatten, next_help_heading = "DRMGuard (--defense drmguard)")]
    pub drmguard: DrmGuardConfig,
    #[command(flatten, next_help_heading = "Neural Cleanse (--defense nc)")]
    pub nc: NeuralCleanseConfig,
    #[command(flatten, next_help_heading = "FeatureRE (--defense featurere)")]
    pub featurere: FeatureReConfig,
    #[command(flatten, next_help_heading = "ABS (--defense abs)")]
    pub abs: AbsConfig,
    #[command(flatten, next_help_heading = "Neuron noise (--defense noise)")]
    #[serde(default)]
    pub noise: NeuronNoiseConfig,
    #[command(flatten, next_help_heading = "Input-agnostic reversal (--defense agnostic)")]
    #[serde(default)]
    pub agnostic: AgnosticConfig,
}

impl DetectorConfigs {
    pub fn build(&self, kind: DetectorKind) -> Box<dyn Detector> {
        match kind {
            DetectorKind::Drmguard => Box::new(DrmGuard::new(self.drmguard.clone())),
            DetectorKind::Nc => Box::new(NeuralCleanse { config: self.nc.clone() }),
            DetectorKind::Featurere => Box::new(FeatureRe { config: self.featurere.clone() }),
            DetectorKind::Abs => Box::new(Abs { config: self.abs.clone() }),
            DetectorKind::Noise => Box::new(NeuronNoise { config: self.noise.clone() }),
            DetectorKind::Agnostic => Box::new(Agnostic { config: self.agnostic.clone() }),
        }
    }

    /// The settings detector `kind` reads, and only those (e.g. for cache keys).
    pub fn settings_of(&self, kind: DetectorKind) -> serde_json::Value {
        match kind {
            DetectorKind::Drmguard => serde_json::json!(self.drmguard),
            DetectorKind::Nc => serde_json::json!(self.nc),
            DetectorKind::Featurere => serde_json::json!(self.featurere),
            DetectorKind::Abs => serde_json::json!(self.abs),
            DetectorKind::Noise => serde_json::json!(self.noise),
            DetectorKind::Agnostic => serde_json::json!(self.agnostic),
        }
    }
}

/// The settings of every mitigator (flattened into `drmguard mitigate`'s options); `build` is the
/// registry from name to mitigator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct MitigatorConfigs {
    #[command(flatten, next_help_heading = "DRMGuard (--defense drmguard)")]
    pub drmguard: DrmGuardConfig,
    #[command(flatten, next_help_heading = "Unlearning (--defense drmguard, nc)")]
    pub unlearn: UnlearnConfig,
    #[command(flatten, next_help_heading = "Fine-tuning (--defense ft, fp)")]
    pub ft: FineTuningConfig,
    #[command(flatten, next_help_heading = "Fine-pruning (--defense fp)")]
    pub fp: FinePruningConfig,
    #[command(flatten, next_help_heading = "ANP (--defense anp)")]
    pub anp: AnpConfig,
    #[command(flatten, next_help_heading = "Neural Cleanse (--defense nc)")]
    pub nc: NeuralCleanseConfig,
}

impl MitigatorConfigs {
    /// Refuses the settings mitigator `kind` reads where no run could use them, so that a bad
    /// value stops a run before its reverse engineering or pruning spends time.
    pub fn validate(&self, kind: MitigatorKind) -> Result<()> {
        match kind {
            MitigatorKind::Drmguard => self.unlearn.validate(),
            MitigatorKind::Nc => {
                self.nc.validate()?;
                self.unlearn.validate()
            }
            MitigatorKind::Anp => self.anp.validate(),
            MitigatorKind::Ft | MitigatorKind::Fp => Ok(()),
        }
    }

    pub fn build(&self, kind: MitigatorKind) -> Box<dyn Mitigator> {
        match kind {
            MitigatorKind::Drmguard => Box::new(DrmGuardRepair { drmguard: self.drmguard.clone(), unlearn: self.unlearn.clone() }),
            MitigatorKind::Ft => Box::new(FineTuning { config: self.ft.clone() }),
            MitigatorKind::Fp => Box::new(FinePruning { config: self.fp.clone(), fine_tuning: self.ft.clone() }),
            MitigatorKind::Anp => Box::new(Anp { config: self.anp.clone() }),
            MitigatorKind::Nc => Box::new(NcUnlearning { nc: self.nc.clone(), unlearn: self.unlearn.clone() }),
        }
    }

    /// The settings mitigator `kind` reads, and only those (e.g. for cache keys).
    pub fn settings_of(&self, kind: MitigatorKind) -> serde_json::Value {
        match kind {
            MitigatorKind::Drmguard => serde_json::json!([self.drmguard, self.unlearn]),
            MitigatorKind::Ft => serde_json::json!(self.ft),
            MitigatorKind::Fp => serde_json::json!([self.fp, self.ft]),
            MitigatorKind::Anp => serde_json::json!(self.anp),
            MitigatorKind::Nc => serde_json::json!([self.nc, self.unlearn]),
        }
    }
}

macro_rules! kebab_display {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = clap::ValueEnum::to_possible_value(self).expect("no skipped variants");
                f.write_str(v.get_name())
            }
        }
    )*};
}
kebab_display!(DetectorKind, MitigatorKind);

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{DetectorConfigs, MitigatorConfigs};

    #[derive(Parser)]
    struct Detectors {
        #[command(flatten)]
        configs: DetectorConfigs,
    }

    #[derive(Parser)]
    struct Mitigators {
        #[command(flatten)]
        configs: MitigatorConfigs,
    }

    /// Every default is written twice, in clap's attributes and in `Default`: the command line
    /// and the library (the bench, the demo) must read the same settings.
    #[test]
    fn no_flags_parse_to_every_configs_default() {
        assert_eq!(Detectors::parse_from(["scan"]).configs, DetectorConfigs::default());
        assert_eq!(Mitigators::parse_from(["mitigate"]).configs, MitigatorConfigs::default());
    }
}
