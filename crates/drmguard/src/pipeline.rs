//! A whole training run as one value: config, data source and optional backdoor in, model and
//! card out. Shared by `drmguard train`, `drmguard demo` and the benchmark, which caches
//! trained models by the job's hash.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use crate::attacks::BackdoorSpec;
use crate::data::{DataSource, Split};
use crate::error::Result;
use crate::io::cache_root;
use crate::model_file::{self, CARD_FORMAT_VERSION, ModelCard, TrainingRecord};
use crate::models::Model;
use crate::train::{Poisoner, TrainConfig, train};

/// Everything that determines a trained model.
#[derive(Debug, Clone, Serialize)]
pub struct TrainJob {
    pub config: TrainConfig,
    pub source: DataSource,
    pub backdoor: Option<BackdoorSpec>,
}

impl TrainJob {
    /// A job on the built-in data of `config.task` ([`DataSource::builtin`]), drawn with the
    /// config's seed and sizes.
    pub fn builtin(config: TrainConfig, backdoor: Option<BackdoorSpec>) -> Result<Self> {
        let source = DataSource::builtin(config.task, config.samples, config.seed, config.image_size)?;
        Ok(TrainJob { config, source, backdoor })
    }

    /// A short hash of the job and the drmguard version: equal jobs give equal models, so a cache
    /// can be keyed by it.
    pub fn key(&self) -> String {
        crate::io::short_hash(&(self, env!("CARGO_PKG_VERSION")))
    }

    /// Loads the data, trains, and returns the model with its sidecar.
    pub fn run(&self, device: &Device) -> Result<(Model, ModelCard)> {
        let config = &self.config;
        config.validate()?;
        if let Some(spec) = &self.backdoor {
            spec.validate(config.task)?;
        }
        let started = Instant::now();
        tracing::info!("loading {}", self.source.describe());
        let train_set = self.source.load(config.task, config.image_size, Split::Train)?;
        let val_set = self.source.load(config.task, config.image_size, Split::Val)?;
        tracing::info!(
            train = train_set.len(),
            val = val_set.len(),
            seconds = started.elapsed().as_secs_f64(),
            "data ready"
        );
        // The data as drawn, before any attack's preparation.
        let data_hash = train_set.content_hash();
        let (train_set, plan) = match &self.backdoor {
            Some(spec) => {
                let plan = spec.plan(config.task, config.image_size, &train_set)?;
                tracing::info!(
                    attack = spec.attack.name(),
                    target = ?spec.target,
                    poisoned = plan.poisoned.len(),
                    cross = plan.cross.len(),
                    "poisoning the training set"
                );
                let surrogate = if spec.attack.needs_surrogate() {
                    tracing::info!("training (or reusing) the benign surrogate model the attack perturbs against");
                    let benign = TrainJob { backdoor: None, ..self.clone() };
                    let dir = cache_root().join("models");
                    Some(benign.run_cached(&dir, &format!("{}-benign", config.task), device)?.0)
                } else {
                    None
                };
                let train_set = spec.prepare_training_set(config.task, &plan, train_set, surrogate.as_ref(), device)?;
                (train_set, Some(plan))
            }
            None => (train_set, None),
        };
        let (model, history) = train(config, &train_set, &val_set, plan.as_ref().map(|b| b as &dyn Poisoner), device)?;
        let card = ModelCard {
            format_version: CARD_FORMAT_VERSION,
            drmguard_version: env!("CARGO_PKG_VERSION").into(),
            task: config.task,
            output_names: config.task.output_names(),
            output_units: config.task.label_units().into(),
            model: config.model_spec(),
            trained: Some(TrainingRecord {
                training: config.clone(),
                data: self.source.clone(),
                data_hash,
                label_mean: train_set.label_mean(),
                history,
                train_seconds: started.elapsed().as_secs_f64(),
            }),
            imported: None,
            backdoor: self.backdoor.clone(),
            mitigation: None,
        };
        Ok((model, card))
    }

    /// The model `run_cached` would reuse, if the cache holds a readable one; nothing is trained.
    pub fn find_cached(&self, cache_dir: &Path, name: &str, device: &Device) -> Option<(Model, ModelCard, PathBuf)> {
        let path = self.cached_path(cache_dir, name);
        if !path.is_file() {
            return None;
        }
        match model_file::load(&path, device) {
            Ok((model, card)) => {
                tracing::info!(path = %path.display(), "reusing a cached model");
                Some((model, card, path))
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "the cached model cannot be read ({e})");
                None
            }
        }
    }

    fn cached_path(&self, cache_dir: &Path, name: &str) -> PathBuf {
        cache_dir.join(format!("{name}-{}.safetensors", self.key()))
    }

    /// The model of this job from `cache_dir` (`NAME-KEY.safetensors`), trained and stored
    /// there first if it is missing or unreadable. Returns the weights' path too.
    pub fn run_cached(&self, cache_dir: &Path, name: &str, device: &Device) -> Result<(Model, ModelCard, PathBuf)> {
        if let Some(found) = self.find_cached(cache_dir, name, device) {
            return Ok(found);
        }
        let path = self.cached_path(cache_dir, name);
        std::fs::create_dir_all(cache_dir)
            .map_err(|cause| crate::Error::Write { path: cache_dir.to_path_buf(), cause })?;
        let (model, card) = self.run(device)?;
        model_file::save(&path, &model, &card)?;
        Ok((model, card, path))
    }
}

