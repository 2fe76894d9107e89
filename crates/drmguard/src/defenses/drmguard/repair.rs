//! DRMGuard's mitigation: unlearning the reversed trigger.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{DrmGuard, DrmGuardConfig, Reversal};
use crate::defenses::unlearn::{DRMGUARD_UNLEARN_RATIO, UnlearnConfig, unlearn};
use crate::defenses::{CleanSet, Detection, Mitigator, Repair, ReversedTrigger, Suspect};
use crate::models::generator::Generator;
use crate::error::Result;

/// DRMGuard's mitigation: reverse-engineer a trigger, then unlearn it (method.md §6).
#[derive(Debug, Clone)]
pub struct DrmGuardRepair {
    pub drmguard: DrmGuardConfig,
    pub unlearn: UnlearnConfig,
}

impl DrmGuardRepair {
    /// Unlearns the trigger of an existing reversal (e.g. one a scan just made).
    pub fn repair(&self, suspect: &Suspect, clean: &CleanSet, detection: &Detection, reversal: &Reversal, device: &Device) -> Result<Repair> {
        let generator = reversal.generator.clone().to_device(device);
        let config = self.unlearn.with_default_ratio(DRMGUARD_UNLEARN_RATIO);
        let (model, summary) = unlearn(suspect, clean, &|x| generator.forward(x), &config, reversal.seed, device)?;
        let record = serde_json::json!({
            "defense": "drmguard",
            "detection": {
                "backdoored": detection.backdoored,
                "score": detection.score,
                "threshold": detection.threshold,
                "estimated_target": reversal.summary.estimated_target,
                "rav": reversal.summary.rav,
            },
            "drmguard_config": reversal.config,
            "unlearn_config": config,
            "unlearn": summary,
            "seed": reversal.seed,
        });
        Ok(Repair { model, record })
    }
}

impl Mitigator for DrmGuardRepair {
    fn name(&self) -> &'static str {
        "drmguard"
    }

    fn mitigate(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Repair> {
        let (detection, reversal) = DrmGuard::new(self.drmguard.clone()).detect_with_reversal(suspect, clean, seed, device)?;
        tracing::info!(score = detection.score, backdoored = detection.backdoored, "reverse engineering done; unlearning");
        self.repair(suspect, clean, &detection, &reversal, device)
    }
}

impl ReversedTrigger for Generator {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward(x)
    }

    fn unlearn_ratio(&self) -> f64 {
        DRMGUARD_UNLEARN_RATIO
    }
}
