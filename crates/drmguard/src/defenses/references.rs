//! Benign reference models that the defender trains itself, from its clean set alone.
//!
//! A small edit that collapses a model's outputs is not by itself a trigger: a gaze model's
//! eyes are such an edit in every gaze model, benign or not. A reference model of the same
//! task, trained by the defender, tells the two apart: a natural feature of the task moves the
//! references too, a trigger moves only the suspect. DRMGuard uses them in its objective
//! ("collapse the suspect, not the references") and in its score (the suspect's collapse over
//! the references').
//!
//! References see only the [`CleanSet`]: 80% of it trains them, the rest measures them. For a
//! task and clean set they are trained once and cached (`references/` under drmguard's cache).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{CleanSet, Suspect, values};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::{cache_entry_lock, read_json, short_hash, write_json};
use crate::metrics::{column_mean_var, constant_predictor_error};
use crate::models::cache::{load_cached, save_cached};
use crate::models::{Architecture, Model, Regressor};
use crate::train::{Profile, TrainConfig, train};
use crate::io::cache_root;
use crate::models::inference::{evaluate, model_device};

/// ResNet-18 width of a reference model.
pub const DEFAULT_REFERENCE_WIDTH: usize = 16;
/// Epochs over the reference's share of the clean set.
pub const DEFAULT_REFERENCE_EPOCHS: usize = 40;
/// Images per training step.
pub const DEFAULT_REFERENCE_BATCH_SIZE: usize = 32;
/// Peak Adam learning rate (cosine schedule to 1% of it).
pub const DEFAULT_REFERENCE_LR: f64 = 2e-3;

/// How the defender trains its reference models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceConfig {
    /// Reference models, each from its own seed.
    pub count: usize,
    /// ResNet-18 width.
    pub width: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
}

impl ReferenceConfig {
    pub fn new(count: usize) -> Self {
        ReferenceConfig {
            count,
            width: DEFAULT_REFERENCE_WIDTH,
            epochs: DEFAULT_REFERENCE_EPOCHS,
            batch_size: DEFAULT_REFERENCE_BATCH_SIZE,
            lr: DEFAULT_REFERENCE_LR,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=16).contains(&self.count) {
            return Err(Error::invalid("reference models", format!("{} (must be within 1..=16)", self.count)));
        }
        if !(1..=256).contains(&self.width) || self.epochs == 0 || self.batch_size < 2 {
            return Err(Error::invalid(
                "reference training",
                format!("width {}, {} epochs, batch {} (width within 1..=256, at least 1 epoch, batch ≥ 2)", self.width, self.epochs, self.batch_size),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("reference learning rate", self.lr.to_string()));
        }
        Ok(())
    }
}

/// One reference model as trained: how well it learned, on the clean images it did not see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    pub seed: u64,
    /// Error on the held-out fifth of the clean set, in the task's unit.
    pub heldout_error_deg: f64,
    /// The mean predictor's error there: a reference far from it learned little.
    pub heldout_mean_predictor_deg: f64,
    pub train_seconds: f64,
}

/// The defender's reference models for one suspect's task and clean set.
#[derive(Debug)]
pub struct References {
    pub models: Vec<Model>,
    pub records: Vec<ReferenceRecord>,
}

/// Stream mixed into a defense's seed to seed its reference models: every defense that uses
/// references on one clean set with one seed shares them (and their cache).
const REFERENCE_SEED_STREAM: u64 = 0x7265_6665_7265_6e63;

/// The first reference's seed for a defense run with `seed`.
pub fn reference_seed(seed: u64) -> u64 {
    seed ^ REFERENCE_SEED_STREAM
}

/// The contrast of an edit: the suspect's spread ratio under it, the references' and the
/// suspect's over the references' mean (far below 1: the edit collapses the suspect alone).
pub fn contrast_of(suspect: &Model, references: &References, clean: &CleanSet, edit: &dyn Fn(Tensor<4>) -> Tensor<4>, batch_size: usize) -> Result<(f64, Vec<f64>, f64)> {
    let own = spread_ratios(std::slice::from_ref(suspect), clean, edit, batch_size)?[0];
    let theirs = spread_ratios(&references.models, clean, edit, batch_size)?;
    let mean = theirs.iter().sum::<f64>() / theirs.len().max(1) as f64;
    Ok((own, theirs, own / mean.max(1e-9)))
}

/// Which clean images train the references: four in five, the fifth measures them.
fn is_heldout(i: usize) -> bool {
    i % 5 == 4
}

/// The held-out fifth of a clean set, on which the references are measured: where a suspect is
/// measured to compare with them.
pub fn heldout_part(data: &Dataset) -> Dataset {
    let heldout: Vec<usize> = (0..data.len()).filter(|&i| is_heldout(i)).collect();
    data.subset(&heldout)
}

impl References {
    /// The geometric mean of the references' errors on the held-out fifth of the clean set.
    pub fn heldout_error_deg(&self) -> f64 {
        let logs: Vec<f64> = self.records.iter().map(|r| r.heldout_error_deg.max(1e-9).ln()).collect();
        (logs.iter().sum::<f64>() / logs.len().max(1) as f64).exp()
    }

    /// What the references of `suspect`'s task on `clean` are cached under (with their seed):
    /// the settings, the task, the image size and the clean set's content.
    pub fn cache_key(suspect: &Suspect, clean: &CleanSet, config: &ReferenceConfig) -> String {
        short_hash(&(config, suspect.task, suspect.image_size(), clean.data().content_hash()))
    }

    /// The folder of every cached reference model, and of what is measured on them once.
    pub fn cache_dir() -> std::path::PathBuf {
        cache_root().join("references")
    }

    /// The references of `suspect`'s task trained on `clean`, from the cache when it holds them.
    pub fn get(suspect: &Suspect, clean: &CleanSet, config: &ReferenceConfig, seed: u64, device: &Device) -> Result<References> {
        config.validate()?;
        let data = clean.data();
        let (fit, heldout): (Vec<usize>, Vec<usize>) = (0..data.len()).partition(|&i| !is_heldout(i));
        if fit.len() < config.batch_size || heldout.is_empty() {
            return Err(Error::Data(format!(
                "the clean set has {} images: reference models need at least {} (one batch of {} to train on, and a fifth held out)",
                data.len(),
                config.batch_size * 5 / 4 + 1,
                config.batch_size
            )));
        }
        let (fit, heldout) = (data.subset(&fit), data.subset(&heldout));
        let train_config = TrainConfig {
            architecture: Architecture::Resnet18 { width: config.width },
            image_size: suspect.image_size(),
            samples: fit.len(),
            epochs: config.epochs,
            batch_size: config.batch_size,
            learning_rate: config.lr,
            min_learning_rate: config.lr * 0.01,
            ..TrainConfig::new(suspect.task, Profile::Small, seed)
        };
        let key = Self::cache_key(suspect, clean, config);
        let dir = Self::cache_dir();
        let (mut models, mut records) = (Vec::new(), Vec::new());
        for k in 0..config.count as u64 {
            let seed = seed.wrapping_add(k);
            let path = dir.join(format!("{}-{key}-{seed}.safetensors", suspect.task));
            let record_path = path.with_extension("json");
            let entry = cache_entry_lock(&path);
            let _computing = entry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let spec = TrainConfig { seed, ..train_config.clone() }.model_spec();
            let cached = match read_json::<ReferenceRecord>(&record_path) {
                Ok(record) if path.is_file() => {
                    let empty = spec.init(device, seed)?;
                    load_cached(&path, "reference model", || empty).map(|m| (m, record))
                }
                _ => None,
            };
            let (model, record) = match cached {
                Some(found) => found,
                None => {
                    let started = Instant::now();
                    let config = TrainConfig { seed, ..train_config.clone() };
                    tracing::info!(seed, images = fit.len(), epochs = config.epochs, "training a reference model from the clean set");
                    let (model, _) = train(&config, &fit, &heldout, None, device)?;
                    let error = evaluate(&model, suspect.task, &heldout, config.batch_size)?;
                    let baseline = constant_predictor_error(suspect.task, &fit.label_mean(), &heldout.labels);
                    let record = ReferenceRecord {
                        seed,
                        heldout_error_deg: error.mean_deg,
                        heldout_mean_predictor_deg: baseline.mean_deg,
                        train_seconds: started.elapsed().as_secs_f64(),
                    };
                    save_cached(&model, &path)?;
                    write_json(&record_path, &record)?;
                    (model, record)
                }
            };
            tracing::info!(seed, error = record.heldout_error_deg, mean_predictor = record.heldout_mean_predictor_deg, "reference model ready");
            models.push(model);
            records.push(record);
        }
        Ok(References { models, records })
    }
}

/// The references on the autodiff device, frozen: gradients reach the images, not the weights.
pub fn frozen_on(references: &References, device: &Device) -> Vec<Model> {
    references.models.iter().map(|m| m.clone().fork(device).freeze()).collect()
}

/// The contrast penalty of one batch: for each reference, how far the spread of its outputs on
/// the reversed images `reversed` fell below `floor` times their spread on the clean images `x`
/// (mean over outputs), averaged over the references. Zero while every reference keeps at least
/// `floor` of its spread; only the reversed images carry a gradient.
pub fn contrast_penalty(references: &[Model], x: Tensor<4>, reversed: Tensor<4>, floor: f64) -> Tensor<1> {
    let n = references.len().max(1) as f64;
    let mut total: Option<Tensor<1>> = None;
    for model in references {
        let clean_std = model.forward(x.clone()).detach().var_bias(0).sqrt() + 1e-6;
        let std = (model.forward(reversed.clone()).var_bias(0) + 1e-12).sqrt();
        let ratio = (std / clean_std).mean();
        let shortfall = (ratio.neg() + floor).clamp_min(0.0);
        total = Some(match total {
            Some(t) => t + shortfall,
            None => shortfall,
        });
    }
    total.map_or_else(|| Tensor::<1>::zeros([1], &x.device()), |t| t / n)
}

/// Each model's spread ratio on the whole clean set: the standard deviation of its outputs on
/// `transform(x)` over that on `x`, mean over the outputs (1: the edit leaves the model as it
/// was, 0: it pins every image to one output).
pub fn spread_ratios(models: &[Model], clean: &CleanSet, transform: &dyn Fn(Tensor<4>) -> Tensor<4>, batch_size: usize) -> Result<Vec<f64>> {
    let indices: Vec<usize> = (0..clean.len()).collect();
    let mut ratios = Vec::with_capacity(models.len());
    for model in models {
        let device = model_device(model);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for batch in indices.chunks(batch_size.max(1)) {
            let (x, _) = clean.batch(batch, &device);
            before.extend(values(model.forward(x.clone()))?);
            after.extend(values(model.forward(transform(x)))?);
        }
        let d = model.head_weight().dims()[0];
        let ((_, var_before), (_, var_after)) = (column_mean_var(&before, d), column_mean_var(&after, d));
        let ratio = var_after.iter().zip(&var_before).map(|(a, b)| a.sqrt() / b.sqrt().max(1e-9)).sum::<f64>() / d.max(1) as f64;
        ratios.push(ratio);
    }
    Ok(ratios)
}
