//! Fine-pruning (Liu et al., RAID 2018; method.md §9.3): rank the channels of the last
//! convolutional layer by their mean activation on the clean set, prune the most dormant ones
//! while the clean error stays within a tolerance, then fine-tune with the pruned channels held
//! at zero.
//!
//! As in BackdoorBench, a channel is pruned by masking it where it enters the next linear layer:
//! the head's weights on that pooled feature are zeroed. (In a ResNet, zeroing the last conv's
//! output channel alone would not silence it: the shortcut adds to it.) The pruned model is an
//! ordinary model, saved like any other.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::fine_tuning::FineTuningConfig;
use super::{CleanSet, Mitigator, Repair, Suspect, clean_features, values};
use crate::error::{Error, Result};
use crate::metrics::task_error;
use crate::models::{Model, Regressor};
use crate::train::fine_tune_constrained;

/// Fine-pruning settings (defaults of BackdoorBench's `fp` config, the error criterion adapted
/// to regression).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct FinePruningConfig {
    /// Fine-pruning: share of the channels pruned at each step.
    #[arg(id = "fp_step", long = "fp-step", default_value_t = 0.01)]
    pub step: f64,
    /// Fine-pruning: stop before the clean error rises by more than this share of its value
    /// (BackdoorBench stops at a 10% accuracy drop).
    #[arg(id = "fp_max_error_rise", long = "fp-max-error-rise", default_value_t = 0.1)]
    pub max_error_rise: f64,
}

impl Default for FinePruningConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

/// The fine-pruning mitigator: prune, then fine-tune with the fine-tuning baseline's settings.
#[derive(Debug, Clone)]
pub struct FinePruning {
    pub config: FinePruningConfig,
    pub fine_tuning: FineTuningConfig,
}

/// What pruning decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruningPlan {
    /// Channel indices from most to least dormant (ascending mean activation).
    pub order: Vec<usize>,
    pub mean_activation: Vec<f64>,
    /// How many of `order` are pruned.
    pub pruned: usize,
    pub clean_error_before_deg: f64,
    pub clean_error_pruned_deg: f64,
    /// (channels pruned, clean error) at every step tried.
    pub curve: Vec<(usize, f64)>,
}

impl PruningPlan {
    /// 1 for kept channels, 0 for pruned ones.
    pub fn keep_mask(&self) -> Vec<f32> {
        let mut keep = vec![1.0; self.order.len()];
        for &c in &self.order[..self.pruned] {
            keep[c] = 0.0;
        }
        keep
    }
}

impl FinePruning {
    /// Ranks the channels and chooses how many to prune, from the clean set alone.
    pub fn plan(&self, suspect: &Suspect, clean: &CleanSet) -> Result<PruningPlan> {
        let c = &self.config;
        if !(c.step > 0.0 && c.step <= 1.0) || !(c.max_error_rise >= 0.0 && c.max_error_rise.is_finite()) {
            return Err(Error::invalid("fine-pruning step / error rise", format!("{} / {} (step in (0, 1], rise ≥ 0)", c.step, c.max_error_rise)));
        }
        let model = &suspect.model;
        let z = clean_features(model, clean, self.fine_tuning.batch_size)?;
        let [_, k] = z.dims();
        let mean_activation: Vec<f64> = values(z.clone().mean_dim(0))?.into_iter().map(f64::from).collect();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| mean_activation[a].total_cmp(&mean_activation[b]).then(a.cmp(&b)));

        let labels = &clean.data().labels;
        let error_with = |keep: &[f32]| -> Result<f64> {
            let mask = Tensor::<1>::from_floats(keep, &z.device()).reshape([1, k]);
            let predictions = values(model.head(z.clone() * mask))?;
            Ok(task_error(suspect.task, &predictions, labels).mean_deg)
        };
        let before = error_with(&vec![1.0; k])?;
        let limit = before * (1.0 + c.max_error_rise);
        let per_step = ((k as f64 * c.step).round() as usize).max(1);
        let mut plan = PruningPlan { order, mean_activation, pruned: 0, clean_error_before_deg: before, clean_error_pruned_deg: before, curve: vec![(0, before)] };
        // Never prune every channel: the model would output a constant.
        let mut n = per_step;
        while n < k {
            let trial = PruningPlan { pruned: n, ..plan.clone() };
            let error = error_with(&trial.keep_mask())?;
            plan.curve.push((n, error));
            if error > limit {
                break;
            }
            plan.pruned = n;
            plan.clean_error_pruned_deg = error;
            n += per_step;
        }
        tracing::info!(pruned = plan.pruned, of = k, before, after = plan.clean_error_pruned_deg, "fine-pruning: channels chosen");
        Ok(plan)
    }
}

/// The model with the head's weights on the pruned features set to zero (a new leaf, so that
/// the optimiser keeps its state by parameter id).
pub fn prune_head(model: Model, keep: &Tensor<2>) -> Model {
    model.map_head(|mut fc| {
        // burn stores the weight as [in, out]: one row per feature.
        fc.weight = fc.weight.map(|w| {
            let grad = w.is_require_grad();
            let pruned = (w * keep.clone()).detach();
            if grad { pruned.require_grad() } else { pruned }
        });
        fc
    })
}

impl Mitigator for FinePruning {
    fn name(&self) -> &'static str {
        "fp"
    }

    fn mitigate(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Repair> {
        clean.check_for(suspect, self.fine_tuning.batch_size)?;
        let plan = self.plan(suspect, clean)?;
        let k = plan.order.len();
        let ad = device.clone().autodiff();
        let keep = Tensor::<1>::from_floats(plan.keep_mask().as_slice(), &ad).reshape([k, 1]);
        let (model, epoch_losses) =
            fine_tune_constrained(&suspect.model, suspect.task, clean.data(), &self.fine_tuning.fine_tune_config(seed), device, &|m| prune_head(m, &keep))?;
        let model = prune_head(model.fork(device), &keep.inner());
        let record = serde_json::json!({
            "defense": "fp",
            "config": self.config,
            "fine_tuning": self.fine_tuning,
            "seed": seed,
            "channels": k,
            "pruned_channels": plan.order[..plan.pruned],
            "clean_error_before_deg": plan.clean_error_before_deg,
            "clean_error_pruned_deg": plan.clean_error_pruned_deg,
            "pruning_curve": plan.curve,
            "epoch_losses": epoch_losses,
        });
        Ok(Repair { model, record })
    }
}
