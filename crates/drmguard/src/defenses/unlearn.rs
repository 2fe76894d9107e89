//! Mitigation by unlearning (method.md §6): fine-tune the model on the clean set plus reversed
//! copies of a random share of it (DRMGuard's G(x), or Neural Cleanse's stamped images), each
//! reversed image keeping its true label, so that the reversed trigger stops moving the outputs.

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{CleanSet, Suspect};
use crate::data::{Dataset, to_images};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::train::{FineTuneConfig, fine_tune};

/// Unlearning settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct UnlearnConfig {
    /// Unlearning: share of the clean set added again as reversed images G(x) with true labels.
    #[arg(id = "unlearn_reversed_ratio", long = "unlearn-ratio", default_value_t = 0.2)]
    pub reversed_ratio: f64,
    /// Unlearning: fine-tuning epochs over the clean plus reversed images.
    #[arg(id = "unlearn_epochs", long = "unlearn-epochs", default_value_t = 20)]
    pub epochs: usize,
    /// Unlearning: peak Adam learning rate (cosine-decayed).
    #[arg(id = "unlearn_learning_rate", long = "unlearn-lr", default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// Unlearning: batch size.
    #[arg(id = "unlearn_batch_size", long = "unlearn-batch-size", default_value_t = 50)]
    pub batch_size: usize,
}

impl Default for UnlearnConfig {
    fn default() -> Self {
        UnlearnConfig { reversed_ratio: 0.2, epochs: 20, learning_rate: 1e-4, batch_size: 50 }
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
    if !(config.reversed_ratio > 0.0 && config.reversed_ratio <= 1.0) {
        return Err(Error::invalid("unlearning ratio", format!("{} (must be in (0, 1])", config.reversed_ratio)));
    }
    clean.check_for(suspect, config.batch_size)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x756e_6c65_6172_6e00);
    let mut picked: Vec<usize> = (0..clean.len()).collect();
    picked.shuffle(&mut rng);
    picked.truncate(((clean.len() as f64 * config.reversed_ratio).round() as usize).max(1));
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
    let fine = FineTuneConfig { epochs: config.epochs, batch_size: config.batch_size, learning_rate: config.learning_rate, seed };
    let (model, epoch_losses) = fine_tune(&suspect.model, &set, &fine, device)?;
    Ok((model, UnlearnSummary { clean_images: clean.len(), reversed_images: picked.len(), epoch_losses }))
}
