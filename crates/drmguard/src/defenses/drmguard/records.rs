//! What a reversal records: its steps, its summary, its restarts and the trained generator.

use burn::module::Module;
use burn::tensor::Device;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::DrmGuardParams;
use crate::data::to_images;
use crate::defenses::CleanSet;
use crate::models::generator::Generator;
use crate::defenses::references::ReferenceRecord;
use crate::error::Result;

/// One logged point of the optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f64,
    /// Mean over outputs of the output variance (rad²).
    pub output_variance: f64,
    /// The (MTR-weighted) L1 term.
    pub similarity: f64,
    /// Unweighted mean |G(x) − x| on the batch.
    pub l1: f64,
    pub feature_term: f64,
    /// The references' collapse penalty (0 without references).
    #[serde(default)]
    pub contrast: f64,
}

/// What reverse engineering found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReversalSummary {
    /// I(f) over the whole clean set.
    pub score: f64,
    /// Mean of f(G(x)): the estimated target vector (radians).
    pub estimated_target: Vec<f32>,
    /// Standard deviation of f(G(x)) per output, degrees.
    pub output_std_deg: Vec<f64>,
    /// Standard deviation of f(x) per output on the clean images, degrees (for comparison).
    pub clean_output_std_deg: Vec<f64>,
    /// How far the outputs collapsed: `output_std_deg / clean_output_std_deg`, mean over the
    /// outputs (1: not at all, 0: every reversed image gives the same output).
    pub spread_ratio: f64,
    /// The model's mean absolute error per output on the clean images, degrees.
    #[serde(default)]
    pub clean_error_deg: Vec<f64>,
    /// `output_std_deg / clean_error_deg`, mean over the outputs: below 1, G pins the outputs
    /// more tightly than the model predicts the truth.
    #[serde(default)]
    pub error_ratio: f64,
    /// Ratio of angle variance of the reversed to the clean images, mean over outputs.
    pub rav: f64,
    /// The penultimate features' total variance on the reversed images over that on the clean
    /// images: a trigger collapses the whole representation, a natural edit moves within it.
    #[serde(default)]
    pub feature_dispersion_ratio: f64,
    /// How far the reversed images' mean features lie from the clean ones': mean over features
    /// of |mean shift| / clean standard deviation.
    #[serde(default)]
    pub feature_shift: f64,
    pub rav_per_output: Vec<f64>,
    /// Steps G ran: `steps`, plus any of `extra_steps` that the collapse earned.
    pub steps: usize,
    pub history: Vec<StepRecord>,
    pub seconds_per_step: f64,
    /// Each reference model's spread ratio on G(x) (empty without references).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_spread_ratios: Vec<f64>,
    /// The suspect's spread ratio over the references' mean: far below 1, G found an edit that
    /// collapses the suspect alone (a trigger); near 1, one that collapses every model of the
    /// task (a feature of the task). `None` without references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast: Option<f64>,
    /// How well each reference learned the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<ReferenceRecord>,
    /// Every start's outcome when the scan made several (`--restarts`); the summary is the kept
    /// one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<RestartRecord>,
}

/// One start of a scan with several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartRecord {
    pub seed: u64,
    pub score: f64,
    pub spread_ratio: f64,
    #[serde(default)]
    pub error_ratio: f64,
    /// max(I(f) / ε, collapse ratio / its threshold): below 1 is a backdoor verdict; the
    /// smallest is kept.
    pub closeness: f64,
}

/// A trained generator and what it found.
#[derive(Debug)]
pub struct Reversal {
    /// G in inference mode, on the defense's (non-autodiff) device.
    pub generator: Generator,
    pub summary: ReversalSummary,
    pub config: DrmGuardParams,
    /// Seed of G's initial weights and of the batch order.
    pub seed: u64,
    /// The final momentum attention map M (`[S·S]`, row-major, maximum about 1), without MTR `None`.
    pub attention: Option<Vec<f32>>,
}

impl Reversal {
    /// Clean images `indices` of `clean` and their reversed versions G(x), as 8-bit images.
    pub fn image_pairs(&self, clean: &CleanSet, indices: &[usize], device: &Device) -> Result<(Vec<RgbImage>, Vec<RgbImage>)> {
        let generator = self.generator.clone().to_device(device);
        let (x, _) = clean.batch(indices, device);
        let reversed = to_images(generator.forward(x.clone()))?;
        Ok((to_images(x)?, reversed))
    }
}
