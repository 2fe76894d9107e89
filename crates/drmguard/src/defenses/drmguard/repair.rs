//! DRMGuard's mitigation: unlearning the reversed trigger.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{DrmGuard, DrmGuardConfig, DrmGuardTest, Reversal};
use crate::defenses::agnostic::AgnosticConfig;
use crate::defenses::unlearn::{DRMGUARD_UNLEARN_RATIO, UnlearnConfig, unlearn};
use crate::defenses::blend::BlendConfig;
use crate::defenses::class_repair::{Shapes, repair_with_shapes};
use crate::defenses::warp::WarpConfig;
use crate::defenses::warp_collapse::WarpCollapseConfig;
use crate::defenses::{CleanSet, Detection, Detector, Mitigator, Repair, ReversedTrigger, Suspect};
use crate::models::generator::Generator;
use crate::error::Result;

/// DRMGuard's mitigation: reverse-engineer a trigger, then unlearn it (method.md §6). The
/// trigger is the one the scan decides by (`DrmGuardConfig::test`): the calibrated verdict's
/// mask and pattern, or the generator's edit.
#[derive(Debug, Clone)]
pub struct DrmGuardRepair {
    pub drmguard: DrmGuardConfig,
    /// The calibrated verdict's settings (read when `drmguard.test` is the verdict).
    pub verdict: AgnosticConfig,
    pub unlearn: UnlearnConfig,
    /// On a classifier, the class warp that reaches its class best, unlearnt beside the
    /// verdict's mask.
    pub warp: WarpConfig,
    /// On a classifier, the class blend with the smallest weight, unlearnt beside the verdict's
    /// mask.
    pub blend: BlendConfig,
    /// On a regression model, the warp collapse the verdict reads (under `drmguard.warp_signal`),
    /// whose warp is unlearnt beside the mask when its test flags.
    pub warp_collapse: WarpCollapseConfig,
}

impl DrmGuardRepair {
    /// Unlearns the trigger of an existing reversal (e.g. one a scan just made).
    pub fn repair(&self, suspect: &Suspect, clean: &CleanSet, detection: &Detection, reversal: &Reversal, device: &Device) -> Result<Repair> {
        let generator = reversal.generator.clone().to_device(device);
        let config = self.unlearn.resolved(suspect.task, DRMGUARD_UNLEARN_RATIO);
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
            "drmguard_config": reversal.config.config,
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
        if self.drmguard.test == DrmGuardTest::Verdict {
            let warp = self.drmguard.warp_signal.then(|| self.warp_collapse.clone());
            let finding = DrmGuard::with_verdict(self.drmguard.clone(), self.verdict.clone()).with_warp(warp).detect(suspect, clean, seed, device)?;
            tracing::info!(score = finding.detection.score, backdoored = finding.detection.backdoored, "trigger reversed; unlearning");
            return repair_with_shapes(finding, suspect, clean, &self.unlearn, &self.verdict.class_search(), &Shapes::both(&self.blend, &self.warp), device);
        }
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
