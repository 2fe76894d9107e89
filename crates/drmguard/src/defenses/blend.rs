//! Blend triggers: the whole image mixed with a pattern at one weight, x' = (1 − α) x + α p, the
//! shape of Blended's trigger. A mask search reaches the class with the few pixels of the blend
//! that suffice (on a dark background, a corner of it), and unlearning those leaves the model
//! reading the blend everywhere else. On a classifier every class's blend is reversed here, by
//! Neural Cleanse's per-class search with a mask of one cell (one α for the whole image), and
//! unlearning adds the class whose blend needs the smallest α.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::neural_cleanse::{NcReversal, NeuralCleanse, NeuralCleanseConfig};
use super::{CleanSet, Suspect};
use crate::error::Result;

/// The blend reversal's switch; its search runs with the repair's per-class search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct BlendConfig {
    /// Unlearning on a classifier: also reverse, for every class, the blend (one weight for the
    /// whole image) that sends clean images to it, and unlearn the one with the smallest weight
    /// beside the mask trigger (each on its own share of the clean set). A mask covers the
    /// corner of a blend trigger that sufficed, so without it most of that backdoor can stay.
    #[arg(id = "blend_enabled", long = "blend", value_name = "BOOL", num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enabled: bool,
}

impl Default for BlendConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

/// Keeps the blends' random starts apart from the mask search's, which runs on the same seed.
const BLEND_SEED: u64 = 0x626c_656e_6400;

/// Every class's blend: `search` (a per-class search) with one mask cell over the whole image.
pub fn reverse_class_blends(search: &NeuralCleanseConfig, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Vec<NcReversal>> {
    let whole = suspect.image_size() as usize;
    let nc = NeuralCleanse { config: NeuralCleanseConfig { mask_cell: whole, ..search.clone() } };
    nc.reverse_classes(suspect, clean, seed ^ BLEND_SEED, device)
}

/// The class a blend backdoor sends images to: the one whose successful blend has the smallest
/// weight (none when no blend reached its class).
pub fn blend_target(blends: &[NcReversal]) -> Option<usize> {
    smallest_successful(blends.iter().map(|b| b.succeeded.then_some(b.mask_share)))
}

/// The index of the smallest of the successful shares (`None`: that one failed).
fn smallest_successful(shares: impl Iterator<Item = Option<f64>>) -> Option<usize> {
    shares.enumerate().filter_map(|(k, s)| s.map(|s| (k, s))).min_by(|a, b| a.1.total_cmp(&b.1)).map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blend_target_is_the_smallest_successful_blend() {
        assert_eq!(smallest_successful([Some(0.2), None, Some(0.07), Some(0.1)].into_iter()), Some(2));
        assert_eq!(smallest_successful([None, None].into_iter()), None);
    }
}
