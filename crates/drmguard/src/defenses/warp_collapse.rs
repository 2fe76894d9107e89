//! Warp collapse: the smallest smooth warp of the images that collapses a regression model's
//! outputs. A warp trigger (WaNet, the adaptive attack's warp) moves every pixel by a pixel or
//! so along a smooth field; no mask and pattern express it, so the mask searches (Neural Cleanse,
//! the input-agnostic reversal) miss it on some models. Here the search runs in the trigger's own
//! family: a displacement field on a coarse grid ([`WarpTrigger`]), bounded to a few pixels,
//! chosen by Adam to shrink the spread of the outputs on warped clean images, plus a cost on its
//! mean displacement. A warp backdoor is such a field: once found, every image goes to the
//! target. A benign model's outputs follow the image's content, which a bounded global warp
//! cannot make the same for every image. The score is the spread ratio the warp reaches (the
//! spread of the outputs on warped images over their spread on the clean ones; small =
//! suspicious).
//!
//! A small warp still moves natural features that a task reads (a gaze model's irises), so the
//! ratio is read against benign models of the same task: the test bed's verdict standardises it
//! against its benign calibration models, and with reference models trained from the clean set
//! the report gives the suspect's ratio over theirs.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::agnostic::Verdict;
use super::neuron_noise::{ReferenceSearch, output_stats};
use super::warp::{WarpTrigger, displace};
use super::{BatchCursor, CleanSet, Detection, Detector, Figure, Finding, Suspect, values};
use crate::error::{Error, Result};
use crate::figures::reversed::{map_figure, reversal_figure};
use crate::models::{Model, Regressor, init_seeded};
use crate::progress::progress_bar;

/// Warp-collapse settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct WarpCollapseConfig {
    /// Warp collapse: side of the control grid of the displacement field, upsampled to the image
    /// (the test bed's WaNet draws its field on an 8 × 8 grid).
    #[arg(id = "warp_collapse_grid", long = "warp-collapse-grid", default_value_t = 8)]
    pub grid: usize,
    /// Warp collapse: the largest displacement of a pixel, in pixels.
    #[arg(id = "warp_collapse_max_shift", long = "warp-collapse-max-shift", default_value_t = 2.0)]
    pub max_shift: f64,
    /// Warp collapse: weight of the mean displacement (pixels) against the outputs' normalised
    /// spread, so that the search keeps the smallest warp that collapses them.
    #[arg(id = "warp_collapse_cost", long = "warp-collapse-cost", default_value_t = 0.05)]
    pub cost: f64,
    /// Warp collapse: Adam steps.
    #[arg(id = "warp_collapse_steps", long = "warp-collapse-steps", default_value_t = 200)]
    pub steps: usize,
    /// Warp collapse: Adam's learning rate on the field (before its tanh bound).
    #[arg(id = "warp_collapse_lr", long = "warp-collapse-lr", default_value_t = 0.05)]
    pub lr: f64,
    /// Warp collapse: clean images per step.
    #[arg(id = "warp_collapse_batch_size", long = "warp-collapse-batch-size", default_value_t = 32)]
    pub batch_size: usize,
    /// Warp collapse: flag the model when the warp collapses its outputs below this spread ratio.
    /// Fitted on the gaze test bed's calibration half: the geometric mean of the benign models'
    /// smallest ratio (0.862) and the WaNet models' largest (0.023) (docs/testbed.md).
    #[arg(id = "warp_collapse_threshold", long = "warp-collapse-threshold", default_value_t = 0.14)]
    pub threshold: f64,
    /// Warp collapse: benign reference models trained from the clean set alone (shared with the
    /// other detectors), searched the same way. 0: none.
    #[arg(id = "warp_collapse_references", long = "warp-collapse-references", default_value_t = 0)]
    pub references: usize,
}

impl Default for WarpCollapseConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

/// The threshold a cache key holds the warp collapse's at, whatever the current one: a cached
/// scan is re-decided under the current threshold ([`WarpCollapseConfig::decide`]).
const KEYED_THRESHOLD: f64 = 0.3;

impl WarpCollapseConfig {
    /// These settings with the threshold at a fixed value, for cache keys: the search does not
    /// read it.
    pub fn keyed(&self) -> WarpCollapseConfig {
        WarpCollapseConfig { threshold: KEYED_THRESHOLD, ..self.clone() }
    }

    /// The verdict on a scan's `spread_ratio` signal under this threshold; `None` without it.
    pub fn decide(&self, signals: &std::collections::BTreeMap<String, f64>) -> Option<Verdict> {
        let ratio = *signals.get("spread_ratio")?;
        Some(Verdict { score: ratio, threshold: self.threshold, suspicion: -ratio, backdoored: ratio < self.threshold })
    }

    pub fn validate(&self) -> Result<()> {
        let ok = self.grid >= 2
            && self.max_shift > 0.0
            && self.max_shift.is_finite()
            && self.cost >= 0.0
            && self.cost.is_finite()
            && self.steps > 0
            && self.lr > 0.0
            && self.lr.is_finite()
            && self.batch_size >= 2
            && self.threshold > 0.0
            && self.threshold.is_finite();
        if !ok {
            return Err(Error::invalid(
                "warp-collapse settings",
                format!(
                    "grid {}, max shift {}, cost {}, {} steps, lr {}, batch {}, threshold {} (grid ≥ 2, shift > 0, cost ≥ 0, at least one step, lr > 0, batch ≥ 2, threshold > 0)",
                    self.grid, self.max_shift, self.cost, self.steps, self.lr, self.batch_size, self.threshold
                ),
            ));
        }
        Ok(())
    }
}

/// What the warp search found on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarpCollapse {
    /// Spread of the outputs on the warped clean images over their spread on the clean images,
    /// mean over outputs, on the whole clean set.
    pub spread_ratio: f64,
    /// Mean absolute displacement of the warp, in pixels.
    pub mean_shift: f64,
    /// Mean output on the warped images (the backdoor's target, when there is one).
    pub target: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct WarpCollapseSearch {
    pub config: WarpCollapseConfig,
}

impl WarpCollapseSearch {
    /// The warp search on `model`, from `seed`.
    pub fn collapse(&self, model: &Model, clean: &CleanSet, seed: u64, device: &Device) -> Result<WarpCollapse> {
        Ok(self.search(model, clean, seed, device)?.0)
    }

    /// The warp search on `model`, from `seed`, with the warp it found (on `device`), which
    /// unlearning can use.
    pub fn search(&self, model: &Model, clean: &CleanSet, seed: u64, device: &Device) -> Result<(WarpCollapse, WarpTrigger)> {
        let c = &self.config;
        let (clean_std, _) = output_stats(model, clean, None, c.batch_size)?;
        let side = clean.data().image_size as usize;
        let ad = device.clone().autodiff();
        let frozen = model.clone().fork(&ad).freeze();
        let mut trigger = init_seeded(&ad, seed ^ 0x7763_6f6c_6c61_7073, || WarpTrigger::random(c.grid, c.max_shift, &ad));
        // Each output in units of its own spread on the clean set, so that no output dominates.
        let scale = Tensor::<1>::from_floats(clean_std.iter().map(|&s| 1.0 / s.max(1e-9) as f32).collect::<Vec<_>>().as_slice(), &ad).reshape([1, -1]);
        let mut optim = AdamConfig::new().init();
        let mut batches = BatchCursor::new(clean.len(), c.batch_size, seed ^ 0x7763_6261_7463_6865);
        let bar = progress_bar("warp collapse", c.steps);
        for step in 0..c.steps {
            let (x, _) = clean.batch(batches.next_batch(), &ad);
            // One displacement per step, for the warp and for its cost.
            let field = trigger.displacement(side);
            let y = frozen.forward(displace(x, field.clone())) * scale.clone();
            let spread = (y.var_bias(0) + 1e-12).sqrt().mean();
            let loss = spread + field.abs().mean() * c.cost;
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(Error::Numerical(format!("the warp-collapse loss became {value} at step {step}")));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &trigger);
            trigger = optim.step(c.lr, trigger, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let trigger = trigger.valid();
        let mean_shift = trigger.mean_shift(side).into_scalar::<f32>() as f64;
        let warped = |x: Tensor<4>| model.forward(trigger.warp(x));
        let (warped_std, target) = output_stats(model, clean, Some(&warped), c.batch_size)?;
        let spread_ratio = ratio(&warped_std, &clean_std);
        tracing::info!(spread_ratio, mean_shift, "warp collapse done");
        Ok((WarpCollapse { spread_ratio, mean_shift, target }, trigger))
    }
}

/// Each output's spread over its clean spread, mean over outputs.
fn ratio(edited_std: &[f64], clean_std: &[f64]) -> f64 {
    edited_std.iter().zip(clean_std).map(|(a, b)| a / b.max(1e-9)).sum::<f64>() / clean_std.len().max(1) as f64
}

/// The warp test's measure of any edit of the images: the spread of `model`'s outputs on the
/// edited clean set over their spread on the clean set, mean over outputs. The bench reads a
/// backdoor's true trigger with it, beside what the search found.
pub fn spread_ratio_under(model: &Model, clean: &CleanSet, edit: &dyn Fn(Tensor<4>) -> Tensor<4>, batch_size: usize) -> Result<f64> {
    let (clean_std, _) = output_stats(model, clean, None, batch_size)?;
    let edited = |x: Tensor<4>| model.forward(edit(x));
    let (edited_std, _) = output_stats(model, clean, Some(&edited), batch_size)?;
    Ok(ratio(&edited_std, &clean_std))
}

impl Detector for WarpCollapseSearch {
    fn name(&self) -> &'static str {
        "warp"
    }

    fn detect(&self, suspect: &Suspect, clean: &CleanSet, seed: u64, device: &Device) -> Result<Finding> {
        let c = &self.config;
        c.validate()?;
        if suspect.task.is_classification() {
            return Err(Error::invalid("task", format!("{}: the warp-collapse search reads a regression model's outputs", suspect.task)));
        }
        clean.check_for(suspect, c.batch_size)?;
        if clean.data().image_size < 2 {
            return Err(Error::Data("the warp-collapse search needs images of at least 2 × 2 pixels".into()));
        }
        let started = Instant::now();
        let (own, warp) = self.search(&suspect.model, clean, seed, device)?;
        let mut signals = vec![("score", own.spread_ratio), ("spread_ratio", own.spread_ratio), ("mean_shift_px", own.mean_shift)];
        let mut rows = vec![
            (
                "smooth warp searched to collapse the outputs".into(),
                format!("{0} × {0} control grid, at most {1} px, cost {2} per pixel of mean shift, {3} steps", c.grid, c.max_shift, c.cost, c.steps),
            ),
            ("spread ratio of the outputs on the warped images".into(), format!("{:.3} (mean shift {:.2} px)", own.spread_ratio, own.mean_shift)),
            ("mean output on the warped images".into(), suspect.task.format_values(&own.target)),
        ];
        let reference = ReferenceSearch { count: c.references, search: "warp", suspect, clean, seed, device };
        let theirs = reference.contrast(own.spread_ratio, &mut signals, &mut rows, |model| Ok(self.collapse(model, clean, seed, device)?.spread_ratio))?;
        let details = serde_json::json!({
            "spread_ratio": own.spread_ratio,
            "mean_shift_px": own.mean_shift,
            "target": own.target,
            "reference_spread_ratios": theirs,
        });
        let mut detection = Detection::decide("warp", own.spread_ratio, c.threshold, true, started.elapsed().as_secs_f64(), details);
        detection.set_signals(signals);
        Ok(Finding {
            detection,
            config: serde_json::to_value(c).map_err(|e| Error::Numerical(e.to_string()))?,
            seed,
            rule: "score = spread ratio of the outputs on clean images under the smooth bounded warp that collapses them best; backdoored iff score < threshold".into(),
            rows,
            figures: warp_figures(&warp, clean, device)?,
            trigger: Some(std::sync::Arc::new(warp)),
        })
    }
}

/// The warp at work on the first clean images, and where it moves the pixels.
fn warp_figures(warp: &WarpTrigger, clean: &CleanSet, device: &Device) -> Result<Vec<Figure>> {
    let shown: Vec<usize> = (0..clean.len().min(8)).collect();
    let (x, _) = clean.batch(&shown, device);
    let side = x.dims()[2];
    let originals = crate::data::to_images(x.clone())?;
    let warped = crate::data::to_images(warp.warp(x))?;
    let field = warp.displacement(side);
    let magnitude = values(field.powf_scalar(2.0).sum_dim(1).sqrt())?;
    Ok(vec![
        Figure {
            file: "warped.png".into(),
            caption: "Rows: clean images, the same under the warp that collapses the outputs, and the difference (white = 0.25).".into(),
            image: reversal_figure(&originals, &warped, 0.25)?,
        },
        Figure {
            file: "warp-field.png".into(),
            caption: format!("How far the warp moves each pixel (white = the largest shift, {:.2} px).", magnitude.iter().copied().fold(0.0f32, f32::max)),
            image: map_figure(&magnitude, side as u32)?,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_no_search_could_use_are_refused() {
        assert!(WarpCollapseConfig::default().validate().is_ok());
        for bad in [
            WarpCollapseConfig { grid: 1, ..Default::default() },
            WarpCollapseConfig { max_shift: 0.0, ..Default::default() },
            WarpCollapseConfig { cost: f64::NAN, ..Default::default() },
            WarpCollapseConfig { steps: 0, ..Default::default() },
            WarpCollapseConfig { lr: -1.0, ..Default::default() },
            WarpCollapseConfig { batch_size: 1, ..Default::default() },
            WarpCollapseConfig { threshold: 0.0, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
    }
}
