//! Mitigation by unlearning (method.md §6): fine-tune the model on the clean set plus reversed
//! copies of a random share of it (DRMGuard's G(x), or Neural Cleanse's stamped images), each
//! reversed image keeping its true label, so that the reversed trigger stops moving the outputs.

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{CleanSet, Finding, Repair, Suspect};
use crate::data::{Dataset, to_images};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::task::Task;
use crate::train::{FineTuneConfig, fine_tune};

/// Unlearning settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct UnlearnConfig {
    /// Unlearning: share of the clean set added again as reversed images with true labels
    /// [default: 0.5 for DRMGuard, 0.2 (BackdoorBench's) for Neural Cleanse].
    #[arg(id = "unlearn_reversed_ratio", long = "unlearn-ratio")]
    pub reversed_ratio: Option<f64>,
    /// Unlearning: fine-tuning epochs over the clean plus reversed images.
    #[arg(id = "unlearn_epochs", long = "unlearn-epochs", default_value_t = 20)]
    pub epochs: usize,
    /// Unlearning: peak Adam learning rate (cosine-decayed) [default: 1e-4; 2e-4 on a
    /// classifier].
    #[arg(id = "unlearn_learning_rate", long = "unlearn-lr")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Unlearning: batch size.
    #[arg(id = "unlearn_batch_size", long = "unlearn-batch-size", default_value_t = 50)]
    pub batch_size: usize,
}

impl Default for UnlearnConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

/// DRMGuard's default share of reversed images: on the 64×64 head-pose WaNet model 0.2 cut DAE by
/// 64% and 0.5 by 72%, on gaze's 82% and 84%, at no cost in clean error (docs/drmguard.md).
pub const DRMGUARD_UNLEARN_RATIO: f64 = 0.5;
/// Neural Cleanse's: BackdoorBench stamps 20% of the clean set with the reversed trigger.
pub const NC_UNLEARN_RATIO: f64 = 0.2;
/// The learning rate of unlearning a regression model's trigger.
pub const UNLEARN_LR: f64 = 1e-4;
/// A classifier's: with the class blend beside the mask and the warp, on the Fashion-MNIST test
/// bed's Blended models 0 and 3, 1e-4 left 8.8% and 18.9% ASR, 2e-4 6.2% and 4.0%, and 3e-4
/// (model 3) 3.3% for 2.6 points of accuracy instead of 1.8 (docs/classifiers.md).
pub const CLASSIFIER_UNLEARN_LR: f64 = 2e-4;

/// The learning rate of unlearning on a `task` model, where the user chose none.
pub(crate) fn default_learning_rate(task: Task) -> f64 {
    if task.is_classification() { CLASSIFIER_UNLEARN_LR } else { UNLEARN_LR }
}

impl UnlearnConfig {
    /// Refuses settings no unlearning run could use, before any reverse engineering spends time.
    pub fn validate(&self) -> Result<()> {
        if let Some(ratio) = self.reversed_ratio
            && !(ratio > 0.0 && ratio <= 1.0)
        {
            return Err(Error::invalid("unlearning ratio", format!("{ratio} (must be in (0, 1])")));
        }
        self.fine_tune_config(UNLEARN_LR, 0).validate()
    }

    /// The fine-tuning run this unlearning makes, at `default_lr` unless the user chose a rate.
    fn fine_tune_config(&self, default_lr: f64, seed: u64) -> FineTuneConfig {
        FineTuneConfig { epochs: self.epochs, batch_size: self.batch_size, learning_rate: self.learning_rate.unwrap_or(default_lr), seed }
    }

    /// This config for a `task` model, with the share of reversed images and the learning rate
    /// filled in where the user left them open.
    pub fn resolved(&self, task: Task, ratio: f64) -> UnlearnConfig {
        UnlearnConfig { reversed_ratio: Some(self.reversed_ratio.unwrap_or(ratio)), learning_rate: Some(self.learning_rate.unwrap_or(default_learning_rate(task))), ..self.clone() }
    }
}

/// What the unlearning run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlearnSummary {
    pub clean_images: usize,
    pub reversed_images: usize,
    pub epoch_losses: Vec<f64>,
}

/// Fine-tunes the suspect on the clean set plus reversed images made by `reverse` (a batch of
/// clean images on `device` to their reversed versions).
pub fn unlearn(
    suspect: &Suspect,
    clean: &CleanSet,
    reverse: &dyn Fn(Tensor<4>) -> Tensor<4>,
    config: &UnlearnConfig,
    seed: u64,
    device: &Device,
) -> Result<(Model, UnlearnSummary)> {
    config.validate()?;
    let ratio = config.reversed_ratio.ok_or_else(|| Error::invalid("unlearning ratio", "not set"))?;
    clean.check_for(suspect, config.batch_size)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x756e_6c65_6172_6e00);
    let mut picked: Vec<usize> = (0..clean.len()).collect();
    picked.shuffle(&mut rng);
    picked.truncate(((clean.len() as f64 * ratio).round() as usize).max(1));
    picked.sort_unstable();

    let mut set: Dataset = clean.data().clone();
    for chunk in picked.chunks(64) {
        let (x, _) = clean.batch(chunk, device);
        for (&i, img) in chunk.iter().zip(to_images(reverse(x))?) {
            set.names.push(format!("reversed-{}", clean.data().names[i]));
            set.images.push(img);
            set.labels.extend_from_slice(clean.data().label(i));
        }
    }
    let fine_tuning = config.fine_tune_config(default_learning_rate(suspect.task), seed);
    let (model, epoch_losses) = fine_tune(&suspect.model, suspect.task, &set, &fine_tuning, device)?;
    Ok((model, UnlearnSummary { clean_images: clean.len(), reversed_images: picked.len(), epoch_losses }))
}

/// Repairs the suspect by unlearning the trigger a scan reversed (`finding.trigger`), without
/// searching again: the repair of a scan that has just flagged the model. The record names the
/// scan's detector, score and settings.
pub fn repair_finding(finding: &Finding, suspect: &Suspect, clean: &CleanSet, config: &UnlearnConfig, device: &Device) -> Result<Repair> {
    let d = &finding.detection;
    let trigger = finding
        .trigger
        .as_ref()
        .ok_or_else(|| Error::invalid("repair", format!("the {} scan reverses no trigger that unlearning could use", d.defense)))?;
    let config = config.resolved(suspect.task, trigger.unlearn_ratio());
    let (model, summary) = unlearn(suspect, clean, &|x| trigger.apply(x), &config, finding.seed, device)?;
    let record = serde_json::json!({
        "defense": d.defense,
        "detection": { "backdoored": d.backdoored, "score": d.score, "threshold": d.threshold, "signals": d.signals },
        "detector_config": finding.config,
        "unlearn_config": config,
        "unlearn": summary,
        "seed": finding.seed,
    });
    Ok(Repair { model, record })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fill_only_what_the_user_left_open() {
        let open = UnlearnConfig::default();
        let gaze = open.resolved(Task::Gaze, DRMGUARD_UNLEARN_RATIO);
        assert_eq!((gaze.reversed_ratio, gaze.learning_rate), (Some(0.5), Some(UNLEARN_LR)));
        let fashion = open.resolved(Task::FASHION, NC_UNLEARN_RATIO);
        assert_eq!((fashion.reversed_ratio, fashion.learning_rate), (Some(0.2), Some(CLASSIFIER_UNLEARN_LR)));
        let chosen = UnlearnConfig { reversed_ratio: Some(0.3), learning_rate: Some(5e-5), ..open };
        assert_eq!(chosen.resolved(Task::FASHION, DRMGUARD_UNLEARN_RATIO), chosen);
    }

    #[test]
    fn settings_no_run_could_use_are_refused() {
        assert!(UnlearnConfig::default().validate().is_ok());
        for bad in [
            UnlearnConfig { reversed_ratio: Some(0.0), ..Default::default() },
            UnlearnConfig { reversed_ratio: Some(1.5), ..Default::default() },
            UnlearnConfig { reversed_ratio: Some(f64::NAN), ..Default::default() },
            UnlearnConfig { epochs: 0, ..Default::default() },
            UnlearnConfig { batch_size: 1, ..Default::default() },
            UnlearnConfig { learning_rate: Some(-1e-4), ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
    }
}
