//! What training needs from an attacker who poisons its batches. Attacks implement it, so
//! training runs a poisoned schedule without knowing any attack.

use burn::tensor::{Device, Tensor};
use rand::RngCore;

use crate::data::Dataset;
use crate::models::Model;

/// A training batch with its rows in the order clean, poisoned, cross.
#[derive(Debug, Clone)]
pub struct PoisonedBatch {
    pub images: Tensor<4>,
    pub labels: Tensor<2>,
    /// Rows `0..clean` are clean samples.
    pub clean: usize,
    /// Rows `clean..clean + poisoned` carry the trigger; the rest are cross samples.
    pub poisoned: usize,
}

/// A poisoner of training batches.
pub trait Poisoner {
    /// The batch `indices` of `data` as the attacker poisoned it.
    fn training_batch(&self, data: &Dataset, indices: &[usize], rng: &mut dyn RngCore, device: &Device) -> PoisonedBatch;

    /// A term added to the training loss from `model` and the batch's penultimate features
    /// `[n, k]` (rows as in [`PoisonedBatch`]), for attacks that shape the features; `None` adds
    /// nothing.
    fn feature_penalty(&self, model: &Model, features: Tensor<2>, clean: usize, poisoned: usize) -> Option<Tensor<1>>;
}
