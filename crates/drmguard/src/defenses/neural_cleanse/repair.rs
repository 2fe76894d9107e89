//! Neural Cleanse's mitigation: unlearning its reversed trigger.

use burn::module::Module;
use burn::tensor::Device;

use super::{NeuralCleanse, NeuralCleanseConfig};
use crate::defenses::unlearn::{NC_UNLEARN_RATIO, UnlearnConfig, unlearn};
use crate::defenses::{CleanSet, Mitigator, Repair, Suspect};
use crate::error::Result;

/// Neural Cleanse unlearning: reverse the trigger, then fine-tune on clean plus stamped images
/// with their true labels.
#[derive(Debug, Clone)]
pub struct NcUnlearning {
    pub nc: NeuralCleanseConfig,
    pub unlearn: UnlearnConfig,
}

impl Mitigator for NcUnlearning {
    fn name(&self) -> &'static str {
        "nc"
    }

    fn mitigate(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Repair> {
        let r = NeuralCleanse { config: self.nc.clone() }.reverse(suspect, clean, seed, device)?;
        let trigger = r.trigger.clone().to_device(device);
        let config = self.unlearn.with_default_ratio(NC_UNLEARN_RATIO);
        let (model, summary) = unlearn(suspect, clean, &|x| trigger.stamp(x), &config, seed, device)?;
        let record = serde_json::json!({
            "defense": "nc",
            "nc_config": self.nc,
            "unlearn_config": config,
            "mask_share": r.mask_share,
            "estimated_target": r.target,
            "succeeded": r.succeeded,
            "unlearn": summary,
            "seed": seed,
        });
        Ok(Repair { model, record })
    }
}
