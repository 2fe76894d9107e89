//! The adaptive attack of DRMGuard's paper (method.md §7.1): WaNet, plus a training loss that
//! hides the feature-space signature DRMGuard looks for.
//!
//! A backdoored regressor maps poisoned inputs to features whose angles to the head's weight rows
//! barely vary (ratio of angle variance RAV ≪ 0.1, method.md §3.3). The attacker adds
//! λ_adp · L_adp to the victim's loss, with L_adp = (1/d) Σ_j (RAV_j − 1)², where
//! RAV_j = Var(α_j) over the batch's poisoned samples divided by Var(α_j) over its clean samples:
//! this pushes the poisoned angles to spread like clean ones. λ_adp = 0.02 as in the paper. The
//! trigger, its cross samples and the per-batch poisoning are WaNet's, configured by the `--wanet-*`
//! options.

use burn::tensor::Tensor;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::Attack;
use super::wanet::{Wanet, WanetConfig};
use crate::error::{Error, Result};
use crate::models::{Model, Regressor, feature_angles};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AdaptiveConfig {
    /// The WaNet trigger underneath (set by the `--wanet-*` options).
    #[arg(skip)]
    pub wanet: WanetConfig,
    /// Adaptive: weight λ_adp of the loss that pushes the poisoned samples' ratio of angle
    /// variance towards 1.
    #[arg(id = "adaptive_lambda", long = "adaptive-lambda", default_value_t = 0.02)]
    pub lambda: f32,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl AdaptiveConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(Error::invalid("adaptive lambda", format!("{} (must be finite and ≥ 0)", self.lambda)));
        }
        Ok(())
    }

    pub fn build(&self, size: u32, seed: u64) -> Result<Adaptive> {
        self.validate()?;
        Ok(Adaptive { wanet: self.wanet.build(size, seed)?, lambda: self.lambda })
    }
}

#[derive(Debug, Clone)]
pub struct Adaptive {
    wanet: Wanet,
    lambda: f32,
}

/// L_adp for features of clean `[n_c, k]` and poisoned `[n_p, k]` samples and head weight rows
/// `[d, k]`: (1/d) Σ_j (Var_p(α_j) / Var_c(α_j) − 1)². Needs at least two samples of each kind.
pub fn rav_penalty(clean: Tensor<2>, poisoned: Tensor<2>, weight: Tensor<2>) -> Tensor<1> {
    let var_clean = feature_angles(clean, weight.clone()).var(0);
    let var_poisoned = feature_angles(poisoned, weight).var(0);
    (var_poisoned / (var_clean + 1e-12) - 1.0).powi_scalar(2).mean()
}

impl Attack for Adaptive {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        self.wanet.apply(x)
    }

    fn cross(&self, x: Tensor<4>, rng: &mut dyn RngCore) -> Option<Tensor<4>> {
        self.wanet.cross(x, rng)
    }

    fn cross_ratio(&self) -> f64 {
        self.wanet.cross_ratio()
    }

    fn poisons_every_batch(&self) -> bool {
        true
    }

    fn feature_penalty(&self, model: &Model, features: Tensor<2>, clean: usize, poisoned: usize) -> Option<Tensor<1>> {
        if clean < 2 || poisoned < 2 || clean + poisoned > features.dims()[0] || self.lambda == 0.0 {
            return None;
        }
        let penalty = rav_penalty(
            features.clone().narrow(0, 0, clean),
            features.narrow(0, clean, poisoned),
            model.head_weight(),
        );
        Some(penalty * self.lambda)
    }
}
