//! Neural Cleanse's mitigation: unlearning its reversed trigger.

use burn::tensor::Device;

use super::{NeuralCleanse, NeuralCleanseConfig};
use crate::defenses::unlearn::UnlearnConfig;
use crate::defenses::class_repair::{Shapes, repair_with_shapes};
use crate::defenses::{CleanSet, Mitigator, Repair, Suspect};
use crate::error::Result;

/// Neural Cleanse unlearning: reverse the trigger, then fine-tune on clean plus stamped images
/// with their true labels (a fifth of the clean set stamped, BackdoorBench's share, unless set).
#[derive(Debug, Clone)]
pub struct NcUnlearning {
    /// The name the repair reports: `nc`, or `agnostic` for the input-agnostic reversal's
    /// search settings.
    pub defense: &'static str,
    pub nc: NeuralCleanseConfig,
    /// The search on a classifier, where it differs from `nc`'s (the input-agnostic reversal's
    /// per-class search).
    pub class_nc: Option<NeuralCleanseConfig>,
    pub unlearn: UnlearnConfig,
    /// On a classifier, the class blend and warp unlearnt beside the mask (none: the mask alone,
    /// as the original unlearns).
    pub shapes: Shapes,
}

impl Mitigator for NcUnlearning {
    fn name(&self) -> &'static str {
        self.defense
    }

    fn mitigate(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Repair> {
        let config = match &self.class_nc {
            Some(class_nc) if suspect.task.is_classification() => class_nc.clone(),
            _ => self.nc.clone(),
        };
        let finding = NeuralCleanse { config: config.clone() }.finding(self.defense, suspect, clean, seed, device)?;
        tracing::info!(score = finding.detection.score, backdoored = finding.detection.backdoored, "trigger reversed; unlearning");
        repair_with_shapes(finding, suspect, clean, &self.unlearn, &config, &self.shapes, device)
    }
}
